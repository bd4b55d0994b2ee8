"""Fuzzed bodies against the real callback receiver, on a real task and with its valid token:
wrong types, huge strings, deep nesting, invalid UTF-8, NaN and friends are all refused with a
4xx, and none of them changes the task, adds an event or makes us call the provider.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from rq import Queue

from service.domain.tokens import callback_token
from tests.stack.conftest import CALLBACK_SECRET, Simulator, Stack, wait_for_status
from tests.stack.stacks import owned_stack

# The receiver alone moves the task here: the worker never polls Apikley on its own.
FUZZ_ENV = {"APIKLEY_CALLBACK_GRACE_S": "600"}
MIB = 1024 * 1024
VALID_STATES = ("waiting", "queuing", "generating", "success", "fail")
OURS = "\x00ours"  # stands for the task's real provider id in generated bodies


@dataclass(frozen=True)
class Target:
    stack: Stack
    task_id: str
    provider_task_id: str

    @property
    def path(self) -> str:
        return f"/callbacks/apikley/{self.task_id}/{callback_token(CALLBACK_SECRET, self.task_id)}"

    def snapshot(self, api: httpx.Client) -> tuple[Any, ...]:
        """Everything a callback could change: the task, its events, and provider calls queued."""
        redis = self.stack.redis()
        polls = Queue("poll", connection=redis)
        return (
            api.get(f"/v1/tasks/{self.task_id}").json(),
            api.get(f"/v1/tasks/{self.task_id}/events").json(),
            polls.count,
            polls.scheduled_job_registry.count,
        )


@pytest.fixture(scope="module")
def target(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    simulator.reset(callback_mode="drop", queue_s=3600)
    with owned_stack(tmp_path_factory.mktemp("callback-fuzz"), simulator, FUZZ_ENV) as owned:
        with owned.stack.client() as api:
            created = api.post("/v1/tasks", json={"prompt": "a fuzzed fox", "provider": "apikley"}).json()
            task = wait_for_status(api, created["id"], "submitted")
        yield Target(owned.stack, task["id"], task["provider_task_id"])
    simulator.reset()


@pytest.fixture(scope="module")
def api(target: Target) -> Iterator[httpx.Client]:
    with target.stack.client() as client:
        yield client


@pytest.fixture(scope="module")
def anonymous(target: Target) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=target.stack.url, timeout=30) as client:
        yield client


def data(target: Target, **fields: Any) -> bytes:
    record = {"taskId": target.provider_task_id, "state": "success", "resultJson": '{"resultUrls":["https://cdn.example.com/v.mp4"]}'}
    return json.dumps({"code": 200, "msg": "success", "data": {**record, **fields}}).encode()


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


JSON = "application/json"
# name → (build the raw body for the target, content type, the status it must get)
RAW_CASES: dict[str, tuple[Any, str, int]] = {
    "invalid UTF-8": (lambda t: data(t)[:-3] + b'"\xff\xfe"}', JSON, 400),
    "invalid UTF-8 in taskId": (lambda t: data(t).replace(t.provider_task_id.encode(), b"\xc3\x28"), JSON, 400),
    "lone surrogate": (lambda t: data(t).replace(b'"success"', b'"\\ud800"'), JSON, 400),
    "NaN": (lambda t: data(t).replace(b'"code": 200', b'"code": NaN'), JSON, 400),
    "Infinity": (lambda t: data(t).replace(b'"code": 200', b'"code": Infinity'), JSON, 400),
    "-Infinity": (lambda t: data(t).replace(b'"code": 200', b'"code": -Infinity'), JSON, 400),
    "number overflowing a double": (lambda t: data(t).replace(b'"code": 200', b'"code": 1e400'), JSON, 400),
    "nesting 100,000 deep": (lambda t: nested(100_000).encode(), JSON, 400),
    "nesting 5,000 deep inside a valid callback": (
        lambda t: data(t)[:-2] + b', "extra": ' + nested(5_000).encode() + b"}}",
        JSON,
        400,
    ),
    "byte order mark": (lambda t: b"\xef\xbb\xbf" + data(t), JSON, 400),
    "trailing garbage": (lambda t: data(t) + b" x", JSON, 400),
    "two documents": (lambda t: data(t) + data(t), JSON, 400),
    "truncated": (lambda t: data(t)[:-1], JSON, 400),
    "empty": (lambda t: b"", JSON, 400),
    "taskId over 1 MiB": (lambda t: data(t, taskId="x" * (MIB + 1)), JSON, 413),
    "state of 900 KB": (lambda t: data(t, state="s" * 900_000), JSON, 422),
    "text/plain": (data, "text/plain", 415),
    "form-encoded": (lambda t: b"data[taskId]=x&data[state]=success", "application/x-www-form-urlencoded", 415),
    "duplicate key, the last naming another task": (
        lambda t: data(t)[:-2] + b', "taskId": "task_kling_0"}}',
        JSON,
        409,
    ),
    "NUL inside taskId": (lambda t: data(t, taskId=t.provider_task_id + "\x00"), JSON, 409),
}

WRONG_TYPES = [None, True, 0, 1.5, "", [], {}, ["success"], {"state": "success"}]
TYPE_CASES: dict[str, tuple[str, Any]] = {
    **{f"data = {json.dumps(v)}": ("data", v) for v in WRONG_TYPES},
    **{f"taskId = {json.dumps(v)}": ("taskId", v) for v in WRONG_TYPES},
    **{f"state = {json.dumps(v)}": ("state", v) for v in WRONG_TYPES},
}


@pytest.mark.parametrize(("build", "content_type", "status"), RAW_CASES.values(), ids=RAW_CASES.keys())
def test_malformed_callback_body_is_refused_and_changes_nothing(
    target: Target, api: httpx.Client, anonymous: httpx.Client, build: Any, content_type: str, status: int
) -> None:
    before = target.snapshot(api)
    response = anonymous.post(target.path, content=build(target), headers={"Content-Type": content_type})
    assert response.status_code == status, response.text
    assert "error" in response.json()
    assert target.snapshot(api) == before


@pytest.mark.parametrize(("field", "value"), TYPE_CASES.values(), ids=TYPE_CASES.keys())
def test_callback_field_of_the_wrong_type_is_refused_and_changes_nothing(
    target: Target, api: httpx.Client, anonymous: httpx.Client, field: str, value: Any
) -> None:
    body = json.loads(data(target))
    if field == "data":
        body["data"] = value
    else:
        body["data"][field] = value
    before = target.snapshot(api)
    response = anonymous.post(target.path, json=body)
    assert 400 <= response.status_code < 500, response.text
    assert target.snapshot(api) == before


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=25,
)
task_ids = json_values | st.just(OURS) | st.text(max_size=40)
states = json_values | st.sampled_from(VALID_STATES)
records = st.fixed_dictionaries(
    {"taskId": task_ids, "state": states},
    optional={"resultJson": json_values, "failCode": json_values, "failMsg": json_values, "param": json_values},
)
bodies = json_values | st.fixed_dictionaries({"code": json_values, "data": json_values | records}, optional={"msg": json_values})


def with_ours(value: Any, ours: str) -> Any:
    if value == OURS:
        return ours
    if isinstance(value, dict):
        return {k: with_ours(v, ours) for k, v in value.items()}
    if isinstance(value, list):
        return [with_ours(v, ours) for v in value]
    return value


def is_genuine(body: Any, ours: str) -> bool:
    """A well-formed report about our task: the receiver is meant to act on these."""
    record = body.get("data") if isinstance(body, dict) else None
    return isinstance(record, dict) and record.get("taskId") == ours and record.get("state") in VALID_STATES


@settings(max_examples=150, deadline=None, database=None)
@given(body=bodies)
def test_generated_callback_bodies_are_refused_with_a_4xx_and_change_nothing(
    target: Target, api: httpx.Client, anonymous: httpx.Client, body: Any
) -> None:
    body = with_ours(body, target.provider_task_id)
    assume(not is_genuine(body, target.provider_task_id))
    before = target.snapshot(api)
    response = anonymous.post(target.path, json=body)
    assert 400 <= response.status_code < 500, (body, response.text)
    assert target.snapshot(api) == before


@settings(max_examples=100, deadline=None, database=None)
@given(raw=st.binary(max_size=2048))
def test_generated_raw_bytes_are_refused_with_a_4xx_and_change_nothing(
    target: Target, api: httpx.Client, anonymous: httpx.Client, raw: bytes
) -> None:
    before = target.snapshot(api)
    response = anonymous.post(target.path, content=raw, headers={"Content-Type": JSON})
    assert 400 <= response.status_code < 500, (raw, response.text)
    assert target.snapshot(api) == before
