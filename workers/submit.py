"""Submit job: hand a queued task to its provider, once.

Safe to run twice: it only acts on a task still `queued` with no provider id, and a short
lease stops two workers submitting the same task at once (a dead worker's lease expires, and
the sweep or RQ's abandoned-job retry runs the job again).
"""

from __future__ import annotations

import logging

from service.domain.failover import failover_target
from service.domain.status import TaskStatus
from service.domain.clock import now_iso
from service.domain.tasks import PROVIDERS, SubmitAttempt, Task
from service.domain.transition import ProviderUpdate
from service.providers.base import ProviderError
from service.runtime import Runtime
from workers.context import get_runtime
from workers.poll import schedule_next_poll

log = logging.getLogger(__name__)


def lease_key(task_id: str) -> str:
    return f"kr:lease:submit:{task_id}"


def submit_task(task_id: str) -> None:
    rt = get_runtime()
    # Lease first, then read: a duplicate job reading before the lease could see "queued"
    # just as the first job finishes and releases it, and submit a second (paid) task.
    if not rt.redis.set(lease_key(task_id), "1", nx=True, ex=int(rt.settings.submit_lease_s)):
        return
    try:
        task = rt.store.get(task_id)
        if task is None or task.status is not TaskStatus.QUEUED or task.provider_task_id:
            return
        _submit(rt, task)
    finally:
        rt.redis.delete(lease_key(task_id))


def _submit(rt: Runtime, task: Task) -> None:
    try:
        provider_task_id = rt.provider(task.provider).submit(task, rt.callback_url(task.id))
    except ProviderError as err:
        _on_error(rt, task, err)
        return
    _note_attempt(rt, task.id, SubmitAttempt(provider=task.provider, at=now_iso(), outcome="accepted"))
    transition = rt.apply(task.id, ProviderUpdate(status=TaskStatus.SUBMITTED, provider_task_id=provider_task_id))
    log.info("submitted task_id=%s provider=%s provider_task_id=%s", task.id, task.provider, provider_task_id)
    if transition is not None:
        schedule_next_poll(rt, task.id, delay_s=rt.first_check_s(task), chain_owner=None)


def _on_error(rt: Runtime, task: Task, err: ProviderError) -> None:
    retries_so_far = sum(1 for a in task.attempts if a.provider == task.provider and a.outcome == "retrying")
    delays = rt.settings.submit_retry_delays_s
    now = now_iso()
    # Credits, feature off, maintenance: the provider itself is out; a 5xx counts once repeated.
    if err.provider_level and (not err.retryable or err.code == "maintenance" or retries_so_far >= 1):
        configured = [p for p in PROVIDERS if rt.settings.provider_configured(p)]
        target = failover_target(task, configured=configured)
        if target is not None:
            attempt = SubmitAttempt(provider=task.provider, at=now, outcome="rejected", code=err.code, message=err.message)
            _note_attempt(rt, task.id, attempt)
            rt.store.record(task.id, lambda t: t.model_copy(update={"provider": target}))
            rt.store.set_watchdog(task.id, rt.settings.submit_lease_s)
            rt.redis.delete(lease_key(task.id))  # the next job must find the lease free
            rt.jobs.submit(task.id)
            log.warning("submit failover task_id=%s from=%s to=%s code=%s", task.id, task.provider, target, err.code)
            return
    if err.retryable and retries_so_far < len(delays):
        delay = delays[retries_so_far]
        attempt = SubmitAttempt(provider=task.provider, at=now, outcome="retrying", code=err.code, message=err.message)
        _note_attempt(rt, task.id, attempt)
        rt.store.set_watchdog(task.id, delay + rt.settings.submit_lease_s)
        rt.redis.delete(lease_key(task.id))
        rt.jobs.submit(task.id, delay_s=delay)
        log.warning("submit retry task_id=%s code=%s in %.1fs", task.id, err.code, delay)
        return
    attempt = SubmitAttempt(provider=task.provider, at=now, outcome="rejected", code=err.code, message=err.message)
    _note_attempt(rt, task.id, attempt)
    rt.apply(task.id, ProviderUpdate(status=TaskStatus.FAILED, error=err.as_task_error()))
    log.warning("submit failed task_id=%s code=%s", task.id, err.code)


def _note_attempt(rt: Runtime, task_id: str, attempt: SubmitAttempt) -> None:
    rt.store.record(task_id, lambda t: t.model_copy(update={"attempts": [*t.attempts, attempt]}))
