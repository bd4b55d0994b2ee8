"""Poll job: ask the provider where a task stands and apply it through the one transition function.

Each task has at most one *poll chain*: the job id of its next scheduled poll lives in
`poll_chain_key(task)`, and only that job may schedule the one after. Extra polls (a callback
asking for confirmation, a retried job) still apply what they see, but never fork the chain.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime

from redis.client import Pipeline
from rq import get_current_job

from service.cas import CompareAndSet, recorded
from service.domain.clock import iso_to_unix
from service.domain.recovery import after_poll, deadline_update, worth_polling
from service.domain.schedule import poll_delay
from service.domain.status import TaskStatus
from service.domain.tasks import Task
from service.domain.transition import ProviderUpdate
from service.keys import confirm_key, poll_chain_key, poll_count_key
from service.providers.base import ProviderError
from service.runtime import Runtime
from service.telemetry import observe_poll
from workers.context import get_runtime

log = logging.getLogger(__name__)


def schedule_next_poll(rt: Runtime, task_id: str, *, delay_s: float, chain_owner: str | None) -> bool:
    """Schedule the next poll if `chain_owner` holds the chain (None: only if no chain exists)."""
    key = poll_chain_key(task_id)
    job_id = f"poll-{task_id}-{uuid.uuid4().hex[:12]}"
    horizon = delay_s + rt.settings.job_grace_s
    current = rt.redis.get(key)
    holder = current.decode() if isinstance(current, bytes) else current
    if holder is not None and holder != chain_owner:
        return False

    def build(pipe: Pipeline) -> None:
        pipe.set(key, job_id, ex=max(int(horizon), 1))
        rt.jobs.poll(task_id, delay_s=delay_s, pipeline=pipe, job_id=job_id)
        rt.store.set_watchdog(task_id, horizon, pipeline=pipe)

    # Lost to another writer of the chain: that one scheduled the next poll.
    return CompareAndSet(rt.redis)(key, current, recorded(rt.redis, build))


def poll_task(task_id: str) -> None:
    rt = get_runtime()
    job = get_current_job()
    me = job.id if job is not None else None
    # A callback that arrives from now on may ask for another confirmation: this one is under way.
    confirming = bool(rt.redis.delete(confirm_key(task_id)))
    task = rt.store.get(task_id)
    if task is None or not worth_polling(task, now_s=time.time(), deadlines=rt.deadlines, confirming=confirming):
        rt.redis.delete(poll_chain_key(task_id), poll_count_key(task_id))
        return
    if task.provider_task_id is None:
        return
    key = poll_count_key(task_id)
    with rt.redis.pipeline() as pipe:
        pipe.hincrby(key, "n", 1)
        pipe.hget(key, "seen")
        pipe.expire(key, int(rt.settings.task_deadline_s + rt.settings.late_result_window_s) + 3600)
        polls, seen, _ = pipe.execute()
    asked_at = time.time()
    update = _fetch(rt, task, unfinished_at=_unfinished_at(task, seen))
    observe_poll(task.provider, update)
    if update is not None and not update.status.terminal:
        rt.redis.hset(key, "seen", asked_at)
    changed = rt.apply(task_id, update) if update is not None else None
    current = rt.store.get(task_id)
    if update is not None and changed is None and current is not None and current.status is TaskStatus.CANCELED:
        # Canceled while we asked: the provider may still be generating (and charging); its
        # news is ignored, and this chain ends below.
        log.info(
            "provider news after cancel ignored task_id=%s provider=%s provider_task_id=%s state=%s",
            task_id, task.provider, task.provider_task_id, update.status.value,
        )
    timeout = deadline_update(current, now_s=time.time(), deadlines=rt.deadlines) if current is not None else None
    if timeout is not None:
        rt.apply(task_id, timeout)
        log.warning(
            "task timed out task_id=%s provider_task_id=%s; still asking for a late result", task_id, task.provider_task_id
        )
        current = rt.store.get(task_id)
    s = rt.settings
    eta = update.eta_s if update is not None else None
    regular = poll_delay(polls, initial_s=s.poll_initial_s, factor=s.poll_factor, max_s=s.poll_max_s, eta_s=eta)
    delay = after_poll(task, update, current, regular_s=regular, now_s=time.time(), deadlines=rt.deadlines)
    if delay is None:
        rt.redis.delete(poll_chain_key(task_id), poll_count_key(task_id))
        return
    schedule_next_poll(rt, task_id, delay_s=delay, chain_owner=me)


def _unfinished_at(task: Task, seen: bytes | None) -> datetime:
    """The latest moment the task is known to have been unfinished."""
    latest = iso_to_unix(task.updated_at) if seen is None else max(iso_to_unix(task.updated_at), float(seen))
    return datetime.fromtimestamp(latest, tz=UTC)


def _fetch(rt: Runtime, task: Task, *, unfinished_at: datetime) -> ProviderUpdate | None:
    assert task.provider_task_id is not None
    try:
        return rt.provider(task.provider).fetch(task.provider_task_id, unfinished_at=unfinished_at)
    except ProviderError as err:
        if err.code == "not_found":
            return ProviderUpdate(status=TaskStatus.FAILED, error=err.as_task_error())
        # Anything else (rate limit, outage, even a revoked key) may pass; the deadline bounds it.
        log.warning("poll failed task_id=%s code=%s retryable=%s", task.id, err.code, err.retryable)
        return None
