"""The provider simulator over real HTTP: a uvicorn-served simulator and a callback receiver."""

from __future__ import annotations

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
    """Records every POST; `/broken` answers 500 to play a failing callback target."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.app = Starlette(routes=[Route("/{name}", self.receive, methods=["POST"])])

    async def receive(self, request: Request) -> Response:
        self.received.append(json.loads(await request.body()))
        status = 500 if request.path_params["name"] == "broken" else 200
        return JSONResponse({"ok": status == 200}, status_code=status)

    def states(self) -> list[str]:
        return [body["data"]["state"] for body in self.received]


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
    recorder.received.clear()
    return recorder, f"{base_url}/hook"


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


def record(client: httpx.Client, task_id: str) -> dict[str, Any]:
    body = client.get(RECORD, params={"taskId": task_id}).json()
    assert body["code"] == 200, body
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


def settled_callbacks(client: httpx.Client, count: int) -> list[dict[str, Any]]:
    """Wait until `count` logged callback attempts have a response status or an error."""

    def settled() -> list[dict[str, Any]] | None:
        log = client.get("/_sim/callbacks").json()["callbacks"]
        done = [entry for entry in log if entry["status_code"] or entry["error"]]
        return done if len(done) == count else None

    return wait_until(settled)


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
    recorder, hook = callbacks
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
    assert progress and progress == sorted(progress) and 0 <= progress[0] and progress[-1] < 100
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
