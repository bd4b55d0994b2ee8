"""The live event logs in Redis: written with every event, read by streams.

Two Redis Streams of references (key names: `service/keys.py`): an entry names an event (its
subject and id, and in the global log its owner); the event's JSON stays in its subject's events
list, read from there when sent, so a log costs a few dozen bytes per event. `EVENT_LOG` has
every event, capped: each web process's one reader follows it (`XREAD` from its last id, so a
reconnect after an outage picks up where it stopped), and admins resume from it.
`event_log_key(owner)` has one API key's events, capped and expiring, for resuming that key's
`/v1/events/stream`. Both are appended in the same atomic write as the event itself: by
`transition.lua` for tasks, by `append` (in a compare-and-set) for subscription events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.client import Pipeline

from service.domain.events import Event
from service.domain.live import LiveEvent, after, resume_floor_ms
from service.keys import EVENT_LOG, event_log_key, events_key
from service.redis_async import PipelinedRedis
from service.settings import Settings

# Entries read per XRANGE/XREAD call.
PAGE = 1000


@dataclass(frozen=True)
class LogLimits:
    global_events: int = 10_000
    owner_events: int = 1000
    owner_ttl_s: int = 24 * 3600

    @classmethod
    def from_settings(cls, s: Settings) -> LogLimits:
        return cls(global_events=s.stream_global_events, owner_events=s.stream_history_events, owner_ttl_s=s.stream_history_s)


# The stores' default (frozen, so one instance serves them all).
DEFAULT_LIMITS = LogLimits()


def append(pipe: Pipeline, limits: LogLimits, owner: str | None, subject: str, event: Event) -> None:
    """Queue an event's log entries on a pipeline (a compare-and-set's recording): what
    `transition.lua` writes for a task's event. Its events list must get it in the same write."""
    pipe.xadd(EVENT_LOG, {"o": owner or "", "s": subject, "i": event.id}, maxlen=limits.global_events, approximate=True)
    if owner:
        pipe.xadd(event_log_key(owner), {"s": subject, "i": event.id}, maxlen=limits.owner_events, approximate=True)
        pipe.expire(event_log_key(owner), limits.owner_ttl_s)


@dataclass(frozen=True, slots=True)
class Entry:
    """A log entry: which event, about what, whose."""

    subject: str
    event_id: str
    owner: str


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry(raw: Sequence[Any]) -> Entry:
    fields = {raw[k]: raw[k + 1] for k in range(0, len(raw), 2)}
    return Entry(_text(fields[b"s"]), _text(fields[b"i"]), _text(fields.get(b"o", b"")))


class EventLog:
    """Reads of the logs and of events lists, on one async Redis client."""

    def __init__(self, redis: PipelinedRedis) -> None:
        self.redis = redis

    async def tail(self) -> str:
        """The id of the newest entry of the global log ('0-0' if empty): where a reader starts."""
        reply = await self.redis.execute("XREVRANGE", EVENT_LOG, "+", "-", "COUNT", 1)
        return _text(reply[0][0]) if reply else "0-0"

    async def read(self, last: str, *, block_ms: int) -> tuple[str, list[LiveEvent]]:
        """The global log's events after entry `last`, waiting up to `block_ms` for one, and the
        id of the last entry read (`last` if none)."""
        reply = await self.redis.execute("XREAD", "COUNT", PAGE, "BLOCK", block_ms, "STREAMS", EVENT_LOG, last)
        if not reply:
            return last, []
        entries = reply[0][1]
        return _text(entries[-1][0]), await self.resolve([_entry(fields) for _, fields in entries])

    async def subject_events(self, subject: str) -> list[LiveEvent]:
        """A task's (or subscription's) events in order, from its events list."""
        raws = await self.redis.execute("LRANGE", events_key(subject), 0, -1)
        return [_stored(subject, "", raw) for raw in raws]

    async def resolve(self, entries: Sequence[Entry]) -> list[LiveEvent]:
        """The events the entries name, in their order, read from their events lists (one round
        trip: the reads are pipelined). An event whose subject has expired since is skipped."""
        subjects = sorted({entry.subject for entry in entries})
        lists = await asyncio.gather(*(self.redis.execute("LRANGE", events_key(subject), 0, -1) for subject in subjects))
        stored: dict[str, bytes] = {}
        for raws in lists:
            for raw in raws:
                stored[orjson.loads(raw)["id"]] = raw
        return [_stored(e.subject, e.owner, stored[e.event_id]) for e in entries if e.event_id in stored]

    async def owner_after(self, owner: str, last_event_id: str) -> list[LiveEvent]:
        """One key's events after `last_event_id`, from its log."""
        return await self._after(event_log_key(owner), last_event_id)

    async def everyone_after(self, last_event_id: str) -> list[LiveEvent]:
        """Every key's events after `last_event_id` (admins), from the global log."""
        return await self._after(EVENT_LOG, last_event_id)

    async def _after(self, key: str, last_event_id: str) -> list[LiveEvent]:
        start = f"{resume_floor_ms(last_event_id)}-0"
        entries: list[Entry] = []
        while True:
            page = await self.redis.execute("XRANGE", key, start, "+", "COUNT", PAGE)
            entries += [_entry(fields) for _, fields in page]
            if len(page) < PAGE:
                break
            start = "(" + _text(page[-1][0])
        return await self.resolve(entries[after([e.event_id for e in entries], last_event_id) :])


def _stored(subject: str, owner: str, raw: bytes) -> LiveEvent:
    event = orjson.loads(raw)
    return LiveEvent(id=event["id"], type=event["type"], subject=subject, owner=owner, data=raw)
