"""The event outbox: events waiting to be fanned out to subscribers.

A transition pushes its event here inside its own atomic write (a tiny RPUSH, instead of building
an RQ job on the callback hot path). Each worker's dispatcher thread takes entries in batches and
fans them out; an entry sits in the dispatcher's in-flight list until its first attempts are
recorded, so a dispatcher killed halfway loses nothing (the sweep puts its list back).
"""

from __future__ import annotations

from redis import Redis
from redis.client import Pipeline

from service.keys import OUTBOX
from service.scripts import load


def entry(subject_id: str, event_id: str) -> str:
    return f"{subject_id} {event_id}"


def parse(raw: bytes | str) -> tuple[str, str]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    subject_id, _, event_id = text.partition(" ")
    return subject_id, event_id


def push(pipe: Pipeline | Redis, subject_id: str, event_id: str) -> None:
    pipe.rpush(OUTBOX, entry(subject_id, event_id))


class TakeMore:
    """`take_more.lua`: move up to `count` entries from the head of `outbox` to the tail of
    `inflight`, in order; returns those moved."""

    def __init__(self, redis: Redis) -> None:
        self._script = load(redis, "take_more")

    def __call__(self, *, outbox: str, inflight: str, count: int) -> list[bytes]:
        return list(self._script(keys=[outbox, inflight], args=[count]))


class ReturnInflight:
    """`return_inflight.lua`: put `inflight`'s entries back at the head of `outbox`, in their
    order; returns how many."""

    def __init__(self, redis: Redis) -> None:
        self._script = load(redis, "return_inflight")

    def __call__(self, *, inflight: str, outbox: str) -> int:
        return int(self._script(keys=[inflight, outbox]))
