"""Live event streams, the pure half: Server-Sent Events framing, where a resumed stream picks
up, and when a task's stream is over. (Redis and the fan-out: `service/live/`.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from service.domain.events import event_type_for
from service.domain.ids import id_millis
from service.domain.status import TaskStatus

# A task's stream ends after one of these: its terminal event.
TERMINAL_EVENT_TYPES = frozenset(event_type_for(status) for status in TaskStatus if status.terminal)
# Sent on an idle stream: a comment, which EventSource clients ignore.
PING = b": ping\n\n"
# How long an EventSource client waits before reconnecting (it then sends Last-Event-ID).
RETRY = b"retry: 2000\n\n"
# Event ids carry the deciding process's clock, log entries Redis's: a resume looks this far
# before an id's time for it.
CLOCK_SKEW_MS = 60_000


@dataclass(frozen=True)
class LiveEvent:
    """An event as stored (`data`, its JSON, sent byte for byte), with what routes it."""

    id: str
    type: str
    subject: str
    owner: str
    data: bytes

    @cached_property
    def frame(self) -> bytes:
        """The SSE message, made once however many streams send it. The stored JSON is one
        line (orjson), so it is one `data:` field."""
        return b"id: %s\nevent: %s\ndata: %s\n\n" % (self.id.encode(), self.type.encode(), self.data)

    @property
    def ends_task(self) -> bool:
        return self.type in TERMINAL_EVENT_TYPES


class BadEventId(ValueError):
    """A Last-Event-ID that no event could have."""


def resume_floor_ms(last_event_id: str) -> int:
    """The earliest log time that can hold the event `last_event_id` (or anything after it)."""
    millis = id_millis(last_event_id)
    if millis is None or not last_event_id.startswith("evt_"):
        raise BadEventId(last_event_id)
    return max(millis - CLOCK_SKEW_MS, 0)


def after(ids: Sequence[str], last_event_id: str | None) -> int:
    """Where, in events in log order, a stream resumed after `last_event_id` starts: just after
    it; if it is no longer there (trimmed, expired), at the first event newer than its time
    (ids sort by creation); with none given, at the start."""
    if last_event_id is None:
        return 0
    for position, event_id in enumerate(ids):
        if event_id == last_event_id:
            return position + 1
    return next((position for position, event_id in enumerate(ids) if event_id > last_event_id), len(ids))
