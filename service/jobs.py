"""The RQ queues and how work is put on them. Jobs are named by import path, so the web
process never imports worker code; arguments are ids only (jobs reload state from Redis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from redis import Redis
from redis.client import Pipeline
from rq import Queue, Retry
from rq.job import Job

SUBMIT = "submit"
POLL = "poll"
DELIVER = "deliver"
STORE = "store"
QUEUES = (SUBMIT, POLL, DELIVER, STORE)

# Retries here only cover a worker dying mid-job (RQ re-runs abandoned jobs that have retries
# left); provider answers are retried by the jobs themselves with their own schedule.
_CRASH_RETRY = Retry(max=5, interval=[1, 5, 15, 30, 60])


class Jobs:
    def __init__(self, redis: Redis, job_timeout_s: int = 180) -> None:
        self._redis = redis
        self._queues = {name: Queue(name, connection=redis) for name in QUEUES}
        self._options = {"result_ttl": 0, "failure_ttl": 7 * 24 * 3600, "timeout": job_timeout_s}

    def _put(
        self,
        queue: str,
        func: str,
        args: tuple[object, ...],
        *,
        delay_s: float,
        pipeline: Pipeline | None,
        job_id: str | None = None,
        timeout_s: int | None = None,
    ) -> str:
        q = self._queues[queue]
        options = {**self._options, "retry": _CRASH_RETRY, "job_id": job_id}
        if timeout_s is not None:
            options["timeout"] = timeout_s
        if delay_s > 0:
            job = q.create_job(func, args=args, **options)  # type: ignore[arg-type]
            q.schedule_job(job, _in(delay_s), pipeline=pipeline)
        else:
            job = q.enqueue_call(func, args=args, pipeline=pipeline, **options)  # type: ignore[arg-type]
        return job.id

    def submit(self, task_id: str, *, attempt: int, delay_s: float = 0, pipeline: Pipeline | None = None) -> None:
        """The job that makes the task's attempt number `attempt` (0-based). Named for it, so the
        sweep can tell whether the job the task waits for is still queued or scheduled."""
        job_id = submit_job_id(task_id, attempt)
        self._put(SUBMIT, "workers.submit.submit_task", (task_id,), delay_s=delay_s, pipeline=pipeline, job_id=job_id)

    def waiting(self, queue: str, job_id: str) -> bool:
        """True while the job is scheduled, or queued and still on its queue. A worker that pops a
        job and dies before starting it leaves the job `queued` but on no list (RQ pops from
        several queues with BLPOP, which nothing tracks): that job is lost."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.hget(Job.key_for(job_id), "status")
            pipe.lpos(self._queues[queue].key, job_id)
            status, position = pipe.execute()
        return status == b"scheduled" or (status in (b"queued", b"deferred") and position is not None)

    def poll(
        self, task_id: str, *, delay_s: float = 0, pipeline: Pipeline | None = None, job_id: str | None = None
    ) -> str:
        return self._put(POLL, "workers.poll.poll_task", (task_id,), delay_s=delay_s, pipeline=pipeline, job_id=job_id)

    def deliver(
        self,
        delivery_ids: list[str],
        *,
        delay_s: float = 0,
        pipeline: Pipeline | None = None,
        job_id: str | None = None,
        replay: tuple[str, str] | None = None,
    ) -> str:
        """Attempt these webhook deliveries now, or after `delay_s` via the RQ scheduler (a retry);
        `replay`: the (subscription id, replay id) whose batch this is."""
        args: tuple[object, ...] = (delivery_ids, *([list(replay)] if replay else []))
        return self._put(DELIVER, "workers.deliver.send", args, delay_s=delay_s, pipeline=pipeline, job_id=job_id)

    def retry(self, delivery_id: str, *, attempt: int, delay_s: float, pipeline: Pipeline) -> None:
        """The job making a delivery's next attempt once `attempt` attempts were made: one job id
        per attempt number, so scheduling the same retry twice keeps one job."""
        self.deliver([delivery_id], delay_s=delay_s, pipeline=pipeline, job_id=retry_job_id(delivery_id, attempt))


    def store(
        self,
        task_id: str,
        *,
        tries: int,
        timeout_s: int,
        delay_s: float = 0,
        pipeline: Pipeline | None = None,
        job_id: str | None = None,
    ) -> str:
        """Download and keep the task's video; `tries`: how many were made before this one. One job
        id per try, so the same retry scheduled twice is one job."""
        args = (task_id, tries)
        job_id = job_id or store_job_id(task_id, tries)
        return self._put(
            STORE, "workers.store_video.store_video", args, delay_s=delay_s, pipeline=pipeline, job_id=job_id, timeout_s=timeout_s
        )


def store_job_id(task_id: str, tries: int) -> str:
    return f"store-{task_id}-{tries}"


def submit_job_id(task_id: str, attempt: int) -> str:
    return f"submit-{task_id}-{attempt}"


def retry_job_id(delivery_id: str, attempt: int) -> str:
    return f"dlv-{delivery_id}-{attempt}"


def _in(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)
