"""The event catalog and test events, from outside: `GET /v1/event-types` and the OpenAPI
`webhooks` describe every type; real deliveries of every type validate against the served
schema for their type; `POST /v1/subscriptions/{id}/test` sends a signed sample, marked test,
to that one subscription through the normal delivery path (retried, logged)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import jsonschema
import orjson

from service.domain.catalog import catalog
from tests.stack.conftest import API_KEY, Simulator, Stack, wait_for_status
from tests.stack.receivers import (
    Receiver,
    deliveries_of,
    subscribe,
    verify_both,
    wait_for_deliveries,
)

OTHER_KEY = "test-key-other"
# Three attempts a round, retries ~1 s apart; a subscription answering 410 is disabled at once.
STACK_ENV = {
    "KLING_RELAY_API_KEYS": f"{API_KEY},{OTHER_KEY}",
    "WEBHOOK_RETRY_SCHEDULE_S": "0,0.3,0.3",
    "WEBHOOK_TIMEOUT_S": "3",
    "WEBHOOK_LEASE_S": "5",
}


def served_validators(api: httpx.Client) -> dict[str, jsonschema.Draft202012Validator]:
    listed = api.get("/v1/event-types").json()["data"]
    return {entry["type"]: jsonschema.Draft202012Validator(entry["schema"]) for entry in listed}


def send_test(api: httpx.Client, sub_id: str, **body: Any) -> httpx.Response:
    return api.post(f"/v1/subscriptions/{sub_id}/test", json=body)


def test_the_catalog_lists_every_type_with_its_schema_and_needs_a_key(stack: Stack, api: httpx.Client) -> None:
    response = api.get("/v1/event-types")
    assert response.status_code == 200, response.text
    listed = response.json()["data"]
    types = [e["type"] for e in listed]
    assert {"task.submitted", "task.running", "task.succeeded", "task.failed", "task.progress", "subscription.disabled"} <= set(
        types
    )
    assert listed == orjson.loads(orjson.dumps(catalog()))  # the one the code builds, not a copy
    for entry in listed:
        jsonschema.Draft202012Validator.check_schema(entry["schema"])
        assert entry["description"] and entry["schema"]["properties"]["type"]["const"] == entry["type"]
    assert [e["type"] for e in listed if e["operational"]] == ["subscription.disabled"]
    assert httpx.get(f"{stack.url}/v1/event-types").status_code == 401


def test_openapi_describes_every_event_type_as_a_webhook(stack: Stack, api: httpx.Client) -> None:
    document = httpx.get(f"{stack.url}/openapi.json").json()
    listed = {e["type"]: e["schema"] for e in api.get("/v1/event-types").json()["data"]}
    assert list(document["webhooks"]) == list(listed)
    for name, hook in document["webhooks"].items():
        body = hook["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["properties"]["type"] == listed[name]["properties"]["type"]
        assert {p["name"] for p in hook["post"]["parameters"]} == {"webhook-id", "webhook-timestamp", "webhook-signature"}


def test_real_deliveries_of_every_event_type_validate_against_the_catalog(
    api: httpx.Client, sim: Simulator, receiver: Receiver, subs: list[str]
) -> None:
    validators = served_validators(api)
    tasks = subscribe(api, receiver.answer("every-task-event"), ["task.*"])
    ops = subscribe(api, receiver.answer("ops"), ["subscription.disabled"])
    gone = subscribe(api, receiver.answer("gone", then=410), ["task.succeeded"])
    subs.extend([tasks["id"], ops["id"], gone["id"]])

    sim.configure(generate_s=4)  # Novita, polled: submitted, running, progress, succeeded
    polled = api.post("/v1/tasks", json={"prompt": "a slow sunrise", "provider": "novita"}).json()
    failing = api.post("/v1/tasks", json={"prompt": "a fox [sim:fail]", "provider": "apikley"}).json()
    canceled = api.post("/v1/tasks", json={"prompt": "a snail [sim:slow]", "provider": "apikley"}).json()
    assert api.post(f"/v1/tasks/{canceled['id']}/cancel").status_code == 200
    assert wait_for_status(api, polled["id"], {"succeeded", "failed"})["status"] == "succeeded"
    assert wait_for_status(api, failing["id"], {"succeeded", "failed"})["status"] == "failed"
    events = [e for t in (polled, failing, canceled) for e in api.get(f"/v1/tasks/{t['id']}/events").json()["data"]]
    got = receiver.wait_for_count("every-task-event", len(events))
    [notice] = receiver.wait_for_count("ops", 1)

    seen = set()
    for request, secret in [*((r, tasks["secret"]) for r in got), (notice, ops["secret"])]:
        payload = verify_both(secret, request)  # signed, and valid against the catalog's schema
        validators[payload["type"]].validate(payload)  # and against the schema as served
        assert "test" not in payload
        seen.add(payload["type"])
    assert seen == {
        "task.submitted",
        "task.running",
        "task.progress",
        "task.succeeded",
        "task.failed",
        "task.canceled",
        "subscription.disabled",
    }


def test_a_test_event_arrives_signed_marked_valid_and_logged_to_that_subscription_only(
    api: httpx.Client, receiver: Receiver, subs: list[str]
) -> None:
    target = subscribe(api, receiver.answer("tested"), ["task.failed"])  # a test ignores the filter
    bystander = subscribe(api, receiver.answer("bystander"))
    subs.extend([target["id"], bystander["id"]])
    since = datetime.now(UTC).isoformat()  # after every earlier test's events

    response = send_test(api, target["id"], event_type="task.succeeded")
    assert response.status_code == 202, response.text
    delivery = response.json()
    assert delivery["event_type"] == "task.succeeded" and delivery["subscription_id"] == target["id"]
    assert delivery["subject_id"].startswith("task_test_")

    [request] = receiver.wait_for_count("tested", 1)
    payload = verify_both(target["secret"], request)
    served_validators(api)["task.succeeded"].validate(payload)
    assert payload["test"] is True and payload["type"] == "task.succeeded"
    assert request.webhook_id == payload["id"] == delivery["event_id"]
    assert payload["data"]["id"] == delivery["subject_id"] and payload["data"]["status"] == "succeeded"
    assert payload["data"]["result"]["video_url"].endswith(".mp4")

    [logged] = wait_for_deliveries(api, target["id"], 1, "delivered")
    assert logged["id"] == delivery["id"] and logged["attempts"][0]["status_code"] == 204
    # Not a task, not in the replay index, never fanned out: the bystander has nothing to replay.
    assert api.get(f"/v1/tasks/{delivery['subject_id']}").status_code == 404
    replayed = api.post(f"/v1/subscriptions/{bystander['id']}/replay", json={"since": since})
    assert replayed.status_code == 202 and replayed.json()["replayed"] == 0
    assert deliveries_of(api, bystander["id"]) == [] and receiver.received("bystander") == []


def test_a_test_event_defaults_to_task_succeeded_and_samples_any_type(
    api: httpx.Client, receiver: Receiver, subs: list[str]
) -> None:
    target = subscribe(api, receiver.answer("samples"))
    subs.append(target["id"])
    no_body = api.post(f"/v1/subscriptions/{target['id']}/test")
    assert no_body.status_code == 202, no_body.text
    assert no_body.json()["event_type"] == "task.succeeded"
    names = [e["type"] for e in api.get("/v1/event-types").json()["data"]]
    for name in names:
        assert send_test(api, target["id"], event_type=name).status_code == 202

    got = receiver.wait_for_count("samples", 1 + len(names))
    payloads = [verify_both(target["secret"], r) for r in got]
    assert sorted(p["type"] for p in payloads) == sorted(["task.succeeded", *names])
    assert all(p["test"] is True for p in payloads)
    disabled = next(p for p in payloads if p["type"] == "subscription.disabled")
    assert disabled["data"]["id"].startswith("sub_test_") and disabled["data"]["id"] != target["id"]


def test_a_failing_receiver_gets_retries_of_a_test_event_like_any_delivery(
    api: httpx.Client, receiver: Receiver, subs: list[str]
) -> None:
    target = subscribe(api, receiver.answer("flaky-test", 500, 503))
    subs.append(target["id"])
    delivery = send_test(api, target["id"], event_type="task.failed").json()

    [logged] = wait_for_deliveries(api, target["id"], 1, "delivered")
    assert logged["id"] == delivery["id"]
    assert [a["status_code"] for a in logged["attempts"]] == [204, 503, 500]  # newest first
    requests = receiver.received("flaky-test")
    assert len(requests) == 3 and {r.webhook_id for r in requests} == {delivery["event_id"]}
    assert all(verify_both(target["secret"], r)["test"] is True for r in requests)


def test_a_test_event_is_refused_for_unknown_types_other_keys_and_disabled_subscriptions(
    stack: Stack, api: httpx.Client, receiver: Receiver, subs: list[str]
) -> None:
    target = subscribe(api, receiver.answer("refusals"))
    subs.append(target["id"])

    unknown = send_test(api, target["id"], event_type="task.exploded")
    assert unknown.status_code == 422
    assert list(unknown.json()["error"]["fields"]) == ["event_type"]
    assert send_test(api, target["id"], event_type="task.succeeded", extra=1).status_code == 422

    with stack.client(OTHER_KEY) as other:
        stranger = other.post(f"/v1/subscriptions/{target['id']}/test", json={"event_type": "task.succeeded"})
        assert stranger.status_code == 404 and target["id"] not in stranger.text
    assert send_test(api, "sub_nope", event_type="task.succeeded").status_code == 404

    assert api.patch(f"/v1/subscriptions/{target['id']}", json={"enabled": False}).status_code == 200
    disabled = send_test(api, target["id"], event_type="task.succeeded")
    assert disabled.status_code == 409 and disabled.json()["error"]["code"] == "subscription_disabled"
    assert deliveries_of(api, target["id"]) == [] and receiver.received("refusals") == []
