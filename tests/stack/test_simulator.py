"""The provider simulator over real HTTP: a uvicorn-served simulator and a callback receiver."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.simulator.app import create_simulator_app

API_KEY = "sandbox"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
APIKLEY_MODEL = "kling/v2-1-master-text-to-video"
CREATE = "/api/v1/jobs/createTask"
RECORD = "/api/v1/jobs/recordInfo"
SUBMIT = "/v3/async/kling-v2.1-t2v-master"
RESULT = "/v3/async/task-result"
FAST = {"queue_s": 0.05, "generate_s": 0.15}
SETTLE_S = 0.25
# Longer than Novita's 5 s webhook timeout, short enough for the receiver to wind down.
STALL_S = 7.0

T = TypeVar("T")


@contextmanager
def serve(app: Starlette) -> Iterator[str]:
    """Run `app` under uvicorn in a background thread; yield its base URL until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: _answers(base_url), timeout=10)
    try:
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _answers(base_url: str) -> bool:
    try:
        httpx.get(base_url + "/", timeout=1)
    except httpx.TransportError:
        return False
    return True


def wait_until(probe: Callable[[], T | None], timeout: float = 3.0) -> T:
    """Poll `probe` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.02)


class CallbackReceiver:
    """Records every POST; `/broken` answers 500 to play a failing callback target, `/flaky`
    answers 500 to its first two POSTs and `/stall` answers its first only after STALL_S."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.hits: dict[str, int] = {}
        self.app = Starlette(routes=[Route("/{name}", self.receive, methods=["POST"])])

    def clear(self) -> None:
        self.received.clear()
        self.headers.clear()
        self.hits.clear()

    async def receive(self, request: Request) -> Response:
        name = request.path_params["name"]
        self.received.append(json.loads(await request.body()))
        self.headers.append(dict(request.headers))
        hit = self.hits[name] = self.hits.get(name, 0) + 1
        if name == "stall" and hit == 1:
            await asyncio.sleep(STALL_S)
        failing = name == "broken" or (name == "flaky" and hit <= 2)
        status = 500 if failing else 200
        return JSONResponse({"ok": status == 200}, status_code=status)

    def states(self) -> list[str]:
        return [body["data"]["state"] for body in self.received]

    def novita_statuses(self) -> list[str]:
        return [body["payload"]["task"]["status"] for body in self.received]


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[CallbackReceiver, str]]:
    recorder = CallbackReceiver()
    with serve(recorder.app) as base_url:
        yield recorder, base_url


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with serve(create_simulator_app(API_KEY)) as base_url:
        yield base_url


@pytest.fixture
def sim(sim_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim_url, headers=AUTH, timeout=5) as client:
        client.post("/_sim/reset").raise_for_status()
        configure(client, **FAST)
        yield client


@pytest.fixture
def callbacks(receiver: tuple[CallbackReceiver, str]) -> tuple[CallbackReceiver, str]:
    recorder, base_url = receiver
    recorder.clear()
    return recorder, f"{base_url}/hook"


def sibling(hook: str, name: str) -> str:
    """Another path of the callback receiver, e.g. `/broken`."""
    return hook.rsplit("/", 1)[0] + "/" + name


def configure(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    response = client.patch("/_sim/config", json=fields)
    response.raise_for_status()
    return dict(response.json())


def apikley_body(
    prompt: str = "a cat surfing", callback_url: str | None = None, **inputs: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": APIKLEY_MODEL, "input": {"prompt": prompt, **inputs}}
    if callback_url:
        body["callBackUrl"] = callback_url
    return body


def create_apikley(client: httpx.Client, **kwargs: Any) -> str:
    response = client.post(CREATE, json=apikley_body(**kwargs))
    assert response.status_code == 200
    assert response.json()["code"] == 200, response.json()
    return str(response.json()["data"]["taskId"])


def record(client: httpx.Client, task_id: str, fail_code: int = 501) -> dict[str, Any]:
    """Get Task Details' record; a failed generation's answer carries `fail_code`, others 200."""
    body = client.get(RECORD, params={"taskId": task_id}).json()
    failed = isinstance(body["data"], dict) and body["data"]["state"] == "fail"
    assert body["code"] == (fail_code if failed else 200), body
    return dict(body["data"])


def wait_for_state(client: httpx.Client, task_id: str, *states: str) -> dict[str, Any]:
    """Poll Get Task Details until the task is in one of `states`; return that record."""

    def reached() -> dict[str, Any] | None:
        current = record(client, task_id)
        return current if current["state"] in states else None

    return wait_until(reached)


def submit_novita(client: httpx.Client, prompt: str = "a cat surfing") -> str:
    response = client.post(SUBMIT, json={"prompt": prompt})
    assert response.status_code == 200, response.text
    return str(response.json()["task_id"])


def submit_novita_webhook(
    client: httpx.Client, url: str, prompt: str = "a cat surfing", **extra: Any
) -> str:
    """Submit a Novita task asking for a webhook at `url`; `extra` adds keys beside `webhook`."""
    body = {"prompt": prompt, "extra": {"webhook": {"url": url}, **extra}}
    response = client.post(SUBMIT, json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["task_id"])


def result(client: httpx.Client, task_id: str) -> dict[str, Any]:
    response = client.get(RESULT, params={"task_id": task_id})
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_for_novita(client: httpx.Client, task_id: str) -> dict[str, Any]:
    """Poll the Task Result API until the task is terminal; return that answer."""

    def terminal() -> dict[str, Any] | None:
        current = result(client, task_id)
        done = current["task"]["status"] in ("TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED")
        return current if done else None

    return wait_until(terminal)


def settled_callbacks(
    client: httpx.Client, count: int, timeout: float = 3.0
) -> list[dict[str, Any]]:
    """Wait until `count` logged callback attempts have a response status or an error."""

    def settled() -> list[dict[str, Any]] | None:
        log = client.get("/_sim/callbacks").json()["callbacks"]
        done = [entry for entry in log if entry["status_code"] or entry["error"]]
        return done if len(done) == count else None

    return wait_until(settled, timeout)


def test_apikley_task_progresses_to_success_and_calls_back_once(
    sim: httpx.Client, callbacks: tuple[CallbackReceiver, str]
) -> None:
    recorder, hook = callbacks
    body = apikley_body(callback_url=hook, duration="10", aspect_ratio="9:16", cfg_scale=0.7)
    task_id = sim.post(CREATE, json=body).json()["data"]["taskId"]
    assert task_id.startswith("task_kling_")

    seen = [record(sim, task_id)["state"]]
    while seen[-1] != "success":
        time.sleep(0.02)
        seen.append(record(sim, task_id)["state"])
    assert seen[0] in ("waiting", "queuing") and "generating" in seen

    done = record(sim, task_id)
    assert json.loads(done["param"]) == body
    assert done["model"] == APIKLEY_MODEL and done["failCode"] == "" and done["failMsg"] == ""
    assert done["completeTime"] >= done["createTime"] and done["costTime"] > 0
    (video_url,) = json.loads(done["resultJson"])["resultUrls"]
    video = httpx.get(video_url)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"

    wait_until(lambda: recorder.received)
    time.sleep(SETTLE_S)
    (callback,) = recorder.received
    assert callback["code"] == 200 and callback["data"] == done
    (logged,) = sim.get("/_sim/callbacks").json()["callbacks"]
    assert logged["url"] == hook and logged["status_code"] == 200 and logged["body"] == callback


@pytest.mark.parametrize("code", [401, 402, 404, 422, 429, 455, 500, 501, 505])
def test_forced_apikley_create_error_comes_on_http_200_once(sim: httpx.Client, code: int) -> None:
    configure(sim, apikley_create_responses=[{"code": code, "msg": f"forced {code}"}])
    response = sim.post(CREATE, json=apikley_body())
    assert response.status_code == 200
    assert response.json() == {"code": code, "msg": f"forced {code}", "data": None}
    create_apikley(sim)


def test_forced_apikley_answer_can_carry_an_http_status(sim: httpx.Client) -> None:
    configure(sim, apikley_create_responses=[{"code": 500, "msg": "boom", "http_status": 502}])
    response = sim.post(CREATE, json=apikley_body())
    assert response.status_code == 502 and response.json()["code"] == 500


def test_forced_apikley_record_error_then_real_answer(sim: httpx.Client) -> None:
    task_id = create_apikley(sim)
    configure(sim, apikley_record_responses=[{"code": 500, "msg": "server error"}])
    assert sim.get(RECORD, params={"taskId": task_id}).json()["code"] == 500
    assert record(sim, task_id)["taskId"] == task_id


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (apikley_body(prompt="x" * 5001), "input.prompt"),
        ({"model": APIKLEY_MODEL, "input": {}}, "input.prompt"),
        (apikley_body(negative_prompt="x" * 501), "input.negative_prompt"),
        (apikley_body(duration="7"), "input.duration"),
        (apikley_body(duration=5), "input.duration"),
        (apikley_body(aspect_ratio="4:3"), "input.aspect_ratio"),
        (apikley_body(cfg_scale=1.5), "input.cfg_scale"),
        (apikley_body(cfg_scale=0.25), "input.cfg_scale"),
        ({**apikley_body(), "model": "kling/v1"}, "model"),
        ({**apikley_body(), "callBackUrl": "not a url"}, "callBackUrl"),
    ],
)
def test_apikley_validation_error_is_422_naming_the_field(
    sim: httpx.Client, body: dict[str, Any], field: str
) -> None:
    response = sim.post(CREATE, json=body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["code"] == 422 and answer["data"] is None
    assert answer["msg"].startswith(f"{field}:")


@pytest.mark.parametrize(
    "headers", [{"Authorization": "Bearer wrong"}, {"Authorization": "Basic sandbox"}, {}]
)
def test_apikley_bad_key_is_code_401_on_http_200(sim_url: str, headers: dict[str, str]) -> None:
    create = httpx.post(sim_url + CREATE, json=apikley_body(), headers=headers)
    query = httpx.get(sim_url + RECORD, params={"taskId": "task_kling_1"}, headers=headers)
    for response in (create, query):
        assert response.status_code == 200 and response.json()["code"] == 401


def test_apikley_unknown_task_is_code_404_on_http_200(sim: httpx.Client) -> None:
    response = sim.get(RECORD, params={"taskId": "task_kling_0"})
    assert response.status_code == 200
    assert response.json()["code"] == 404 and response.json()["data"] is None


def test_apikley_failure_reports_fail_code_and_calls_back_501(
    sim: httpx.Client, callbacks: tuple[CallbackReceiver, str]
) -> None:
    recorder, hook = callbacks
    configure(sim, outcome="fail", fail_code="content_policy", fail_msg="blocked by policy")
    task_id = create_apikley(sim, callback_url=hook)
    failed = wait_for_state(sim, task_id, "fail", "success")
    assert failed["state"] == "fail" and failed["resultJson"] == ""
    assert (failed["failCode"], failed["failMsg"]) == ("content_policy", "blocked by policy")
    (callback,) = wait_until(lambda: recorder.received)
    assert callback["code"] == 501 and callback["data"]["failCode"] == "content_policy"


CALLBACK_MODES = [
    ("normal", ["success"]),
    ("drop", []),
    ("duplicate", ["success", "success"]),
    ("out_of_order", ["success", "generating"]),
]


def _callback_states(sim: httpx.Client, recorder: CallbackReceiver, task_id: str) -> list[str]:
    wait_for_state(sim, task_id, "success")
    time.sleep(SETTLE_S)
    return recorder.states()


@pytest.mark.parametrize(("mode", "states"), CALLBACK_MODES)
def test_callback_mode_from_config(
    sim: httpx.Client, callbacks: tuple[CallbackReceiver, str], mode: str, states: list[str]
) -> None:
    recorder, hook = callbacks
    configure(sim, callback_mode=mode)
    task_id = create_apikley(sim, callback_url=hook)
    assert _callback_states(sim, recorder, task_id) == states


@pytest.mark.parametrize(
    ("directive", "states"),
    [
        ("[sim:drop-callback]", []),
        ("[sim:duplicate-callback]", ["success", "success"]),
        ("[sim:out-of-order]", ["success", "generating"]),
    ],
)
def test_callback_directive_in_prompt_overrides_config(
    sim: httpx.Client, callbacks: tuple[CallbackReceiver, str], directive: str, states: list[str]
) -> None:
    recorder, hook = callbacks
    configure(sim, callback_mode="normal")
    task_id = create_apikley(sim, prompt=f"a cat {directive}", callback_url=hook)
    assert _callback_states(sim, recorder, task_id) == states


def test_progress_callback_precedes_terminal_one(
    sim: httpx.Client, callbacks: tuple[CallbackReceiver, str]
) -> None:
    recorder, hook = callbacks
    configure(sim, progress_callbacks=True)
    task_id = create_apikley(sim, callback_url=hook)
    assert _callback_states(sim, recorder, task_id) == ["generating", "success"]
    assert recorder.received[0]["code"] == 200 and recorder.received[0]["data"]["resultJson"] == ""


def test_callback_delay_holds_back_the_callback(
    sim: httpx.Client, callbacks: tuple[CallbackReceiver, str]
) -> None:
    recorder, hook = callbacks
    configure(sim, callback_delay_s=0.4)
    task_id = create_apikley(sim, callback_url=hook)
    wait_for_state(sim, task_id, "success")
    assert recorder.received == []
    wait_until(lambda: recorder.received)


def test_failing_callback_targets_are_logged_and_harmless(
    sim: httpx.Client, callbacks: tuple[CallbackReceiver, str]
) -> None:
    _, hook = callbacks
    broken = hook.rsplit("/", 1)[0] + "/broken"
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    unreachable = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"
    closed.close()
    for url in (broken, unreachable):
        create_apikley(sim, callback_url=url)
    outcome = {entry["url"]: entry for entry in settled_callbacks(sim, count=2)}
    assert outcome[broken]["status_code"] == 500
    assert outcome[unreachable]["status_code"] is None and outcome[unreachable]["error"]
    create_apikley(sim)


def test_novita_task_progresses_to_success_with_ttld_video(sim: httpx.Client) -> None:
    configure(sim, generate_s=0.4)
    task_id = submit_novita(sim)
    first = result(sim, task_id)
    assert first["task"]["status"] == "TASK_STATUS_QUEUED"
    assert first["task"]["progress_percent"] == 0 and first["task"]["eta"] >= 0
    assert first["task"]["task_type"] == "KLING_V2.1_T2V_MASTER"

    progress: list[int] = []
    while (answer := result(sim, task_id))["task"]["status"] != "TASK_STATUS_SUCCEED":
        if answer["task"]["status"] == "TASK_STATUS_PROCESSING":
            progress.append(answer["task"]["progress_percent"])
        time.sleep(0.02)
    assert progress and progress == sorted(progress) and progress[0] >= 0 and progress[-1] < 100
    assert answer["task"]["progress_percent"] == 100 and answer["task"]["eta"] == 0
    assert answer["images"] == [] and answer["audios"] == [] and answer["extra"] == {}
    (video,) = answer["videos"]
    assert video["video_url_ttl"] == "3600" and video["video_type"] == "mp4"
    assert httpx.get(video["video_url"]).headers["content-type"] == "video/mp4"


def test_novita_video_url_expires_after_its_ttl(sim: httpx.Client) -> None:
    configure(sim, video_url_ttl=1, generate_s=0.05)
    task_id = submit_novita(sim)
    done = wait_for_novita(sim, task_id)
    (video,) = done["videos"]
    assert video["video_url_ttl"] == "1"
    assert httpx.get(video["video_url"]).status_code == 200
    wait_until(lambda: httpx.get(video["video_url"]).status_code == 403, timeout=2)


def test_novita_reports_configured_eta(sim: httpx.Client) -> None:
    configure(sim, eta_s=42, queue_s=5)
    assert result(sim, submit_novita(sim))["task"]["eta"] == 42


def test_novita_failure_carries_reason(sim: httpx.Client) -> None:
    configure(sim, outcome="fail", fail_msg="content moderation")
    task_id = submit_novita(sim)
    failed = wait_for_novita(sim, task_id)
    assert failed["task"]["status"] == "TASK_STATUS_FAILED"
    assert failed["task"]["reason"] == "content moderation" and failed["videos"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x" * 2501}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "a", "negative_prompt": "x" * 2501}, "negative_prompt"),
        ({"prompt": "a", "duration": "7"}, "duration"),
        ({"prompt": "a", "aspect_ratio": "21:9"}, "aspect_ratio"),
        ({"prompt": "a", "guidance_scale": 2}, "guidance_scale"),
    ],
)
def test_novita_validation_error_is_http_400_naming_the_field(
    sim: httpx.Client, body: dict[str, Any], field: str
) -> None:
    response = sim.post(SUBMIT, json=body)
    assert response.status_code == 400
    error = response.json()
    assert error["code"] == 400 and error["reason"] == "INVALID_REQUEST_BODY"
    assert error["message"].startswith(f"{field}:") and error["metadata"] == {"field": field}


def test_novita_bad_key_is_http_401(sim_url: str) -> None:
    headers = {"Authorization": "Bearer no"}
    response = httpx.post(sim_url + SUBMIT, json={"prompt": "a"}, headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == 401 and response.json()["reason"] == "INVALID_API_KEY"


def test_novita_unknown_task_is_http_404(sim: httpx.Client) -> None:
    response = sim.get(RESULT, params={"task_id": "nope"})
    assert response.status_code == 404 and response.json()["reason"] == "TASK_NOT_FOUND"


@pytest.mark.parametrize(
    ("status", "reason"),
    [(429, "RATE_LIMIT_EXCEEDED"), (500, "INTERNAL_ERROR"), (503, "SERVICE_UNAVAILABLE")],
)
def test_forced_novita_submit_error_then_real_answer(
    sim: httpx.Client, status: int, reason: str
) -> None:
    forced = {"http_status": status, "reason": reason, "message": "forced"}
    configure(sim, novita_submit_responses=[forced])
    response = sim.post(SUBMIT, json={"prompt": "a"})
    assert response.status_code == status
    expected = {"code": status, "reason": reason, "message": "forced", "metadata": {}}
    assert response.json() == expected
    submit_novita(sim)


def test_forced_novita_poll_error_then_real_answer(sim: httpx.Client) -> None:
    task_id = submit_novita(sim)
    forced = {"http_status": 500, "reason": "INTERNAL_ERROR", "message": "try again"}
    configure(sim, novita_result_responses=[forced])
    assert sim.get(RESULT, params={"task_id": task_id}).status_code == 500
    assert result(sim, task_id)["task"]["task_id"] == task_id


def test_fail_directive_overrides_successful_config(sim: httpx.Client) -> None:
    apikley_id = create_apikley(sim, prompt="a cat [sim:fail]")
    novita_id = submit_novita(sim, prompt="a cat [sim:fail]")
    assert wait_for_state(sim, apikley_id, "fail", "success")["state"] == "fail"
    assert wait_for_novita(sim, novita_id)["task"]["status"] == "TASK_STATUS_FAILED"


def test_slow_directive_makes_task_ten_times_longer(sim: httpx.Client) -> None:
    slow_id = create_apikley(sim, prompt="a cat [sim:slow]")
    normal_id = create_apikley(sim)
    wait_for_state(sim, normal_id, "success")
    assert record(sim, slow_id)["state"] in ("waiting", "queuing", "generating")
    plans = {t["task_id"]: t["plan"] for t in sim.get("/_sim/tasks").json()["tasks"]}
    assert plans[slow_id]["generate_s"] == pytest.approx(10 * FAST["generate_s"])


def test_latency_slows_every_provider_answer(sim: httpx.Client) -> None:
    configure(sim, latency_s=0.3)
    started = time.monotonic()
    sim.get(RESULT, params={"task_id": "nope"})
    assert time.monotonic() - started >= 0.3


def test_tasks_endpoint_lists_both_providers_with_state_and_callbacks(
    sim: httpx.Client, callbacks: tuple[CallbackReceiver, str]
) -> None:
    recorder, hook = callbacks
    apikley_id = create_apikley(sim, callback_url=hook)
    novita_id = submit_novita(sim)
    wait_until(lambda: recorder.received)
    tasks = {t["task_id"]: t for t in sim.get("/_sim/tasks").json()["tasks"]}
    assert tasks[apikley_id]["provider"] == "apikley" and tasks[apikley_id]["state"] == "success"
    assert tasks[apikley_id]["callbacks"][0]["body"] == recorder.received[0]
    assert tasks[novita_id]["provider"] == "novita"
    assert tasks[novita_id]["request"] == {"prompt": "a cat surfing"}


def test_config_patch_is_validated_and_merged(sim: httpx.Client) -> None:
    assert configure(sim, outcome="fail")["queue_s"] == FAST["queue_s"]
    invalid = [{"queue_s": -1}, {"outcome": "maybe"}, {"no_such_field": 1}, {"callback_mode": "x"}]
    for patch in invalid:
        assert sim.patch("/_sim/config", json=patch).status_code == 422
    assert sim.get("/_sim/config").json()["outcome"] == "fail"


def test_reset_restores_defaults_and_forgets_tasks(sim: httpx.Client) -> None:
    task_id = create_apikley(sim)
    configure(sim, outcome="fail", apikley_create_responses=[{"code": 429, "msg": "slow down"}])
    defaults = sim.post("/_sim/reset").json()
    assert (defaults["queue_s"], defaults["generate_s"]) == (0.2, 0.5)
    assert defaults["outcome"] == "success"
    assert defaults["apikley_create_responses"] == [] and defaults["video_url_ttl"] == 3600
    assert sim.get("/_sim/tasks").json() == {"tasks": []}
    assert sim.get("/_sim/callbacks").json() == {"callbacks": []}
    assert sim.get(RECORD, params={"taskId": task_id}).json()["code"] == 404


def test_any_key_is_accepted_when_no_key_is_configured() -> None:
    with serve(create_simulator_app(api_key=None)) as base_url:
        url, body = base_url + SUBMIT, {"prompt": "a"}
        ok = httpx.post(url, json=body, headers={"Authorization": "Bearer anything"})
        empty = httpx.post(url, json=body, headers={"Authorization": "Bearer"})
    assert ok.status_code == 200 and empty.status_code == 401


def logged_callbacks(client: httpx.Client, task_id: str | None = None) -> list[dict[str, Any]]:
    """The simulator's callback log, optionally only one task's attempts."""
    log: list[dict[str, Any]] = client.get("/_sim/callbacks").json()["callbacks"]
    return [entry for entry in log if task_id is None or entry["task_id"] == task_id]


def listed_tasks(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {task["task_id"]: task for task in client.get("/_sim/tasks").json()["tasks"]}


def test_slow_apikley_answer_times_out_the_client_yet_the_task_exists_and_calls_back(
    sim_url: str, sim: httpx.Client, callbacks: tuple[CallbackReceiver, str]
) -> None:
    recorder, hook = callbacks
    configure(sim, answer_delay_s=1)
    body = apikley_body(callback_url=hook)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(sim_url + CREATE, json=body, headers=AUTH, timeout=0.3)

    (task,) = wait_until(lambda: list(listed_tasks(sim).values()))
    assert task["provider"] == "apikley" and task["request"] == body
    (callback,) = wait_until(lambda: recorder.received, timeout=10)
    assert callback["data"]["taskId"] == task["task_id"]
    assert callback["data"]["state"] == "success"


def test_slow_novita_answer_times_out_the_client_yet_the_task_exists_and_sends_its_webhook(
    sim_url: str, sim: httpx.Client, callbacks: tuple[CallbackReceiver, str]
) -> None:
    recorder, hook = callbacks
    configure(sim, answer_delay_s=1)
    body = {"prompt": "a cat", "extra": {"webhook": {"url": hook}}}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(sim_url + SUBMIT, json=body, headers=AUTH, timeout=0.3)

    (task,) = wait_until(lambda: list(listed_tasks(sim).values()))
    assert task["provider"] == "novita" and task["callback_url"] == hook
    (webhook,) = wait_until(lambda: recorder.received, timeout=10)
    assert webhook["payload"]["task"]["task_id"] == task["task_id"]


def test_answer_delay_holds_back_the_answer_but_not_the_task(sim: httpx.Client) -> None:
    configure(sim, answer_delay_s=0.5)
    task_id = create_apikley(sim)
    # The task was created half a second before the answer: it is done when the answer comes.
    assert record(sim, task_id)["state"] in ("generating", "success")


@pytest.mark.parametrize(
    ("configured", "code", "text"),
    [(None, 501, "blocked by policy"), (422, 422, "blocked by policy"), (200, 200, "success")],
)
def test_failed_task_details_answer_carries_the_configured_code_with_the_record(
    sim: httpx.Client, configured: int | None, code: int, text: str
) -> None:
    configure(sim, outcome="fail", fail_code="content_policy", fail_msg="blocked by policy")
    if configured is not None:
        configure(sim, apikley_record_fail_code=configured)
    task_id = create_apikley(sim)
    wait_until(lambda: record(sim, task_id, fail_code=code)["state"] == "fail")

    answer = sim.get(RECORD, params={"taskId": task_id})
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"code", "msg", "data"}
    assert (body["code"], body["msg"]) == (code, text)
    data = body["data"]
    assert (data["taskId"], data["state"], data["resultJson"]) == (task_id, "fail", "")
    assert (data["failCode"], data["failMsg"]) == ("content_policy", "blocked by policy")


def test_message_key_names_the_text_field_of_apikley_answers_and_callbacks(
    sim: httpx.Client, callbacks: tuple[CallbackReceiver, str]
) -> None:
    recorder, hook = callbacks
    forced = [{"code": 429, "msg": "slow down"}]
    configure(sim, apikley_message_key="message", outcome="fail", fail_msg="blocked")
    configure(sim, apikley_create_responses=forced, apikley_record_responses=forced)

    answers = [sim.post(CREATE, json=apikley_body()).json()]
    answers.append(sim.get(RECORD, params={"taskId": "task_kling_0"}).json())
    created = sim.post(CREATE, json=apikley_body(callback_url=hook)).json()
    task_id = created["data"]["taskId"]
    answers += [created, sim.get(RECORD, params={"taskId": "task_kling_0"}).json()]
    wait_until(lambda: record(sim, task_id)["state"] == "fail")
    answers.append(sim.get(RECORD, params={"taskId": task_id}).json())
    answers.append(wait_until(lambda: recorder.received)[0])

    assert all("msg" not in answer for answer in answers), answers
    texts = [(answer["code"], answer["message"]) for answer in answers]
    assert texts == [
        (429, "slow down"),
        (429, "slow down"),
        (200, "success"),
        (404, "task not found: task_kling_0"),
        (501, "blocked"),
        (501, "blocked"),
    ]


GATEWAY_CASES = [
    ("apikley_create_responses", "POST", CREATE, 502, "502 Bad Gateway"),
    ("apikley_record_responses", "GET", RECORD, 504, "504 Gateway Timeout"),
    ("novita_submit_responses", "POST", SUBMIT, 503, "503 Service Unavailable"),
    ("novita_result_responses", "GET", RESULT, 502, "502 Bad Gateway"),
]


@pytest.mark.parametrize(("queue", "method", "path", "status", "title"), GATEWAY_CASES)
def test_forced_gateway_error_is_an_nginx_html_page_then_the_real_answer(
    sim: httpx.Client, queue: str, method: str, path: str, status: int, title: str
) -> None:
    if path == RECORD:
        request: dict[str, Any] = {"params": {"taskId": create_apikley(sim)}}
    elif path == RESULT:
        request = {"params": {"task_id": submit_novita(sim)}}
    else:
        request = {"json": apikley_body() if path == CREATE else {"prompt": "a cat"}}
    configure(sim, **{queue: [{"html": True, "http_status": status}]})

    page = sim.request(method, path, **request)
    assert page.status_code == status and page.headers["content-type"] == "text/html"
    assert f"<title>{title}</title>" in page.text and f"<h1>{title}</h1>" in page.text
    assert "<center>nginx</center>" in page.text
    with pytest.raises(ValueError):
        page.json()

    again = sim.request(method, path, **request)
    assert again.status_code == 200 and again.headers["content-type"] == "application/json"


def test_forced_answers_html_included_are_consumed_in_order(sim: httpx.Client) -> None:
    queue = [
        {"html": True, "http_status": 502},
        {"code": 429, "msg": "slow down"},
        {"code": 500, "msg": "not sent", "http_status": 503, "html": True},
    ]
    configure(sim, apikley_create_responses=queue)
    answers = [sim.post(CREATE, json=apikley_body()) for _ in range(4)]
    assert [a.status_code for a in answers] == [502, 200, 503, 200]
    assert [a.headers["content-type"] for a in answers] == [
        "text/html", "application/json", "text/html", "application/json"
    ]
    assert "not sent" not in answers[2].text and "503 Service Unavailable" in answers[2].text
    assert [answers[1].json()["code"], answers[3].json()["code"]] == [429, 200]


def test_forced_answer_needs_its_body_fields_unless_it_is_html(sim: httpx.Client) -> None:
    for patch in (
        {"apikley_create_responses": [{"msg": "no code"}]},
        {"apikley_record_responses": [{"code": 500}]},
        {"novita_submit_responses": [{"http_status": 503}]},
    ):
        response = sim.patch("/_sim/config", json=patch)
        assert response.status_code == 422, patch
        assert "required unless html is true" in json.dumps(response.json()["details"])
    html = [{"html": True, "http_status": 502}]
    config = configure(sim, apikley_create_responses=html, novita_result_responses=html)
    assert config["apikley_create_responses"][0]["code"] is None
    assert config["novita_result_responses"][0]["html"] is True


def kie_signature(key: str, task_id: str, timestamp: str) -> str:
    """kie.ai's documented signature, computed here independently of the simulator."""
    message = f"{task_id}.{timestamp}".encode()
    return base64.b64encode(hmac.new(key.encode(), message, hashlib.sha256).digest()).decode()


@pytest.mark.parametrize("task_id_key", ["taskId", "task_id"])
def test_signed_callback_carries_timestamp_and_hmac_of_task_id_and_time(
    sim: httpx.Client, callbacks: tuple[CallbackReceiver, str], task_id_key: str
) -> None:
    recorder, hook = callbacks
    key = "whsec-clé-🔑"
    configure(sim, webhook_hmac_key=key, callback_task_id_key=task_id_key)
    before = int(time.time())
    task_id = create_apikley(sim, callback_url=hook)
    (callback,) = wait_until(lambda: recorder.received)
    after = int(time.time())

    assert callback["data"][task_id_key] == task_id
    (headers,) = recorder.headers
    timestamp = headers["x-webhook-timestamp"]
    assert timestamp.isdigit() and before <= int(timestamp) <= after
    assert headers["x-webhook-signature"] == kie_signature(key, task_id, timestamp)
    (logged,) = logged_callbacks(sim)
    assert logged["headers"] == {
        "Content-Type": "application/json",
        "X-Webhook-Timestamp": timestamp,
        "X-Webhook-Signature": headers["x-webhook-signature"],
    }


def test_callbacks_are_unsigned_without_an_hmac_key(
    sim: httpx.Client, callbacks: tuple[CallbackReceiver, str]
) -> None:
    recorder, hook = callbacks
    create_apikley(sim, callback_url=hook)
    wait_until(lambda: recorder.received)
    (headers,) = recorder.headers
    assert not [name for name in headers if name.startswith("x-webhook-")]
    (logged,) = logged_callbacks(sim)
    assert logged["headers"] == {"Content-Type": "application/json"}


def test_callback_task_id_key_names_the_task_id_in_callback_data_only(
    sim: httpx.Client, callbacks: tuple[CallbackReceiver, str]
) -> None:
    recorder, hook = callbacks
    configure(sim, callback_task_id_key="task_id")
    task_id = create_apikley(sim, callback_url=hook)
    (callback,) = wait_until(lambda: recorder.received)
    assert callback["data"]["task_id"] == task_id and "taskId" not in callback["data"]
    assert record(sim, task_id)["taskId"] == task_id


def test_apikley_callback_to_a_failing_receiver_is_not_retried(
    sim: httpx.Client, callbacks: tuple[CallbackReceiver, str]
) -> None:
    recorder, hook = callbacks
    configure(sim, novita_webhook_retry_s=0.05)
    create_apikley(sim, callback_url=sibling(hook, "broken"))
    (attempt,) = settled_callbacks(sim, count=1)
    assert attempt["status_code"] == 500
    time.sleep(1)
    assert len(logged_callbacks(sim)) == 1 and len(recorder.received) == 1


@pytest.mark.parametrize("outcome", ["success", "fail"])
def test_novita_webhook_posts_the_task_result_once_it_is_terminal(
    sim: httpx.Client, callbacks: tuple[CallbackReceiver, str], outcome: str
) -> None:
    recorder, hook = callbacks
    configure(sim, outcome=outcome, fail_msg="content moderation")
    task_id = submit_novita_webhook(sim, hook, response_video_type="mp4")
    done = wait_for_novita(sim, task_id)
    wait_until(lambda: recorder.received)
    time.sleep(SETTLE_S)

    (webhook,) = recorder.received
    assert webhook == {"event_type": "ASYNC_TASK_RESULT", "payload": done}
    expected = "TASK_STATUS_SUCCEED" if outcome == "success" else "TASK_STATUS_FAILED"
    assert done["task"]["status"] == expected
    (headers,) = recorder.headers
    assert not [name for name in headers if name.startswith("x-webhook-")]
    (logged,) = logged_callbacks(sim)
    assert (logged["task_id"], logged["url"], logged["status_code"]) == (task_id, hook, 200)
    assert logged["body"] == webhook
    task = listed_tasks(sim)[task_id]
    assert task["callback_url"] == hook and task["callbacks"] == [logged]


NOVITA_WEBHOOK_CASES = [
    ({"callback_mode": "normal"}, ["TASK_STATUS_SUCCEED"]),
    ({"callback_mode": "drop"}, []),
    ({"callback_mode": "duplicate"}, ["TASK_STATUS_SUCCEED", "TASK_STATUS_SUCCEED"]),
    ({"callback_mode": "out_of_order"}, ["TASK_STATUS_SUCCEED", "TASK_STATUS_PROCESSING"]),
    # Novita's webhook reports the result only, never progress.
    ({"progress_callbacks": True}, ["TASK_STATUS_SUCCEED"]),
]


@pytest.mark.parametrize(("config", "statuses"), NOVITA_WEBHOOK_CASES)
def test_novita_webhooks_follow_the_callback_mode(
    sim: httpx.Client,
    callbacks: tuple[CallbackReceiver, str],
    config: dict[str, Any],
    statuses: list[str],
) -> None:
    recorder, hook = callbacks
    configure(sim, **config)
    task_id = submit_novita_webhook(sim, hook)
    wait_for_novita(sim, task_id)
    wait_until(lambda: len(recorder.received) >= len(statuses))
    time.sleep(SETTLE_S)
    assert recorder.novita_statuses() == statuses
    assert all(body["payload"]["task"]["task_id"] == task_id for body in recorder.received)


def test_novita_webhook_waits_for_the_callback_delay(
    sim: httpx.Client, callbacks: tuple[CallbackReceiver, str]
) -> None:
    recorder, hook = callbacks
    configure(sim, callback_delay_s=1.0)
    task_id = submit_novita_webhook(sim, hook)
    wait_for_novita(sim, task_id)
    assert recorder.received == []
    wait_until(lambda: recorder.received)


def test_novita_webhook_is_retried_until_the_receiver_answers_2xx(
    sim: httpx.Client, callbacks: tuple[CallbackReceiver, str]
) -> None:
    recorder, hook = callbacks
    configure(sim, novita_webhook_retry_s=0.05)
    flaky = sibling(hook, "flaky")
    task_id = submit_novita_webhook(sim, flaky)
    attempts = settled_callbacks(sim, count=3)
    time.sleep(SETTLE_S)
    assert [a["status_code"] for a in logged_callbacks(sim)] == [500, 500, 200]
    assert {a["task_id"] for a in attempts} == {task_id}
    first = recorder.received[0]
    assert first["payload"]["task"]["status"] == "TASK_STATUS_SUCCEED"
    assert recorder.received == [first, first, first]


def test_novita_webhook_gives_up_after_five_retries(
    sim: httpx.Client, callbacks: tuple[CallbackReceiver, str]
) -> None:
    recorder, hook = callbacks
    configure(sim, novita_webhook_retry_s=0.05)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    unreachable = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"
    closed.close()
    broken = sibling(hook, "broken")
    broken_id = submit_novita_webhook(sim, broken)
    unreachable_id = submit_novita_webhook(sim, unreachable)
    settled_callbacks(sim, count=12, timeout=10)
    time.sleep(1)

    to_broken = logged_callbacks(sim, broken_id)
    assert [a["status_code"] for a in to_broken] == [500] * 6
    to_unreachable = logged_callbacks(sim, unreachable_id)
    assert len(to_unreachable) == 6
    assert all(a["status_code"] is None and a["error"] for a in to_unreachable)
    assert len(recorder.received) == 6


def test_novita_webhook_is_retried_when_the_receiver_does_not_answer_within_5s(
    sim: httpx.Client, callbacks: tuple[CallbackReceiver, str]
) -> None:
    recorder, hook = callbacks
    configure(sim, novita_webhook_retry_s=0.05)
    task_id = submit_novita_webhook(sim, sibling(hook, "stall"))
    first, second = settled_callbacks(sim, count=2, timeout=30)
    assert first["task_id"] == second["task_id"] == task_id
    assert first["status_code"] is None and "TimeoutError" in first["error"]
    assert second["status_code"] == 200 and second["body"] == first["body"]
    assert len(recorder.received) == 2


def test_novita_webhooks_can_be_switched_off(
    sim: httpx.Client, callbacks: tuple[CallbackReceiver, str]
) -> None:
    recorder, hook = callbacks
    configure(sim, novita_webhooks=False)
    task_id = submit_novita_webhook(sim, hook)
    wait_for_novita(sim, task_id)
    time.sleep(SETTLE_S)
    assert recorder.received == [] and logged_callbacks(sim) == []
    assert listed_tasks(sim)[task_id]["callback_url"] == hook


def test_novita_refuses_extra_when_it_does_not_accept_it(
    sim: httpx.Client, callbacks: tuple[CallbackReceiver, str]
) -> None:
    _, hook = callbacks
    configure(sim, novita_accepts_extra=False)
    body = {"prompt": "a cat", "extra": {"webhook": {"url": hook}}}
    response = sim.post(SUBMIT, json=body)
    assert response.status_code == 400
    assert response.json() == {
        "code": 400,
        "reason": "INVALID_REQUEST_BODY",
        "message": "extra: unknown field",
        "metadata": {"field": "extra"},
    }
    assert listed_tasks(sim) == {}
    plain = submit_novita(sim)
    assert list(listed_tasks(sim)) == [plain]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"webhook": {"url": "not a url"}}, "extra.webhook.url"),
        ({"webhook": {"url": "ftp://127.0.0.1/hook"}}, "extra.webhook.url"),
        ({"webhook": {"url": 5}}, "extra.webhook.url"),
        ({"webhook": {}}, "extra.webhook.url"),
        ({"webhook": "http://127.0.0.1/hook"}, "extra.webhook"),
        ("webhook", "extra"),
    ],
)
def test_novita_webhook_url_must_be_an_absolute_http_url(
    sim: httpx.Client, extra: Any, field: str
) -> None:
    response = sim.post(SUBMIT, json={"prompt": "a cat", "extra": extra})
    assert response.status_code == 400
    error = response.json()
    assert error["reason"] == "INVALID_REQUEST_BODY" and error["metadata"] == {"field": field}
    assert listed_tasks(sim) == {}


def test_novita_extra_without_webhook_is_accepted_and_ignored(sim: httpx.Client) -> None:
    body = {"prompt": "a cat", "extra": {"response_video_type": "mp4"}}
    task_id = sim.post(SUBMIT, json=body).json()["task_id"]
    task = listed_tasks(sim)[task_id]
    assert task["request"] == body and task["callback_url"] is None


def test_reset_cancels_pending_novita_webhooks_and_retries(
    sim: httpx.Client, callbacks: tuple[CallbackReceiver, str]
) -> None:
    recorder, hook = callbacks
    configure(sim, novita_webhook_retry_s=2.0)
    retrying_id = submit_novita_webhook(sim, sibling(hook, "broken"))
    configure(sim, callback_delay_s=2.0)
    submit_novita_webhook(sim, hook)
    (attempt,) = settled_callbacks(sim, count=1)
    assert attempt["task_id"] == retrying_id and attempt["status_code"] == 500

    sim.post("/_sim/reset").raise_for_status()
    time.sleep(3)
    assert len(recorder.received) == 1
    assert logged_callbacks(sim) == [] and listed_tasks(sim) == {}


NEW_DEFAULTS = {
    "answer_delay_s": 0.0,
    "apikley_record_fail_code": 501,
    "apikley_message_key": "msg",
    "webhook_hmac_key": None,
    "callback_task_id_key": "taskId",
    "novita_accepts_extra": True,
    "novita_webhooks": True,
    "novita_webhook_retry_s": 1.0,
}


def test_reset_restores_the_provider_case_defaults(sim: httpx.Client) -> None:
    changed = configure(
        sim,
        answer_delay_s=0.5,
        apikley_record_fail_code=422,
        apikley_message_key="message",
        webhook_hmac_key="k",
        callback_task_id_key="task_id",
        novita_accepts_extra=False,
        novita_webhooks=False,
        novita_webhook_retry_s=0.1,
    )
    assert all(changed[name] != default for name, default in NEW_DEFAULTS.items())
    defaults = sim.post("/_sim/reset").json()
    assert {name: defaults[name] for name in NEW_DEFAULTS} == NEW_DEFAULTS


@pytest.mark.parametrize(
    "patch",
    [
        {"answer_delay_s": -1},
        {"apikley_message_key": "text"},
        {"callback_task_id_key": "id"},
        {"novita_webhook_retry_s": -0.5},
        {"apikley_record_fail_code": "often"},
        {"novita_webhook": True},
        {"apikley_create_responses": [{"code": 500, "msg": "x", "html": True, "page": "<p>"}]},
    ],
)
def test_invalid_or_unknown_config_is_refused_with_422(
    sim: httpx.Client, patch: dict[str, Any]
) -> None:
    before = sim.get("/_sim/config").json()
    assert sim.patch("/_sim/config", json=patch).status_code == 422
    assert sim.get("/_sim/config").json() == before
