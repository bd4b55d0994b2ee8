"""Polling, late-callback reconciliation and failover, through real workers and the simulator."""

from __future__ import annotations

import itertools
import time

import httpx
import pytest

from service.jobs import Jobs
from tests.stack.conftest import Simulator, Stack, wait_for, wait_for_status

# Apikley's callback counts as late after 1 s here, so dropped callbacks are reconciled quickly.
STACK_ENV = {"APIKLEY_CALLBACK_GRACE_S": "1", "TASK_DEADLINE_S": "6"}


def _types(api: httpx.Client, task_id: str) -> list[str]:
    return [e["type"] for e in api.get(f"/v1/tasks/{task_id}/events").json()["data"]]


def test_apikley_task_with_dropped_callback_succeeds_by_polling(api: httpx.Client, sim: Simulator) -> None:
    sim.configure(callback_mode="drop")
    task = api.post("/v1/tasks", json={"prompt": "a lighthouse at dusk", "provider": "apikley"}).json()
    done = wait_for_status(api, task["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded"
    assert sim.callbacks() == []
    assert _types(api, task["id"])[-1] == "task.succeeded"


def test_novita_task_succeeds_through_polling_with_expiring_url(api: httpx.Client, sim: Simulator) -> None:
    sim.configure(generate_s=1.5)
    task = api.post("/v1/tasks", json={"prompt": "a paper boat in rain", "provider": "novita", "cfg_scale": 0.7}).json()
    done = wait_for_status(api, task["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded"
    assert done["result"]["video_url"].endswith(".mp4")
    assert done["result"]["expires_at"]
    types = _types(api, task["id"])
    assert types[0] == "task.submitted" and types[-1] == "task.succeeded"
    assert types.count("task.succeeded") == 1
    sent = [t for t in sim.tasks() if t["provider"] == "novita"][-1]["request"]
    assert sent["guidance_scale"] == 0.7


def test_novita_failure_reaches_failed_with_reason(api: httpx.Client, sim: Simulator) -> None:
    task = api.post("/v1/tasks", json={"prompt": "[sim:fail] a storm", "provider": "novita"}).json()
    done = wait_for_status(api, task["id"], {"succeeded", "failed"})
    assert done["status"] == "failed"
    assert done["error"]["code"] == "generation_failed"


def test_task_that_never_finishes_fails_with_timeout(api: httpx.Client, sim: Simulator) -> None:
    sim.configure(generate_s=60)
    task = api.post("/v1/tasks", json={"prompt": "a glacier calving", "provider": "novita"}).json()
    done = wait_for_status(api, task["id"], {"succeeded", "failed"}, timeout_s=30)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "timeout"
    assert _types(api, task["id"]).count("task.failed") == 1


def test_callback_racing_reconciliation_poll_moves_task_once(api: httpx.Client, sim: Simulator) -> None:
    # The callback lands around when the late-callback poll fires: whichever wins, one event.
    sim.configure(callback_delay_s=1.0, callback_mode="duplicate")
    tasks = [api.post("/v1/tasks", json={"prompt": f"race {i}", "provider": "apikley"}).json() for i in range(5)]
    for task in tasks:
        assert wait_for_status(api, task["id"], {"succeeded", "failed"})["status"] == "succeeded"
    wait_for(lambda: len(sim.callbacks()) >= 10, what="all duplicate callbacks sent")
    time.sleep(1.5)
    for task in tasks:
        types = _types(api, task["id"])
        # A poll may find the task running before the callback lands (a slow machine): a real step.
        # What the race must never do is make any step twice.
        assert types[0] == "task.submitted" and types[-1] == "task.succeeded"
        assert len(types) == len(set(types)), types


def test_worker_killed_during_polling_recovers(stack: Stack, api: httpx.Client, sim: Simulator) -> None:
    sim.configure(queue_s=0.5, generate_s=3)
    task = api.post("/v1/tasks", json={"prompt": "a kite over dunes", "provider": "novita"}).json()
    wait_for_status(api, task["id"], {"submitted", "running"})
    stack.kill_workers()
    time.sleep(4)
    stack.start_worker()
    done = wait_for_status(api, task["id"], {"succeeded", "failed"}, timeout_s=40)
    assert done["status"] == "succeeded"
    assert _types(api, task["id"]).count("task.succeeded") == 1


@pytest.mark.parametrize(("code", "msg"), [(402, "insufficient credits"), (455, "maintenance"), (505, "feature disabled")])
def test_auto_task_fails_over_when_provider_refuses_for_a_provider_level_reason(
    api: httpx.Client, sim: Simulator, code: int, msg: str
) -> None:
    sim.configure(apikley_create_responses=[{"code": code, "msg": msg}])
    task = api.post("/v1/tasks", json={"prompt": "a train in the alps"}).json()
    done = wait_for_status(api, task["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded"
    assert done["provider"] == "novita"
    assert [(a["provider"], a["outcome"]) for a in done["attempts"]] == [("apikley", "rejected"), ("novita", "accepted")]


def test_explicit_provider_never_fails_over(api: httpx.Client, sim: Simulator) -> None:
    sim.configure(apikley_create_responses=[{"code": 402, "msg": "insufficient credits"}])
    task = api.post("/v1/tasks", json={"prompt": "a train in the alps", "provider": "apikley"}).json()
    done = wait_for_status(api, task["id"], {"succeeded", "failed"})
    assert done["status"] == "failed"
    assert done["error"]["code"] == "insufficient_credits"
    assert done["provider"] == "apikley"



def test_duplicate_polls_yield_one_event_per_transition(stack: Stack, api: httpx.Client, sim: Simulator) -> None:
    sim.configure(generate_s=2)
    task = api.post("/v1/tasks", json={"prompt": "a heron taking off", "provider": "novita"}).json()
    wait_for_status(api, task["id"], {"submitted", "running"})
    jobs = Jobs(stack.redis())
    for _ in range(10):  # as if retries, restarts and a second worker all scheduled a poll
        jobs.poll(task["id"])
    done = wait_for_status(api, task["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded"
    types = _types(api, task["id"])
    for kind in ("task.submitted", "task.running", "task.succeeded"):
        assert types.count(kind) <= 1, types
    assert types.count("task.succeeded") == 1
    events = api.get(f"/v1/tasks/{task['id']}/events").json()["data"]
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))


def test_novita_progress_becomes_throttled_progress_events(api: httpx.Client, sim: Simulator) -> None:
    sim.configure(generate_s=4)
    task = api.post("/v1/tasks", json={"prompt": "a slow sunrise", "provider": "novita"}).json()
    assert wait_for_status(api, task["id"], {"succeeded", "failed"})["status"] == "succeeded"
    events = api.get(f"/v1/tasks/{task['id']}/events").json()["data"]
    progress = [e["data"]["progress"] for e in events if e["type"] == "task.progress"]
    assert progress, [e["type"] for e in events]
    assert all(b - a >= 10 for a, b in itertools.pairwise(progress))
    assert events[-1]["type"] == "task.succeeded"
