"""Each web process's one reader of the global event log, fanning events out to its streams.

However many streams a process holds, Redis sees one blocking `XREAD` from it (on a connection
of its own, so the callback receivers' pipelined connection never waits behind it). The reader
runs only while the process has a stream open, and keeps the id of the last entry it read: after
a Redis outage it reconnects and reads on from there, so an open stream misses nothing; its
client meanwhile keeps its connection and gets heartbeats.

A stream joins (`listen`) before it reads its history, and only once the reader knows where it
starts: an event committed after the history was read is after the reader's start, so it arrives
live; one committed in between comes both ways, and the stream drops the copy by its id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from redis.exceptions import ConnectionError as RedisConnectionError

from service.domain.live import LiveEvent
from service.live.log import EventLog
from service.telemetry import LIVE_STREAMS

log = logging.getLogger(__name__)

# How long one XREAD waits for news before asking again (a reader with no listeners left stops then).
BLOCK_MS = 5000
# A stream whose client falls this many events behind is ended; it resumes with Last-Event-ID.
INBOX_LIMIT = 1000
# Waits between tries while Redis is unreachable.
RETRY_S = (0.1, 0.5, 1.0, 2.0)


class ShuttingDown(Exception):
    """The process is stopping: no new streams."""


class Listener:
    """One open stream's inbox: events routed to it, taken in batches."""

    def __init__(self, *, task: str | None, owner: str | None, everyone: bool) -> None:
        self.task, self.owner, self.everyone = task, owner, everyone
        self._events: list[LiveEvent] = []
        self._wake = asyncio.Event()
        self.overflowed = False
        self.closed = False
        self.left = False

    def push(self, event: LiveEvent) -> None:
        if len(self._events) >= INBOX_LIMIT:
            self.overflowed = True
        else:
            self._events.append(event)
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    @property
    def over(self) -> bool:
        """The stream must end: the process is stopping, or its client fell too far behind."""
        return self.closed or self.overflowed

    async def take(self, timeout_s: float) -> list[LiveEvent]:
        """The events routed here since the last take, waiting up to `timeout_s` for one ([]: none)."""
        if not self._events and not self.over:
            try:
                async with asyncio.timeout(timeout_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
        self._wake.clear()
        events, self._events = self._events, []
        return events


class Hub:
    def __init__(self, reader: EventLog, history: EventLog, *, ready_timeout_s: float = 5.0) -> None:
        self.reader_log = reader  # on a connection of its own: XREAD blocks it
        self.history = history
        self.ready_timeout_s = ready_timeout_s
        self._tasks: dict[str, set[Listener]] = {}
        self._owners: dict[str, set[Listener]] = {}
        self._everyone: set[Listener] = set()
        self._reader: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._last: str | None = None
        self.closing = False

    @property
    def listeners(self) -> int:
        return sum(map(len, self._tasks.values())) + sum(map(len, self._owners.values())) + len(self._everyone)

    async def listen(self, *, task: str | None = None, owner: str | None = None, everyone: bool = False) -> Listener:
        """A new stream's inbox: a task's events, one owner's, or everyone's. Raises
        `ShuttingDown`, or Redis' `ConnectionError` if the reader cannot start."""
        if self.closing:
            raise ShuttingDown()
        listener = Listener(task=task, owner=owner, everyone=everyone)
        if task is not None:
            self._tasks.setdefault(task, set()).add(listener)
        elif owner is not None:
            self._owners.setdefault(owner, set()).add(listener)
        else:
            self._everyone.add(listener)
        LIVE_STREAMS.inc()
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._run(), name="live-reader")
        try:
            async with asyncio.timeout(self.ready_timeout_s):
                await self._ready.wait()
        except TimeoutError:
            self.leave(listener)
            raise RedisConnectionError("the live event reader cannot reach redis") from None
        return listener

    def leave(self, listener: Listener) -> None:
        """Idempotent: called however a stream ends (its client gone included)."""
        if not listener.left:
            listener.left = True
            LIVE_STREAMS.dec()
        listener.close()
        for index, key in ((self._tasks, listener.task), (self._owners, listener.owner)):
            if key is not None and (found := index.get(key)) is not None:
                found.discard(listener)
                if not found:
                    del index[key]
        self._everyone.discard(listener)

    def close(self) -> None:
        """The process is stopping: every stream ends now (so the server can finish), none starts."""
        if self.closing:
            return  # called once per open connection
        self.closing = True
        for listener in [*self._everyone, *_flat(self._tasks.values()), *_flat(self._owners.values())]:
            listener.close()

    async def aclose(self) -> None:
        self.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.reader_log.redis.aclose()

    def _dispatch(self, event: LiveEvent) -> None:
        for listener in self._everyone:
            listener.push(event)
        for listener in self._owners.get(event.owner, ()):
            listener.push(event)
        for listener in self._tasks.get(event.subject, ()):
            listener.push(event)

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                if self._last is None:
                    self._last = await self.reader_log.tail()
                    self._ready.set()
                last, events = await self.reader_log.read(self._last, block_ms=BLOCK_MS)
                if failures:
                    log.info("live event reader: redis is back; read on from %s", self._last)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 (the reader outlives any one failure)
                if failures == 0:
                    log.warning("live event reader: %s: %s; retrying from %s", type(exc).__name__, exc, self._last)
                await asyncio.sleep(RETRY_S[min(failures, len(RETRY_S) - 1)])
                failures += 1
                continue
            self._last = last
            for event in events:
                self._dispatch(event)
            if not self.listeners:
                # No stream left: stop (no await since the check, so no listener slipped in);
                # the next stream starts a reader from the log's tail then.
                self._reader, self._last = None, None
                self._ready.clear()
                return


def _flat(groups: Iterable[set[Listener]]) -> list[Listener]:
    return [listener for group in groups for listener in group]
