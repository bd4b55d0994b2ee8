"""The Apikley callback receiver: what it refuses (and that a refusal touches nothing) and how it
treats duplicate, stale and failing callbacks.

This module's stack applies callbacks directly (no Get Task Details confirmation) and waits ten
minutes before polling on its own, so every state change seen here came from a callback.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from service.domain.tokens import callback_token
from tests.stack.conftest import (
    CALLBACK_SECRET,
    Simulator,
    Stack,
    wait_for,
    wait_for_status,
)

STACK_ENV = {"APIKLEY_CONFIRM_CALLBACKS": "false", "APIKLEY_CALLBACK_GRACE_S": "600"}

MODEL = "kling/v2-1-master-text-to-video"
VIDEO_URL = "https://cdn.example.com/videos/fox.mp4"
MIB = 1024 * 1024
TERMINAL = {"succeeded", "failed"}


def record(provider_task_id: str, state: str, *, fail_code: str = "", fail_msg: str = "") -> dict[str, Any]:
    """A Get Task Details record, the `data` of a callback (shape from providers.md)."""
    terminal = state in ("success", "fail")
    return {
        "taskId": provider_task_id,
        "model": MODEL,
        "state": state,
        "param": json.dumps({"model": MODEL, "input": {"prompt": "a fox"}}),
        "resultJson": json.dumps({"resultUrls": [VIDEO_URL]}) if state == "success" else "",
        "failCode": fail_code,
        "failMsg": fail_msg,
        "costTime": 15000 if terminal else None,
        "completeTime": 1698765432000 if terminal else None,
        "createTime": 1698765400000,
        "updateTime": 1698765432000,
    }


def callback_body(provider_task_id: str, state: str, **fail: str) -> dict[str, Any]:
    code = 501 if state == "fail" else 200
    return {"code": code, "msg": fail.get("fail_msg") or state, "data": record(provider_task_id, state, **fail)}


def callback_path(task_id: str, token: str | None = None) -> str:
    return f"/callbacks/apikley/{task_id}/{token or callback_token(CALLBACK_SECRET, task_id)}"


def events_of(api: httpx.Client, task_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/v1/tasks/{task_id}/events")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def types_of(api: httpx.Client, task_id: str) -> list[str]:
    return [e["type"] for e in events_of(api, task_id)]


def state_of(api: httpx.Client, task_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return api.get(f"/v1/tasks/{task_id}").json(), events_of(api, task_id)


@pytest.fixture
def receiver(stack: Stack) -> Iterator[httpx.Client]:
    """A client with no API key: the receiver's only credential is the URL token."""
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        yield client


def submitted_task(api: httpx.Client, provider: str = "apikley") -> dict[str, Any]:
    created = api.post("/v1/tasks", json={"prompt": f"a fox {uuid.uuid4().hex}", "provider": provider})
    assert created.status_code == 202, created.text
    return wait_for_status(api, created.json()["id"], "submitted")


@pytest.fixture
def silent_sim(sim: Simulator) -> Simulator:
    """Provider tasks that sit in the queue and never call back: the test is the provider."""
    sim.configure(callback_mode="drop", queue_s=3600)
    return sim


@pytest.fixture
def task(api: httpx.Client, silent_sim: Simulator) -> dict[str, Any]:
    return submitted_task(api)


# --- refusals ---------------------------------------------------------------------------------


def _chunked(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), 64 * 1024):
        yield data[start : start + 64 * 1024]


def _oversized(task: dict[str, Any]) -> bytes:
    body = callback_body(task["provider_task_id"], "success")
    body["data"]["padding"] = "x" * MIB
    return json.dumps(body).encode()


JSON = {"Content-Type": "application/json"}
Send = Callable[[httpx.Client, dict[str, Any]], httpx.Response]


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    send: Send
    field: str | None = None


def _success(task: dict[str, Any]) -> dict[str, Any]:
    return callback_body(task["provider_task_id"], "success")


REFUSALS: dict[str, Refusal] = {
    "forged token": Refusal(401, "invalid_token", lambda c, t: c.post(callback_path(t["id"], "forged-token"), json=_success(t))),
    "token under another secret": Refusal(
        401,
        "invalid_token",
        lambda c, t: c.post(callback_path(t["id"], callback_token("not-our-secret", t["id"])), json=_success(t)),
    ),
    "valid token of another task": Refusal(
        401,
        "invalid_token",
        lambda c, t: c.post(callback_path(t["id"], callback_token(CALLBACK_SECRET, t["id"] + "x")), json=_success(t)),
    ),
    "body over 1 MiB": Refusal(
        413, "payload_too_large", lambda c, t: c.post(callback_path(t["id"]), content=_oversized(t), headers=JSON)
    ),
    "body over 1 MiB sent chunked": Refusal(
        413, "payload_too_large", lambda c, t: c.post(callback_path(t["id"]), content=_chunked(_oversized(t)), headers=JSON)
    ),
    "body not JSON": Refusal(
        400, "invalid_json", lambda c, t: c.post(callback_path(t["id"]), content=b"state=success", headers=JSON)
    ),
    "body without data": Refusal(
        422, "invalid_callback", lambda c, t: c.post(callback_path(t["id"]), json={"code": 200, "msg": "success"}), "data.taskId"
    ),
    "data without taskId": Refusal(
        422,
        "invalid_callback",
        lambda c, t: c.post(callback_path(t["id"]), json={"code": 200, "data": {"state": "success"}}),
        "data.taskId",
    ),
    "taskId not a string": Refusal(
        422,
        "invalid_callback",
        lambda c, t: c.post(callback_path(t["id"]), json={"code": 200, "data": {**_success(t)["data"], "taskId": 12345}}),
        "data.taskId",
    ),
    "body is an array": Refusal(
        422, "invalid_callback", lambda c, t: c.post(callback_path(t["id"]), json=[_success(t)]), "data.taskId"
    ),
    "unknown state": Refusal(
        422,
        "invalid_callback",
        lambda c, t: c.post(callback_path(t["id"]), json=callback_body(t["provider_task_id"], "finished")),
        "data.state",
    ),
    "unknown task with its own valid token": Refusal(
        404, "not_found", lambda c, t: c.post(callback_path("task_000000000nosuchtask0000000"), json=_success(t))
    ),
    # Callbacks are taken ahead of the app's routing (CallbackLane); another method still gets its 405.
    "asked with GET": Refusal(405, "method_not_allowed", lambda c, t: c.get(callback_path(t["id"]))),
    "taskId of another provider task": Refusal(
        409,
        "task_mismatch",
        lambda c, t: c.post(callback_path(t["id"]), json=callback_body("task_kling_999999999999999", "success")),
        "data.taskId",
    ),
}


@pytest.mark.parametrize("refusal", REFUSALS.values(), ids=REFUSALS.keys())
def test_refused_callback_changes_nothing(
    stack: Stack, api: httpx.Client, receiver: httpx.Client, task: dict[str, Any], refusal: Refusal
) -> None:
    before = state_of(api, task["id"])
    keys_before = set(stack.redis().keys("kr:task:*"))

    response = refusal.send(receiver, task)

    assert response.status_code == refusal.status, response.text
    error = response.json()["error"]
    assert error["code"] == refusal.code
    if refusal.field is not None:
        assert refusal.field in error["fields"], error
    assert state_of(api, task["id"]) == before
    assert set(stack.redis().keys("kr:task:*")) == keys_before


def test_callback_for_a_novita_task_is_404_and_changes_nothing(
    api: httpx.Client, receiver: httpx.Client, silent_sim: Simulator
) -> None:
    novita = submitted_task(api, provider="novita")
    before = state_of(api, novita["id"])
    response = receiver.post(callback_path(novita["id"]), json=callback_body(novita["provider_task_id"], "success"))
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "not_found"
    assert state_of(api, novita["id"]) == before


# --- duplicates, stale and failing callbacks --------------------------------------------------

SEQUENCES = {
    "same success three times": (["success", "success", "success"], "succeeded", ["task.submitted", "task.succeeded"]),
    "success then stale generating": (["success", "generating"], "succeeded", ["task.submitted", "task.succeeded"]),
    "success then stale waiting": (["success", "waiting"], "succeeded", ["task.submitted", "task.succeeded"]),
    "success then fail": (["success", "fail"], "succeeded", ["task.submitted", "task.succeeded"]),
    "fail then success": (["fail", "success"], "failed", ["task.submitted", "task.failed"]),
    "generating then success": (["generating", "success"], "succeeded", ["task.submitted", "task.running", "task.succeeded"]),
    "generating twice, then queuing": (
        ["generating", "generating", "queuing"],
        "running",
        ["task.submitted", "task.running"],
    ),
}


@pytest.mark.parametrize(("states", "final", "types"), SEQUENCES.values(), ids=SEQUENCES.keys())
def test_callbacks_move_the_task_forward_once_and_never_back(
    api: httpx.Client, receiver: httpx.Client, task: dict[str, Any], states: list[str], final: str, types: list[str]
) -> None:
    for state in states:
        response = receiver.post(callback_path(task["id"]), json=callback_body(task["provider_task_id"], state, fail_msg="nope"))
        assert response.status_code == 200, response.text

    done = api.get(f"/v1/tasks/{task['id']}").json()
    assert done["status"] == final
    events = events_of(api, task["id"])
    assert [e["type"] for e in events] == types
    assert [e["sequence"] for e in events] == list(range(1, len(types) + 1))
    if final == "succeeded":
        assert done["result"]["video_url"] == VIDEO_URL
        assert done["error"] is None


def test_duplicate_success_callbacks_are_each_answered_200_but_change_the_task_once(
    api: httpx.Client, receiver: httpx.Client, task: dict[str, Any]
) -> None:
    body = callback_body(task["provider_task_id"], "success")
    answers = [receiver.post(callback_path(task["id"]), json=body) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.json()["changed"] for a in answers] == [True, False, False]
    after_first = state_of(api, task["id"])
    assert receiver.post(callback_path(task["id"]), json=body).status_code == 200
    assert state_of(api, task["id"]) == after_first
    assert [e["type"] for e in after_first[1]].count("task.succeeded") == 1


def test_fail_callback_fails_the_task_with_the_providers_code_and_message(
    api: httpx.Client, receiver: httpx.Client, task: dict[str, Any]
) -> None:
    body = callback_body(task["provider_task_id"], "fail", fail_code="SENSITIVE_WORD", fail_msg="prompt violates policy")
    assert body["code"] == 501
    response = receiver.post(callback_path(task["id"]), json=body)
    assert response.status_code == 200, response.text

    failed = api.get(f"/v1/tasks/{task['id']}").json()
    assert failed["status"] == "failed"
    assert failed["result"] is None
    assert failed["error"] == {
        "code": "generation_failed",
        "message": "prompt violates policy",
        "provider_code": "SENSITIVE_WORD",
    }
    events = events_of(api, task["id"])
    assert [e["type"] for e in events] == ["task.submitted", "task.failed"]
    assert events[-1]["data"]["error"] == failed["error"]


@pytest.mark.parametrize("outcome", ["success", "fail"])
@pytest.mark.parametrize("mode", ["duplicate", "out_of_order"])
def test_simulated_provider_callbacks_end_in_exactly_one_terminal_event(
    api: httpx.Client, sim: Simulator, mode: str, outcome: str
) -> None:
    sent = 2  # duplicate: the terminal callback twice; out_of_order: terminal, then a stale one
    sim.configure(callback_mode=mode, outcome=outcome, fail_code="E42", fail_msg="the model refused")
    created = api.post("/v1/tasks", json={"prompt": f"a fox {uuid.uuid4().hex}", "provider": "apikley"}).json()
    done = wait_for_status(api, created["id"], TERMINAL)

    def answered() -> list[dict[str, Any]] | None:
        mine = [c for c in sim.callbacks() if c["task_id"] == done["provider_task_id"]]
        return mine if len(mine) == sent and all(c["status_code"] or c["error"] for c in mine) else None

    callbacks = wait_for(answered, what=f"{sent} callbacks answered")
    assert [c["status_code"] for c in callbacks] == [200] * sent
    final = "succeeded" if outcome == "success" else "failed"
    task_now, events = state_of(api, created["id"])
    assert task_now["status"] == final
    assert [e["type"] for e in events] == ["task.submitted", f"task.{final}"]
    if final == "failed":
        assert task_now["error"]["code"] == "generation_failed"
        assert task_now["error"]["provider_code"] == "E42"
        assert task_now["error"]["message"] == "the model refused"
    else:
        assert task_now["result"]["video_url"].endswith(".mp4")
