"""Subscriptions that stop working: `410 Gone` and continuous failure disable them, and a
`subscription.disabled` event reaches the subscribers that asked for operational events."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.stack.conftest import Simulator, wait_for
from tests.stack.receivers import (
    Receiver,
    run_task,
    subscribe,
    verify_both,
    wait_for_deliveries,
)

# Five attempts a round (~1 s apart: RQ's scheduler ticks each second); a subscription failing for 1.5 s without a
# success is disabled.
STACK_ENV = {
    "WEBHOOK_RETRY_SCHEDULE_S": "0,0.3,0.3,0.3,0.3",
    "WEBHOOK_TIMEOUT_S": "2",
    "WEBHOOK_LEASE_S": "4",
    "WEBHOOK_DISABLE_AFTER_S": "1.5",
}


_ops_paths = itertools.count()


@pytest.fixture
def ops(api: httpx.Client, receiver: Receiver) -> Iterator[tuple[str, str]]:
    """An operator's subscription to operational events only: (path, secret)."""
    path = f"ops-{next(_ops_paths)}"
    created = subscribe(api, receiver.answer(path), ["subscription.disabled"])
    yield path, created["secret"]
    api.delete(f"/v1/subscriptions/{created['id']}")


def _wait_disabled(api: httpx.Client, sub_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        sub: dict[str, Any] = api.get(f"/v1/subscriptions/{sub_id}").json()
        return None if sub["enabled"] else sub

    return wait_for(check, timeout_s=20, what=f"{sub_id} to be disabled")  # type: ignore[no-any-return]


def test_410_gone_disables_the_subscription_at_once(
    api: httpx.Client, sim: Simulator, receiver: Receiver, ops: tuple[str, str]
) -> None:
    gone = subscribe(api, receiver.answer("gone", then=410), ["task.succeeded"])
    everything = subscribe(api, receiver.answer("everything"))  # "*": task events only
    run_task(api)

    sub = _wait_disabled(api, gone["id"])
    assert sub["disabled_reason"] == "gone" and sub["disabled_at"]
    [delivery] = wait_for_deliveries(api, gone["id"], 1, "failed")
    assert delivery["attempt_count"] == 1 and delivery["attempts"][0]["status_code"] == 410
    assert len(receiver.received("gone")) == 1  # no retries after 410

    ops_path, ops_secret = ops
    [notice] = receiver.wait_for_count(ops_path, 1)
    event = verify_both(ops_secret, notice)
    assert event["type"] == "subscription.disabled"
    assert event["data"]["id"] == gone["id"] and event["data"]["disabled_reason"] == "gone"
    assert "secrets" not in event["data"]
    assert {r.json()["type"] for r in receiver.received("everything")} <= {"task.submitted", "task.succeeded"}
    api.delete(f"/v1/subscriptions/{everything['id']}")


def test_a_subscription_failing_continuously_is_disabled_and_its_delivery_failed(
    api: httpx.Client, sim: Simulator, receiver: Receiver, ops: tuple[str, str]
) -> None:
    broken = subscribe(api, receiver.answer("broken", then=500), ["task.succeeded"])
    run_task(api)

    sub = _wait_disabled(api, broken["id"])
    assert sub["disabled_reason"] == "failing"
    [delivery] = wait_for_deliveries(api, broken["id"], 1, "failed")
    # Disabled before the schedule's five attempts ran out: 1.5 s of failures is enough.
    assert 2 <= delivery["attempt_count"] < 5
    assert delivery["last_error"] == "http_status: 500"

    ops_path, ops_secret = ops
    [notice] = receiver.wait_for_count(ops_path, 1)
    assert verify_both(ops_secret, notice)["data"]["disabled_reason"] == "failing"

    # Re-enabling starts a fresh failure window, and a replay of failed deliveries recovers.
    receiver.answer("broken")
    enabled = api.patch(f"/v1/subscriptions/{broken['id']}", json={"enabled": True}).json()
    assert enabled["enabled"] and enabled["disabled_reason"] is None
    replay = api.post(f"/v1/subscriptions/{broken['id']}/replay", json={"since": "2000-01-01T00:00:00Z", "failed_only": True})
    assert replay.json()["replayed"] == 1
    wait_for_deliveries(api, broken["id"], 1, "delivered")
    api.delete(f"/v1/subscriptions/{broken['id']}")
