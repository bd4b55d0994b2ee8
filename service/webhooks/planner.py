"""What recording landed webhook attempts writes, decided as data (pure: no Redis, no clock).

The recorder reads what the decisions need (how long each subscription has been failing), calls
`plan_attempts`, and hands the `Plan` to `DeliveryStore.save_attempted`, which writes all of it in
one atomic call; subscriptions to disable are disabled after it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.domain.clock import unix_to_iso
from service.webhooks.models import Attempt, Delivery
from service.webhooks.outcomes import Dispatched, Failed, Successful
from service.webhooks.policy import DisableReason, decide, truncate_body

if TYPE_CHECKING:
    from service.webhooks.deliveries import IndexedEvent


@dataclass(frozen=True)
class Rules:
    """The settings the decisions follow."""

    # The wait before each attempt of a round (`WEBHOOK_RETRY_SCHEDULE_S`).
    schedule_s: list[float]
    disable_after_s: float
    # How long a pending delivery's next attempt may take past its due time before the sweep
    # sends it again.
    lease_s: float


@dataclass(frozen=True)
class Save:
    """A delivery's state after its attempt."""

    delivery: Delivery
    # Unix time by which its next attempt must have been recorded; None once it is final.
    due: float | None
    # A fan-out's first attempt: the delivery is not stored yet (written only if still absent).
    first: bool


@dataclass(frozen=True)
class Retry:
    """A `send` job to schedule: the delivery's attempt after `attempt`, in `delay_s`."""

    delivery_id: str
    # Attempts made so far (the job id names it, so scheduling the same retry twice keeps one job).
    attempt: int
    delay_s: float


@dataclass(frozen=True)
class Release:
    """A fan-out batch done: its outbox entries leave the in-flight list, its events join the
    index replays read."""

    inflight: str
    entries: list[str]
    events: list[IndexedEvent]


@dataclass(frozen=True)
class Health:
    """What one plan's attempts tell of a subscription's health (the dashboard shows it)."""

    # Unix time the newest successful attempt among them started; None: none succeeded.
    success_at: float | None
    # The failed attempts after it (all of them when none succeeded): they extend the streak.
    failures: int
    # The newest failed attempt: when it started and what it came to.
    failure_at: float | None = None
    failure: str | None = None


@dataclass(frozen=True)
class Plan:
    saves: list[Save] = field(default_factory=list)
    retries: list[Retry] = field(default_factory=list)
    # Subscriptions whose run of failed attempts a success ended.
    failure_runs_ended: list[str] = field(default_factory=list)
    disable: dict[str, DisableReason] = field(default_factory=dict)
    health: dict[str, Health] = field(default_factory=dict)
    release: Release | None = None


def succeeded(landed: Sequence[Dispatched]) -> set[str]:
    """The subscriptions that had a success among these attempts."""
    return {item.delivery.subscription_id for item in landed if isinstance(item, Successful) and item.delivery.subscription_id}


def failure_runs_to_read(landed: Sequence[Dispatched]) -> set[str]:
    """The subscriptions whose failure run `plan_attempts` needs: those with attempts here and no
    success (any success ends the run)."""
    subs = {item.delivery.subscription_id for item in landed if item.delivery.subscription_id}
    return subs - succeeded(landed)


def health_of(landed: Sequence[Dispatched]) -> dict[str, Health]:
    """Per subscription with attempts here: its newest success, the failures after it, its newest
    failure. (A task's own `webhook_url` has no subscription and no health.)"""
    by_sub: dict[str, list[Dispatched]] = {}
    for item in sorted(landed, key=lambda item: item.started_at):
        if item.delivery.subscription_id:
            by_sub.setdefault(item.delivery.subscription_id, []).append(item)
    health = {}
    for sub_id, items in by_sub.items():
        successes = [i for i, item in enumerate(items) if isinstance(item, Successful)]
        after = items[successes[-1] + 1 :] if successes else items
        failures = [item for item in items if isinstance(item, Failed)]
        health[sub_id] = Health(
            success_at=items[successes[-1]].started_at if successes else None,
            failures=len(after),
            failure_at=failures[-1].started_at if failures else None,
            failure=failures[-1].error if failures else None,
        )
    return health


def plan_attempts(
    landed: Sequence[Dispatched],
    *,
    first: bool,
    failing_for: Mapping[str, float],
    rules: Rules,
    now: float,
    release: Release | None = None,
) -> Plan:
    """The writes that record `landed`: each delivery's new state and deadline, its retry if it
    has one, the failure runs ended, the subscriptions to disable; plus `release` (given with the
    last of a fan-out's first attempts, so its entries leave in the write recording them).

    `failing_for`: seconds each subscription in `failure_runs_to_read(landed)` has been failing.
    """
    plan = Plan(failure_runs_ended=sorted(succeeded(landed)), health=health_of(landed), release=release)
    for item in landed:
        d, sub_id = item.delivery, item.delivery.subscription_id
        decision = decide(
            item.outcome,
            round_attempts=d.round_attempts + 1,
            schedule_s=rules.schedule_s,
            failing_for_s=failing_for.get(sub_id, 0.0) if sub_id else None,
            disable_after_s=rules.disable_after_s,
        )
        entry = Attempt(
            number=d.attempt_count + 1,
            at=unix_to_iso(item.started_at),
            url=item.url,
            status_code=item.status_code,
            latency_ms=item.latency_ms,
            error=None if isinstance(item, Successful) else item.error,
            response_body=truncate_body(item.body) if item.status_code is not None else None,
        )
        after = d.after_attempt(entry, decision, now)
        if decision.retry_in_s is None:
            plan.saves.append(Save(after, None, first))
        else:
            plan.saves.append(Save(after, now + decision.retry_in_s + rules.lease_s, first))
            plan.retries.append(Retry(after.id, after.attempt_count, decision.retry_in_s))
        if decision.disable is not None and sub_id:
            plan.disable[sub_id] = decision.disable
    return plan

