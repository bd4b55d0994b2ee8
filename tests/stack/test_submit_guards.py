"""Guards around paid submissions, over HTTP with real processes: `auto` picks a provider that
fits, kie.ai's callback signatures, one pending confirmation however many callbacks claim an end,
a warning when callbacks cannot reach us, and a worker that stops while Redis is down."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest
from redis import Redis
from rq import Queue

from service.domain.tokens import callback_token, kie_signature
from tests.stack.conftest import CALLBACK_SECRET, Simulator, Stack, wait_for
from tests.stack.stacks import OwnedStack, owned_stack

HMAC_KEY = "kie-webhook-hmac-key"
TERMINAL = {"succeeded", "failed"}


@pytest.fixture(scope="module")
def novita_first(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with owned_stack(tmp_path_factory.mktemp("novita-first"), simulator, {"DEFAULT_PROVIDER": "novita"}) as owned:
        yield owned.stack


@pytest.fixture(scope="module")
def signed(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"APIKLEY_WEBHOOK_HMAC_KEY": HMAC_KEY, "APIKLEY_CALLBACK_GRACE_S": "60"}
    with owned_stack(tmp_path_factory.mktemp("signed"), simulator, env) as owned:
        yield owned.stack


def create(stack: Stack, **body: Any) -> httpx.Response:
    with stack.client() as api:
        return api.post("/v1/tasks", json={"prompt": f"guard {uuid.uuid4().hex[:8]}", **body})


def task_of(stack: Stack, task_id: str) -> dict[str, Any]:
    with stack.client() as api:
        body: dict[str, Any] = api.get(f"/v1/tasks/{task_id}").json()
        return body


def wait_status(stack: Stack, task_id: str, statuses: set[str]) -> dict[str, Any]:
    return wait_for(lambda: (t := task_of(stack, task_id))["status"] in statuses and t, what=f"{task_id} to reach {statuses}")


# --- auto picks a provider that fits --------------------------------------------------------------

FITS = {
    "a 3,000-character prompt goes to Apikley, though Novita is the default": ({"prompt": "p" * 3000}, "apikley"),
    "a 600-character negative prompt goes to Novita": ({"negative_prompt": "n" * 600}, "novita"),
    "what fits the default goes there": ({}, "novita"),
}


@pytest.mark.parametrize(("fields", "provider"), FITS.values(), ids=FITS.keys())
def test_auto_takes_the_first_provider_whose_limits_fit(
    novita_first: Stack, sim: Simulator, fields: dict[str, str], provider: str
) -> None:
    response = create(novita_first, **fields)
    assert response.status_code == 202, response.text
    assert response.json()["provider"] == provider
    assert wait_status(novita_first, response.json()["id"], TERMINAL)["status"] == "succeeded"


def test_auto_answers_422_naming_each_providers_limit_when_none_fits(novita_first: Stack) -> None:
    redis = novita_first.redis()
    before = sorted(redis.keys("kr:task:*"))
    response = create(novita_first, prompt="p" * 5001)
    assert response.status_code == 422
    assert response.json()["error"]["fields"] == {
        "prompt": "must be at most 2500 characters for novita; must be at most 5000 characters for apikley"
    }
    assert sorted(redis.keys("kr:task:*")) == before


# --- kie.ai callback signatures -------------------------------------------------------------------


def _claim(provider_task_id: str, state: str = "success") -> dict[str, Any]:
    record = {"taskId": provider_task_id, "state": state, "resultJson": json.dumps({"resultUrls": ["https://forged.invalid/v.mp4"]})}
    return {"code": 200, "msg": "success", "data": record}


def test_signed_callbacks_are_taken(signed: Stack, sim: Simulator) -> None:
    sim.configure(webhook_hmac_key=HMAC_KEY)
    response = create(signed, provider="apikley")
    done = wait_status(signed, response.json()["id"], TERMINAL)
    assert done["status"] == "succeeded"
    mine = [c for c in sim.callbacks() if c["task_id"] == done["provider_task_id"]]
    assert [c["status_code"] for c in mine] == [202]  # taken, and confirmed by a poll


UNSIGNED = {
    "no signature headers": lambda pid, now: {},
    "a stale timestamp": lambda pid, now: {
        "X-Webhook-Timestamp": str(now - 301),
        "X-Webhook-Signature": kie_signature(HMAC_KEY, pid, str(now - 301)),
    },
    "signed with another key": lambda pid, now: {
        "X-Webhook-Timestamp": str(now),
        "X-Webhook-Signature": kie_signature("not-the-key", pid, str(now)),
    },
    "signed for another task": lambda pid, now: {
        "X-Webhook-Timestamp": str(now),
        "X-Webhook-Signature": kie_signature(HMAC_KEY, pid + "0", str(now)),
    },
}


@pytest.mark.parametrize("headers_for", UNSIGNED.values(), ids=UNSIGNED.keys())
def test_a_callback_without_a_valid_signature_is_refused_and_changes_nothing(
    signed: Stack, sim: Simulator, headers_for: Any
) -> None:
    sim.configure(callback_mode="drop", generate_s=3600)
    task_id = create(signed, provider="apikley").json()["id"]
    before = wait_status(signed, task_id, {"submitted", "running"})
    pid = before["provider_task_id"]
    polls_before = Queue("poll", connection=signed.redis()).count
    with httpx.Client(base_url=signed.url, timeout=10) as receiver:
        answer = receiver.post(
            f"/callbacks/apikley/{task_id}/{callback_token(CALLBACK_SECRET, task_id)}",
            json=_claim(pid),
            headers=headers_for(pid, int(time.time())),
        )
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"]["code"] == "invalid_signature"
    assert task_of(signed, task_id) == before
    assert Queue("poll", connection=signed.redis()).count == polls_before


# --- one pending confirmation ---------------------------------------------------------------------


def test_thirty_forged_terminal_callbacks_leave_one_confirmation_poll_pending(stack: Stack, sim: Simulator) -> None:
    sim.configure(callback_mode="drop", generate_s=3600)
    task_id = create(stack, provider="apikley").json()["id"]
    submitted = wait_status(stack, task_id, {"submitted", "running"})
    redis = stack.redis()
    wait_for(lambda: not pending_polls(redis, task_id), what="no poll of the task pending")
    [worker] = stack.workers
    os.kill(worker.pid, signal.SIGSTOP)  # nothing runs the confirmation while the claims arrive
    try:
        with httpx.Client(base_url=stack.url, timeout=10) as receiver:
            path = f"/callbacks/apikley/{task_id}/{callback_token(CALLBACK_SECRET, task_id)}"
            answers = [receiver.post(path, json=_claim(submitted["provider_task_id"])).status_code for _ in range(30)]
        assert answers == [202] * 30
        assert len(pending_polls(redis, task_id)) == 1
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    wait_for(lambda: not pending_polls(redis, task_id), what="the confirmation poll to run")
    # The provider says it is still generating: the forged success changed nothing.
    assert task_of(stack, task_id)["status"] in {"submitted", "running"}


def pending_polls(redis: Redis, task_id: str) -> list[bytes]:
    """Poll jobs of this task waiting to run now (queued, whether or not a worker popped them)."""
    found = []
    for key in redis.scan_iter(match="rq:job:*", count=1000):
        status, description = redis.hmget(key, "status", "description")
        if status == b"queued" and description and b"poll_task" in description and task_id.encode() in description:
            found.append(key)
    return found


# --- callbacks that cannot reach us ---------------------------------------------------------------


@pytest.fixture(scope="module")
def unreachable(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnedStack]:
    # A provider on the internet (a name that never resolves: nothing is sent to it) and our own
    # address on loopback: its callbacks could never reach us.
    env = {"APIKLEY_BASE_URL": "http://api.provider.invalid", "DEFAULT_PROVIDER": "novita"}
    with owned_stack(tmp_path_factory.mktemp("unreachable"), simulator, env) as owned:
        yield owned


def test_callbacks_that_cannot_arrive_are_reported_at_start_and_by_readyz(unreachable: OwnedStack) -> None:
    stack = unreachable.stack
    ready = httpx.get(f"{stack.url}/readyz", timeout=5)
    assert ready.status_code == 200
    body = ready.json()
    assert body["callbacks"] == "unreachable"
    assert "PUBLIC_BASE_URL" in body["warnings"][0] and stack.url in body["warnings"][0]
    for process in ("web", "worker"):
        wait_for(partial(_logged, stack, process, "cannot call back"), what=f"the {process} process's warning")


def _logged(stack: Stack, process: str, text: str) -> bool:
    return any(text in log.read_text() for log in stack.log_dir.glob(f"{process}-*.log"))


def test_a_reachable_base_url_reports_no_warning(stack: Stack) -> None:
    # The shared test stack's provider is the simulator on loopback: it can call us back.
    body = httpx.get(f"{stack.url}/readyz", timeout=5).json()
    assert body == {"status": "ok"}


# --- stopping while Redis is down ---------------------------------------------------------------


def test_a_worker_told_to_stop_while_redis_is_down_exits(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> None:
    with owned_stack(tmp_path_factory.mktemp("redis-down"), simulator) as owned:
        [worker] = owned.stack.workers
        redis = owned.stack.redis()
        wait_for(lambda: redis.scard("rq:workers") == 1, what="the worker to register")
        owned.redis_server.stop()
        wait_for(partial(_logged, owned.stack, "worker", "unavailable"), what="the worker to notice Redis is gone")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0


# --- providers' answers as they come ------------------------------------------------------------


def test_novita_refusing_the_webhook_field_is_submitted_again_without_it_and_paid_once(stack: Stack, sim: Simulator) -> None:
    sim.configure(novita_accepts_extra=False)
    text = f"no webhooks {uuid.uuid4().hex[:8]}"
    with stack.client() as api:
        task_id = api.post("/v1/tasks", json={"prompt": text, "provider": "novita"}).json()["id"]
    done = wait_status(stack, task_id, TERMINAL)
    assert done["status"] == "succeeded", done
    [created] = [t for t in sim.tasks() if t["request"].get("prompt") == text]
    assert "extra" not in created["request"]
    assert [(a["provider"], a["outcome"]) for a in done["attempts"]] == [("novita", "accepted")]


def test_a_callback_naming_its_task_as_task_id_is_taken(stack: Stack, sim: Simulator) -> None:
    sim.configure(callback_task_id_key="task_id")
    task_id = create(stack, provider="apikley").json()["id"]
    done = wait_status(stack, task_id, TERMINAL)
    assert done["status"] == "succeeded"
    [callback] = [c for c in sim.callbacks() if c["task_id"] == done["provider_task_id"]]
    assert "task_id" in callback["body"]["data"] and "taskId" not in callback["body"]["data"]
    assert callback["status_code"] == 202


def test_a_refusal_spelling_its_text_message_is_read(stack: Stack, sim: Simulator) -> None:
    sim.configure(apikley_message_key="message", apikley_create_responses=[{"code": 402, "msg": "top up your credits"}])
    task_id = create(stack, provider="apikley").json()["id"]
    done = wait_status(stack, task_id, TERMINAL)
    assert done["error"] == {"code": "insufficient_credits", "message": "top up your credits", "provider_code": "402"}


def test_a_callback_that_changes_nothing_is_logged_with_its_provider_task_id(stack: Stack, sim: Simulator) -> None:
    task_id = create(stack, provider="apikley").json()["id"]
    done = wait_status(stack, task_id, TERMINAL)
    [callback] = wait_for(
        lambda: [c for c in sim.callbacks() if c["task_id"] == done["provider_task_id"] and c["status_code"]],
        what="the callback answered",
    )
    # The provider sends it again, late: accepted, changes nothing, and says so in the log.
    with httpx.Client(base_url=stack.url, timeout=10) as receiver:
        again = receiver.post(f"/callbacks/apikley/{task_id}/{callback_token(CALLBACK_SECRET, task_id)}", json=callback["body"])
    assert again.status_code == 200 and again.json() == {"accepted": True, "changed": False}
    line = f"callback changed nothing task_id={task_id} provider=apikley provider_task_id={done['provider_task_id']}"
    wait_for(partial(_logged, stack, "web", line), what="the unchanged callback's log line")
