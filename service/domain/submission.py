"""Handing a task to its provider, as pure decisions.

Every provider call may create a paid task, so each one is recorded as an attempt *before* it is
sent (`sending`) and closed after. That lets a later reader tell apart an attempt that never left
(no record, or refused by code), one that was answered (`accepted`), and one whose answer nobody
read (`unconfirmed`: a timeout, or a worker that died mid-call). Only the first kind is retried on
our own: an unconfirmed attempt waits for the provider's per-task callback to bring its task id
(`adopted`), unless the operator allows resubmitting (`RESUBMIT_UNCONFIRMED`).

No Redis, no network, no clock: callers pass `now` and ids in. Providers' limits and order come
from their specs in the registry (pure data).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from service.domain.status import TaskStatus
from service.domain.tasks import (
    AUTO,
    PAID_OUTCOMES,
    AttemptOutcome,
    ProviderName,
    SubmitAttempt,
    Task,
    TaskError,
    TaskInput,
    limit_violations,
)
from service.providers import registry

OPEN_OUTCOMES = frozenset({"sending", "unconfirmed"})


class Refusal(Protocol):
    """What a failed provider call tells us (`service.providers.base.ProviderError` is one)."""

    @property
    def code(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def retryable(self) -> bool: ...
    @property
    def provider_level(self) -> bool: ...
    @property
    def provider_code(self) -> str | None: ...
    @property
    def outcome_unknown(self) -> bool:
        """The request may have reached the provider and its answer was not read."""
        ...


@dataclass(frozen=True)
class WorkerLost:
    """A `sending` attempt found by the next job: its worker died before reading the answer."""

    code: str = "worker_lost"
    message: str = "the worker stopped before the provider's answer was read"
    retryable: bool = True
    provider_level: bool = False
    provider_code: str | None = None
    outcome_unknown: bool = True


@dataclass(frozen=True)
class SubmitPolicy:
    retry_delays_s: Sequence[float]
    # Providers with credentials here: the ones an `auto` task may fail over to.
    configured: Collection[ProviderName]
    # Operator override: treat an unknown outcome like a retryable refusal (may pay twice).
    resubmit_unconfirmed: bool = False


# --- which provider ----------------------------------------------------------------------------


class NoProviderFits(Exception):
    """No configured provider takes this input; `fields` names each provider's limit it breaks."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(", ".join(fields))
        self.fields = fields


def choose_provider(
    task_input: TaskInput, *, default: ProviderName, configured: Collection[ProviderName]
) -> ProviderName:
    """For an `auto` task: the first configured provider, the default first, whose documented
    limits the input fits. Raises NoProviderFits (naming every limit broken) when none does."""
    candidates = [p for p in (default, *registry.names()) if p in configured]
    problems: dict[str, list[str]] = {}
    for candidate in dict.fromkeys(candidates):
        broken = limit_violations(task_input, candidate, registry.get(candidate).limits)
        if not broken:
            return candidate
        for name, message in broken.items():
            problems.setdefault(name, []).append(message)
    raise NoProviderFits({name: "; ".join(messages) for name, messages in problems.items()})


def failover_target(task: Task, *, configured: Collection[ProviderName]) -> ProviderName | None:
    """The untried, configured provider whose limits the input fits; None if there is none.

    Only `auto` tasks fail over: a client who named a provider asked for that one.
    """
    if task.requested_provider != AUTO:
        return None
    tried = {attempt.provider for attempt in task.attempts} | {task.provider}
    for spec in registry.all():
        if spec.name not in tried and spec.name in configured and not limit_violations(task.input, spec.name, spec.limits):
            return spec.name
    return None


# --- what a submit job does with the task it holds the lease for ---------------------------------


@dataclass(frozen=True)
class Send:
    """Record this attempt as `sending`, then call the provider."""

    attempt: SubmitAttempt


@dataclass(frozen=True)
class Abandoned:
    """A job died with this attempt in flight: its outcome is unknown."""

    attempt: SubmitAttempt


@dataclass(frozen=True)
class Skip:
    """Nothing to send: the task was submitted, finished (or canceled), or is waiting for its provider."""


def plan_submit(task: Task, *, attempt_id: str, now: str) -> Send | Abandoned | Skip:
    if task.status is not TaskStatus.QUEUED or task.provider_task_id is not None:
        return Skip()
    last = task.attempts[-1] if task.attempts else None
    if last is not None and last.outcome == "sending":
        return Abandoned(last)
    return Send(SubmitAttempt(id=attempt_id, provider=task.provider, at=now, outcome="sending"))


def start_attempt(task: Task, attempt: SubmitAttempt) -> Task | None:
    """The task with `attempt` recorded as sending; None if another job got there first."""
    if not isinstance(plan_submit(task, attempt_id="", now=""), Send):
        return None
    return task.model_copy(update={"attempts": [*task.attempts, attempt]})


def open_attempt(task: Task, attempt_id: str | None) -> SubmitAttempt | None:
    """The attempt with this id, if its outcome is still to be settled."""
    for attempt in task.attempts:
        if attempt.id == attempt_id and attempt.outcome in OPEN_OUTCOMES:
            return attempt
    return None


def close_attempt(
    task: Task,
    attempt_id: str | None,
    outcome: AttemptOutcome,
    *,
    code: str | None = None,
    message: str | None = None,
    provider_task_id: str | None = None,
) -> Task:
    attempts = [
        a.model_copy(update={"outcome": outcome, "code": code, "message": message, "provider_task_id": provider_task_id})
        if a.id == attempt_id
        else a
        for a in task.attempts
    ]
    return task.model_copy(update={"attempts": attempts})


def accept(task: Task, attempt_id: str | None, provider_task_id: str) -> Task:
    """The provider answered with its task id: close the attempt and keep the id."""
    closed = close_attempt(task, attempt_id, "accepted", provider_task_id=provider_task_id)
    if task.provider_task_id is None:
        closed = closed.model_copy(update={"provider_task_id": provider_task_id})
    return closed


def adopt(task: Task, provider_task_id: str) -> Task:
    """A provider task id brought by a per-task callback, for a task that has none yet.

    Only the provider (and we) know the per-task URL, so its callback can only be about the
    attempt whose answer we never read: that attempt becomes `adopted`. Returns `task` itself
    when there is nothing to adopt.
    """
    if task.provider_task_id is not None:
        return task
    attempts = list(task.attempts)
    for i in range(len(attempts) - 1, -1, -1):
        if attempts[i].outcome in OPEN_OUTCOMES:
            attempts[i] = attempts[i].model_copy(update={"outcome": "adopted", "provider_task_id": provider_task_id})
            break
    return task.model_copy(update={"provider_task_id": provider_task_id, "attempts": attempts})


def paid_attempts(task: Task) -> int:
    """Attempts that created, or may have created, a provider task."""
    return sum(1 for a in task.attempts if a.outcome in PAID_OUTCOMES)


# --- what a failed call means ------------------------------------------------------------------


@dataclass(frozen=True)
class Retry:
    """Send again, on the same provider, after `delay_s`."""

    delay_s: float


@dataclass(frozen=True)
class Failover:
    """The provider itself cannot serve us: move the task to `target` and send there."""

    target: ProviderName


@dataclass(frozen=True)
class Fail:
    error: TaskError


@dataclass(frozen=True)
class AwaitProvider:
    """Sent, answer unknown: a paid task may exist. Wait for its callback (or the time limit)."""


SubmitDecision = Retry | Failover | Fail | AwaitProvider


def decide_submit_error(task: Task, refusal: Refusal, policy: SubmitPolicy) -> SubmitDecision:
    """What to do after a provider call on `task.provider` did not give us a task id.

    Credits, feature off, maintenance: the provider itself is out, so an `auto` task fails over
    at once; a 5xx counts as an outage once it repeats. A retryable refusal waits its turn on
    `retry_delays_s` (whose length caps the retries); anything else fails the task.
    """
    retries_so_far = sum(
        1 for a in task.attempts if a.provider == task.provider and a.outcome in ("retrying", "unconfirmed")
    )
    delays = policy.retry_delays_s
    if refusal.outcome_unknown:
        if policy.resubmit_unconfirmed and retries_so_far < len(delays):
            return Retry(delays[retries_so_far])
        return AwaitProvider()
    if refusal.provider_level and (not refusal.retryable or refusal.code == "maintenance" or retries_so_far >= 1):
        target = failover_target(task, configured=policy.configured)
        if target is not None:
            return Failover(target)
    if refusal.retryable and retries_so_far < len(delays):
        return Retry(delays[retries_so_far])
    return Fail(TaskError(code=refusal.code, message=refusal.message, provider_code=refusal.provider_code))


def closing_outcome(decision: SubmitDecision | None, refusal: Refusal) -> AttemptOutcome:
    """How the attempt that led to `decision` is recorded; None when the task was canceled while
    the call was under way (nothing follows, but an unread answer still means a paid task may
    exist)."""
    if refusal.outcome_unknown:
        return "unconfirmed"
    return "retrying" if isinstance(decision, Retry) else "rejected"
