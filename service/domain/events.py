"""Events: one per task transition, carrying the whole task so consumers need no extra call."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel

from service.domain.status import TaskStatus
from service.domain.tasks import Task

EVENT_TYPES = (
    "task.submitted",
    "task.running",
    "task.succeeded",
    "task.failed",
    "task.canceled",
    "task.progress",
    # Our copy of a succeeded task's video: kept, or given up on after the last try.
    "task.stored",
    "task.storage_failed",
)


def event_type_for(status: TaskStatus) -> str:
    return f"task.{status.value}"


class Event(BaseModel):
    id: str
    type: str
    created_at: str
    # Per-task, strictly increasing: consumers drop any update older than one already seen.
    sequence: int
    data: dict[str, Any]

    def dumps(self) -> bytes:
        # `data` is JSON already (a task's or subscription's JSON form): orjson takes it as is,
        # where model_dump would walk it as `Any` (5x slower, on every transition).
        return orjson.dumps(
            {"id": self.id, "type": self.type, "created_at": self.created_at, "sequence": self.sequence, "data": self.data}
        )

    @classmethod
    def loads(cls, raw: bytes | str) -> Event:
        return cls.model_validate_json(raw)


def make_event(task: Task, event_type: str, *, event_id: str, created_at: str) -> Event:
    return Event(
        id=event_id,
        type=event_type,
        created_at=created_at,
        sequence=task.sequence,
        data=task.model_dump(mode="json"),
    )
