"""The sweep: the safety net that makes lost jobs harmless.

Every task that still expects something carries a watchdog time (`WATCHDOG`), pushed forward
whenever work for it is scheduled or running. A task past its watchdog time may have lost that
work (a worker killed, Redis restarted without the job); `service/domain/recovery.py` says what
to do, this module does it. It runs on its own worker thread every SWEEP_INTERVAL_S, under a
lock, so one worker sweeps at a time.
"""

from __future__ import annotations

import logging
import time

from service.domain.recovery import (
    FailUnconfirmed,
    Forget,
    Repoll,
    Resubmit,
    WaitUntil,
    decide_recovery,
)
from service.domain.status import TaskStatus
from service.domain.tasks import Task, TaskError
from service.domain.transition import ProviderUpdate
from service.jobs import SUBMIT, submit_job_id
from service.keys import SWEEP_LOCK, poll_chain_key, submit_lease_key
from service.runtime import Runtime
from service.store import Change
from workers.poll import schedule_next_poll

log = logging.getLogger(__name__)

def sweep(rt: Runtime) -> int:
    """Act on every task whose watchdog time has come; returns how many were given new work."""
    if not rt.redis.set(SWEEP_LOCK, "1", nx=True, ex=max(int(rt.settings.sweep_interval_s), 1)):
        return 0
    now = time.time()
    rt.store.trim_indexes(now)
    acted = 0
    for task_id in rt.store.due_tasks():
        task = rt.store.get(task_id)
        action = decide_recovery(task, now_s=now, deadlines=rt.deadlines)
        if isinstance(action, Forget):
            rt.store.forget_watchdog(task_id)
        elif isinstance(action, WaitUntil):
            rt.store.set_watchdog(task_id, action.at_s - now)
        elif isinstance(action, FailUnconfirmed):
            _fail_unconfirmed(rt, task_id)
        elif isinstance(action, Resubmit):
            assert task is not None
            acted += _resubmit(rt, task)
        elif isinstance(action, Repoll):
            rt.redis.delete(poll_chain_key(task_id))
            schedule_next_poll(rt, task_id, delay_s=0, chain_owner=None)
            acted += 1
            log.warning("sweep restarted polling task_id=%s status=%s", task_id, task.status.value if task else None)
    return acted


def _resubmit(rt: Runtime, task: Task) -> int:
    """A queued task: leave it be while its submit runs or waits; otherwise make a new job."""
    if rt.redis.exists(submit_lease_key(task.id)):
        rt.store.set_watchdog(task.id, rt.settings.submit_lease_s)
        return 0
    attempt = len(task.attempts)
    if rt.jobs.waiting(SUBMIT, submit_job_id(task.id, attempt)):
        rt.store.set_watchdog(task.id, rt.settings.job_grace_s)
        return 0
    # Its worker died (the lease lapsed, or it took the job and died before starting it), or
    # Redis lost the job. The new job reads the attempts: one left `sending` is settled as
    # unconfirmed, never sent again on our own.
    with rt.redis.pipeline() as pipe:
        rt.jobs.submit(task.id, attempt=attempt, pipeline=pipe)
        rt.store.set_watchdog(task.id, rt.settings.submit_lease_s, pipe)
        pipe.execute()
    log.warning("sweep resubmitted task_id=%s attempt=%d (its submit job was lost)", task.id, attempt)
    return 1


def _fail_unconfirmed(rt: Runtime, task_id: str) -> None:
    limit = rt.settings.submit_unconfirmed_s
    error = TaskError(
        code="submit_unconfirmed",
        message=f"the provider's answer to our submit was never read and no callback came within {limit:.0f} s; "
        "a result that arrives later is still delivered",
    )

    def decide(task: Task) -> Change | None:
        if task.status.terminal or task.provider_task_id is not None:
            return None
        return Change(task, ProviderUpdate(TaskStatus.FAILED, error=error))

    rt.change(task_id, decide)
    log.warning("task failed as submit_unconfirmed task_id=%s", task_id)
