"""Webhook delivery end to end: real tasks, the real worker, real subscriber servers, and every
delivery verified by the `standardwebhooks` and `svix` libraries exactly as a consumer would."""

from __future__ import annotations

import base64
import time

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from service.webhooks.policy import delivery_id
from tests.stack.conftest import Simulator, wait_for
from tests.stack.receivers import (
    Receiver,
    deliveries_of,
    events_of,
    run_task,
    subscribe,
    verify_both,
    wait_for_deliveries,
)

# Three attempts a round, retries ~1 s apart (RQ's scheduler ticks once a second).
STACK_ENV = {
    "WEBHOOK_RETRY_SCHEDULE_S": "0,0.3,0.3",
    "WEBHOOK_TIMEOUT_S": "3",
    "WEBHOOK_LEASE_S": "5",
    "WEBHOOK_SECRET_GRACE_S": "3600",
}


def test_fan_out_reaches_every_matching_subscriber_signed(
    api: httpx.Client, sim: Simulator, receiver: Receiver, subs: list[str]
) -> None:
    filters: dict[str, list[str] | None] = {
        **{f"all-{i}": None for i in range(6)},
        **{f"succeeded-{i}": ["task.succeeded"] for i in range(6)},
        **{f"prefix-{i}": ["task.*"] for i in range(4)},
        **{f"failed-{i}": ["task.failed"] for i in range(4)},
    }
    secrets: dict[str, str] = {}
    for path, event_types in filters.items():
        created = subscribe(api, receiver.answer(path), event_types)
        subs.append(created["id"])
        secrets[path] = created["secret"]
        assert created["secret"].startswith("whsec_")

    tasks = [run_task(api) for _ in range(2)]
    stored = {e["id"]: e for t in tasks for e in events_of(api, t["id"])}
    assert sorted(e["type"] for e in stored.values()) == ["task.submitted"] * 2 + ["task.succeeded"] * 2

    expected = {"all": 4, "prefix": 4, "succeeded": 2, "failed": 0}
    for path in filters:
        want = expected[path.split("-")[0]]
        got = receiver.wait_for_count(path, want) if want else receiver.received(path)
        assert len(got) == want, path
        for request in got:
            payload = verify_both(secrets[path], request)
            # The body is the stored event, byte for byte as JSON; webhook-id is the event id.
            assert payload == stored[request.webhook_id]
            assert set(payload) == {"id", "type", "created_at", "sequence", "data"}
            assert request.headers["content-type"] == "application/json"
    time.sleep(0.3)
    assert receiver.received("failed-0") == []
    succeeded = receiver.received("succeeded-0")
    assert {r.json()["type"] for r in succeeded} == {"task.succeeded"}
    assert all(r.json()["data"]["status"] == "succeeded" and r.json()["sequence"] == 2 for r in succeeded)

    log = wait_for_deliveries(api, subs[0], 4, "delivered")
    assert all(d["attempt_count"] == 1 and d["attempts"][0]["status_code"] == 204 for d in log)
    assert all(d["attempts"][0]["response_body"] == "" for d in log)


def test_failed_attempts_are_retried_until_delivered(
    api: httpx.Client, sim: Simulator, receiver: Receiver, subs: list[str]
) -> None:
    created = subscribe(api, receiver.answer("flaky", 500, 503), ["task.succeeded"])
    subs.append(created["id"])
    task = run_task(api)

    [delivery] = wait_for_deliveries(api, created["id"], 1, "delivered")
    requests = receiver.received("flaky")
    assert len(requests) == 3
    # Same webhook-id on every attempt, so the consumer can de-duplicate; each one verifies.
    assert {r.webhook_id for r in requests} == {events_of(api, task["id"])[-1]["id"]}
    for request in requests:
        verify_both(created["secret"], request)
    assert [a["status_code"] for a in delivery["attempts"]] == [204, 503, 500]  # newest first
    assert [a["number"] for a in delivery["attempts"]] == [3, 2, 1]
    assert delivery["attempts"][-1]["error"] == "http_status: 500"
    assert delivery["attempts"][-1]["response_body"] == "answer 500 from flaky"
    assert delivery["last_error"] is None and delivery["next_attempt_at"] is None
    # Each retry went out only after the attempt before it was answered (the receiver saw them
    # one after another, in the order of its answers); when exactly is the scheduler's business.
    assert [r.at for r in requests] == sorted(r.at for r in requests)


def test_a_tasks_own_webhook_url_gets_its_events_signed_with_the_default_secret(
    api: httpx.Client, sim: Simulator, receiver: Receiver
) -> None:
    secret = api.get("/v1/webhooks/default/secret").json()["secret"]
    assert secret.startswith("whsec_")
    task = run_task(api, webhook_url=receiver.answer("one-off"))
    events = events_of(api, task["id"])

    got = receiver.wait_for_count("one-off", len(events))
    assert sorted(verify_both(secret, r)["sequence"] for r in got) == [1, 2]
    assert {r.webhook_id for r in got} == {e["id"] for e in events}
    delivery = api.get(f"/v1/deliveries/{delivery_id(events[-1]['id'], 'task-webhook')}").json()
    wait_for(lambda: api.get(f"/v1/deliveries/{delivery['id']}").json()["status"] == "delivered", what="delivery recorded")
    assert delivery["subscription_id"] is None and delivery["webhook_url"] == receiver.url("one-off")


def test_rotated_secret_both_old_and_new_verify_during_the_grace_period(
    api: httpx.Client, sim: Simulator, receiver: Receiver, subs: list[str]
) -> None:
    created = subscribe(api, receiver.answer("rotating"), ["task.succeeded"])
    subs.append(created["id"])
    rotated = api.post(f"/v1/subscriptions/{created['id']}/rotate-secret")
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    assert new_secret != created["secret"] and rotated.json()["previous_secret_expires_at"]

    run_task(api)
    [request] = receiver.wait_for_count("rotating", 1)
    assert len(request.headers["webhook-signature"].split()) == 2
    assert Webhook(created["secret"]).verify(request.body, request.headers)
    assert verify_both(new_secret, request)
    stranger = "whsec_" + base64.b64encode(b"x" * 24).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(stranger).verify(request.body, request.headers)


def test_replay_resends_failed_deliveries_then_all_and_backfills_a_new_subscription(
    api: httpx.Client, sim: Simulator, receiver: Receiver, subs: list[str]
) -> None:
    down = subscribe(api, receiver.answer("down", then=500), ["task.*"])
    subs.append(down["id"])
    task = run_task(api)
    events = events_of(api, task["id"])
    since = events[0]["created_at"]  # earlier tests' events are older: replay must not reach them
    failed = wait_for_deliveries(api, down["id"], 2, "failed")
    assert all(d["attempt_count"] == 3 for d in failed)

    receiver.answer("down")  # back up
    replay = api.post(f"/v1/subscriptions/{down['id']}/replay", json={"since": since, "failed_only": True})
    assert replay.status_code == 202 and replay.json()["replayed"] == 2
    delivered = wait_for_deliveries(api, down["id"], 2, "delivered")
    assert all(d["attempt_count"] == 4 for d in delivered)

    again = api.post(f"/v1/subscriptions/{down['id']}/replay", json={"since": since})
    assert again.json()["replayed"] == 2
    got = receiver.wait_for_count("down", 3 * 2 + 2 + 2)
    assert {r.webhook_id for r in got} == {e["id"] for e in events}

    late = subscribe(api, receiver.answer("late"), ["task.succeeded"])
    subs.append(late["id"])
    assert deliveries_of(api, late["id"]) == []
    backfill = api.post(f"/v1/subscriptions/{late['id']}/replay", json={"since": since})
    assert backfill.json()["replayed"] >= 1
    [request] = receiver.wait_for_count("late", 1)
    assert verify_both(late["secret"], request)["id"] == events[-1]["id"]


def test_a_delivery_can_be_retried_by_hand(api: httpx.Client, sim: Simulator, receiver: Receiver, subs: list[str]) -> None:
    created = subscribe(api, receiver.answer("manual"), ["task.succeeded"])
    subs.append(created["id"])
    run_task(api)
    [delivery] = wait_for_deliveries(api, created["id"], 1, "delivered")

    retried = api.post(f"/v1/deliveries/{delivery['id']}/retry")
    assert retried.status_code == 202, retried.text
    assert retried.json()["status"] == "pending"
    first, second = receiver.wait_for_count("manual", 2)
    assert first.webhook_id == second.webhook_id and first.body == second.body
    assert int(second.headers["webhook-timestamp"]) >= int(first.headers["webhook-timestamp"])
    wait_for(lambda: api.get(f"/v1/deliveries/{delivery['id']}").json()["attempt_count"] == 2, what="second attempt logged")

    missing = api.post("/v1/deliveries/dlv_nope/retry")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
