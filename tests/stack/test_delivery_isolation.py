"""A subscriber that is slow to answer holds up only its own deliveries: other subscribers keep
receiving new events while its request is still waiting, and worker jobs keep running."""

from __future__ import annotations

import httpx

from tests.stack.conftest import Simulator, wait_for
from tests.stack.receivers import Receiver, deliveries_of, serve_receiver, subscribe

# The slow subscriber answers well inside the attempt timeout, so its attempt is simply waiting.
STACK_ENV = {"WEBHOOK_TIMEOUT_S": "15"}
SLOW_S = 10.0


def first_request_for(receiver: Receiver, path: str, task_id: str) -> bool:
    return any(r.json()["data"]["id"] == task_id for r in receiver.received(path))


def test_a_slow_subscriber_does_not_hold_up_other_subscribers_events(api: httpx.Client, sim: Simulator) -> None:
    with serve_receiver() as receiver:
        slow = subscribe(api, receiver.answer("slow", delay_s=SLOW_S))
        fast = subscribe(api, receiver.answer("fast"))
        first = api.post("/v1/tasks", json={"prompt": "a lighthouse in fog", "provider": "apikley"}).json()["id"]
        wait_for(lambda: first_request_for(receiver, "slow", first), what="the slow subscriber to hold a request")

        second = api.post("/v1/tasks", json={"prompt": "a heron at dawn", "provider": "apikley"}).json()["id"]
        wait_for(
            lambda: first_request_for(receiver, "fast", second),
            timeout_s=SLOW_S,
            what="the second task's event at the fast subscriber",
        )

        # The slow subscriber's first attempt is still unanswered: nothing waited for it.
        assert [d for d in deliveries_of(api, slow["id"]) if d["attempts"]] == []

        def slow_ones_landed() -> bool:
            found = deliveries_of(api, slow["id"])
            return bool(found) and all(d["status"] == "delivered" for d in found)

        # And in the end they land, each recorded as delivered.
        wait_for(slow_ones_landed, timeout_s=4 * SLOW_S, what="the slow deliveries to land")
        for sub in (slow, fast):
            api.delete(f"/v1/subscriptions/{sub['id']}")
