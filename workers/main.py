"""`kling-relay worker`: one RQ worker on the submit, poll and deliver queues, with the scheduler.

A non-forking worker: every job here is short and I/O-bound, so forking a work-horse per job
(RQ's default) would cost more than the job; it also lets provider clients pool connections.
"""

from __future__ import annotations

import logging
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import SimpleWorker

from service.jobs import QUEUES
from workers.context import get_runtime
from workers.sweep import sweep

log = logging.getLogger(__name__)


class RelayWorker(SimpleWorker):
    stopping = False

    def request_stop(self, signum: int, frame: object) -> None:
        # Remember that the stop was asked for, so the restart loop below lets us go.
        self.stopping = True
        super().request_stop(signum, frame)  # type: ignore[arg-type]

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()
        try:
            sweep(get_runtime())
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("sweep skipped, redis unavailable: %s", type(exc).__name__)


def run_worker(*, burst: bool = False) -> None:
    rt = get_runtime()
    settings = rt.settings
    settings.require("redis_url", "callback_secret")
    while True:
        try:
            worker = RelayWorker(
                [rt.jobs.queue(name) for name in QUEUES],
                connection=rt.redis,
                worker_ttl=settings.worker_ttl_s,
                maintenance_interval=int(settings.sweep_interval_s),
            )
            worker.work(burst=burst, with_scheduler=True, logging_level="INFO")
        except (RedisConnectionError, RedisTimeoutError) as exc:
            # Redis restarts must not kill the worker: wait, then pick up where the queues are.
            log.warning("redis unavailable (%s); retrying in 1 s", type(exc).__name__)
            time.sleep(1)
            continue
        if burst or worker.stopping:
            return
        log.warning("worker loop ended unexpectedly; restarting in 1 s")
        time.sleep(1)
