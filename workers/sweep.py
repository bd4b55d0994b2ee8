"""The sweep: the safety net that makes lost jobs harmless.

Every non-terminal task carries a watchdog deadline (`kr:watchdog`), pushed forward whenever a
job for it is scheduled. A task past its deadline lost its job (worker killed, Redis restarted
without the job): a queued task gets its submit again, a submitted one gets a new poll chain.
"""

from __future__ import annotations

import logging
import time

from service.domain.status import TaskStatus
from service.runtime import Runtime
from service.store import WATCHDOG
from workers.poll import chain_key, schedule_next_poll

log = logging.getLogger(__name__)

LOCK = "kr:lock:sweep"


def sweep(rt: Runtime) -> int:
    """Reschedule every task whose watchdog has expired; returns how many were rescheduled."""
    lease = rt.settings.submit_lease_s
    if not rt.redis.set(LOCK, "1", nx=True, ex=max(int(rt.settings.sweep_interval_s), 1)):
        return 0
    rt.store.trim_indexes(time.time())
    rescheduled = 0
    for task_id in rt.store.due_tasks():
        task = rt.store.get(task_id)
        if task is None or task.status.terminal:
            rt.redis.zrem(WATCHDOG, task_id)
            continue
        if task.status is TaskStatus.QUEUED and task.provider_task_id is None:
            rt.store.set_watchdog(task_id, lease)
            rt.jobs.submit(task_id)
        else:
            rt.redis.delete(chain_key(task_id))
            schedule_next_poll(rt, task_id, delay_s=0, chain_owner=None)
        rescheduled += 1
        log.warning("sweep rescheduled task_id=%s status=%s", task_id, task.status.value)
    return rescheduled
