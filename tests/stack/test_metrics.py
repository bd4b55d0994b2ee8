"""Prometheus metrics from real web and worker processes: counters where things happen, gauges
read from Redis at scrape time."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.domain.events import make_event
from service.domain.status import TaskStatus
from service.domain.tasks import Task, TaskInput
from service.domain.transition import Transition
from service.metrics_http import RedisCollector
from service.redis_server import free_port
from service.telemetry import observe_transition
from tests.stack.conftest import Simulator, Stack, wait_for
from tests.stack.receivers import Receiver, run_task, serve_receiver, subscribe
from tests.stack.stacks import owned_stack

# A failed attempt's retry waits long enough to be seen scheduled.
ENV = {"WEBHOOK_RETRY_SCHEDULE_S": "0,60", "WEBHOOK_LEASE_S": "90"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def own(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    simulator.reset()  # to its defaults: an earlier module may have reconfigured it
    # A free port can be taken before the worker binds it (client connections draw from the same
    # range): a worker that finds it taken exits, and the stack starts again on another.
    for _ in range(3):
        env = {**ENV, "WORKER_METRICS_PORT": str(free_port())}
        with owned_stack(tmp_path_factory.mktemp("metrics"), simulator, env) as owned:
            if _worker_serves_metrics(owned.stack):
                yield owned.stack
                return
    pytest.fail("the worker found its metrics port taken three times")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as served:
        yield served


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _worker_serves_metrics(stack: Stack) -> bool:
    """Once the worker answers on its metrics port, or has exited: whether it is serving."""
    [worker] = stack.workers
    wait_for(lambda: worker.poll() is not None or _try_scrape(_worker_url(stack)), timeout_s=30, what="the worker's metrics")
    return worker.poll() is None


def _worker_url(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.env_overrides['WORKER_METRICS_PORT']}/metrics"


def worker_metrics(stack: Stack) -> Samples:
    found: Samples = wait_for(lambda: _try_scrape(_worker_url(stack)), timeout_s=15, what="worker metrics")
    return found


def _try_scrape(url: str) -> Samples | None:
    try:
        return scrape(url)
    except httpx.HTTPError:
        return None


def test_web_counts_created_tasks_and_callbacks_by_outcome_and_reason(own: Stack) -> None:
    before = scrape(f"{own.url}/metrics")
    with own.client() as api:
        run_task(api)
        created = api.post("/v1/tasks", json={"prompt": "a heron", "provider": "novita"}).json()
        forged = httpx.post(
            f"{own.url}/callbacks/apikley/{created['id']}/forged", json={"data": {"taskId": "x", "state": "success"}}
        )
        assert forged.status_code == 401
    after = scrape(f"{own.url}/metrics")
    assert (
        value(after, "kling_relay_tasks_created_total", provider="apikley")
        == value(before, "kling_relay_tasks_created_total", provider="apikley") + 1
    )
    assert (
        value(after, "kling_relay_tasks_created_total", provider="novita")
        == value(before, "kling_relay_tasks_created_total", provider="novita") + 1
    )
    rejected = {"provider": "apikley", "outcome": "rejected", "reason": "invalid_token"}
    assert value(after, "kling_relay_callbacks_total", **rejected) == value(before, "kling_relay_callbacks_total", **rejected) + 1
    # The simulator's terminal callback is accepted and confirmed with a poll before it counts.
    confirming = {"provider": "apikley", "outcome": "accepted", "reason": "confirming"}
    assert value(after, "kling_relay_callbacks_total", **confirming) > value(before, "kling_relay_callbacks_total", **confirming)


def test_worker_counts_transitions_polls_and_delivery_attempts_with_latency(own: Stack, receiver: Receiver) -> None:
    before = worker_metrics(own)
    with own.client() as api:
        good = subscribe(api, receiver.answer("metrics-ok"), ["task.succeeded"])
        bad = subscribe(api, receiver.answer("metrics-down", then=500), ["task.succeeded"])
        run_task(api)
        receiver.wait_for_count("metrics-down", 1)
        receiver.wait_for_count("metrics-ok", 1)

    def landed() -> Samples | None:
        now = worker_metrics(own)
        return (
            now
            if value(now, "kling_relay_delivery_attempts_total", outcome="failed")
            > value(before, "kling_relay_delivery_attempts_total", outcome="failed")
            else None
        )

    after = wait_for(landed, timeout_s=10, what="the attempts to be counted")

    def grew(name: str, by: float = 1, **labels: str) -> bool:
        return value(after, name, **labels) - value(before, name, **labels) >= by

    assert grew("kling_relay_task_transitions_total", provider="apikley", status="submitted")
    assert grew("kling_relay_task_transitions_total", provider="apikley", status="succeeded")
    assert grew("kling_relay_polls_total", provider="apikley", outcome="answered")
    assert grew("kling_relay_delivery_attempts_total", outcome="delivered")
    assert grew("kling_relay_delivery_latency_seconds_count", by=2)
    assert value(after, "kling_relay_delivery_latency_seconds_bucket", le="+Inf") == value(
        after, "kling_relay_delivery_latency_seconds_count"
    )

    # The failed attempt's retry now waits on the scheduler: the web process sees it in Redis.
    web = scrape(f"{own.url}/metrics")
    assert value(web, "kling_relay_redis_up") == 1
    assert value(web, "kling_relay_scheduled_jobs", queue="deliver") >= 1
    assert value(web, "kling_relay_deliveries_pending") >= 1
    assert value(web, "kling_relay_workers") == 1
    assert value(web, "kling_relay_tasks", status="succeeded") >= 1
    for queue in ("submit", "poll", "deliver", "outbox", "outbox_dead"):
        assert ("kling_relay_queue_depth", frozenset({("queue", queue)})) in web
    with own.client() as api:
        for sub in (good, bad):
            api.delete(f"/v1/subscriptions/{sub['id']}")


def test_openmetrics_is_served_to_scrapers_that_ask_for_it(own: Stack) -> None:
    answer = httpx.get(f"{own.url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    assert answer.text.rstrip().endswith("# EOF") and answer.text.count("# EOF") == 1
    assert "kling_relay_queue_depth" in answer.text


def test_a_scrape_with_redis_down_reports_it_instead_of_failing() -> None:
    collector = RedisCollector(Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)))
    families = list(collector.collect())
    assert [(f.name, f.samples[0].value) for f in families] == [("kling_relay_redis_up", 0)]


def test_counting_a_transition_costs_microseconds() -> None:
    now = "2025-01-01T00:00:00.000Z"
    task = Task(
        id="task_1", provider="apikley", status=TaskStatus.SUCCEEDED, input=TaskInput(prompt="x"), created_at=now, updated_at=now
    )
    transition = Transition(
        task=task, previous_status=TaskStatus.RUNNING, event=make_event(task, "task.succeeded", event_id="evt_1", created_at=now)
    )
    started = time.perf_counter()
    for _ in range(20_000):
        observe_transition(transition)
    per_call_us = (time.perf_counter() - started) / 20_000 * 1e6
    assert per_call_us < 25, f"{per_call_us:.1f} µs per transition counted"
