"""The event outbox: a dispatcher holds its entries until their first attempts are recorded, and
one killed with entries in flight loses none of them."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from service import outbox
from service.jobs import Jobs
from service.keys import OUTBOX, OUTBOX_DEAD
from service.redis_server import RedisServer
from service.webhooks.deliveries import DeliveryStore
from service.webhooks.planner import Rules
from service.webhooks.store import SubscriptionStore
from tests.stack.conftest import wait_for
from workers.dispatch import Dispatcher, requeue_orphans
from workers.fanout import BatchState, FanOutBatch
from workers.recorder import Recorder


def _redis(redis_server: RedisServer) -> Redis:
    redis = Redis.from_url(f"redis://127.0.0.1:{redis_server.port}/15")
    redis.flushdb()
    return redis


def _release(redis: Redis, batch: FanOutBatch) -> None:
    """Record a batch that had nothing to send, as the fan-out does: its entries are released."""
    recorder = Recorder(
        SubscriptionStore(redis, event_ttl_s=60),
        DeliveryStore(redis, ttl_s=60, lease_s=5),
        Jobs(redis),
        Rules(schedule_s=[0, 5], disable_after_s=60, lease_s=5),
    )
    batch.sending([], 0)
    recorder.first_attempts(batch, [])


def _push(redis: Redis, *names: str) -> list[str]:
    for name in names:
        outbox.push(redis, f"task_{name}", f"evt_{name}")
    return [outbox.entry(f"task_{name}", f"evt_{name}") for name in names]


def test_a_batch_stays_in_flight_until_its_fan_out_releases_it(redis_server: RedisServer) -> None:
    redis = _redis(redis_server)
    entries = _push(redis, *"abcde")
    batches: list[FanOutBatch] = []
    dispatcher = Dispatcher(redis, batches.append, heartbeat_s=5)
    assert dispatcher.step(block_s=0.1) == 5
    assert [b.entries for b in batches] == [entries]
    # Taken from the outbox, but held until the write that records the first attempts.
    assert redis.llen(OUTBOX) == 0
    assert [e.decode() for e in redis.lrange(dispatcher.inflight, 0, -1)] == entries
    _release(redis, batches[0])
    assert redis.llen(dispatcher.inflight) == 0
    assert batches[0].state is BatchState.RELEASED


def test_batches_in_flight_together_are_released_each_on_its_own(redis_server: RedisServer) -> None:
    redis = _redis(redis_server)
    batches: list[FanOutBatch] = []
    dispatcher = Dispatcher(redis, batches.append, heartbeat_s=5)
    _push(redis, "a", "b")
    dispatcher.step(block_s=0.1)
    late = _push(redis, "c")
    dispatcher.step(block_s=0.1)
    assert [b.entries for b in batches][1] == late  # only what was new, not the held batch again
    _release(redis, batches[0])
    assert [e.decode() for e in redis.lrange(dispatcher.inflight, 0, -1)] == late


def test_a_fan_out_that_fails_goes_again_first_and_whole(redis_server: RedisServer) -> None:
    redis = _redis(redis_server)
    entries = _push(redis, "a", "b", "c")
    calls: list[list[str]] = []

    def fan_out(batch: FanOutBatch) -> None:
        calls.append(batch.entries)
        if len(calls) == 1:
            raise RedisConnectionError("redis went away while the events were read")

    dispatcher = Dispatcher(redis, fan_out, heartbeat_s=5)
    with pytest.raises(RedisConnectionError):
        dispatcher.step(block_s=0.1)
    late = _push(redis, "late")
    assert dispatcher.step(block_s=0.1) == 3
    assert dispatcher.step(block_s=0.1) == 1
    assert calls[1:] == [entries, late]
    assert redis.llen(dispatcher.inflight) == 4  # none released by these fan-outs


def test_a_batch_whose_recording_failed_goes_again(redis_server: RedisServer) -> None:
    redis = _redis(redis_server)
    entries = _push(redis, "a", "b")
    batches: list[FanOutBatch] = []
    dispatcher = Dispatcher(redis, batches.append, heartbeat_s=5)
    dispatcher.step(block_s=0.1)
    batches[0].hand_back(RedisConnectionError("redis went away"))  # as the recorder does when saving them failed
    assert dispatcher.step(block_s=0.1) == 2
    assert batches[1].entries == entries
    assert redis.llen(dispatcher.inflight) == 2 and redis.llen(OUTBOX) == 0


def test_an_entry_that_keeps_failing_is_set_aside_and_holds_up_none_of_the_others(redis_server: RedisServer) -> None:
    redis = _redis(redis_server)
    good_a, bad, good_b = _push(redis, "a", "bad", "b")
    fanned: list[list[str]] = []

    def fan_out(batch: FanOutBatch) -> None:
        fanned.append(batch.entries)
        if bad in batch.entries:
            raise ValueError("the event does not parse")  # a bug or corrupt data, not Redis
        _release(redis, batch)

    dispatcher = Dispatcher(redis, fan_out, heartbeat_s=5)
    for _ in range(5):
        with contextlib.suppress(ValueError):
            dispatcher.step(block_s=0.05)
    # The batch failed whole, then each entry went alone: the bad one failed again and was set aside.
    assert fanned == [[good_a, bad, good_b], [good_a], [bad], [good_b]]
    assert [e.decode() for e in redis.lrange(OUTBOX_DEAD, 0, -1)] == [bad]
    assert redis.llen(dispatcher.inflight) == 0 and redis.llen(OUTBOX) == 0


def test_entries_of_a_dead_dispatcher_go_back_to_the_outbox_in_order(redis_server: RedisServer) -> None:
    redis = _redis(redis_server)
    _push(redis, "0", "1", "2")
    dead = Dispatcher(redis, lambda batch: None, heartbeat_s=5)
    redis.lmove(OUTBOX, dead.inflight, "LEFT", "RIGHT")  # it took one entry, then died
    assert requeue_orphans(redis) == 1
    assert [outbox.parse(e) for e in redis.lrange(OUTBOX, 0, -1)] == [(f"task_{i}", f"evt_{i}") for i in range(3)]
    live = Dispatcher(redis, lambda batch: None, heartbeat_s=5)
    live.beat()
    redis.lmove(OUTBOX, live.inflight, "LEFT", "RIGHT")
    assert requeue_orphans(redis) == 0  # a live dispatcher's entries stay with it


def test_a_started_dispatcher_keeps_its_heartbeat_beyond_one_ttl(redis_server: RedisServer) -> None:
    redis = _redis(redis_server)
    dispatcher = Dispatcher(redis, lambda batch: None, heartbeat_s=1)
    dispatcher.start()
    time.sleep(2.5)
    assert redis.exists(dispatcher.heartbeat)
    dispatcher.retire()
    assert not redis.exists(dispatcher.heartbeat)


def test_a_retired_dispatcher_leaves_its_entries_to_the_next_sweep(redis_server: RedisServer) -> None:
    redis = _redis(redis_server)
    entries = _push(redis, "a")
    dispatcher = Dispatcher(redis, lambda batch: None, heartbeat_s=30)
    dispatcher.start()
    dispatcher.step(block_s=0.1)  # taken, its first attempts never recorded (the worker stopped)
    assert requeue_orphans(redis) == 0
    dispatcher.retire()
    dispatcher.beat()  # a late beat from its thread does not bring it back
    assert requeue_orphans(redis) == 1
    assert [e.decode() for e in redis.lrange(OUTBOX, 0, -1)] == entries


def test_an_entry_moved_by_a_command_whose_answer_was_lost_is_sent_once(redis_server: RedisServer) -> None:
    # Redis going away mid-reply: the move into the in-flight list happened, the dispatcher never
    # heard of it (redis-py may have retried on a new connection), and while the dispatcher lives
    # the sweep leaves its list alone.
    redis = _redis(redis_server)
    seen: list[list[str]] = []
    dispatcher = Dispatcher(redis, lambda batch: seen.append(batch.entries), heartbeat_s=5)
    worker = threading.Thread(target=dispatcher.run_forever, daemon=True)
    worker.start()
    try:
        held = _push(redis, "held")
        wait_for(lambda: seen == [held], what="the first batch")
        # Straight into the list, as such a move leaves it (not through the outbox, which the
        # running dispatcher would take from first).
        lost = [outbox.entry("task_lost", "evt_lost")]
        redis.rpush(dispatcher.inflight, *lost)
        wait_for(lambda: len(seen) >= 2, what="the stray entry to go again")
    finally:
        dispatcher.stop()
        worker.join(timeout=5)
    # The held batch, not released yet, is not sent a second time.
    assert seen == [held, lost]
