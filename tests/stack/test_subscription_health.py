"""Each subscription's `health` in the API (`GET /v1/subscriptions/{id}` and every item of the list),
as real deliveries to a real receiver leave it: a failure raises the streak and is recorded with
its answer, a success resets the streak; and it is only ever shown to the subscription's key."""

from __future__ import annotations

from typing import Any

import httpx

from tests.stack.conftest import API_KEY, Stack, wait_for
from tests.stack.receivers import Receiver, run_task, subscribe, wait_for_deliveries

OTHER_KEY = "test-key-2"
# One attempt a round: each failure stays failed until the test retries it, so the test decides
# when the next attempt is made and can read the health in between.
STACK_ENV = {"KLING_RELAY_API_KEYS": f"{API_KEY},{OTHER_KEY}", "WEBHOOK_RETRY_SCHEDULE_S": "0"}
NOTHING_YET = {"success_at": None, "streak": 0, "failure_at": None, "failure": None, "failing_since": None}


def health_of(api: httpx.Client, sub_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/subscriptions/{sub_id}")
    assert response.status_code == 200, response.text
    health: dict[str, Any] = response.json()["health"]
    listed = {s["id"]: s["health"] for s in api.get("/v1/subscriptions", params={"limit": 100}).json()["data"]}
    assert listed[sub_id] == health  # the list shows the same as the subscription's own read
    return health


def retry_and_wait(api: httpx.Client, delivery_id: str, attempts: int, status: str) -> None:
    """Send the delivery again now, and wait until that attempt is recorded (the subscription's
    health is written in the same atomic call as the attempt)."""
    assert api.post(f"/v1/deliveries/{delivery_id}/retry").status_code == 202

    def recorded() -> bool:
        delivery = api.get(f"/v1/deliveries/{delivery_id}").json()
        return bool(delivery["attempt_count"] == attempts and delivery["status"] == status)

    wait_for(recorded, what=f"attempt {attempts} of {delivery_id} to be recorded {status}")


def test_health_starts_empty_then_failures_raise_the_streak_and_a_success_resets_it(
    api: httpx.Client, receiver: Receiver, subs: list[str]
) -> None:
    sub = subscribe(api, receiver.answer("flaky", 500, 503, then=204), ["task.succeeded"])
    subs.append(sub["id"])
    assert health_of(api, sub["id"]) == NOTHING_YET

    run_task(api)
    [delivery] = wait_for_deliveries(api, sub["id"], 1, "failed")
    first = health_of(api, sub["id"])
    assert first["streak"] == 1 and first["failure"] == "http_status: 500" and first["success_at"] is None
    assert first["failure_at"] and first["failing_since"]

    retry_and_wait(api, delivery["id"], 2, "failed")
    second = health_of(api, sub["id"])
    assert second["streak"] == 2 and second["failure"] == "http_status: 503" and second["success_at"] is None
    assert second["failure_at"] >= first["failure_at"]
    assert second["failing_since"] == first["failing_since"]  # the same run of failures

    retry_and_wait(api, delivery["id"], 3, "delivered")
    recovered = health_of(api, sub["id"])
    assert recovered["streak"] == 0 and recovered["failing_since"] is None
    assert recovered["success_at"] and recovered["success_at"] >= second["failure_at"]
    # The last failure stays on record after the success, as the dashboard shows it.
    assert (recovered["failure_at"], recovered["failure"]) == (second["failure_at"], "http_status: 503")
    assert len(receiver.received("flaky")) == 3


def test_another_key_cannot_read_a_subscriptions_health(
    stack: Stack, api: httpx.Client, receiver: Receiver, subs: list[str]
) -> None:
    sub = subscribe(api, receiver.answer("mine-only"), ["task.succeeded"])
    subs.append(sub["id"])
    with stack.client(OTHER_KEY) as theirs:
        theirs_sub = subscribe(theirs, receiver.answer("theirs-only"), ["task.succeeded"])
        try:
            hidden = theirs.get(f"/v1/subscriptions/{sub['id']}")
            assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "not_found"
            listed = theirs.get("/v1/subscriptions", params={"limit": 100}).json()["data"]
            assert [s["id"] for s in listed] == [theirs_sub["id"]] and listed[0]["health"] == NOTHING_YET
        finally:
            theirs.delete(f"/v1/subscriptions/{theirs_sub['id']}")
    assert theirs_sub["id"] not in {s["id"] for s in api.get("/v1/subscriptions", params={"limit": 100}).json()["data"]}
