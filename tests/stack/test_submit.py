"""Submitting to the providers: every Apikley body code, Novita's HTTP errors, retries until they
run out, callback confirmation, and a worker killed mid-submit.

This module's stack keeps the production default of confirming terminal Apikley callbacks with
Get Task Details before believing them.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.domain.tokens import callback_token
from tests.stack.conftest import (
    CALLBACK_SECRET,
    FAST_ENV,
    Simulator,
    Stack,
    wait_for,
    wait_for_status,
)

TERMINAL = {"succeeded", "failed"}
SUBMIT_ATTEMPTS = len(FAST_ENV["SUBMIT_RETRY_DELAYS_S"].split(",")) + 1  # the first try plus each retry


def unique_prompt(label: str) -> str:
    return f"{label} {uuid.uuid4().hex}"


def create(api: httpx.Client, provider: str, prompt: str, **fields: Any) -> dict[str, Any]:
    response = api.post("/v1/tasks", json={"prompt": prompt, "provider": provider, **fields})
    assert response.status_code == 202, response.text
    return response.json()


def types_of(api: httpx.Client, task_id: str) -> list[str]:
    return [e["type"] for e in api.get(f"/v1/tasks/{task_id}/events").json()["data"]]


def provider_tasks_for(sim: Simulator, prompt: str) -> list[dict[str, Any]]:
    def prompt_of(task: dict[str, Any]) -> Any:
        request = task["request"]
        return request.get("input", request).get("prompt")

    return [t for t in sim.tasks() if prompt_of(t) == prompt]


def forced_left(sim: Simulator, name: str) -> list[Any]:
    response = sim.http.get("/_sim/config")
    response.raise_for_status()
    return response.json()[name]


def attempts_of(task: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    return [(a["provider"], a["outcome"], a["code"]) for a in task["attempts"]]


# --- Apikley body codes -----------------------------------------------------------------------

# What each documented Apikley body code means for our task (providers.md, seed ApiResponse).
APIKLEY_TERMINAL = {
    401: "unauthorized",
    402: "insufficient_credits",
    404: "not_found",
    422: "validation_error",
    501: "generation_failed",
    505: "feature_disabled",
}
APIKLEY_RETRYABLE = {
    429: "rate_limited",
    455: "maintenance",
    500: "server_error",
}


@pytest.mark.parametrize(("code", "error_code"), APIKLEY_TERMINAL.items(), ids=[str(c) for c in APIKLEY_TERMINAL])
def test_apikley_terminal_code_at_submit_fails_the_task_without_retrying(
    api: httpx.Client, sim: Simulator, code: int, error_code: str
) -> None:
    # Sent as Apikley sends errors: HTTP 200, the outcome in the body's code.
    sim.configure(apikley_create_responses=[{"code": code, "msg": f"refused with {code}", "http_status": 200}])
    prompt = unique_prompt("refused fox")
    task = create(api, "apikley", prompt)

    done = wait_for_status(api, task["id"], TERMINAL)
    assert done["status"] == "failed", done
    assert done["error"] == {"code": error_code, "message": f"refused with {code}", "provider_code": str(code)}
    assert done["provider_task_id"] is None
    assert attempts_of(done) == [("apikley", "rejected", error_code)]
    assert types_of(api, task["id"]) == ["task.failed"]
    assert forced_left(sim, "apikley_create_responses") == []
    assert provider_tasks_for(sim, prompt) == []


RETRY_CASES = {
    **{str(code): (code, name) for code, name in APIKLEY_RETRYABLE.items()},
    # A code 200 without `data.taskId` is no success either: nothing says a task exists.
    "200 without data": (200, "server_error"),
}


@pytest.mark.parametrize(("code", "error_code"), RETRY_CASES.values(), ids=RETRY_CASES.keys())
def test_apikley_retryable_code_at_submit_is_retried_until_a_good_answer(
    api: httpx.Client, sim: Simulator, code: int, error_code: str
) -> None:
    sim.configure(apikley_create_responses=[{"code": code, "msg": f"busy ({code})"}])
    prompt = unique_prompt("patient fox")
    task = create(api, "apikley", prompt)

    done = wait_for_status(api, task["id"], TERMINAL)
    assert done["status"] == "succeeded", done
    assert attempts_of(done) == [("apikley", "retrying", error_code), ("apikley", "accepted", None)]
    assert types_of(api, task["id"]) == ["task.submitted", "task.succeeded"]
    assert len(provider_tasks_for(sim, prompt)) == 1
    assert done["provider_task_id"] == provider_tasks_for(sim, prompt)[0]["task_id"]


@pytest.mark.parametrize(("code", "error_code"), RETRY_CASES.values(), ids=RETRY_CASES.keys())
def test_apikley_retryable_code_fails_the_task_once_retries_run_out(
    api: httpx.Client, sim: Simulator, code: int, error_code: str
) -> None:
    answer = {"code": code, "msg": f"still busy ({code})"}
    sim.configure(apikley_create_responses=[answer] * SUBMIT_ATTEMPTS)
    prompt = unique_prompt("unlucky fox")
    task = create(api, "apikley", prompt)

    done = wait_for_status(api, task["id"], TERMINAL)
    assert done["status"] == "failed", done
    expected_provider_code = "500" if code == 200 else str(code)
    assert done["error"]["code"] == error_code
    assert done["error"]["provider_code"] == expected_provider_code
    assert done["provider_task_id"] is None
    retries = [("apikley", "retrying", error_code)] * (SUBMIT_ATTEMPTS - 1)
    assert attempts_of(done) == [*retries, ("apikley", "rejected", error_code)]
    assert types_of(api, task["id"]) == ["task.failed"]
    assert forced_left(sim, "apikley_create_responses") == []  # every attempt was made, no more
    assert provider_tasks_for(sim, prompt) == []


# --- Novita -----------------------------------------------------------------------------------


def test_novita_task_succeeds_through_polling_with_an_expiry(stack: Stack, api: httpx.Client, sim: Simulator) -> None:
    sim.configure(video_url_ttl=900)
    prompt = unique_prompt("novita fox")
    task = create(api, "novita", prompt, cfg_scale=0.5, negative_prompt="blur", duration="10", aspect_ratio="9:16")

    done = wait_for_status(api, task["id"], TERMINAL)
    assert done["status"] == "succeeded", done
    assert done["provider"] == "novita"
    assert done["result"]["video_url"].endswith(".mp4")
    types = types_of(api, task["id"])
    assert types[0] == "task.submitted" and types[-1] == "task.succeeded"
    assert types.count("task.succeeded") == 1 and "task.failed" not in types
    [sent] = provider_tasks_for(sim, prompt)
    expires = datetime.fromisoformat(done["result"]["expires_at"])
    finished = datetime.fromisoformat(done["updated_at"])
    assert 0 < (expires - finished).total_seconds() <= 900
    assert sent["task_id"] == done["provider_task_id"]
    assert sent["request"] == {
        "prompt": prompt,
        "duration": "10",
        "aspect_ratio": "9:16",
        "guidance_scale": 0.5,
        "negative_prompt": "blur",
        # A per-task result webhook: the way a submit whose answer was lost can be found again.
        "extra": {
            "webhook": {
                "url": f"{stack.url}/callbacks/novita/{task['id']}/{callback_token(CALLBACK_SECRET, task['id'], 'novita')}"
            }
        },
    }


def test_novita_expiry_published_is_not_later_than_the_video_urls_real_expiry(api: httpx.Client, sim: Simulator) -> None:
    # The URL lives video_url_ttl seconds from when the provider finished the video; we only learn
    # of it a poll later, so the expiry we publish must not promise time the URL does not have.
    sim.configure(video_url_ttl=900, generate_s=0.5)
    prompt = unique_prompt("expiring fox")
    task = create(api, "novita", prompt)
    done = wait_for_status(api, task["id"], TERMINAL)
    assert done["status"] == "succeeded", done

    [sent] = provider_tasks_for(sim, prompt)
    plan = sent["plan"]
    finished_at = sent["created_at"] / 1000 + plan["queue_s"] + plan["generate_s"]
    real_expiry = finished_at + plan["video_url_ttl"]
    published = datetime.fromisoformat(done["result"]["expires_at"]).timestamp()
    assert published <= real_expiry, f"published expiry is {published - real_expiry:.3f} s after the URL expires"
    assert published > finished_at


def test_novita_generation_failure_fails_the_task(api: httpx.Client, sim: Simulator) -> None:
    sim.configure(outcome="fail", fail_msg="prompt rejected by the safety filter")
    task = create(api, "novita", unique_prompt("failing fox"))
    done = wait_for_status(api, task["id"], TERMINAL)
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "generation_failed"
    assert done["error"]["message"] == "prompt rejected by the safety filter"
    assert types_of(api, task["id"])[-1] == "task.failed"
    assert types_of(api, task["id"]).count("task.failed") == 1


NOVITA_TERMINAL = {400: "validation_error", 401: "unauthorized", 403: "forbidden", 404: "not_found", 422: "validation_error"}


@pytest.mark.parametrize(("http_status", "error_code"), NOVITA_TERMINAL.items(), ids=[str(s) for s in NOVITA_TERMINAL])
def test_novita_client_error_at_submit_fails_the_task(
    api: httpx.Client, sim: Simulator, http_status: int, error_code: str
) -> None:
    sim.configure(novita_submit_responses=[{"http_status": http_status, "reason": "BAD", "message": f"no ({http_status})"}])
    prompt = unique_prompt("rejected novita fox")
    task = create(api, "novita", prompt)
    done = wait_for_status(api, task["id"], TERMINAL)
    assert done["status"] == "failed", done
    assert done["error"] == {"code": error_code, "message": f"no ({http_status})", "provider_code": str(http_status)}
    assert attempts_of(done) == [("novita", "rejected", error_code)]
    assert types_of(api, task["id"]) == ["task.failed"]
    assert forced_left(sim, "novita_submit_responses") == []
    assert provider_tasks_for(sim, prompt) == []


@pytest.mark.parametrize(
    ("http_status", "error_code"),
    [(429, "rate_limited"), (500, "server_error"), (503, "server_error")],
    ids=["429", "500", "503"],
)
def test_novita_rate_limit_or_outage_at_submit_is_retried(
    api: httpx.Client, sim: Simulator, http_status: int, error_code: str
) -> None:
    sim.configure(novita_submit_responses=[{"http_status": http_status, "reason": "BUSY", "message": "slow down"}])
    prompt = unique_prompt("patient novita fox")
    task = create(api, "novita", prompt)
    done = wait_for_status(api, task["id"], TERMINAL)
    assert done["status"] == "succeeded", done
    assert attempts_of(done) == [("novita", "retrying", error_code), ("novita", "accepted", None)]
    assert len(provider_tasks_for(sim, prompt)) == 1


# --- callbacks confirmed with Get Task Details ------------------------------------------------


def _callback(provider_task_id: str, state: str) -> dict[str, Any]:
    record = {
        "taskId": provider_task_id,
        "model": "kling/v2-1-master-text-to-video",
        "state": state,
        "param": "{}",
        "resultJson": json.dumps({"resultUrls": ["https://forged.example.com/v.mp4"]}) if state == "success" else "",
        "failCode": "FORGED" if state == "fail" else "",
        "failMsg": "forged failure" if state == "fail" else "",
    }
    return {"code": 501 if state == "fail" else 200, "msg": state, "data": record}


CONFIRMATIONS = {
    # provider's real state (simulator config), what the callback claims, where the task must end
    "claims success, provider still generating": ({"generate_s": 3600}, "success", "running"),
    "claims fail, provider succeeded": ({"generate_s": 0}, "fail", "succeeded"),
    "claims success, provider failed": ({"generate_s": 0, "outcome": "fail"}, "success", "failed"),
    "claims success, provider succeeded": ({"generate_s": 0}, "success", "succeeded"),
}


@pytest.mark.parametrize(("provider_state", "claim", "final"), CONFIRMATIONS.values(), ids=CONFIRMATIONS.keys())
def test_terminal_callback_is_answered_202_and_the_task_follows_get_task_details(
    stack: Stack, api: httpx.Client, sim: Simulator, provider_state: dict[str, Any], claim: str, final: str
) -> None:
    sim.configure(queue_s=0, callback_mode="drop", **provider_state)
    task = create(api, "apikley", unique_prompt("confirmed fox"))
    submitted = wait_for_status(api, task["id"], "submitted")

    with httpx.Client(base_url=stack.url, timeout=10) as receiver:
        token = callback_token(CALLBACK_SECRET, task["id"])
        response = receiver.post(f"/callbacks/apikley/{task['id']}/{token}", json=_callback(submitted["provider_task_id"], claim))
    assert response.status_code == 202, response.text

    done = wait_for_status(api, task["id"], final)
    types = types_of(api, task["id"])
    assert types == ["task.submitted", f"task.{final}"]
    if final == "succeeded":
        assert done["result"]["video_url"] != "https://forged.example.com/v.mp4"
        assert done["result"]["video_url"] == provider_tasks_for(sim, task["input"]["prompt"])[0]["video_url"]
    elif final == "failed":
        assert done["error"]["provider_code"] != "FORGED"
    else:
        assert done["result"] is None and done["error"] is None


@pytest.mark.parametrize("mode", ["normal", "duplicate", "out_of_order"])
def test_providers_own_callbacks_are_confirmed_into_exactly_one_terminal_event(
    api: httpx.Client, sim: Simulator, mode: str
) -> None:
    sim.configure(callback_mode=mode)
    task = create(api, "apikley", unique_prompt("called-back fox"))
    done = wait_for_status(api, task["id"], TERMINAL)
    assert done["status"] == "succeeded", done

    sent = 1 if mode == "normal" else 2

    def answered() -> list[dict[str, Any]] | None:
        mine = [c for c in sim.callbacks() if c["task_id"] == done["provider_task_id"]]
        return mine if len(mine) == sent and all(c["status_code"] or c["error"] for c in mine) else None

    callbacks = wait_for(answered, what=f"{sent} callbacks answered")
    # The first (terminal) callback is only taken for confirmation; later ones may find it done.
    assert callbacks[0]["status_code"] == 202
    assert all(c["status_code"] in (200, 202) for c in callbacks), callbacks
    types = types_of(api, task["id"])
    assert types[0] == "task.submitted"
    assert types.count("task.succeeded") == 1 and types[-1] == "task.succeeded"
    assert "task.failed" not in types


# --- crash safety -----------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Live (non-zombie) processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def test_killed_worker_leaves_no_process_behind_and_delayed_jobs_still_run(
    stack: Stack, api: httpx.Client, sim: Simulator
) -> None:
    [worker] = stack.workers
    children = children_of(worker.pid)
    stack.kill_workers()
    wait_for(lambda: not any(alive(pid) for pid in children), timeout_s=5, what="the killed worker's children to exit")
    stack.start_worker()
    # A retryable answer makes the submit wait on the scheduler: the new worker must run it.
    sim.configure(apikley_create_responses=[{"code": 429, "msg": "rate limited"}])
    task = create(api, "apikley", unique_prompt("after the crash"))
    assert wait_for_status(api, task["id"], TERMINAL, timeout_s=30)["status"] == "succeeded"


# A worker killed with a submit in flight, or just before one: tests/faults/test_paid_submissions.py.
