"""Providers answering bursts of 429s and 5xx, slowly: tasks back off, retry once per refusal,
never pay for a second provider task, and all still succeed with their events delivered."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.stack.conftest import Simulator, Stack, wait_for
from tests.stack.faults.ledger import (
    Record,
    add_subscribers,
    create_tasks,
    judge,
    reconcile,
    settle,
)
from tests.stack.receivers import serve_receiver
from tests.stack.stacks import owned_stack

# Beyond pytest's default 120 s: the books are read even after a bounded wait runs out.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TROUBLE_ENV = {
    # Room for a task to absorb several refusals in a row before it would give up.
    "SUBMIT_RETRY_DELAYS_S": "0.2,0.4,0.8,1,1,1,1,1",
    "APIKLEY_CALLBACK_GRACE_S": "2",
    "PROVIDER_TIMEOUT_S": "4",
}
PROVIDERS = ["apikley", "novita", "auto"] * 5


def apikley(code: int, msg: str, http_status: int = 200) -> dict[str, Any]:
    return {"code": code, "msg": msg, "http_status": http_status}


def novita(http_status: int, reason: str) -> dict[str, Any]:
    return {"http_status": http_status, "reason": reason, "message": reason.lower().replace("_", " ")}


# Answers the simulator gives, in order, before it behaves again; every provider answer takes 0.5 s.
TROUBLE: dict[str, Any] = {
    "latency_s": 0.5,
    "apikley_create_responses": [apikley(429, "rate limited")] * 5
    + [apikley(500, "server error"), apikley(500, "bad gateway", 502)],
    "novita_submit_responses": [novita(429, "RATE_LIMIT_EXCEEDED")] * 4 + [novita(503, "SERVICE_UNAVAILABLE")] * 2,
    "novita_result_responses": [novita(500, "INTERNAL_ERROR")] * 5 + [novita(429, "RATE_LIMIT_EXCEEDED")] * 3,
    "apikley_record_responses": [apikley(500, "server error")] * 3 + [apikley(429, "rate limited")] * 2,
}
FORCED_LISTS = [name for name in TROUBLE if name.endswith("_responses")]


@pytest.fixture(scope="module")
def trouble_stack(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Provider calls mostly wait: three workers keep them from queueing behind each other.
    with owned_stack(tmp_path_factory.mktemp("provider-trouble"), simulator, TROUBLE_ENV, workers=3) as owned:
        yield owned.stack


def test_provider_429_and_5xx_bursts_and_slow_answers_still_finish_every_task(
    trouble_stack: Stack, sim: Simulator, record: Record
) -> None:
    stack = trouble_stack
    started = time.monotonic()
    sim.configure(**TROUBLE)
    with stack.client() as api, serve_receiver() as receiver:
        subs = add_subscribers(api, receiver, [f"trouble-{n}" for n in range(3)])
        prompts = [f"provider trouble {n}" for n in range(len(PROVIDERS))]
        task_ids = create_tasks(
            stack.url, [{"prompt": p, "provider": provider} for p, provider in zip(prompts, PROVIDERS, strict=True)]
        )
        tasks, events = settle(stack.url, api, task_ids, subs, timeout_s=90)
        figures = reconcile(
            "provider 429/5xx bursts and slow answers",
            "simulator: 0.5 s per answer; bursts of 429/500/502 on Apikley create and record, 429/503 on Novita submit,"
            " 500/429 on Novita polls",
            task_ids,
            tasks,
            events,
            subs,
            started,
        )
    judge(figures, record, stack)

    config = sim.http.get("/_sim/config").json()
    assert {name: config[name] for name in FORCED_LISTS} == {name: [] for name in FORCED_LISTS}, "every burst reached the service"
    assert [t["status"] for t in tasks.values() if t] == ["succeeded"] * len(task_ids)
    # One paid provider task per task, however many refusals came first...
    by_prompt: dict[str, int] = {}
    for provider_task in sim.tasks():
        prompt = provider_task["request"].get("prompt") or provider_task["request"].get("input", {}).get("prompt")
        by_prompt[prompt] = by_prompt.get(prompt, 0) + 1
    assert by_prompt == dict.fromkeys(prompts, 1)
    # ...and exactly one retry (or failover) per refusal: no stampede of extra requests.
    refusals = len(TROUBLE["apikley_create_responses"]) + len(TROUBLE["novita_submit_responses"])
    retried = sum(1 for t in tasks.values() if t for a in t["attempts"] if a["outcome"] != "accepted")
    assert retried == refusals


def test_a_burst_longer_than_the_retry_budget_fails_the_task_with_the_providers_code(
    trouble_stack: Stack, sim: Simulator
) -> None:
    """Backoff gives up: a task refused more times than it has retries fails, with the provider's code."""
    delays = len(TROUBLE_ENV["SUBMIT_RETRY_DELAYS_S"].split(","))
    sim.configure(apikley_create_responses=[apikley(429, "rate limited")] * (delays + 1))
    with trouble_stack.client() as api:
        response = api.post("/v1/tasks", json={"prompt": "refused forever", "provider": "apikley"})
        assert response.status_code == 202, response.text
        task_id = response.json()["id"]
        done = wait_for(
            lambda: (t := api.get(f"/v1/tasks/{task_id}").json())["status"] in ("succeeded", "failed") and t,
            timeout_s=60,
            what="the refused task to finish",
        )
    assert done["status"] == "failed"
    assert done["error"]["code"] == "rate_limited"
    assert [a["outcome"] for a in done["attempts"]] == ["retrying"] * delays + ["rejected"]
