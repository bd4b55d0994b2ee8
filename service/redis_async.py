"""The web process's async Redis client: one connection, every command pipelined on it.

Why not redis-py's asyncio client: it checks a pooled connection out, health-checks it, wraps
it in a timeout and a retry, packs in Python, and writes and reads each command on its own
socket: the receiver's GET + EVALSHA pair costs it ~125-190 µs of CPU, against ~14-19 µs here
with 16-256 callers (bench/redis_clients.py; end to end, bench/ingest.py, the receiver spends
~2.5x the CPU per callback on it). Here a command is packed by hiredis and queued, everything
queued in one turn of the loop leaves in one write, and replies are matched to callers in order
as they arrive. Redis runs commands one at a time anyway, so a single connection loses nothing.

Errors are redis-py's exception types, so the app's 503 handler and callers treat both clients
alike: `ConnectionError` when Redis cannot be reached or the connection drops (in-flight
commands fail, the next one reconnects), `TimeoutError` when no reply comes within
`timeout_s` (the connection is dropped, since later replies would be out of step), and
`ResponseError` (`NoScriptError`, `ReadOnlyError`, ...) for error replies.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from ssl import create_default_context
from typing import Any, cast

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# A command's argument, as both Redis clients (and the scripts' wrappers) take it.
Arg = bytes | str | int | float
# Where the server is now: fixed for a URL, asked of Sentinel on every (re)connect.
Locate = Callable[[], Awaitable[tuple[str, int]]]

_ERRORS: dict[str, type[ResponseError]] = {"NOSCRIPT": NoScriptError, "READONLY": ReadOnlyError}


def _error(reply: ResponseError) -> ResponseError:
    message = str(reply)
    kind = _ERRORS.get(message.split(" ", 1)[0], ResponseError)
    return reply if type(reply) is kind else kind(message)


class _Protocol(asyncio.Protocol):
    """Replies are matched to waiters in the order their commands were written."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiters: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.transport: asyncio.Transport | None = None
        self.outgoing: list[bytes] = []
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports do not subclass asyncio.Transport, but have its methods.)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future, _ = self.waiters.popleft()
            if future.done():  # its caller gave up (cancelled); the reply is still this one's
                continue
            if isinstance(reply, ResponseError):
                error = _error(reply)
                if isinstance(error, ReadOnlyError):
                    # A demoted master (after a Sentinel failover): reconnect to find the new one.
                    self.fail(RedisConnectionError(f"redis is read-only, not the master: {error}"), first=future)
                    return
                future.set_exception(error)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(self.lost or RedisConnectionError(f"connection to redis lost: {exc or 'closed'}"))

    def fail(self, error: Exception, first: asyncio.Future[Any] | None = None) -> None:
        self.lost = self.lost or error
        if first is not None and not first.done():
            first.set_exception(error)
        while self.waiters:
            future, _ = self.waiters.popleft()
            if not future.done():
                future.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def send(self, args: Sequence[Arg]) -> asyncio.Future[Any]:
        if self.lost is not None or self.transport is None or self.transport.is_closing():
            raise self.lost or RedisConnectionError("connection to redis is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        # Commands sent in one turn of the loop leave in one write: concurrent callbacks share it.
        if not self.outgoing:
            loop.call_soon(self._flush)
        # (hiredis's stub declares a 1-tuple; it packs any number of arguments.)
        self.outgoing.append(hiredis.pack_command(tuple(args)))  # type: ignore[arg-type]
        self.waiters.append((future, time.monotonic()))
        return future

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()

    def overdue(self, timeout_s: float) -> bool:
        return bool(self.waiters) and time.monotonic() - self.waiters[0][1] > timeout_s


class PipelinedRedis:
    def __init__(
        self,
        locate: Locate,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        ssl: bool = False,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
    ) -> None:
        self.locate = locate
        self.db = db
        self.username = username
        self.password = password
        self.ssl = ssl
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._protocol: _Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None

    async def execute(self, *args: Arg) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.lost is not None or self._loop is not asyncio.get_running_loop():
            protocol = await self._connected()
        return await protocol.send(args)

    def sibling(self, *, timeout_s: float) -> PipelinedRedis:
        """Another client to the same server, with a connection of its own (for blocking reads,
        which would hold up every command pipelined behind them)."""
        return PipelinedRedis(
            self.locate, db=self.db, username=self.username, password=self.password, ssl=self.ssl,
            timeout_s=timeout_s, connect_timeout_s=self.connect_timeout_s,
        )

    async def get(self, key: str) -> bytes | None:
        reply: bytes | None = await self.execute("GET", key)
        return reply

    def register_script(self, source: str) -> Script:
        return Script(self, source)

    async def aclose(self) -> None:
        if self._protocol is not None:
            self._protocol.fail(RedisConnectionError("client closed"))
            self._protocol = None

    async def _connected(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A connection belongs to the loop that made it, and only that loop may touch it
            # (it may be closed, or running on another thread): leave it to go with its loop.
            self._protocol, self._connecting, self._loop = None, None, loop
        if self._protocol is not None and self._protocol.lost is None:
            return self._protocol
        # Callers arriving while a connection is being made share that one attempt.
        if self._connecting is None:
            self._connecting = loop.create_task(self._connect())
        connecting = self._connecting
        try:
            protocol = await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None
        self._protocol = protocol
        return protocol

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                host, port = await self.locate()
                context = create_default_context() if self.ssl else None
                _, protocol = await loop.create_connection(_Protocol, host, port, ssl=context)
                setup: list[asyncio.Future[Any]] = []
                if self.password is not None:
                    auth = ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
                    setup.append(protocol.send(auth))
                if self.db:
                    setup.append(protocol.send(("SELECT", self.db)))
                await asyncio.gather(*setup)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to redis: {type(exc).__name__}: {exc}") from exc
        self._watch(protocol)
        return protocol

    def _watch(self, protocol: _Protocol) -> None:
        """Drop the connection when a reply is overdue: checked every second, not per command."""
        loop = asyncio.get_running_loop()

        def check() -> None:
            if protocol.lost is not None:
                return
            if protocol.overdue(self.timeout_s):
                protocol.fail(RedisTimeoutError(f"no reply from redis within {self.timeout_s:g} s"))
                return
            loop.call_later(min(1.0, self.timeout_s), check)

        loop.call_later(min(1.0, self.timeout_s), check)


class Script:
    """A Lua script run by its SHA, loaded on first use on each server (EVAL on NOSCRIPT)."""

    def __init__(self, client: PipelinedRedis, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        try:
            return await self.client.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.client.execute("EVAL", self.source, len(keys), *keys, *args)
