"""The web process's HTTP/1.1 protocol: uvicorn's httptools protocol with the two limits it lacks.

uvicorn with httptools buffers a request head of any size and waits forever on a client that
stops sending. `LimitedHttpToolsProtocol` (given to uvicorn as `http=`) adds:

- a head limit: a request line and headers over HTTP_MAX_HEADER_BYTES get 431 and the connection
  is closed; the parser is never given more of a head than that (but see `on_message_begin`);
- a read deadline: a head not complete HTTP_READ_TIMEOUT_S after the connection opened (on a
  kept-alive connection, after the head's first byte), or a request body that sends nothing for
  HTTP_READ_TIMEOUT_S while we read it, closes the connection, with a 408 if no answer to that
  request has begun.

A connection checks its deadlines on a timer of its own every quarter of the timeout, so what
a request pays is a few attribute writes (about 1 µs); a slow client is closed within 1.25 timeouts.
The connection cap and the keep-alive timeout are uvicorn's own (`service.cli._web`).

Neither limit cuts a long response (an event stream): once a GET's head is read, nothing is
awaited from the client until its next request. And on shutdown every connection calls the
app's `ON_SHUTDOWN` hook first, so open event streams end and uvicorn can stop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from service.settings import get_settings

# A callable the app may put in its lifespan state under this name: called once the server
# starts shutting down, before it waits for open responses (so endless ones, event streams,
# can end instead of holding the shutdown up until its timeout).
ON_SHUTDOWN = "kling_relay.on_shutdown"


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """One HTTP/1.1 connection, with a bounded request head and a read deadline."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = get_settings()
        self.max_head_bytes = settings.http_max_header_bytes
        self.read_timeout_s = settings.http_read_timeout_s
        # The next bytes belong to a request head (true from the end of one message to the end
        # of the next head), and at most this many of that head's bytes have been parsed.
        self._head_open = True
        self._head_bytes = 0
        self._piece_bytes = 0
        self._head_deadline: float | None = None
        self._body_open = False
        self._last_read = 0.0
        self._watch: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._last_read = self.loop.time()
        self._head_deadline = self._last_read + self.read_timeout_s
        self._watch = self.loop.call_later(self.read_timeout_s / 4, self._check_deadlines)

    def shutdown(self) -> None:
        hook = self.app_state.get(ON_SHUTDOWN)
        if hook is not None:
            hook()
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # The hot path of every request: kept to a few attribute writes.
        self._last_read = now = self.loop.time()
        size = len(data)
        if self._head_open:
            if self._head_deadline is None:
                self._head_deadline = now + self.read_timeout_s
            room = self.max_head_bytes - self._head_bytes
            if size > room:
                # Parse only what the head may still take; the rest once the head is complete.
                self._feed(data[:room])
                if self._head_open:
                    self._head_too_large()
                    return
                data = data[room:]
                size = len(data)
            else:
                self._head_bytes += size
        self._feed(data, size)

    def _feed(self, data: bytes, size: int | None = None) -> None:
        self._piece_bytes = len(data) if size is None else size
        HttpToolsProtocol.data_received(self, data)
        if self._head_open and self._head_bytes > self.max_head_bytes:
            self._head_too_large()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # Where in this piece the head began is unknown (a pipelined request after the end of
        # another): charge it the whole piece, so a head is never let past the limit.
        self._head_bytes = self._piece_bytes
        if self._head_deadline is None:
            self._head_deadline = self._last_read + self.read_timeout_s

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._head_bytes = 0
        self._head_deadline = None
        self._body_open = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._body_open = False
        self._head_open = True
        super().on_message_complete()

    def _check_deadlines(self) -> None:
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return  # closed, or handed over to a WebSocket protocol
        now = self.loop.time()
        if self._head_deadline is not None and now >= self._head_deadline:
            # A connection that never sent a byte is closed silently, like an idle keep-alive one.
            status = 408 if self._head_bytes > 0 and self._no_response_pending() else None
            self._close("Request head not complete in time.", status)
            return
        if self._body_open:
            if self.flow.read_paused or self.cycle.waiting_for_100_continue:
                self._last_read = now  # we are not reading: the silence is ours, not the client's
            elif now - self._last_read >= self.read_timeout_s:
                self._close("Request body stalled.", None if self.cycle.response_started else 408)
                return
        self._watch = self.loop.call_later(self.read_timeout_s / 4, self._check_deadlines)

    def _head_too_large(self) -> None:
        if not self.transport.is_closing():
            status = 431 if self._no_response_pending() else None
            self._close(f"Request head over {self.max_head_bytes} bytes.", status)

    def _no_response_pending(self) -> bool:
        """No earlier request on this connection still awaits or sends its answer, so an answer
        now is the answer to the request whose head is being read."""
        return self.cycle is None or self.cycle.response_complete

    def _close(self, reason: str, status: int | None) -> None:
        """Close the connection, answering `status` with `reason` first if given."""
        self.logger.warning("%s%s", reason, f" Answered {status}." if status else "")
        if status is not None:
            if self.cycle is not None and not self.cycle.response_complete:
                # Our answer ends this exchange: what the app sends until the connection is
                # lost must not follow it on the wire.
                self.cycle.disconnected = True
            body = reason.encode("ascii")
            head = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head += [
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n\r\n",
                body,
            ]
            self.transport.write(b"".join(head))
        self.transport.close()
