"""Canceling a task, from outside: `POST /v1/tasks/{id}/cancel` and `kling-relay tasks cancel`.

Neither provider can cancel, so a cancel is ours alone: a queued task is never sent, a running
one is no longer asked about, and whatever the provider says later (polls in flight, callbacks,
webhooks) is answered, logged and ignored; not even a success revives a canceled task.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rq.job import Job

from service.domain.tokens import callback_token
from service.jobs import submit_job_id
from service.keys import poll_chain_key, poll_count_key
from tests.stack.conftest import (
    API_KEY,
    CALLBACK_SECRET,
    ROOT,
    Simulator,
    Stack,
    wait_for,
    wait_for_status,
)
from tests.stack.receivers import Receiver, subscribe

SECOND_API_KEY = "test-key-2"
STACK_ENV = {"KLING_RELAY_API_KEYS": f"{API_KEY},{SECOND_API_KEY}"}


def create(api: httpx.Client, provider: str = "apikley", label: str = "a fox") -> dict[str, Any]:
    response = api.post("/v1/tasks", json={"prompt": f"{label} {uuid.uuid4().hex}", "provider": provider})
    assert response.status_code == 202, response.text
    task: dict[str, Any] = response.json()
    return task


def cancel(api: httpx.Client, task_id: str) -> httpx.Response:
    return api.post(f"/v1/tasks/{task_id}/cancel")


def event_types(api: httpx.Client, task_id: str) -> list[str]:
    return [e["type"] for e in api.get(f"/v1/tasks/{task_id}/events").json()["data"]]


def sim_task(sim: Simulator, provider_task_id: str) -> dict[str, Any]:
    (found,) = [t for t in sim.tasks() if t["task_id"] == provider_task_id]
    return found


def metric(stack: Stack, name: str, **labels: str) -> float:
    text = httpx.get(f"{stack.url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


@pytest.fixture
def silent_sim(sim: Simulator) -> Simulator:
    """Provider tasks that sit in the queue and never call back: the test is the provider."""
    sim.configure(callback_mode="drop", queue_s=3600, novita_webhooks=False)
    return sim


def test_a_queued_task_canceled_before_its_submit_runs_is_never_sent(stack: Stack, api: httpx.Client, sim: Simulator) -> None:
    # No worker: the submit job waits in its queue while the client cancels.
    for worker in stack.workers:
        worker.terminate()
        worker.wait(timeout=30)
    stack.workers.clear()
    try:
        task = create(api)
        assert task["status"] == "queued"
        answer = cancel(api, task["id"])
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "canceled"
        assert event_types(api, task["id"]) == ["task.canceled"]
    finally:
        stack.start_worker()
    # The worker runs the submit job (RQ deletes it once done): it finds the task canceled.
    redis = stack.redis()
    wait_for(lambda: not redis.exists(Job.key_for(submit_job_id(task["id"], 0))), what="the submit job to run")
    prompt = task["input"]["prompt"]
    assert not [t for t in sim.tasks() if prompt in json.dumps(t["request"])], "a canceled task reached the provider"
    after = api.get(f"/v1/tasks/{task['id']}").json()
    assert (after["status"], after["attempts"], after["provider_task_id"]) == ("canceled", [], None)
    assert event_types(api, task["id"]) == ["task.canceled"]


def test_a_submit_in_flight_at_the_cancel_records_its_paid_attempt_but_leaves_the_task_canceled(
    stack: Stack, api: httpx.Client, sim: Simulator
) -> None:
    # The provider creates the task, then holds its answer: the cancel lands while the call is open.
    sim.configure(answer_delay_s=2)
    created = create(api, provider="novita")
    prompt = created["input"]["prompt"]
    wait_for(lambda: [t for t in sim.tasks() if prompt in json.dumps(t["request"])], what="the provider to create the task")
    answer = cancel(api, created["id"])
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "canceled"

    redis = stack.redis()
    wait_for(lambda: not redis.exists(Job.key_for(submit_job_id(created["id"], 0))), what="the submit job to end")
    task = api.get(f"/v1/tasks/{created['id']}").json()
    (attempt,) = task["attempts"]
    assert task["status"] == "canceled" and attempt["outcome"] == "accepted"
    # The paid provider task is on record, and nobody asks about it.
    (provider_task,) = [t for t in sim.tasks() if prompt in json.dumps(t["request"])]
    assert task["provider_task_id"] == attempt["provider_task_id"] == provider_task["task_id"]
    assert not redis.exists(poll_chain_key(created["id"]))
    assert provider_task["queries"] == 0
    assert event_types(api, created["id"]) == ["task.canceled"]


def test_a_running_novita_task_canceled_is_no_longer_polled_and_stays_canceled_when_the_provider_finishes(
    stack: Stack, api: httpx.Client, sim: Simulator, receiver: Receiver
) -> None:
    path = f"cancel-{uuid.uuid4().hex[:8]}"
    sub = subscribe(api, receiver.answer(path))
    try:
        sim.configure(generate_s=6)
        created = create(api, provider="novita")
        running = wait_for_status(api, created["id"], "running")
        unchanged_before = metric(stack, "kling_relay_callbacks_total", provider="novita", outcome="accepted", reason="unchanged")

        answer = cancel(api, running["id"])
        assert answer.status_code == 200, answer.text
        canceled = answer.json()
        assert canceled["status"] == "canceled" and canceled["provider_task_id"] == running["provider_task_id"]

        # The cancel settles when the poll chain ends: the poll after it finds the task canceled.
        redis = stack.redis()
        wait_for(lambda: not redis.exists(poll_chain_key(running["id"])), what="the poll chain to end")
        assert not redis.exists(poll_count_key(running["id"]))
        queries = sim_task(sim, running["provider_task_id"])["queries"]

        # The provider finishes anyway and says so by webhook: answered 2xx, changing nothing.
        def webhook_answered() -> bool:
            provider_task = sim_task(sim, running["provider_task_id"])
            return provider_task["state"] == "TASK_STATUS_SUCCEED" and any(
                c["status_code"] == 200 for c in provider_task["callbacks"]
            )

        wait_for(webhook_answered, timeout_s=30, what="the provider's success webhook to be answered")
        assert sim_task(sim, running["provider_task_id"])["queries"] == queries, "polled after the cancel"
        final = api.get(f"/v1/tasks/{running['id']}").json()
        assert (final["status"], final["result"], final["error"]) == ("canceled", None, None)
        assert event_types(api, running["id"]) == ["task.submitted", "task.running", "task.canceled"]
        assert (
            metric(stack, "kling_relay_callbacks_total", provider="novita", outcome="accepted", reason="unchanged")
            > unchanged_before
        )
        assert metric(stack, "kling_relay_tasks", status="canceled") >= 1

        # Subscribers hear of it once, like of every event.
        def delivered() -> list[str] | None:
            types = [r.json()["type"] for r in receiver.received(path) if r.json()["data"]["id"] == running["id"]]
            return types if len(types) >= 3 else None

        types = wait_for(delivered, what="the task's three events to reach the subscriber")
        assert sorted(types) == ["task.canceled", "task.running", "task.submitted"]
    finally:
        api.delete(f"/v1/subscriptions/{sub['id']}")


def test_a_late_apikley_success_callback_after_cancel_is_accepted_but_changes_nothing(
    stack: Stack, api: httpx.Client, silent_sim: Simulator
) -> None:
    created = create(api)
    submitted = wait_for_status(api, created["id"], "submitted")
    assert cancel(api, submitted["id"]).status_code == 200
    events = api.get(f"/v1/tasks/{submitted['id']}/events").json()["data"]

    record = {
        "taskId": submitted["provider_task_id"],
        "model": "kling/v2-1-master-text-to-video",
        "state": "success",
        "param": json.dumps({"model": "kling/v2-1-master-text-to-video", "input": {"prompt": "a fox"}}),
        "resultJson": json.dumps({"resultUrls": ["https://cdn.example.com/videos/fox.mp4"]}),
        "failCode": "",
        "failMsg": "",
        "costTime": 15000,
        "completeTime": 1698765432000,
        "createTime": 1698765400000,
        "updateTime": 1698765432000,
    }
    token = callback_token(CALLBACK_SECRET, submitted["id"])
    with httpx.Client(base_url=stack.url, timeout=10) as provider:
        for _ in range(2):  # a provider retrying its callback
            answer = provider.post(
                f"/callbacks/apikley/{submitted['id']}/{token}", json={"code": 200, "msg": "success", "data": record}
            )
            # 2xx, so the provider stops retrying; nothing changed.
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"accepted": True, "changed": False}
    after = api.get(f"/v1/tasks/{submitted['id']}").json()
    assert (after["status"], after["result"]) == ("canceled", None)
    assert api.get(f"/v1/tasks/{submitted['id']}/events").json()["data"] == events


def test_a_finished_task_cannot_be_canceled(api: httpx.Client, sim: Simulator) -> None:
    created = create(api, label="a lighthouse")
    done = wait_for_status(api, created["id"], {"succeeded", "failed"}, timeout_s=30)
    answer = cancel(api, done["id"])
    assert answer.status_code == 409
    error = answer.json()["error"]
    assert error["code"] == "task_finished" and done["status"] in error["message"]
    assert api.get(f"/v1/tasks/{done['id']}").json() == done
    assert "task.canceled" not in event_types(api, done["id"])


def test_canceling_twice_is_refused_the_second_time(api: httpx.Client, silent_sim: Simulator) -> None:
    task = create(api)
    assert cancel(api, task["id"]).status_code == 200
    again = cancel(api, task["id"])
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "task_finished" and "canceled" in again.json()["error"]["message"]
    assert event_types(api, task["id"]).count("task.canceled") == 1


def test_another_keys_task_and_an_unknown_task_are_not_found(stack: Stack, api: httpx.Client, silent_sim: Simulator) -> None:
    task = create(api)
    with stack.client(SECOND_API_KEY) as other:
        for task_id in (task["id"], "task_doesnotexist"):
            answer = cancel(other, task_id)
            assert answer.status_code == 404
            assert answer.json()["error"]["code"] == "not_found"
    assert cancel(api, "task_doesnotexist").status_code == 404
    assert api.get(f"/v1/tasks/{task['id']}").json()["status"] != "canceled"


# --- the command line ----------------------------------------------------------------------------


def cli_env(stack: Stack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLING_RELAY_")}
    env.update(KLING_RELAY_URL=stack.url, KLING_RELAY_API_KEY=API_KEY)
    return env


def kling_relay(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "service.cli", *args]
    return subprocess.run(command, check=False, env=cli_env(stack), cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_tasks_cancel_prints_the_new_status_then_exits_3_once_the_task_has_finished(
    stack: Stack, api: httpx.Client, silent_sim: Simulator
) -> None:
    task = create(api)
    first = kling_relay(stack, "tasks", "cancel", task["id"])
    assert first.returncode == 0, first.stderr
    assert first.stdout == "canceled\n"
    assert "may still" in first.stderr  # the provider may still charge
    again = kling_relay(stack, "tasks", "cancel", task["id"], "--json")
    assert again.returncode == 3 and again.stdout == ""
    assert "409 task_finished" in again.stderr
    other = create(api)
    as_json = kling_relay(stack, "tasks", "cancel", other["id"], "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == api.get(f"/v1/tasks/{other['id']}").json()


def test_submit_wait_ends_with_exit_1_when_the_task_is_canceled(stack: Stack, api: httpx.Client, silent_sim: Simulator) -> None:
    command = [
        sys.executable,
        "-m",
        "service.cli",
        "submit",
        "a fox",
        "--provider",
        "apikley",
        "--wait",
        "--poll-interval",
        "0.2",
    ]
    proc = subprocess.Popen(command, env=cli_env(stack), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # "task_… queued (0s)": the task exists
        task_id = first.split()[0]
        assert task_id.startswith("task_"), first
        assert cancel(api, task_id).status_code == 200
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert out == ""
    assert f"{task_id} was canceled" in err
