"""The outbox dispatcher: a thread in every worker that fans outbox entries out to subscribers.

It blocks on the outbox, takes what has piled up (up to BATCH entries) into its own in-flight
list, writes their deliveries, empties the list, and sends. While it sends, new events gather
in the outbox, so under load each step takes a batch; when idle, an event waits for nothing.
No RQ job stands between an event and its first attempt: building, queueing and finishing one
cost ~7 ms per fan-out (bench/fanout.py), more than writing its 200 deliveries. Retries, manual
retries and replays are RQ jobs (`workers.deliver.send`), scheduled by the RQ scheduler.

A dispatcher that dies before its deliveries are written leaves its in-flight list behind, with
its heartbeat expiring; `requeue_orphans` (run by the sweep) puts such lists back on the outbox.
Once they are written, a death mid-send is the delivery sweep's to repair.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service import outbox

log = logging.getLogger(__name__)

BATCH = 200
HEARTBEAT_TTL_S = 15


class FanOut(Protocol):
    """Writes the entries' deliveries, calls `written`, then sends them (`workers.deliver.fan_out`)."""

    def __call__(self, entries: list[str], *, written: Callable[[], None]) -> None: ...


class Dispatcher:
    def __init__(self, redis: Redis, fan_out: FanOut) -> None:
        self.redis = redis
        self.fan_out = fan_out
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.inflight = f"{outbox.INFLIGHT_PREFIX}{self.id}"
        self.heartbeat = f"{outbox.HEARTBEAT_PREFIX}{self.id}"
        self._take_more = redis.register_script(outbox.TAKE_MORE)

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
        """Fan out one batch; returns how many entries it took."""
        self.redis.set(self.heartbeat, "1", ex=HEARTBEAT_TTL_S)
        # Entries already in flight (a previous step failed mid-way) go first.
        if not self.redis.llen(self.inflight):
            if self.redis.blmove(outbox.OUTBOX, self.inflight, block_s, "LEFT", "RIGHT") is None:
                return 0
        entries = [e.decode() for e in self._take_more(keys=[outbox.OUTBOX, self.inflight], args=[BATCH - 1])]
        self.fan_out(entries, written=self._release)
        return len(entries)

    def _release(self) -> None:
        """The entries' deliveries are stored: they are no longer the outbox's to keep."""
        self.redis.delete(self.inflight)


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
