"""The event catalog: one registry of event types; each type's payload schema is valid JSON Schema
(Draft 2020-12), generated from the models, and describes the events as built; the same schemas
are the OpenAPI document's `webhooks`; test events are samples marked `"test": true`."""

from __future__ import annotations

from typing import Any

import jsonschema
import orjson
import pytest
from pydantic import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from service.domain.catalog import (
    DEFAULT_TEST_EVENT,
    TEST_MARKER,
    catalog,
    sample_event,
    standalone_schema,
)
from service.domain.events import (
    BY_NAME,
    CATALOG,
    EVENT_TYPES,
    Event,
    EventType,
    UnknownEventType,
    event_type_for,
    make_event,
)
from service.domain.status import TaskStatus
from service.domain.tasks import TaskError, TaskResult
from service.domain.transition import ProviderUpdate, apply_update
from service.routes.openapi import build_spec
from service.webhooks.models import SendTestEvent, Subscription
from service.webhooks.policy import (
    ALL_EVENT_TYPES,
    OPERATIONAL_EVENT_TYPES,
    filter_problem,
    matches,
)
from tests.unit.test_domain import NOW, make_task

S = TaskStatus
NOW_S = 1_780_000_000.0


def validator(event_type: EventType) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(standalone_schema(event_type))


def sample(event_type: EventType) -> dict[str, Any]:
    _, body = sample_event(event_type, event_id="evt_0abc", owner="k1", url="https://example.com/hook", now=NOW_S)
    payload: dict[str, Any] = orjson.loads(body)
    return payload


def test_one_registry_feeds_filters_and_the_task_event_names() -> None:
    assert [t.name for t in CATALOG] == list(ALL_EVENT_TYPES) == list(BY_NAME)
    assert tuple(t.name for t in CATALOG if not t.operational) == EVENT_TYPES
    assert OPERATIONAL_EVENT_TYPES == ("subscription.disabled",)
    for name in ALL_EVENT_TYPES:
        assert filter_problem([name]) is None
        assert matches(["*"], name) is (name not in OPERATIONAL_EVENT_TYPES)
    assert "task.nope" in (filter_problem(["task.nope"]) or "")


@pytest.mark.parametrize("status", [s for s in TaskStatus if s is not S.QUEUED])
def test_every_status_a_task_moves_to_has_its_event_type(status: TaskStatus) -> None:
    assert event_type_for(status) in BY_NAME


def test_an_event_type_missing_from_the_catalog_is_refused_at_construction() -> None:
    with pytest.raises(UnknownEventType):
        make_event(make_task(S.RUNNING), "task.exploded", event_id="evt_1", created_at=NOW)


@pytest.mark.parametrize("event_type", CATALOG, ids=lambda t: t.name)
def test_every_schema_is_valid_draft_2020_12_and_pins_its_type(event_type: EventType) -> None:
    schema = standalone_schema(event_type)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["type"]["const"] == event_type.name
    assert schema["required"] == ["id", "type", "created_at", "sequence", "data"]
    assert schema["description"] == event_type.description


@pytest.mark.parametrize("event_type", CATALOG, ids=lambda t: t.name)
def test_a_sample_of_every_type_validates_and_is_marked_test(event_type: EventType) -> None:
    payload = sample(event_type)
    validator(event_type).validate(payload)
    assert payload[TEST_MARKER] is True and payload["type"] == event_type.name and payload["id"] == "evt_0abc"
    prefix = "sub_test_" if event_type.operational else "task_test_"
    assert payload["data"]["id"] == f"{prefix}0abc" and payload["data"]["owner"] == "k1"


@pytest.mark.parametrize("event_type", CATALOG, ids=lambda t: t.name)
def test_the_schema_refuses_what_is_not_that_event(event_type: EventType) -> None:
    check = validator(event_type)
    payload = sample(event_type)
    other = next(t.name for t in CATALOG if t.name != event_type.name)
    for broken in (
        {**payload, "type": other},
        {**payload, TEST_MARKER: False},
        {k: v for k, v in payload.items() if k != "data"},
        {**payload, "data": {"id": 1}},
        {**payload, "sequence": "1"},
    ):
        assert not check.is_valid(broken), broken


def test_samples_look_like_the_tasks_that_emit_them() -> None:
    succeeded, failed, progress = (sample(BY_NAME[n])["data"] for n in ("task.succeeded", "task.failed", "task.progress"))
    assert (
        succeeded["status"] == "succeeded" and succeeded["result"]["video_url"].endswith(".mp4") and succeeded["progress"] == 100
    )
    assert failed["status"] == "failed" and failed["error"]["code"] == "provider_failed" and failed["result"] is None
    assert progress["status"] == "running" and progress["progress"] == 40
    disabled = sample(BY_NAME["subscription.disabled"])["data"]
    assert disabled["enabled"] is False and disabled["url"] == "https://example.com/hook" and "secrets" not in disabled


def test_real_events_as_built_validate_against_their_schemas() -> None:
    task = make_task(S.QUEUED, owner="k1", metadata={"shot": 3}, webhook_url="https://example.com/one-off")
    updates = [
        ProviderUpdate(status=S.SUBMITTED, provider_task_id="p1"),
        ProviderUpdate(status=S.RUNNING, progress=10),
        ProviderUpdate(status=S.RUNNING, progress=50),
        ProviderUpdate(status=S.SUCCEEDED, result=TaskResult(video_url="https://v/x.mp4", expires_at=NOW)),
    ]
    seen = []
    for n, update in enumerate(updates):
        transition = apply_update(task, update, now=NOW, event_id=f"evt_{n}")
        assert transition is not None
        task = transition.task
        validator(BY_NAME[transition.event.type]).validate(orjson.loads(transition.event.dumps()))
        seen.append(transition.event.type)
    assert seen == ["task.submitted", "task.running", "task.progress", "task.succeeded"]
    failing = apply_update(
        make_task(S.RUNNING), ProviderUpdate(status=S.FAILED, error=TaskError(code="x", message="y")), now=NOW, event_id="e"
    )
    assert failing is not None
    validator(BY_NAME["task.failed"]).validate(orjson.loads(failing.event.dumps()))
    # `subscription.disabled` is built from the stored subscription's public view.
    sub = Subscription(id="sub_1", url="https://example.com/h", event_types=["*"], created_at=NOW, updated_at=NOW, enabled=False)
    event = Event(id="evt_d", type="subscription.disabled", created_at=NOW, sequence=1, data=sub.public())
    validator(BY_NAME["subscription.disabled"]).validate(orjson.loads(event.dumps()))


def test_the_catalog_lists_every_type_with_its_schema() -> None:
    listed = catalog()
    assert [e["type"] for e in listed] == list(BY_NAME)
    assert all(set(e) == {"type", "description", "operational", "schema"} and e["description"] for e in listed)


def test_a_test_event_request_defaults_to_task_succeeded_and_refuses_unknown_types() -> None:
    assert SendTestEvent.model_validate({}).event_type == DEFAULT_TEST_EVENT == "task.succeeded"
    assert SendTestEvent.model_validate({"event_type": "subscription.disabled"}).event_type == "subscription.disabled"
    with pytest.raises(ValidationError) as refused:
        SendTestEvent.model_validate({"event_type": "task.nope"})
    assert [e["loc"] for e in refused.value.errors()] == [("event_type",)]


def test_openapi_webhooks_carry_the_catalog_schemas_and_standard_webhooks_headers() -> None:
    spec = build_spec()
    assert list(spec["webhooks"]) == list(BY_NAME)
    registry = Registry().with_resource("urn:spec", Resource.from_contents(spec, default_specification=DRAFT202012))
    for event_type in CATALOG:
        post = spec["webhooks"][event_type.name]["post"]
        assert [p["name"] for p in post["parameters"]] == ["webhook-id", "webhook-timestamp", "webhook-signature"]
        assert all(p["in"] == "header" and p["required"] for p in post["parameters"])
        body = post["requestBody"]["content"]["application/json"]["schema"]
        ref = body["properties"]["data"]["$ref"]
        assert ref.removeprefix("#/components/schemas/") in spec["components"]["schemas"]
        # The OpenAPI copy and the standalone schema agree but for where `data` is defined.
        standalone = standalone_schema(event_type)
        assert {k: v for k, v in body.items() if k != "properties"} == {
            k: v for k, v in standalone.items() if k not in ("properties", "$schema", "$defs")
        }
        assert {k: v for k, v in body["properties"].items() if k != "data"} == {
            k: v for k, v in standalone["properties"].items() if k != "data"
        }
        pointer = "urn:spec#/webhooks/" + event_type.name + "/post/requestBody/content/application~1json/schema"
        jsonschema.Draft202012Validator({"$ref": pointer}, registry=registry).validate(sample(event_type))
