"""What happens, counted and logged: the Prometheus counters and histogram, bumped where things
happen, and the structured log line of each task event, submit attempt, poll, webhook attempt and
callback. No web framework and no queue library here: the web process and the workers both count
through this module. How the counts are served is `service.metrics_http`.

Counters live in the process that counts them (prometheus-client's default registry): the web
process serves its own at `GET /metrics`, and a worker serves its own on `WORKER_METRICS_PORT`.
Scrape every process and `sum()` across instances. prometheus-client's multiprocess mode is not
used (each process is its own scrape target), so a counter is per process and starts at zero
when the process restarts, as Prometheus' `rate()` expects.

Counting costs a dict lookup and a locked add (about a microsecond), so it sits on the hot paths;
`_child` skips prometheus-client's per-call label handling there.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

from service.domain.storage import STORAGE_EVENTS
from service.domain.transition import Transition
from service.webhooks.policy import Outcome, classify

if TYPE_CHECKING:
    from service.domain.transition import ProviderUpdate
    from service.webhooks.models import Delivery
    from service.webhooks.outcomes import AttemptResult

# Log lines keep the logger name they have always had: log queries select on it.
log = logging.getLogger(__name__)

# `*_created` timestamps double the output and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

TASKS_CREATED = Counter("kling_relay_tasks_created", "Tasks created through the API, by provider", ["provider"])
TRANSITIONS = Counter(
    "kling_relay_task_transitions",
    "Task state changes applied (one event each), by provider and new status",
    ["provider", "status"],
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
LIVE_STREAMS = Gauge(
    "kling_relay_live_streams", "Event streams (GET /v1/tasks/{id}/stream, /v1/events/stream) open in this web process"
)
DELIVERY_LATENCY = Histogram(
    "kling_relay_delivery_latency_seconds",
    "Time from sending a webhook to its answer (or failure)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0),
)

STORAGE_TRIES = Counter(
    "kling_relay_storage_tries", "Tries at keeping a finished video, by outcome (stored, or the problem's code)", ["outcome"]
)
STORAGE_BYTES = Counter("kling_relay_storage_bytes", "Bytes of video downloaded and kept")

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
        if event.type not in STORAGE_EVENTS:  # no state change: counted as storage tries
            _child(TRANSITIONS, task.provider, task.status.value).inc()
        # A failure names its code: a refused result (invalid_result_url) is found by grepping for it.
        error = f" error={task.error.code}" if task.error is not None and event.type == "task.failed" else ""
        # (The ids become the line's fields from the message itself: service/logs.py.)
        log.info("%s task_id=%s event_id=%s provider=%s%s", event.type, task.id, event.id, task.provider, error)
    return transition


def observe_storage(provider: str, outcome: str, size: int, seconds: float) -> None:
    """Count one try at keeping a video and log it (with its throughput when stored)."""
    _child(STORAGE_TRIES, outcome).inc()
    if outcome == "stored":
        STORAGE_BYTES.inc(size)
        rate = size / seconds / 1e6 if seconds > 0 else 0.0
        log.info("video stored provider=%s bytes=%d seconds=%.3f mb_per_s=%.1f", provider, size, seconds, rate)


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


def observe_callback(provider: str, outcome: str, reason: str) -> None:
    """Count a provider callback: `outcome` accepted (reason changed, unchanged, confirming),
    rejected (reason: the error code) or error (reason: the exception's type)."""
    _child(CALLBACKS, provider, outcome, reason).inc()
