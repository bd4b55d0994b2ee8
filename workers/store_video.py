"""Store job: keep our own copy of a succeeded task's video, and the sweep that looks after copies.

The success transition puts the task in STORAGE_DUE, due now, in its own write
(`transition.lua`); the storage sweep (every SWEEP_INTERVAL_S) gives each due task a store
job, and each try moves its entry to when it would be presumed lost. A try downloads into a
partial file (`service/storage/download.py`), keeps it under the task's one object name, then
writes `task.stored` through the transition function. A failed try schedules the next one (an RQ
scheduled job, `store-{task}-{tries}`) until the provider's URL expires; after the last,
`task.storage_failed`. Every step is safe to repeat: a re-run downloads again and writes the same
object; the transition emits its event once.
"""

from __future__ import annotations

import logging
import time
import uuid

from redis.client import Pipeline

from service.domain.clock import unix_to_iso
from service.domain.storage import (
    DownloadProblem,
    StorageFailed,
    StorageOutcome,
    StoredCopy,
    needs_storing,
    object_name,
    retry_in,
    url_expiry_s,
)
from service.domain.tasks import StorageError, Task
from service.jobs import store_job_id
from service.keys import STORAGE_DUE, STORAGE_SWEEP_LOCK, STORED
from service.runtime import Runtime
from service.storage import Storage, StorageWriteError
from service.storage.download import DownloadRules, download
from service.store import Change, TaskNotFound
from service.telemetry import observe_storage
from workers.context import get_runtime

log = logging.getLogger(__name__)

# A sweep deals with at most this many due entries of each kind.
SWEEP_BATCH = 100


def store_video(task_id: str, tries: int) -> None:
    """One try; `tries`: how many were made before it."""
    rt = get_runtime()
    task = rt.store.get(task_id)
    if rt.storage is None or task is None or not needs_storing(task):
        rt.redis.zrem(STORAGE_DUE, task_id)
        return
    assert task.result is not None
    rt.redis.zadd(STORAGE_DUE, {task_id: rt.storage_deadline_s(0)})
    started = time.perf_counter()
    try:
        copy = _fetch_and_keep(rt, rt.storage, task)
    except DownloadProblem as problem:
        observe_storage(task.provider, problem.code, 0, time.perf_counter() - started)
        _after_problem(rt, task, tries + 1, problem)
        return
    observe_storage(task.provider, "stored", copy.bytes, time.perf_counter() - started)
    _finish(rt, task_id, copy, stored_until_s=time.time() + rt.settings.storage_retention_s)


def _fetch_and_keep(rt: Runtime, storage: Storage, task: Task) -> StoredCopy:
    assert task.result is not None
    s = rt.settings
    rules = DownloadRules(max_bytes=s.storage_max_bytes, timeout_s=s.storage_timeout_s, allow_private=s.allow_private_webhooks)
    partial = storage.partial()
    try:
        got = download(task.result.video_url, partial, rules)
        storage.keep(partial, object_name(task.id), got.content_type)
    except StorageWriteError as exc:
        raise DownloadProblem("storage_write", str(exc), retryable=True) from exc
    finally:
        partial.unlink(missing_ok=True)
    until = time.time() + s.storage_retention_s
    return StoredCopy(
        stored_url=f"{s.public_base_url}/v1/tasks/{task.id}/video",
        sha256=got.sha256,
        bytes=got.bytes,
        content_type=got.content_type,
        stored_until=unix_to_iso(until),
    )


def _after_problem(rt: Runtime, task: Task, tries: int, problem: DownloadProblem) -> None:
    now = time.time()
    delay = retry_in(problem, tries=tries, now_s=now, expires_s=url_expiry_s(task, rt.storage_rules), rules=rt.storage_rules)
    if delay is None:
        log.warning("video not stored task_id=%s code=%s tries=%d: %s", task.id, problem.code, tries, problem.message)
        failed = StorageFailed(StorageError(code=problem.code, message=problem.message, attempts=tries))
        _finish(rt, task.id, failed)
        return
    log.info("video download failed task_id=%s code=%s tries=%d; again in %.1f s", task.id, problem.code, tries, delay)
    with rt.redis.pipeline() as pipe:
        rt.jobs.store(task.id, tries=tries, timeout_s=rt.storage_job_timeout_s, delay_s=delay, pipeline=pipe)
        pipe.zadd(STORAGE_DUE, {task.id: rt.storage_deadline_s(delay)})
        pipe.execute()


def _finish(rt: Runtime, task_id: str, outcome: StorageOutcome, *, stored_until_s: float | None = None) -> None:
    """Write the outcome through the transition function, and with it the copy's retention entry."""

    def after(pipe: Pipeline, task: Task) -> None:
        pipe.zrem(STORAGE_DUE, task_id)
        if stored_until_s is not None:
            pipe.zadd(STORED, {task_id: stored_until_s})

    try:
        transition, _ = rt.change(task_id, lambda task: Change(task, outcome, after=after))
    except TaskNotFound:
        transition = None
    if transition is None:
        # Already written by a racing try (or the task is gone): nothing more is pending.
        rt.redis.zrem(STORAGE_DUE, task_id)
        if stored_until_s is not None and rt.store.get(task_id) is None:
            _delete_copy(rt, task_id)


def sweep_storage(rt: Runtime) -> int:
    """Give due tasks (new, or whose try is overdue) a store job, delete expired copies and stale
    partial files; how
    many objects were deleted. One worker at a time."""
    storage = rt.storage
    if storage is None or not rt.redis.set(STORAGE_SWEEP_LOCK, "1", nx=True, ex=max(int(rt.settings.sweep_interval_s), 1)):
        return 0
    now = time.time()
    for raw in rt.redis.zrangebyscore(STORAGE_DUE, "-inf", now, start=0, num=SWEEP_BATCH):
        _resume(rt, raw.decode() if isinstance(raw, bytes) else str(raw))
    deleted = 0
    for raw in rt.redis.zrangebyscore(STORED, "-inf", now, start=0, num=SWEEP_BATCH):
        deleted += _delete_copy(rt, raw.decode() if isinstance(raw, bytes) else str(raw))
    # A partial older than any try could run is a killed try's leftover.
    storage.clean_partials(older_than_s=2 * rt.storage_job_timeout_s, now_s=now)
    return deleted


def _resume(rt: Runtime, task_id: str) -> None:
    """A due task gets a try: its first, or another for one presumed lost (its worker killed, or
    Redis restarted without the job). The job id is fresh, so it never collides with a lost one
    that still turns up."""
    task = rt.store.get(task_id)
    if task is None or not needs_storing(task):
        rt.redis.zrem(STORAGE_DUE, task_id)
        return
    with rt.redis.pipeline() as pipe:
        job_id = f"{store_job_id(task_id, 0)}-resumed-{uuid.uuid4().hex[:8]}"
        rt.jobs.store(task_id, tries=0, timeout_s=rt.storage_job_timeout_s, pipeline=pipe, job_id=job_id)
        pipe.zadd(STORAGE_DUE, {task_id: rt.storage_deadline_s(0)})
        pipe.execute()
    log.info("sweep started a storage try task_id=%s", task_id)


def _delete_copy(rt: Runtime, task_id: str) -> int:
    assert rt.storage is not None
    try:
        rt.storage.delete(object_name(task_id))
    except StorageWriteError as exc:
        log.warning("stored video not deleted task_id=%s: %s", task_id, exc)
        return 0
    rt.redis.zrem(STORED, task_id)
    return 1
