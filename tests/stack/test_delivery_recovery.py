"""At-least-once: a worker SIGKILLed in the middle of a fan-out loses no delivery, and after
de-duplication by `webhook-id` every subscriber has every event exactly once. A worker stopped
(SIGTERM) in the middle of one lets its attempts land and records them: nothing goes twice."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx

from service.keys import INFLIGHT_PREFIX
from tests.stack.conftest import Simulator, Stack, wait_for
from tests.stack.receivers import (
    deliveries_of,
    events_of,
    serve_receiver,
    subscribe,
    verify_both,
)

# A short lease, so the sweep re-sends the dead worker's in-flight deliveries within seconds.
STACK_ENV = {"WEBHOOK_LEASE_S": "3", "WEBHOOK_TIMEOUT_S": "2"}
SUBSCRIBERS = 20


def all_delivered(api: httpx.Client, task_id: str, subs: dict[str, dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The task's events once it has succeeded and every subscriber's deliveries are delivered."""
    task = api.get(f"/v1/tasks/{task_id}").json()
    if task["status"] != "succeeded":
        return None
    events = events_of(api, task_id)
    for sub in subs.values():
        found = deliveries_of(api, sub["id"])
        if len(found) != len(events) or any(d["status"] != "delivered" for d in found):
            return None
    return events


def test_worker_killed_mid_fan_out_then_restarted_delivers_everything_once(
    api: httpx.Client, sim: Simulator, stack: Stack
) -> None:
    with serve_receiver() as receiver:
        # Each answer takes a second, so the kill lands while every request is in flight.
        subs = {f"slow-{i}": subscribe(api, receiver.answer(f"slow-{i}", delay_s=1.0)) for i in range(SUBSCRIBERS)}
        created = api.post("/v1/tasks", json={"prompt": "a kite over dunes", "provider": "apikley"})
        assert created.status_code == 202, created.text
        task_id = created.json()["id"]

        wait_for(lambda: sum(len(receiver.received(p)) for p in subs) >= SUBSCRIBERS, what="the fan-out to be in flight")
        stack.kill_workers()
        stack.start_worker()

        events = wait_for(
            lambda: all_delivered(api, task_id, subs),
            timeout_s=40,
            interval_s=0.2,
            what="every delivery to complete after the restart",
        )
        event_ids = {e["id"] for e in events}
        resent = 0
        for path, sub in subs.items():
            got = receiver.received(path)
            for request in got:
                verify_both(sub["secret"], request)
            copies = Counter(r.webhook_id for r in got)
            assert set(copies) == event_ids, path
            resent += sum(n - 1 for n in copies.values())
            # One delivery per (event, subscriber), each with exactly one successful attempt logged.
            for delivery in deliveries_of(api, sub["id"]):
                assert [a["status_code"] for a in delivery["attempts"]].count(204) == 1
        # The killed worker's in-flight requests were answered but never recorded: they went again.
        assert resent >= 1
        for sub in subs.values():
            api.delete(f"/v1/subscriptions/{sub['id']}")


def test_worker_stopped_mid_fan_out_records_its_attempts_before_it_exits(api: httpx.Client, sim: Simulator, stack: Stack) -> None:
    with serve_receiver() as receiver:
        subs = {f"patient-{i}": subscribe(api, receiver.answer(f"patient-{i}", delay_s=1.0)) for i in range(5)}
        created = api.post("/v1/tasks", json={"prompt": "a lighthouse at dusk", "provider": "apikley"})
        assert created.status_code == 202, created.text
        task_id = created.json()["id"]

        wait_for(lambda: all(receiver.received(p) for p in subs), what="the fan-out to be in flight")
        [worker] = stack.workers
        worker.terminate()
        assert worker.wait(timeout=15) == 0
        stack.workers.clear()
        # The stopped worker waited for its answers and recorded them: nothing is left in flight.
        redis = stack.redis()
        assert not [key for key in redis.scan_iter(match=f"{INFLIGHT_PREFIX}*") if redis.llen(key)]

        stack.start_worker()
        events = wait_for(lambda: all_delivered(api, task_id, subs), timeout_s=40, interval_s=0.2, what="every delivery")
        for path in subs:
            copies = Counter(r.webhook_id for r in receiver.received(path))
            assert set(copies) == {e["id"] for e in events} and set(copies.values()) == {1}, copies
        for sub in subs.values():
            api.delete(f"/v1/subscriptions/{sub['id']}")
