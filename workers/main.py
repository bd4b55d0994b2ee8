"""`kling-relay worker`: one RQ worker on the submit, poll, deliver and store queues, with the scheduler.

A non-forking worker: every job here is short and I/O-bound, so forking a work-horse per job
(RQ's default) would cost more than the job; it also lets provider clients pool connections.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from functools import cached_property

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, SimpleWorker
from rq.scheduler import RQScheduler

from service.jobs import QUEUES
from service.keys import SCHEDULER_LOCK
from service.redis_client import connect_redis
from service.scripts import load
from workers.context import STOPPING, get_runtime
from workers.deliver import fan_out, sweep_deliveries
from workers.dispatch import Dispatcher, requeue_orphans
from workers.store_video import sweep_storage
from workers.sweep import sweep

log = logging.getLogger(__name__)

# RQ's own housekeeping (its registries); ours runs on the sweep thread every SWEEP_INTERVAL_S.
RQ_MAINTENANCE_S = 60


class RelayWorker(SimpleWorker):
    def request_stop(self, signum: int, frame: object) -> None:
        STOPPING.set()
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]


def maintain_forever(interval_s: float) -> None:
    """The sweeps, from a thread of their own: on RQ's maintenance hook they would wait on the
    worker's blocking dequeue and on every job it runs, and a dead worker's task must be picked
    up within seconds."""
    while not STOPPING.wait(interval_s):
        try:
            rt = get_runtime()
            sweep(rt)
            requeue_orphans(rt.redis)
            sweep_deliveries(rt)
            sweep_storage(rt)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("sweep skipped, redis unavailable: %s", type(exc).__name__)
        except Exception:  # the thread must outlive any one bad sweep
            log.exception("sweep failed")


class HoldLock:
    """`hold_lock.lua`: take `lock` for `holder` if it is free, or refresh it for `ttl_s` if it is
    already `holder`'s; True while `holder` has it."""

    def __init__(self, redis: Redis) -> None:
        self._script = load(redis, "hold_lock")

    def __call__(self, *, lock: str, holder: str, ttl_s: int) -> bool:
        return bool(self._script(keys=[lock], args=[holder, ttl_s]))


class ThreadScheduler(RQScheduler):
    """Moves due scheduled jobs onto their queues, from a daemon thread of the worker.

    RQ's own scheduler runs in a forked child that outlives a SIGKILLed worker, and its lock
    lives 61 s and is re-tried only every 120 s, so after a crash delayed jobs (retries, polls)
    would stall for minutes. Here the scheduler dies with its worker, and a short lock that the
    holder refreshes every second lets another worker take over within `LOCK_TTL_S`.
    """

    LOCK_TTL_S = 5

    @cached_property
    def _hold_lock(self) -> HoldLock:
        return HoldLock(self.connection)

    def tick(self) -> None:
        if self._hold_lock(lock=SCHEDULER_LOCK, holder=self.name, ttl_s=self.LOCK_TTL_S):
            self._acquired_locks = set(self._queue_names)
            self.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]

    def run_forever(self) -> None:
        while True:
            try:
                self.tick()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                log.warning("scheduler paused, redis unavailable: %s", type(exc).__name__)
            except Exception:  # the thread must outlive any one bad tick
                log.exception("scheduler tick failed")
            time.sleep(self.interval)


def run_worker(*, burst: bool = False) -> None:
    rt = get_runtime()
    settings = rt.settings
    settings.require("redis_url", "callback_secret")
    if rt.callbacks_unreachable:
        log.warning(rt.callbacks_unreachable)
    # RQ's own client: RQ raises its read timeout to outlast a blocking dequeue, which must not
    # loosen the timeouts of the client the jobs and threads share.
    rq_redis, _ = connect_redis(settings)
    scheduler: ThreadScheduler | None = None
    while not STOPPING.is_set():
        try:
            worker = RelayWorker(
                [Queue(name, connection=rq_redis) for name in QUEUES],
                connection=rq_redis,
                worker_ttl=settings.worker_ttl_s,
                maintenance_interval=RQ_MAINTENANCE_S,
            )
            if scheduler is None:
                scheduler = ThreadScheduler(worker.queues, connection=rt.redis)
                dispatcher = Dispatcher(rt.redis, fan_out, heartbeat_s=settings.webhook_lease_s)
                dispatcher.start()
                # Registered before the delivery engine's close, so it runs after it (atexit is
                # last-in, first-out): once the attempts in flight have landed or been given up.
                atexit.register(dispatcher.retire)
                if burst:
                    scheduler.tick()
                    while dispatcher.step(block_s=0.01):
                        pass
                else:
                    threading.Thread(target=scheduler.run_forever, name="scheduler", daemon=True).start()
                    threading.Thread(target=dispatcher.run_forever, name="dispatcher", daemon=True).start()
                    threading.Thread(
                        target=maintain_forever, args=(settings.sweep_interval_s,), name="sweep", daemon=True
                    ).start()
            worker.work(burst=burst, logging_level=settings.log_level)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            # Redis restarts must not kill the worker: wait, then pick up where the queues are.
            # A stop asked for meanwhile ends the loop: what we held (leases, in-flight outbox
            # entries) expires on its own and the sweep recovers it.
            log.warning("redis unavailable (%s); retrying in 1 s", type(exc).__name__)
            STOPPING.wait(1)
            continue
        if burst or STOPPING.is_set():
            break
        log.warning("worker loop ended unexpectedly; restarting in 1 s")
        time.sleep(1)
    STOPPING.set()
    if scheduler is not None:
        dispatcher.stop()
