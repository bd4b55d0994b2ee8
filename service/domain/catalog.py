"""The published event catalog: the JSON Schema of each event type's payload as delivered, built
from the models that build the events (`Event` for the envelope, the type's `data` model), and
the sample events that `POST /v1/subscriptions/{id}/test` sends.

Pure: no I/O, no clock (callers pass ids and times in).
"""

from __future__ import annotations

import copy
from functools import cache, lru_cache
from typing import Any

import orjson

from service.domain.clock import unix_to_iso
from service.domain.events import CATALOG, Event, EventType
from service.domain.status import TaskStatus
from service.domain.subscriptions import SubscriptionView
from service.domain.tasks import SubmitAttempt, Task, TaskError, TaskInput, TaskResult

Schema = dict[str, Any]
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
# The top-level field that marks a test event; absent from real events.
TEST_MARKER = "test"
TEST_PROPERTY: Schema = {
    "type": "boolean",
    "const": True,
    "description": "Present (and true) only on test events sent by POST /v1/subscriptions/{id}/test: a sample, not news.",
}
# What a test event is, unless the request names another type (Svix and Stripe users test the
# event their receiver is built for; a finished video is the one nearly every receiver handles).
DEFAULT_TEST_EVENT = "task.succeeded"
SAMPLE_PROMPT = "A red fox running through fresh snow at dawn, cinematic tracking shot"
# Sample provider URLs are said to last as long as Apikley's typically do.
SAMPLE_URL_TTL_S = 24 * 3600


def data_name(event_type: EventType) -> str:
    """The name its data model is published under (its schema title: "Task", "Subscription")."""
    title = event_type.data.model_config.get("title")
    return title if isinstance(title, str) else event_type.data.__name__


def payload_schema(event_type: EventType, data_ref: str) -> Schema:
    """The schema of `event_type`'s events as delivered, with `data` a `$ref` to `data_ref` (a
    `$defs` entry for a standalone schema, a component in the OpenAPI document)."""
    envelope = copy.deepcopy(_envelope())
    properties = envelope["properties"]
    properties["type"] = {"type": "string", "const": event_type.name, "title": "Type"}
    properties["data"] = {"$ref": data_ref}
    properties[TEST_MARKER] = dict(TEST_PROPERTY)
    envelope["title"] = f"{event_type.name} event"
    envelope["description"] = event_type.description
    return envelope


@lru_cache(maxsize=1)
def _envelope() -> Schema:
    return Event.model_json_schema(mode="serialization")


@cache
def standalone_schema(event_type: EventType) -> Schema:
    """A self-contained JSON Schema (Draft 2020-12) of `event_type`'s payload."""
    name = data_name(event_type)
    data = event_type.data.model_json_schema(mode="serialization", ref_template="#/$defs/{model}")
    defs: Schema = data.pop("$defs", {})
    defs[name] = data
    return {"$schema": DRAFT_2020_12, **payload_schema(event_type, f"#/$defs/{name}"), "$defs": defs}


def describe(event_type: EventType) -> Schema:
    """The catalog entry of `event_type`, as `GET /v1/event-types` lists it."""
    return {
        "type": event_type.name,
        "description": event_type.description,
        # Operational types are opt-in: a bare `*` filter does not match them.
        "operational": event_type.operational,
        "schema": standalone_schema(event_type),
    }


def catalog() -> list[Schema]:
    return [describe(t) for t in CATALOG]


# --- samples ------------------------------------------------------------------------------------


class NoSample(LookupError):
    """No sample is defined for this event type's data model."""


def _status_of(event_type: EventType) -> TaskStatus:
    """The status a task has when it emits `event_type`: `task.{status}` for transitions, running
    for progress, succeeded for anything that follows success (e.g. a stored video)."""
    suffix = event_type.name.removeprefix("task.")
    statuses = {s.value: s for s in TaskStatus}
    if suffix in statuses:
        return statuses[suffix]
    return TaskStatus.RUNNING if event_type.name == "task.progress" else TaskStatus.SUCCEEDED


def sample_task(event_type: EventType, *, task_id: str, owner: str | None, now: float) -> Task:
    """A realistic task as it stands when it emits `event_type`."""
    status = _status_of(event_type)
    at = unix_to_iso(now)
    provider_task_id = None if status is TaskStatus.QUEUED else f"test-{task_id.rsplit('_', 1)[-1][:16]}"
    attempts = (
        []
        if provider_task_id is None
        else [
            SubmitAttempt(
                id=f"att_{task_id.removeprefix('task_')}",
                provider="apikley",
                at=at,
                outcome="accepted",
                provider_task_id=provider_task_id,
            )
        ]
    )
    task = Task(
        id=task_id,
        owner=owner,
        provider="apikley",
        provider_task_id=provider_task_id,
        status=status,
        input=TaskInput(prompt=SAMPLE_PROMPT),
        created_at=at,
        updated_at=at,
        sequence=1,
        attempts=attempts,
    )
    if status is TaskStatus.SUCCEEDED:
        result = TaskResult(
            video_url=f"https://example.com/samples/{task_id}.mp4", expires_at=unix_to_iso(now + SAMPLE_URL_TTL_S)
        )
        return task.model_copy(update={"result": result, "progress": 100})
    if status is TaskStatus.FAILED:
        error = TaskError(
            code="provider_failed", message="sample failure: the provider could not generate this video", provider_code="501"
        )
        return task.model_copy(update={"error": error})
    if event_type.name == "task.progress":
        return task.model_copy(update={"progress": 40})
    return task


def sample_subscription(*, sub_id: str, owner: str | None, url: str, now: float) -> SubscriptionView:
    """A subscription as a `subscription.disabled` event shows it."""
    at = unix_to_iso(now)
    return SubscriptionView(
        id=sub_id,
        owner=owner,
        url=url,
        event_types=["*"],
        enabled=False,
        disabled_reason="failing",
        disabled_at=at,
        created_at=at,
        updated_at=at,
    )


def sample_event(event_type: EventType, *, event_id: str, owner: str | None, url: str, now: float) -> tuple[str, bytes]:
    """A test event of `event_type` (id `event_id`), as delivered: its subject's id (a
    recognisable `task_test_…` or `sub_test_…`, never a real one) and its body, marked
    `"test": true`. `owner` and `url` are the receiving subscription's."""
    suffix = event_id.split("_", 1)[-1]
    data: SubscriptionView | Task
    if event_type.data is Task:
        data = sample_task(event_type, task_id=f"task_test_{suffix}", owner=owner, now=now)
        sequence = data.sequence
    elif event_type.data is SubscriptionView:
        data = sample_subscription(sub_id=f"sub_test_{suffix}", owner=owner, url=url, now=now)
        sequence = 1
    else:
        raise NoSample(event_type.name)
    event = Event(
        id=event_id, type=event_type.name, created_at=unix_to_iso(now), sequence=sequence, data=data.model_dump(mode="json")
    )
    body = orjson.dumps({**orjson.loads(event.dumps()), TEST_MARKER: True})
    return data.id, body
