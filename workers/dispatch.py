"""The outbox dispatcher: a thread in every worker that turns outbox entries into fan-out jobs.

It blocks on the outbox, takes what has piled up (up to BATCH entries) into its own in-flight
list, and enqueues one RQ fan-out job for them in the same transaction that empties the list.
Under load that is one job per batch rather than per event; when idle, an event waits for
nothing. A dispatcher that dies leaves its in-flight list behind, with its heartbeat expiring;
`requeue_orphans` (run by the sweep) puts such lists back on the outbox.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service import outbox
from service.jobs import DELIVER, Jobs

log = logging.getLogger(__name__)

BATCH = 200
HEARTBEAT_TTL_S = 15
BACKLOG_WAIT_S = 0.003


class Dispatcher:
    def __init__(self, redis: Redis, jobs: Jobs) -> None:
        self.redis = redis
        self.jobs = jobs
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.inflight = f"{outbox.INFLIGHT_PREFIX}{self.id}"
        self.heartbeat = f"{outbox.HEARTBEAT_PREFIX}{self.id}"
        self._take_more = redis.register_script(outbox.TAKE_MORE)
        self.deliver_queue = jobs.queue(DELIVER).key

    def run_forever(self) -> None:
        while True:
            try:
                self.step(block_s=1)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                log.warning("dispatcher paused, redis unavailable: %s", type(exc).__name__)
                time.sleep(1)
            except Exception:  # the thread must outlive any one bad step
                log.exception("dispatcher step failed")
                time.sleep(1)

    def step(self, block_s: float) -> int:
        """Dispatch one batch; returns how many entries it enqueued."""
        self.redis.set(self.heartbeat, "1", ex=HEARTBEAT_TTL_S)
        # While fan-out jobs are still waiting, let events gather: the next job takes them all
        # at once, so a busy worker catches up in batches instead of falling behind job by job.
        if self.redis.llen(self.deliver_queue):
            time.sleep(BACKLOG_WAIT_S)
            return 0
        # Entries already in flight (a previous step failed mid-way) go first.
        if not self.redis.llen(self.inflight):
            if self.redis.blmove(outbox.OUTBOX, self.inflight, block_s, "LEFT", "RIGHT") is None:
                return 0
        entries = [e.decode() for e in self._take_more(keys=[outbox.OUTBOX, self.inflight], args=[BATCH - 1])]
        with self.redis.pipeline() as pipe:
            self.jobs.fan_out(entries, pipeline=pipe)
            pipe.delete(self.inflight)
            pipe.execute()
        return len(entries)


def requeue_orphans(redis: Redis) -> int:
    """Put the in-flight entries of dispatchers whose heartbeat has expired back on the outbox."""
    returned = 0
    script = redis.register_script(outbox.RETURN_INFLIGHT)
    for key in redis.scan_iter(match=f"{outbox.INFLIGHT_PREFIX}*", count=100):
        name = key.decode() if isinstance(key, bytes) else key
        owner = name.removeprefix(outbox.INFLIGHT_PREFIX)
        if not redis.exists(f"{outbox.HEARTBEAT_PREFIX}{owner}"):
            returned += int(script(keys=[name, outbox.OUTBOX]))
    if returned:
        log.warning("returned %d in-flight outbox entries of dead dispatchers", returned)
    return returned
