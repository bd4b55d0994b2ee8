"""Paid submissions: one provider task per task, and no result the provider produced is lost.

Each scenario plays a way the promise used to break (a provider that answers after our timeout,
a worker killed with a submit in flight or just before it, a deadline that passes before the
result comes) against real processes and the simulator, then counts the provider tasks the
simulator created for each of our tasks. Those counts are the "paid submissions" table of
`docs/reliability.md`.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from functools import partial
from typing import Any

import httpx
import pytest
from redis import Redis
from rq import Queue

from service.redis_server import free_port
from tests.stack.conftest import Simulator, Stack, wait_for
from tests.stack.faults.conftest import PaidRecord
from tests.stack.faults.ledger import assert_no_orphans
from tests.stack.receivers import Receiver, serve_receiver, subscribe, verify_both
from tests.stack.stacks import owned_stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TERMINAL = {"succeeded", "failed"}
# Our provider calls give up after 1 s; the simulator answers after 3 s (it has created the task).
LATE_ANSWER_S = 3.0
STACKS: dict[str, dict[str, str]] = {
    # A provider answering after our timeout; the callback comes well within the limit.
    "timeouts": {"PROVIDER_TIMEOUT_S": "1", "SUBMIT_UNCONFIRMED_S": "120"},
    # Workers killed mid-call: calls are allowed to take long, leases lapse in 2 s.
    "crashes": {"PROVIDER_TIMEOUT_S": "30", "SUBMIT_LEASE_S": "2", "SUBMIT_UNCONFIRMED_S": "120"},
    # A lost answer waits only 3 s for its callback.
    "short limit": {"PROVIDER_TIMEOUT_S": "1", "SUBMIT_UNCONFIRMED_S": "3"},
    # Tasks time out after 4 s, then are asked about every second.
    "deadline": {"TASK_DEADLINE_S": "4", "LATE_POLL_S": "1", "APIKLEY_CALLBACK_GRACE_S": "1"},
    # The operator allows a second submit after a lost answer.
    "override": {"PROVIDER_TIMEOUT_S": "1", "RESUBMIT_UNCONFIRMED": "true", "SUBMIT_UNCONFIRMED_S": "120"},
}


@pytest.fixture(scope="module")
def stacks(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Stack]]:
    """One stack (own redis-server, web, worker) per setting group, started when first asked for."""
    with ExitStack() as running:

        class Started(dict[str, Stack]):
            def __missing__(self, name: str) -> Stack:
                env = {**STACKS[name], "WORKER_METRICS_PORT": str(free_port())}
                base = tmp_path_factory.mktemp(name.replace(" ", "-"))
                self[name] = stack = running.enter_context(owned_stack(base, simulator, env)).stack
                return stack

        started = Started()
        yield started
        for stack in started.values():
            assert_no_orphans(stack.redis())


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as served:
        yield served


def prompt(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:8]}"


def create(stack: Stack, provider: str, text: str, **fields: Any) -> str:
    with stack.client() as api:
        response = api.post("/v1/tasks", json={"prompt": text, "provider": provider, **fields})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def task_of(stack: Stack, task_id: str) -> dict[str, Any]:
    with stack.client() as api:
        body: dict[str, Any] = api.get(f"/v1/tasks/{task_id}").json()
        return body


def event_types(stack: Stack, task_id: str) -> list[str]:
    with stack.client() as api:
        return [e["type"] for e in api.get(f"/v1/tasks/{task_id}/events").json()["data"] if e["type"] != "task.progress"]


def wait_status(stack: Stack, task_id: str, statuses: set[str], timeout_s: float = 60) -> dict[str, Any]:
    return wait_for(
        lambda: (t := task_of(stack, task_id))["status"] in statuses and t,
        timeout_s=timeout_s,
        what=f"task {task_id} to reach {sorted(statuses)}",
    )


def provider_tasks(sim: Simulator, text: str) -> list[dict[str, Any]]:
    """The tasks the simulated providers created (and would bill) for this prompt."""
    return [t for t in sim.tasks() if t["request"].get("input", t["request"]).get("prompt") == text]


def outcomes(task: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["provider"], a["outcome"]) for a in task["attempts"]]


def worker_metric(stack: Stack, name: str, **labels: str) -> float:
    port = stack.env["WORKER_METRICS_PORT"]
    text = wait_for(partial(_scrape, f"http://127.0.0.1:{port}/metrics"), what="the worker's /metrics")
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = line[len(name) + 1 : line.index("}")]
            if ",".join(sorted(found.split(","))) == want:
                total += float(line.rsplit(" ", 1)[1])
    return total


def _scrape(url: str) -> str | None:
    try:
        return httpx.get(url, timeout=5).text
    except httpx.TransportError:
        return None  # the worker is still starting


def paid(record: PaidRecord, scenario: str, injection: str, task: dict[str, Any], created: list[dict[str, Any]]) -> None:
    """Hand the scenario's row to the report."""
    error = task.get("error") or {}
    outcome = task["status"] + (f" ({error['code']})" if task["status"] == "failed" else "")
    record(scenario, injection, len(created), outcome)


def received_types(receiver: Receiver, path: str, secret: str) -> list[str]:
    return [verify_both(secret, r)["type"] for r in receiver.received(path)]


# --- a provider that answers after our timeout ----------------------------------------------------


@pytest.mark.parametrize("provider", ["apikley", "novita"])
def test_a_provider_answering_after_our_timeout_is_paid_once_and_the_task_succeeds(
    stacks: dict[str, Stack], sim: Simulator, record_paid: PaidRecord, provider: str
) -> None:
    stack = stacks["timeouts"]
    # The callback (Novita: the result webhook) comes after our timeout, so the answer is lost first.
    sim.configure(answer_delay_s=LATE_ANSWER_S, callback_delay_s=LATE_ANSWER_S)
    before = worker_metric(stack, "kling_relay_submit_attempts_total", provider=provider, outcome="unconfirmed")
    text = prompt(f"late answer {provider}")
    task_id = create(stack, provider, text)

    done = wait_status(stack, task_id, TERMINAL)
    created = provider_tasks(sim, text)
    assert done["status"] == "succeeded", done
    assert len(created) == 1
    assert done["provider_task_id"] == created[0]["task_id"]
    # Sent once, answer never read, then its id came by the per-task callback (Novita: webhook).
    assert outcomes(done) == [(provider, "adopted")]
    assert event_types(stack, task_id) == ["task.submitted", "task.succeeded"]
    after = worker_metric(stack, "kling_relay_submit_attempts_total", provider=provider, outcome="unconfirmed")
    assert after == before + 1
    how = {"apikley": "callback", "novita": "result webhook"}[provider]
    paid(
        record_paid,
        f"{provider} answers after our timeout",
        f"simulator creates the task, answers {LATE_ANSWER_S:g} s later (timeout 1 s); the {how} brings its id",
        done,
        created,
    )


# --- workers killed ---------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["apikley", "novita"])
def test_a_worker_killed_with_a_submit_in_flight_pays_once_and_the_task_succeeds_on_the_callback(
    stacks: dict[str, Stack], sim: Simulator, record_paid: PaidRecord, provider: str
) -> None:
    stack = stacks["crashes"]
    # The provider takes the task at once, answers after 10 s, and calls back after 4 s.
    sim.configure(answer_delay_s=10, callback_delay_s=4)
    text = prompt(f"killed in flight {provider}")
    task_id = create(stack, provider, text)
    wait_for(
        lambda: outcomes(task_of(stack, task_id)) == [(provider, "sending")] and provider_tasks(sim, text),
        what="the submit in flight at the provider",
    )
    stack.kill_workers()
    stack.start_worker()

    done = wait_status(stack, task_id, TERMINAL)
    created = provider_tasks(sim, text)
    assert done["status"] == "succeeded", done
    assert [t["task_id"] for t in created] == [done["provider_task_id"]]
    assert outcomes(done) == [(provider, "adopted")]
    assert event_types(stack, task_id) == ["task.submitted", "task.succeeded"]
    paid(
        record_paid,
        f"worker SIGKILLed with a submit in flight ({provider})",
        "SIGKILL while createTask waits on the provider (answer in 10 s, callback in 4 s)",
        done,
        created,
    )


def test_a_worker_killed_before_sending_anything_has_its_task_submitted_again(
    stacks: dict[str, Stack], sim: Simulator, record_paid: PaidRecord
) -> None:
    stack = stacks["crashes"]
    [worker] = stack.workers
    # Frozen while it waits for work: Redis hands it the submit job, which it never starts.
    os.kill(worker.pid, signal.SIGSTOP)
    text = prompt("killed before sending")
    task_id = create(stack, "apikley", text)
    redis = Redis.from_url(stack.redis_url)
    wait_for(lambda: not Queue("submit", connection=redis).get_job_ids(), what="the frozen worker to take the job")
    stack.kill_workers()
    assert task_of(stack, task_id)["attempts"] == []
    stack.start_worker()

    done = wait_status(stack, task_id, TERMINAL)
    created = provider_tasks(sim, text)
    assert done["status"] == "succeeded", done
    assert len(created) == 1
    assert outcomes(done) == [("apikley", "accepted")]
    paid(
        record_paid,
        "worker SIGKILLed before sending anything",
        "worker frozen idle takes the submit job from Redis, then SIGKILL; the sweep submits again",
        done,
        created,
    )


# --- lost answers with no callback in time ----------------------------------------------------


def test_a_lost_answer_with_no_callback_fails_as_submit_unconfirmed_and_is_never_resubmitted(
    stacks: dict[str, Stack], sim: Simulator, record_paid: PaidRecord
) -> None:
    stack = stacks["short limit"]
    sim.configure(answer_delay_s=LATE_ANSWER_S, callback_mode="drop")
    text = prompt("silent provider")
    task_id = create(stack, "apikley", text)

    waiting = wait_status(stack, task_id, {"submitted"})
    assert waiting["provider_task_id"] is None
    assert outcomes(waiting) == [("apikley", "unconfirmed")]
    done = wait_status(stack, task_id, TERMINAL)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "submit_unconfirmed"
    created = provider_tasks(sim, text)
    assert len(created) == 1  # the provider has it (and bills it); we never sent a second
    paid(
        record_paid,
        "answer lost, no callback ever",
        "answer after our timeout, callbacks dropped; SUBMIT_UNCONFIRMED_S = 3",
        done,
        created,
    )


def test_a_callback_after_the_unconfirmed_limit_still_delivers_the_result(
    stacks: dict[str, Stack], sim: Simulator, receiver: Receiver, record_paid: PaidRecord
) -> None:
    stack = stacks["short limit"]
    with stack.client() as api:
        sub = subscribe(api, receiver.answer("late-unconfirmed"))
    sim.configure(answer_delay_s=LATE_ANSWER_S, callback_delay_s=15)
    text = prompt("late callback")
    task_id = create(stack, "apikley", text)

    failed = wait_status(stack, task_id, {"failed"})
    assert failed["error"]["code"] == "submit_unconfirmed"
    done = wait_status(stack, task_id, {"succeeded"})
    created = provider_tasks(sim, text)
    assert [t["task_id"] for t in created] == [done["provider_task_id"]]
    assert done["error"] is None and done["result"]["video_url"] == created[0]["video_url"]
    assert event_types(stack, task_id) == ["task.submitted", "task.failed", "task.succeeded"]
    wait_for(
        lambda: "task.succeeded" in received_types(receiver, "late-unconfirmed", sub["secret"]), what="task.succeeded delivered"
    )
    paid(
        record_paid,
        "answer lost, callback after the limit",
        "answer after our timeout; callback 15 s later, past SUBMIT_UNCONFIRMED_S = 3",
        done,
        created,
    )


# --- a deadline that passes before the result --------------------------------------------------


@pytest.mark.parametrize("provider", ["apikley", "novita"])
def test_a_success_after_the_deadline_is_kept_and_delivered(
    stacks: dict[str, Stack], sim: Simulator, receiver: Receiver, record_paid: PaidRecord, provider: str
) -> None:
    stack = stacks["deadline"]
    path = f"late-success-{provider}"
    with stack.client() as api:
        sub = subscribe(api, receiver.answer(path))
    # Generation takes 12 s; our deadline is 4 s; no callback comes.
    sim.configure(queue_s=0.2, generate_s=12, callback_mode="drop")
    text = prompt(f"slow generation {provider}")
    task_id = create(stack, provider, text)

    timed_out = wait_status(stack, task_id, {"failed"})
    assert timed_out["error"]["code"] == "timeout"
    done = wait_status(stack, task_id, {"succeeded"})
    created = provider_tasks(sim, text)
    assert [t["task_id"] for t in created] == [done["provider_task_id"]]
    types = event_types(stack, task_id)
    assert types[0] == "task.submitted" and types[-2:] == ["task.failed", "task.succeeded"]
    wait_for(
        lambda: received_types(receiver, path, sub["secret"])[-1:] == ["task.succeeded"], what="task.succeeded delivered last"
    )
    paid(
        record_paid,
        f"deadline passes, then a late success ({provider})",
        "generation 12 s, TASK_DEADLINE_S = 4, callbacks dropped; polled every LATE_POLL_S = 1 after",
        done,
        created,
    )


# --- gateway pages and Get Task Details for failures --------------------------------------------


def test_gateway_pages_move_an_auto_task_to_the_other_provider_after_one_repeat(
    stacks: dict[str, Stack], sim: Simulator, record_paid: PaidRecord
) -> None:
    stack = stacks["timeouts"]
    gateway = [{"http_status": 502, "html": True}, {"http_status": 503, "html": True}]
    sim.configure(apikley_create_responses=gateway)
    text = prompt("gateway trouble")
    task_id = create(stack, "auto", text)

    done = wait_status(stack, task_id, TERMINAL)
    assert done["status"] == "succeeded", done
    assert done["provider"] == "novita"
    assert [(a["provider"], a["outcome"], a["code"]) for a in done["attempts"]] == [
        ("apikley", "retrying", "gateway_error"),
        ("apikley", "rejected", "gateway_error"),
        ("novita", "accepted", None),
    ]
    created = provider_tasks(sim, text)
    assert [t["provider"] for t in created] == ["novita"]
    paid(
        record_paid,
        "gateway pages (HTML 502, 503) on an auto task",
        "Apikley's createTask answers two nginx error pages; failover to Novita",
        done,
        created,
    )


def test_a_failed_generation_fails_the_task_with_the_providers_reason_at_once(
    stacks: dict[str, Stack], sim: Simulator, record_paid: PaidRecord
) -> None:
    stack = stacks["timeouts"]
    # The callback says fail; Get Task Details confirms it with code 501 and the record.
    sim.configure(
        outcome="fail", fail_code="CONTENT_POLICY", fail_msg="prompt refused by the safety filter", apikley_record_fail_code=501
    )
    text = prompt("refused generation")
    task_id = create(stack, "apikley", text)

    done = wait_status(stack, task_id, TERMINAL)
    assert done["status"] == "failed"
    assert done["error"] == {
        "code": "generation_failed",
        "message": "prompt refused by the safety filter",
        "provider_code": "CONTENT_POLICY",
    }
    assert event_types(stack, task_id) == ["task.submitted", "task.failed"]
    created = provider_tasks(sim, text)
    assert len(created) == 1
    paid(
        record_paid,
        "failed generation (Get Task Details answers 501)",
        "the provider fails the task; its fail callback is confirmed by a 501 answer carrying the record",
        done,
        created,
    )


# --- the operator override ----------------------------------------------------------------------


def test_the_operator_override_submits_again_after_a_lost_answer_and_shows_both_attempts(
    stacks: dict[str, Stack], sim: Simulator, record_paid: PaidRecord
) -> None:
    stack = stacks["override"]
    # The first task's callback comes after the second submit, and finds the other task adopted.
    sim.configure(answer_delay_s=LATE_ANSWER_S, callback_delay_s=5)
    text = prompt("override")
    task_id = create(stack, "apikley", text)
    # The first createTask reached the provider; the next one is answered at once.
    wait_for(lambda: provider_tasks(sim, text), what="the first provider task")
    sim.configure(answer_delay_s=0)

    done = wait_status(stack, task_id, TERMINAL)
    created = provider_tasks(sim, text)
    assert done["status"] == "succeeded", done
    assert len(created) == 2  # the price of the override: two paid tasks, both visible
    assert outcomes(done) == [("apikley", "unconfirmed"), ("apikley", "accepted")]
    assert done["provider_task_id"] in {t["task_id"] for t in created}
    paid(
        record_paid,
        "lost answer with RESUBMIT_UNCONFIRMED=true",
        "answer after our timeout; the operator's override submits again",
        done,
        created,
    )
