"""Submit job: hand a queued task to its provider, creating one paid provider task at most.

The job holds the task's submit lease (renewed while it runs, so a dead worker's task is picked
up in seconds) and records its attempt as `sending` before the request leaves, so whoever looks
next can tell a submit that never left from one whose answer was lost. The rules are pure, in
`service/domain/submission.py`; this module does the I/O. Safe to run twice: it acts only on a
queued task with no unsettled attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from redis.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.domain.clock import now_iso
from service.domain.ids import new_id
from service.domain.status import TaskStatus
from service.domain.submission import (
    Abandoned,
    AwaitProvider,
    Fail,
    Failover,
    Refusal,
    Retry,
    Send,
    Skip,
    SubmitDecision,
    WorkerLost,
    accept,
    close_attempt,
    closing_outcome,
    decide_submit_error,
    open_attempt,
    paid_attempts,
    plan_submit,
    start_attempt,
)
from service.domain.tasks import SubmitAttempt, Task, TaskError
from service.domain.transition import ProviderUpdate
from service.keys import submit_lease_key
from service.providers.base import ProviderError
from service.runtime import ProviderNotConfigured, Runtime
from service.store import Change
from service.telemetry import observe_submit_attempt
from workers.context import STOPPING, get_runtime
from workers.lease import Lease
from workers.poll import schedule_next_poll

log = logging.getLogger(__name__)

# A provider's answer, once read, is written down even through a Redis outage of this long.
RECORD_ANSWER_FOR_S = 60.0

T = TypeVar("T")


def submit_task(task_id: str) -> None:
    rt = get_runtime()
    lease = Lease(rt.redis, submit_lease_key(task_id), rt.settings.submit_lease_s)
    # Lease first, then read: a duplicate job reading before the lease could see "queued"
    # just as the first job finishes and releases it, and submit a second (paid) task.
    if not lease.acquire():
        return
    with lease:
        # A failover sends again at once, on the other provider, under the same lease.
        while _submit_once(rt, task_id, lease):
            pass


def _submit_once(rt: Runtime, task_id: str, lease: Lease) -> bool:
    """One attempt; True when the task should be sent again now (failover)."""
    task = rt.store.get(task_id)
    if task is None:
        return False
    step = plan_submit(task, attempt_id=new_id("att"), now=now_iso())
    if isinstance(step, Skip):
        if task.status is TaskStatus.CANCELED:
            log.info("submit skipped: task canceled task_id=%s", task_id)
        return False
    # Watched while the lease lives: a worker that dies mid-submit is noticed within seconds.
    rt.store.set_watchdog(task_id, rt.settings.submit_lease_s)
    if isinstance(step, Abandoned):
        log.warning("submit attempt left in flight by a dead worker task_id=%s attempt=%s", task_id, step.attempt.id)
        return _settle(rt, task_id, step.attempt, WorkerLost(), lease)
    return _send(rt, task, step, lease)


def _send(rt: Runtime, task: Task, step: Send, lease: Lease) -> bool:
    try:
        client = rt.provider(task.provider)
    except ProviderNotConfigured as exc:
        error = TaskError(code="provider_not_configured", message=str(exc))
        rt.apply(task.id, ProviderUpdate(status=TaskStatus.FAILED, error=error))
        return False
    attempt = step.attempt
    # Written before the request leaves: from here on, a crash means "answer unknown", never "not sent".
    started = rt.store.record(task.id, lambda t: start_attempt(t, attempt))
    if started is None:
        return False  # another job moved the task on
    if paid_attempts(started) > 1:
        # Only after a lost answer with RESUBMIT_UNCONFIRMED: the operator's choice, never silent.
        log.warning("second paid submit for one task task_id=%s attempts=%d", task.id, paid_attempts(started))
    try:
        provider_task_id = client.submit(started, rt.callback_url(started.id, started.provider))
    except ProviderError as err:
        refusal = err
    else:
        _durably(lambda: _accepted(rt, task.id, attempt, provider_task_id))
        return False
    return _durably(lambda: _settle(rt, task.id, attempt, refusal, lease))


def _accepted(rt: Runtime, task_id: str, attempt: SubmitAttempt, provider_task_id: str) -> None:
    def decide(task: Task) -> Change | None:
        if open_attempt(task, attempt.id) is None:
            return None  # already settled (a callback adopted this very id first)
        if task.provider_task_id not in (None, provider_task_id):
            log.warning(
                "second provider task for one task task_id=%s provider_task_id=%s kept=%s",
                task_id, provider_task_id, task.provider_task_id,
            )
            return Change(close_attempt(task, attempt.id, "accepted", provider_task_id=provider_task_id))
        return Change(
            accept(task, attempt.id, provider_task_id), ProviderUpdate(TaskStatus.SUBMITTED, provider_task_id=provider_task_id)
        )

    rt.change(task_id, decide)
    observe_submit_attempt(attempt.provider, "accepted")
    log.info("submitted task_id=%s provider=%s provider_task_id=%s", task_id, attempt.provider, provider_task_id)
    task = rt.store.get(task_id)
    if task is not None and task.status is TaskStatus.CANCELED:
        # The call was under way when the client canceled: the attempt is recorded, the task
        # stays canceled and is never polled. Neither provider can cancel, so it may charge.
        log.warning(
            "provider task created for a canceled task task_id=%s provider=%s provider_task_id=%s",
            task_id, attempt.provider, provider_task_id,
        )
    if task is not None and not task.status.terminal and task.provider_task_id == provider_task_id:
        schedule_next_poll(rt, task_id, delay_s=rt.first_check_s(task), chain_owner=None)


def _settle(rt: Runtime, task_id: str, attempt: SubmitAttempt, refusal: Refusal, lease: Lease) -> bool:
    """Close an attempt that gave us no task id, and act on what that means. True: send again now."""
    decided: list[SubmitDecision] = []
    grace = rt.settings.job_grace_s

    def decide(task: Task) -> Change | None:
        decided.clear()
        if open_attempt(task, attempt.id) is None:
            return None
        if task.status is TaskStatus.CANCELED:
            # Canceled while the call was under way: close the attempt, send nothing more.
            outcome = closing_outcome(None, refusal)
            return Change(close_attempt(task, attempt.id, outcome, code=refusal.code, message=refusal.message))
        if task.status is not TaskStatus.QUEUED:
            return None
        decision = decide_submit_error(task, refusal, rt.submit_policy)
        decided.append(decision)
        closed = close_attempt(task, attempt.id, closing_outcome(decision, refusal), code=refusal.code, message=refusal.message)
        next_attempt = len(closed.attempts)
        if isinstance(decision, Retry):

            def retry_later(pipe: Pipeline, written: Task) -> None:
                # The lease goes in the same write, so the retry never finds it taken.
                pipe.delete(lease.key)
                rt.jobs.submit(written.id, attempt=next_attempt, delay_s=decision.delay_s, pipeline=pipe)
                rt.store.set_watchdog(written.id, decision.delay_s + grace, pipe)

            return Change(closed, after=retry_later)
        if isinstance(decision, Failover):
            return Change(closed.model_copy(update={"provider": decision.target}))
        if isinstance(decision, Fail):
            return Change(closed, ProviderUpdate(TaskStatus.FAILED, error=decision.error))
        unconfirmed_s = rt.settings.submit_unconfirmed_s
        return Change(
            closed,
            ProviderUpdate(TaskStatus.SUBMITTED),
            after=lambda pipe, written: rt.store.set_watchdog(written.id, unconfirmed_s, pipe),
        )

    _, written = rt.change(task_id, decide)
    if not decided:
        if written is not None and written.status is TaskStatus.CANCELED:
            outcome = closing_outcome(None, refusal)
            observe_submit_attempt(attempt.provider, outcome)
            log.warning("submit ended after the task was canceled task_id=%s outcome=%s code=%s", task_id, outcome, refusal.code)
        return False
    decision = decided[0]
    outcome = closing_outcome(decision, refusal)
    observe_submit_attempt(attempt.provider, outcome)
    if isinstance(decision, Retry):
        log.warning("submit retry task_id=%s code=%s in %.1fs", task_id, refusal.code, decision.delay_s)
    elif isinstance(decision, Failover):
        log.warning("submit failover task_id=%s from=%s to=%s code=%s", task_id, attempt.provider, decision.target, refusal.code)
        return True
    elif isinstance(decision, Fail):
        log.warning("submit failed task_id=%s code=%s", task_id, refusal.code)
    elif isinstance(decision, AwaitProvider):
        log.warning(
            "submit outcome unknown task_id=%s provider=%s attempt=%s code=%s: waiting up to %.0f s for the provider's callback",
            task_id, attempt.provider, attempt.id, refusal.code, rt.settings.submit_unconfirmed_s,
        )
    return False


def _durably(write: Callable[[], T]) -> T:
    """Run a write that records a provider's answer, through a Redis outage of up to
    RECORD_ANSWER_FOR_S (or until the worker is told to stop). Given up, the attempt stays
    `sending`, which recovery settles as unconfirmed: never sent again on our own."""
    deadline = time.monotonic() + RECORD_ANSWER_FOR_S
    while True:
        try:
            return write()
        except (RedisConnectionError, RedisTimeoutError):
            if time.monotonic() > deadline or STOPPING.is_set():
                raise
            log.warning("redis unavailable while recording a provider's answer; retrying")
            STOPPING.wait(1)
