"""Hostile input and races, from outside: odd JSON, hostile providers' URLs, concurrent manual
retries, bounded replays, subscriptions deleted mid-delivery, and a Redis that hangs."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from service.domain.tokens import callback_token
from tests.stack.conftest import CALLBACK_SECRET, Simulator, Stack, wait_for
from tests.stack.keys_audit import orphans
from tests.stack.receivers import (
    Receiver,
    run_task,
    serve_receiver,
    subscribe,
    wait_for_deliveries,
)
from tests.stack.stacks import OwnedStack, owned_stack

STACK_ENV = {"REPLAY_RATE_PER_HOUR": "3", "APIKLEY_CONFIRM_CALLBACKS": "true"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as served:
        yield served


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def nested_json(depth: int) -> str:
    """`nested(depth)` as JSON text (Python's encoder stops short of the deepest cases)."""
    return '{"a": ' * (depth - 1) + "{}" + "}" * (depth - 1)


# --- JSON we cannot store ---------------------------------------------------------------------

@pytest.mark.parametrize("depth", [17, 300, 1000])
def test_metadata_nested_too_deep_is_a_422_naming_the_field_and_stores_nothing(
    stack: Stack, api: httpx.Client, depth: int
) -> None:
    redis = stack.redis()
    before = sorted(redis.keys("kr:task:*") + redis.keys("kr:sub:*"))
    for path, body in (("/v1/tasks", '{"prompt": "deep"'), ("/v1/subscriptions", '{"url": "http://127.0.0.1:9/hook"')):
        response = api.post(
            path, content=f'{body}, "metadata": {nested_json(depth)}}}', headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["fields"] == {"metadata": "must nest at most 16 levels deep"}
    assert sorted(redis.keys("kr:task:*") + redis.keys("kr:sub:*")) == before


def test_metadata_sixteen_levels_deep_is_taken(api: httpx.Client) -> None:
    response = api.post("/v1/tasks", json={"prompt": "deep enough", "metadata": nested(16)})
    assert response.status_code == 202, response.text
    assert response.json()["metadata"] == nested(16)


def test_json_nested_past_the_parsers_limit_is_a_400(api: httpx.Client) -> None:
    body = '{"prompt": "p", "metadata": ' + "[" * 5000 + "]" * 5000 + "}"
    response = api.post("/v1/tasks", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


# --- hostile providers --------------------------------------------------------------------------

@pytest.mark.parametrize("provider", ["apikley", "novita"])
@pytest.mark.parametrize("url", ["javascript:alert(document.cookie)", "file:///etc/passwd", "data:text/html,<script>x</script>", "ftp://cdn/v.mp4"])
def test_a_result_url_that_is_not_http_fails_the_task_with_a_clear_code(
    api: httpx.Client, sim: Simulator, provider: str, url: str
) -> None:
    sim.configure(result_url=url)
    task_id = api.post("/v1/tasks", json={"prompt": "hostile provider", "provider": provider}).json()["id"]
    done = wait_for(
        lambda: (t := api.get(f"/v1/tasks/{task_id}").json())["status"] in ("succeeded", "failed") and t, what="the task to end"
    )
    assert done["status"] == "failed"
    assert done["error"]["code"] == "invalid_result_url"
    assert done["result"] is None
    assert url not in api.get(f"/v1/tasks/{task_id}/events").text


# --- manual retries -------------------------------------------------------------------------------


def test_concurrent_manual_retries_make_one_attempt_and_every_send_is_logged(
    stack: Stack, api: httpx.Client, sim: Simulator, receiver: Receiver
) -> None:
    path = f"retried-{uuid.uuid4().hex[:6]}"
    sub = subscribe(api, receiver.answer(path), event_types=["task.succeeded"])
    run_task(api, prompt="retry me")
    [delivery] = wait_for_deliveries(api, sub["id"], 1, "delivered")
    sent_before = len(receiver.received(path))

    def retry(_: int) -> int:
        return api.post(f"/v1/deliveries/{delivery['id']}/retry").status_code

    [worker] = stack.workers
    os.kill(worker.pid, signal.SIGSTOP)  # all 20 arrive before the retry can be sent
    try:
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(retry, range(20)))
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    assert answers == [202] * 20
    logged = wait_for(
        lambda: (
            (d := api.get(f"/v1/deliveries/{delivery['id']}").json())["status"] == "delivered" and d["attempt_count"] > 1 and d
        ),
        what="the retried delivery to land",
    )
    sends = receiver.received(path)[sent_before:]
    assert len(sends) == 1
    assert logged["attempt_count"] == 2  # the first send and the one retry, each in the log
    assert len(logged["attempts"]) == 2


# --- bounded replays --------------------------------------------------------------------------------


def test_a_second_replay_while_one_is_sent_is_409_and_replays_are_rate_limited_per_key(
    stack: Stack, api: httpx.Client, receiver: Receiver
) -> None:
    path = f"replayed-{uuid.uuid4().hex[:6]}"
    # The receiver answers slowly, so a replay's batch is still being sent when the next call comes.
    sub = subscribe(api, receiver.answer(path, delay_s=1.0))
    run_task(api, prompt="replay me")
    wait_for_deliveries(api, sub["id"], 2, "delivered")
    [worker] = stack.workers
    os.kill(worker.pid, signal.SIGSTOP)  # nothing sends the first replay's batch yet
    try:
        first = api.post(f"/v1/subscriptions/{sub['id']}/replay", json={"since": "2000-01-01T00:00:00Z"})
        assert first.status_code == 202, first.text
        second = api.post(f"/v1/subscriptions/{sub['id']}/replay", json={"since": "2000-01-01T00:00:00Z"})
        assert second.status_code == 409
        assert second.json()["error"]["code"] == "replay_in_progress"
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    # Once the first is sent, replays go again, until this key's hourly allowance (3) is used.
    statuses = []
    for _ in range(4):
        wait_for(lambda: not stack.redis().exists(f"kr:replay:{sub['id']}"), what="the replay to be sent")
        statuses.append(
            (r := api.post(f"/v1/subscriptions/{sub['id']}/replay", json={"since": "2000-01-01T00:00:00Z"})).status_code
        )
    assert statuses == [202, 202, 429, 429]
    assert int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "rate_limited"


# --- nothing left behind ----------------------------------------------------------------------------


def test_a_subscription_deleted_during_its_first_attempt_leaves_no_key_behind(
    stack: Stack, api: httpx.Client, receiver: Receiver
) -> None:
    path = f"deleted-{uuid.uuid4().hex[:6]}"
    sub = subscribe(api, receiver.answer(path, 500, delay_s=1.5), event_types=["task.succeeded"])
    task = api.post("/v1/tasks", json={"prompt": "delete mid-delivery", "provider": "apikley"}).json()
    receiver.wait_for_count(path, 1)  # its first attempt is in flight (the answer takes 1.5 s)
    assert api.delete(f"/v1/subscriptions/{sub['id']}").status_code == 204
    wait_for(lambda: api.get(f"/v1/tasks/{task['id']}").json()["status"] == "succeeded", what="the task")
    # The attempt lands after the delete and is recorded (a failure, with a retry scheduled).
    wait_for(
        lambda: stack.redis().exists(f"kr:sub:{sub['id']}:dlvs") or not orphans(stack.redis()), what="the attempt to be recorded"
    )
    wait_for(lambda: not orphans(stack.redis()), timeout_s=10, what=f"no orphan keys (found {orphans(stack.redis())})")


# --- a Redis that hangs -------------------------------------------------------------------------------


@pytest.fixture
def hung_redis(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnedStack]:
    with owned_stack(tmp_path_factory.mktemp("hung-redis"), simulator, workers=0) as owned:
        yield owned


def test_a_hung_redis_answers_503_in_seconds_not_never(hung_redis: OwnedStack) -> None:
    stack = hung_redis.stack
    with stack.client() as api:
        assert api.get("/v1/tasks").status_code == 200
        process = hung_redis.redis_server.process
        assert process is not None
        process.send_signal(signal.SIGSTOP)  # accepts nothing, answers nothing
        try:
            with httpx.Client(base_url=stack.url, headers=api.headers, timeout=60) as patient:
                for path in ("/v1/tasks", "/readyz"):
                    assert patient.get(path).status_code == 503
                # A callback too (taken ahead of the app's middleware, answered by the same handler).
                task_id = "task_000000000hungredis00000000"
                callback = patient.post(
                    f"/callbacks/apikley/{task_id}/{callback_token(CALLBACK_SECRET, task_id)}",
                    json={"code": 200, "data": {"taskId": "p1", "state": "success"}},
                )
                assert callback.status_code == 503
                assert callback.json()["error"]["code"] == "unavailable" and callback.headers["Retry-After"] == "1"
        finally:
            process.send_signal(signal.SIGCONT)
        wait_for(lambda: api.get("/v1/tasks").status_code == 200, what="service back with Redis")
