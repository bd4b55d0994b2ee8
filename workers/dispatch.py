"""The outbox dispatcher: a thread in every worker that fans outbox entries out to subscribers.

It moves what has piled up in the outbox (up to BATCH entries; when there is none, it blocks for
the next) into its own in-flight list and hands them to the fan-out as one `FanOutBatch`, which
starts their first attempts and returns.
While those are sent, new events gather in the outbox, so under load each step takes a batch;
when idle, an event waits for nothing. No RQ job stands between an event and its first attempt:
building, queueing and finishing one cost ~7 ms per fan-out (bench/fanout.py). Retries, manual
retries and replays are RQ jobs (`workers.deliver.send`), scheduled by the RQ scheduler.

An entry leaves the in-flight list in the same write that records the last first attempt of its
batch: until then the list is what answers for the event, since none of its deliveries is stored.
A batch whose fan-out or recording failed is handed back and goes again from the same list (an
entry that keeps failing for a reason other than Redis is set aside in `OUTBOX_DEAD`). A
dispatcher that dies leaves its list behind with its heartbeat expiring; `requeue_orphans` (run by
the sweep) puts such lists back on the outbox, and the re-run sends only what was never recorded.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections import Counter, deque
from typing import Protocol

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.keys import (
    INFLIGHT_PREFIX,
    OUTBOX,
    OUTBOX_DEAD,
    heartbeat_key,
    inflight_key,
)
from service.outbox import ReturnInflight, TakeMore
from workers.fanout import BatchState, FanOutBatch, HandedBack

log = logging.getLogger(__name__)

BATCH = 200
# How often a dispatcher checks its in-flight list for entries no batch holds (one LRANGE).
STRAY_CHECK_S = 5.0


class FanOut(Protocol):
    """Starts the batch's first attempts and returns (`workers.deliver.fan_out`)."""

    def __call__(self, batch: FanOutBatch) -> None: ...


class Dispatcher:
    def __init__(self, redis: Redis, fan_out: FanOut, *, heartbeat_s: float) -> None:
        self.redis = redis
        self.fan_out = fan_out
        # Every dispatcher has its own list, empty at birth: what is in it is this one's to finish.
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.inflight = inflight_key(self.id)
        self.heartbeat = heartbeat_key(self.id)
        self.heartbeat_s = heartbeat_s
        # Batches whose fan-out or recording failed, handed back from any thread.
        self._handed_back: HandedBack = queue.SimpleQueue()
        # What they become: batches to fan out again, before anything new.
        self._again: deque[FanOutBatch] = deque()
        # Every batch of this dispatcher not yet released: what holds the entries of its list.
        self._live: list[FanOutBatch] = []
        # When to look for entries in the list that no batch holds (see `_recover_strays`).
        self._next_stray_check = 0.0
        self._stopping = threading.Event()
        self._retired = False
        self._beating = threading.Lock()
        self._take_more = TakeMore(redis)

    def start(self) -> None:
        """Keep the heartbeat up from its own thread: a batch's first attempts may keep its
        entries in flight, and `step` busy, for as long as its slowest receiver takes."""
        self.beat()
        threading.Thread(target=self._beat_forever, name="dispatcher-heartbeat", daemon=True).start()

    def beat(self) -> None:
        with self._beating:
            if not self._retired:
                self.redis.set(self.heartbeat, "1", ex=max(round(self.heartbeat_s), 1))

    def _beat_forever(self) -> None:
        while not self._retired:
            time.sleep(self.heartbeat_s / 3)
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 (the heartbeat must outlive any failure, a Redis outage above all)
                log.warning("dispatcher heartbeat failed: %s", type(exc).__name__)

    def stop(self) -> None:
        """Take nothing more from the outbox (the worker is stopping)."""
        self._stopping.set()

    def retire(self) -> None:
        """At exit, once the attempts in flight have landed or been given up: drop the heartbeat,
        so that whatever is left in the in-flight list goes back to the outbox at the next sweep
        rather than a heartbeat's lifetime later."""
        with self._beating:
            self._retired = True
            try:
                left = self.redis.llen(self.inflight)
                self.redis.delete(self.heartbeat)
            except (RedisConnectionError, RedisTimeoutError):
                return  # the heartbeat expires on its own
        if left:
            log.warning("dispatcher stopped with %d outbox entries in flight; the sweep returns them", left)

    def run_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                self.step(block_s=1)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                log.warning("dispatcher paused, redis unavailable: %s", type(exc).__name__)
                self._next_stray_check = 0.0
                time.sleep(1)
            except Exception:  # the thread must outlive any one bad step
                log.exception("dispatcher step failed")
                time.sleep(1)

    def step(self, block_s: float) -> int:
        """Fan out one batch; returns how many entries it took."""
        if time.monotonic() >= self._next_stray_check:
            self._recover_strays()
            self._next_stray_check = time.monotonic() + STRAY_CHECK_S
        batch = self._next_again()
        if batch is None:
            batch = self._take(block_s)
            if batch is None:
                return 0
        try:
            self.fan_out(batch)
        except Exception as exc:
            batch.hand_back(exc)
            raise
        return len(batch.entries)

    def _take(self, block_s: float) -> FanOutBatch | None:
        entries = [e.decode() for e in self._take_more(outbox=OUTBOX, inflight=self.inflight, count=BATCH)]
        if not entries:
            # Nothing waiting: block for the next event, and go with it alone at once.
            first = self.redis.blmove(OUTBOX, self.inflight, block_s, "LEFT", "RIGHT")  # type: ignore[arg-type]  # Redis takes fractions
            if first is None:
                return None
            entries = [first.decode() if isinstance(first, bytes) else first]
        return self._batch(entries)

    def _batch(self, entries: list[str], *, suspect: bool = False) -> FanOutBatch:
        batch = FanOutBatch(entries, self.inflight, self._handed_back, suspect=suspect)
        # Released batches are forgotten here: the list stays as long as the batches in flight.
        self._live = [b for b in self._live if b.state is not BatchState.RELEASED]
        self._live.append(batch)
        return batch

    def _recover_strays(self) -> None:
        """Go again with entries of the in-flight list that no batch holds. A move whose answer
        was lost with its connection put them there unknown to us (redis-py may even have retried
        the command on a new connection, hiding the outage), and while this dispatcher lives the
        sweep leaves its list alone. So the list is checked every STRAY_CHECK_S and after every
        outage seen. Held entries are read before the list: an entry released in between is then
        in neither, never taken for a stray."""
        held = Counter(entry for batch in self._live for entry in batch.entries)
        listed = Counter(e.decode() if isinstance(e, bytes) else e for e in self.redis.lrange(self.inflight, 0, -1))
        strays = list((listed - held).elements())
        if strays:
            log.warning("dispatcher found %d outbox entries in flight that no batch held; sending them again", len(strays))
            self._again.append(self._batch(strays))

    def _next_again(self) -> FanOutBatch | None:
        """A batch handed back goes again before anything new; its entries never left the
        in-flight list. Redis being away: it goes again, whole. Anything else is a bug or a bad
        entry: its entries go again one by one, and one that fails alone too is set aside in the
        dead-letter list, so that it holds up none of the events behind it."""
        while True:
            try:
                failed = self._handed_back.get_nowait()
            except queue.Empty:
                break
            if failed in self._live:
                self._live.remove(failed)
            if isinstance(failed.error, RedisError):
                self._again.append(self._batch(failed.entries))
            elif not failed.suspect:
                self._again.extend(self._batch([entry], suspect=True) for entry in failed.entries)
            else:
                self._bury(failed.entries[0], failed.error)
        return self._again.popleft() if self._again else None

    def _bury(self, entry: str, error: BaseException | None) -> None:
        try:
            with self.redis.pipeline() as pipe:
                pipe.lrem(self.inflight, 1, entry)
                pipe.rpush(OUTBOX_DEAD, entry)
                pipe.execute()
        except RedisError:
            self._again.append(self._batch([entry], suspect=True))
            return
        log.error(
            "outbox entry set aside in %s after failing twice: %r (%s: %s)", OUTBOX_DEAD, entry, type(error).__name__, error
        )


def requeue_orphans(redis: Redis) -> int:
    """Put the in-flight entries of dispatchers whose heartbeat has expired back on the outbox."""
    returned = 0
    return_inflight = ReturnInflight(redis)
    for key in redis.scan_iter(match=f"{INFLIGHT_PREFIX}*", count=100):
        name = key.decode() if isinstance(key, bytes) else key
        owner = name.removeprefix(INFLIGHT_PREFIX)
        if not redis.exists(heartbeat_key(owner)):
            returned += return_inflight(inflight=name, outbox=OUTBOX)
    if returned:
        log.warning("returned %d in-flight outbox entries of dead dispatchers", returned)
    return returned
