"""A fan-out batch's life: it counts its first attempts as they are recorded and ends exactly once,
released with the last of them or handed back to its dispatcher."""

from __future__ import annotations

import queue

from redis.exceptions import ConnectionError as RedisConnectionError

from service.webhooks.deliveries import IndexedEvent
from service.webhooks.planner import Release
from workers.fanout import BatchState, FanOutBatch, HandedBack

EVENTS = [IndexedEvent("evt_1", "task_1", "task.succeeded")]


def batch(attempts: int) -> tuple[FanOutBatch, HandedBack]:
    handed_back: HandedBack = queue.SimpleQueue()
    b = FanOutBatch(["task_1 evt_1"], "kr:outbox:inflight:w1", handed_back)
    b.sending(EVENTS, attempts)
    return b, handed_back


def test_only_the_last_record_carries_the_release_and_ends_the_batch() -> None:
    b, handed_back = batch(5)
    assert b.landed(3) is None
    b.recorded()
    assert b.state is BatchState.SENDING
    assert b.landed(2) == Release("kr:outbox:inflight:w1", ["task_1 evt_1"], EVENTS)
    b.recorded()
    assert b.state is BatchState.RELEASED and handed_back.empty()


def test_a_failed_record_hands_the_batch_back_once_its_last_attempt_lands_and_never_releases_it() -> None:
    b, handed_back = batch(5)
    b.landed(2)
    b.recorded(RedisConnectionError("redis went away"))
    assert b.state is BatchState.SENDING and handed_back.empty()  # attempts still in flight
    assert b.landed(3) is None
    b.recorded()
    assert b.state is BatchState.HANDED_BACK
    assert handed_back.get_nowait() is b and isinstance(b.error, RedisConnectionError)


def test_a_batch_is_handed_back_at_most_once() -> None:
    b, handed_back = batch(0)
    b.landed(0)
    b.recorded(ValueError("bad event"))
    b.hand_back(ValueError("and again, from the dispatcher"))
    assert handed_back.qsize() == 1 and str(b.error) == "bad event"


def test_a_released_batch_is_never_handed_back() -> None:
    b, handed_back = batch(0)
    b.landed(0)
    b.recorded()
    b.hand_back(ValueError("late"))
    assert b.state is BatchState.RELEASED and handed_back.empty()
