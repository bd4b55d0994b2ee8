"""The event outbox: a dispatcher killed with entries in flight loses none of them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from service import outbox
from service.redis_server import RedisServer
from workers.deliver import fan_out
from workers.dispatch import Dispatcher, requeue_orphans


def _redis(redis_server: RedisServer) -> Redis:
    redis = Redis.from_url(f"redis://127.0.0.1:{redis_server.port}/15")
    redis.flushdb()
    return redis


def test_dispatcher_hands_a_batch_to_fan_out_and_releases_it_once_written(redis_server: RedisServer) -> None:
    redis = _redis(redis_server)
    for i in range(5):
        outbox.push(redis, f"task_{i}", f"evt_{i}")
    seen: list[tuple[list[str], int, int]] = []

    def fan_out(entries: list[str], *, written: Callable[[], None]) -> None:
        before = redis.llen(dispatcher.inflight)
        written()
        seen.append((entries, before, redis.llen(dispatcher.inflight)))

    dispatcher = Dispatcher(redis, fan_out)
    assert dispatcher.step(block_s=0.1) == 5
    # In flight until the deliveries are written; gone from the outbox and the in-flight list after.
    assert seen == [([f"task_{i} evt_{i}" for i in range(5)], 5, 0)]
    assert redis.llen(outbox.OUTBOX) == 0


def test_a_fan_out_that_fails_before_writing_keeps_its_entries_for_the_next_step(redis_server: RedisServer) -> None:
    redis = _redis(redis_server)
    for i in range(3):
        outbox.push(redis, f"task_{i}", f"evt_{i}")
    calls: list[list[str]] = []

    def fan_out(entries: list[str], *, written: Callable[[], None]) -> None:
        calls.append(entries)
        if len(calls) == 1:
            raise RedisConnectionError("redis went away while the deliveries were written")
        written()

    dispatcher = Dispatcher(redis, fan_out)
    with pytest.raises(RedisConnectionError):
        dispatcher.step(block_s=0.1)
    outbox.push(redis, "task_late", "evt_late")
    assert dispatcher.step(block_s=0.1) == 4
    # The failed batch goes again, first and whole, topped up with what arrived meanwhile.
    assert calls[1] == [*(f"task_{i} evt_{i}" for i in range(3)), "task_late evt_late"]
    assert redis.llen(dispatcher.inflight) == 0 and redis.llen(outbox.OUTBOX) == 0


def test_entries_of_a_dead_dispatcher_go_back_to_the_outbox_in_order(redis_server: RedisServer) -> None:
    redis = _redis(redis_server)
    for i in range(3):
        outbox.push(redis, f"task_{i}", f"evt_{i}")
    dead = Dispatcher(redis, fan_out)
    redis.lmove(outbox.OUTBOX, dead.inflight, "LEFT", "RIGHT")  # it took one entry, then died
    assert requeue_orphans(redis) == 1
    assert [outbox.parse(e) for e in redis.lrange(outbox.OUTBOX, 0, -1)] == [(f"task_{i}", f"evt_{i}") for i in range(3)]
    live = Dispatcher(redis, fan_out)
    redis.set(live.heartbeat, "1")
    redis.lmove(outbox.OUTBOX, live.inflight, "LEFT", "RIGHT")
    assert requeue_orphans(redis) == 0  # a live dispatcher's entries stay with it
