"""Serving the metrics: the web's registry (this process's counters plus gauges read from Redis
at scrape time) and the worker's own metrics server. What is counted is `service.telemetry`.

The gauges (queue depths, scheduled jobs, pending deliveries, tasks per status, workers) describe
the shared Redis, so every web process reports the same values: aggregate them with `max()`.
They cost one pipelined round trip per scrape and nothing on any request path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from rq.worker_registration import REDIS_WORKER_KEYS

import service.telemetry  # noqa: F401  (registers the counters served here)
from service.domain.status import TaskStatus
from service.jobs import QUEUES
from service.keys import DELIVERIES_DUE, OUTBOX, OUTBOX_DEAD, index_key
from service.settings import Settings, SettingsError

# Log lines keep the logger name they have always had: log queries select on it.
log = logging.getLogger(__name__)


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
            "Recorded webhook deliveries not yet delivered or failed"
            " (awaiting a retry; first attempts in flight are not counted)",
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
