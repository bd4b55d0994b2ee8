"""Events: one per task transition, carrying the whole task so consumers need no extra call.

`CATALOG` is the one list of event types: the catalog (`GET /v1/event-types`, the OpenAPI
`webhooks`), event construction and subscription filters all read it, so a new type is one
entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel

from service.domain.status import TaskStatus
from service.domain.subscriptions import SubscriptionView
from service.domain.tasks import Task


@dataclass(frozen=True)
class EventType:
    name: str
    # Published in the catalog: what happened, and what to read in `data`.
    description: str
    # The model of the event's `data`.
    data: type[BaseModel] = Task
    # About the webhook system itself (Svix's "operational webhooks"): a bare `*` filter does not
    # match it, since a consumer that asked for "everything" expects a task in `data`.
    operational: bool = False


SUBSCRIPTION_DISABLED = "subscription.disabled"

CATALOG: tuple[EventType, ...] = (
    EventType(
        "task.submitted",
        "The provider accepted the task. `provider_task_id` is null while the provider's answer is"
        " unconfirmed (sent, answer lost); it is filled in when the provider's news arrives.",
    ),
    EventType("task.running", "The provider started generating the video."),
    EventType(
        "task.succeeded",
        "The video is ready: `result.video_url` is the provider's URL, valid until `result.expires_at`"
        " where the provider says.",
    ),
    EventType(
        "task.failed",
        "The task failed; `error` says why (`provider_code` is the provider's own code). A failure we"
        " decided for want of news (`timeout`, `submit_unconfirmed`) may still be followed by"
        " task.succeeded if the provider delivers after all.",
    ),
    EventType(
        "task.canceled",
        "The task was canceled (POST /v1/tasks/{id}/cancel). Neither provider can cancel a task: the"
        " provider may still finish the video and charge for it; its later news is ignored.",
    ),
    EventType("task.progress", "The provider reported progress while the task runs: `progress` is a percentage (steps of 10)."),
    EventType(
        SUBSCRIPTION_DISABLED,
        "A subscription was disabled (`disabled_reason`: `gone` after a 410 answer, `failing` after"
        " failing for WEBHOOK_DISABLE_AFTER_S); `data` is the subscription. Opt-in: `*` does not match"
        " it; subscribe to `subscription.disabled` or `subscription.*`.",
        data=SubscriptionView,
        operational=True,
    ),
    # Our copy of a succeeded task's video: kept, or given up on after the last try.
    EventType(
        "task.stored",
        "Our copy of the video is kept: `result.stored_url` (served by GET /v1/tasks/{id}/video),"
        " `result.sha256` and `result.bytes`. The task stays succeeded.",
    ),
    EventType(
        "task.storage_failed",
        "Keeping our copy of the video failed after the last try: `result.storage_error` says why."
        " The task stays succeeded and `result.video_url` is the provider's.",
    ),
)
BY_NAME = {t.name: t for t in CATALOG}
# The task events' names (what `*` matches).
EVENT_TYPES = tuple(t.name for t in CATALOG if not t.operational)


class UnknownEventType(ValueError):
    """An event type that is not in the catalog."""


def event_type(name: str) -> EventType:
    try:
        return BY_NAME[name]
    except KeyError:
        raise UnknownEventType(name) from None


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


def make_event(task: Task, event_type_name: str, *, event_id: str, created_at: str) -> Event:
    if event_type_name not in BY_NAME:
        # A status or event added without its catalog entry: refuse rather than publish a type
        # no subscriber can filter on and no schema describes.
        raise UnknownEventType(event_type_name)
    return Event(
        id=event_id,
        type=event_type_name,
        created_at=created_at,
        sequence=task.sequence,
        data=task.model_dump(mode="json"),
    )
