"""Prometheus metrics: counters bumped where things happen, gauges read from Redis at scrape time.

Counters live in the process that counts them (prometheus-client's default registry): the web
process serves its own at `GET /metrics`, and a worker serves its own on `WORKER_METRICS_PORT`.
Scrape every process and `sum()` across instances. prometheus-client's multiprocess mode is not
used (each process is its own scrape target), so a counter is per process and starts at zero
when the process restarts, as Prometheus' `rate()` expects.

The gauges (queue depths, scheduled jobs, pending deliveries, tasks per status, workers) describe
the shared Redis, so every web process reports the same values: aggregate them with `max()`.
They cost one pipelined round trip per scrape and nothing on any request path.

Counting costs a dict lookup and a locked add (about a microsecond), so it sits on the hot paths;
`_child` skips prometheus-client's per-call label handling there.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from rq.worker_registration import REDIS_WORKER_KEYS
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.domain.status import TaskStatus
from service.domain.transition import Transition
from service.errors import ApiError
from service.jobs import QUEUES
from service.keys import DELIVERIES_DUE, OUTBOX, OUTBOX_DEAD, index_key
from service.settings import Settings, SettingsError
from service.webhooks.policy import Outcome, classify

if TYPE_CHECKING:
    from service.domain.transition import ProviderUpdate
    from service.webhooks.models import Delivery
    from service.webhooks.sender import AttemptResult

log = logging.getLogger(__name__)

# `*_created` timestamps double the output and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

TASKS_CREATED = Counter("kling_relay_tasks_created", "Tasks created through the API, by provider", ["provider"])
TRANSITIONS = Counter(
    "kling_relay_task_transitions", "Task state changes applied (one event each), by provider and new status", ["provider", "status"]
)
CALLBACKS = Counter(
    "kling_relay_callbacks",
    "Provider callbacks received: outcome accepted (reason changed, unchanged, confirming) or rejected (reason: the error code)",
    ["provider", "outcome", "reason"],
)
SUBMIT_ATTEMPTS = Counter(
    "kling_relay_submit_attempts",
    "Provider submit attempts by provider and outcome: accepted, adopted (its task id came by callback), "
    "unconfirmed (sent, answer never read: a paid task may exist), retrying, rejected",
    ["provider", "outcome"],
)
POLLS = Counter("kling_relay_polls", "Provider status polls, by provider and outcome (answered, error)", ["provider", "outcome"])
DELIVERY_ATTEMPTS = Counter(
    "kling_relay_delivery_attempts", "Webhook delivery attempts, by outcome (delivered, failed, gone)", ["outcome"]
)
DELIVERY_LATENCY = Histogram(
    "kling_relay_delivery_latency_seconds",
    "Time from sending a webhook to its answer (or failure)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0),
)

T = TypeVar("T", bound=Transition | None)


@lru_cache(maxsize=1024)
def _child(metric: Counter, *labels: str) -> Counter:
    # `labels()` takes a lock and rebuilds its key on every call; the hot paths' few label
    # combinations are worth looking up once.
    return metric.labels(*labels)


def observe_transition(transition: T) -> T:
    """Count and log a transition (None: nothing changed); returns it, so a call can wrap an apply.
    Callbacks and polls both pass here, so this is the one log line per task event."""
    if transition is not None:
        task, event = transition.task, transition.event
        _child(TRANSITIONS, task.provider, task.status.value).inc()
        # A failure names its code: a refused result (invalid_result_url) is found by grepping for it.
        error = f" error={task.error.code}" if task.error is not None and event.type == "task.failed" else ""
        log.info(
            "%s task_id=%s event_id=%s provider=%s%s", event.type, task.id, event.id, task.provider, error,
            extra={"task_id": task.id, "event_id": event.id},
        )
    return transition


def observe_submit_attempt(provider: str, outcome: str) -> None:
    _child(SUBMIT_ATTEMPTS, provider, outcome).inc()


def observe_poll(provider: str, update: ProviderUpdate | None) -> None:
    POLLS.labels(provider, "error" if update is None else "answered").inc()


def observe_attempt(delivery: Delivery, result: AttemptResult) -> None:
    """Count a webhook attempt; log it (at INFO when it did not land: successes are too many)."""
    outcome = classify(result.status_code)
    _child(DELIVERY_ATTEMPTS, outcome.value).inc()
    DELIVERY_LATENCY.observe(result.latency_ms / 1000)
    level = logging.DEBUG if outcome is Outcome.DELIVERED else logging.INFO
    if not log.isEnabledFor(level):
        return
    ids = {"delivery_id": delivery.id, "event_id": delivery.event_id}
    # The subject is a task, or a subscription for `subscription.disabled`.
    ids["task_id" if delivery.subject_id.startswith("task_") else "subscription_id"] = delivery.subject_id
    if delivery.subscription_id:
        ids["subscription_id"] = delivery.subscription_id
    log.log(
        level,
        "delivery attempt %s delivery_id=%s status=%s latency_ms=%d error=%s",
        outcome.value, delivery.id, result.status_code, result.latency_ms, result.error,
        extra=ids,
    )


Endpoint = Callable[[Request], Awaitable[Response]]


def counting_callbacks(provider: str, endpoint: Endpoint) -> Endpoint:
    """Wrap a callback receiver so every callback is counted by outcome and reason."""

    async def counted(request: Request) -> Response:
        try:
            response = await endpoint(request)
        except ApiError as exc:
            _child(CALLBACKS, provider, "rejected", exc.code).inc()
            raise
        except Exception as exc:  # Redis down (503) and the like: counted, then handled as before
            _child(CALLBACKS, provider, "error", type(exc).__name__).inc()
            raise
        if response.status_code == 202:
            reason = "confirming"
        else:
            reason = "changed" if b'"changed":true' in bytes(response.body) else "unchanged"
        _child(CALLBACKS, provider, "accepted", reason).inc()
        return response

    return counted


def counted_callback_routes(routes: Iterable[BaseRoute]) -> list[BaseRoute]:
    """The callback routes (`/callbacks/{provider}/...`), each wrapped by `counting_callbacks`."""
    counted: list[BaseRoute] = []
    for route in routes:
        if isinstance(route, Route) and route.path.startswith("/callbacks/"):
            provider = route.path.split("/")[2]
            route = Route(route.path, counting_callbacks(provider, route.endpoint), methods=route.methods, name=route.name)
        counted.append(route)
    return counted


class RedisCollector(Collector):
    """Gauges read from Redis when Prometheus scrapes: queue depths, scheduled and failed jobs,
    pending deliveries, tasks per status and live workers, in one pipelined round trip."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        queues = [Queue(name, connection=redis) for name in QUEUES]
        self.queue_keys = [(q.name, q.key) for q in queues]
        self.scheduled_keys = [(q.name, ScheduledJobRegistry(queue=q).key) for q in queues]  # type: ignore[no-untyped-call]
        self.failed_keys = [(q.name, FailedJobRegistry(queue=q).key) for q in queues]
        self.status_keys = [(s.value, index_key(s)) for s in TaskStatus]

    def describe(self) -> Iterable[Metric]:
        return []  # generated per scrape; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("kling_relay_redis_up", "1 if Redis answered this scrape")
        try:
            values = iter(self._read())
        except RedisError as exc:
            log.warning("metrics: redis unavailable (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily(
            "kling_relay_queue_depth",
            "Jobs waiting on each RQ queue, events waiting in the outbox, and outbox entries set aside (outbox_dead)",
            labels=["queue"],
        )
        for name, _ in self.queue_keys:
            depth.add_metric([name], next(values))
        depth.add_metric(["outbox"], next(values))
        depth.add_metric(["outbox_dead"], next(values))
        yield depth
        scheduled = GaugeMetricFamily(
            "kling_relay_scheduled_jobs", "Jobs scheduled for later: submit retries, polls, webhook retries", labels=["queue"]
        )
        for name, _ in self.scheduled_keys:
            scheduled.add_metric([name], next(values))
        yield scheduled
        failed = GaugeMetricFamily("kling_relay_failed_jobs", "Jobs in RQ's failed registry (crashed jobs)", labels=["queue"])
        for name, _ in self.failed_keys:
            failed.add_metric([name], next(values))
        yield failed
        yield GaugeMetricFamily(
            "kling_relay_deliveries_pending",
            "Recorded webhook deliveries not yet delivered or failed (awaiting a retry; first attempts in flight are not counted)",
            value=next(values),
        )
        tasks = GaugeMetricFamily("kling_relay_tasks", "Tasks stored, by status", labels=["status"])
        for status, _ in self.status_keys:
            tasks.add_metric([status], next(values))
        yield tasks
        yield GaugeMetricFamily("kling_relay_workers", "RQ workers registered (alive within WORKER_TTL_S)", value=next(values))

    def _read(self) -> list[int]:
        with self.redis.pipeline(transaction=False) as pipe:
            for _, key in self.queue_keys:
                pipe.llen(key)
            pipe.llen(OUTBOX)
            pipe.llen(OUTBOX_DEAD)
            for _, key in [*self.scheduled_keys, *self.failed_keys]:
                pipe.zcard(key)
            pipe.zcard(DELIVERIES_DUE)
            for _, key in self.status_keys:
                pipe.zcard(key)
            pipe.scard(REDIS_WORKER_KEYS)
            return [int(value) for value in pipe.execute()]


class _Together(Collector):
    def __init__(self, *parts: Collector) -> None:
        self.parts = parts

    def collect(self) -> Iterator[Metric]:
        for part in self.parts:
            yield from part.collect()


def web_registry(redis: Redis) -> CollectorRegistry:
    """What a web process serves: its own counters (the default registry, with prometheus-client's
    process and Python metrics) and the Redis gauges."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Together(REGISTRY, RedisCollector(redis)))
    return registry


def serve_worker_metrics(settings: Settings) -> None:
    """Serve this worker's counters on WORKER_METRICS_PORT (a daemon thread), if it is set."""
    if settings.worker_metrics_port:
        try:
            start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host)
        except OSError as exc:
            where = f"{settings.worker_metrics_host}:{settings.worker_metrics_port}"
            raise SettingsError(f"cannot serve worker metrics on {where} (WORKER_METRICS_PORT): {exc.strerror}") from exc
        log.info("worker metrics at http://%s:%d/metrics", settings.worker_metrics_host, settings.worker_metrics_port)
