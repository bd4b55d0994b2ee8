"""Live event streams over Server-Sent Events: `GET /v1/tasks/{id}/stream` (one task's events,
ending after its terminal one) and `GET /v1/events/stream` (the caller's events; an admin's:
everyone's).

Each message is `id:` the event id, `event:` its type, `data:` the event JSON as stored (as
webhooks deliver it). `Last-Event-ID` resumes after that event: from the task's events list, or
from the key's event log (`service/live/log.py`); a task stream without it starts at the task's
first event, an events stream with the next live one. Idle streams get a `: ping` comment every
STREAM_HEARTBEAT_S. Events arrive from the process's one reader (`service/live/hub.py`): a
stream itself never asks Redis again after its history.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.domain.live import (
    PING,
    RETRY,
    BadEventId,
    LiveEvent,
    after,
    resume_floor_ms,
)
from service.domain.tasks import Task
from service.errors import ApiError
from service.keys import task_key
from service.live.hub import Hub, Listener, ShuttingDown
from service.routes.context import caller, runtime

HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


class EventStream(StreamingResponse):
    """A streaming response that runs `on_end` however it ends: finished, client gone (Starlette
    cancels the body when the client disconnects), or never started."""

    def __init__(self, body: AsyncIterator[bytes], on_end: Callable[[], None]) -> None:
        super().__init__(body, media_type="text/event-stream", headers=HEADERS)
        self.on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if scope.get("method") == "HEAD":  # the headers only: a stream has no end to wait for
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                await send({"type": "http.response.body", "body": b""})
                return
            await super().__call__(scope, receive, send)
        finally:
            self.on_end()


def hub(request: Request) -> Hub:
    found: Hub = request.app.state.hub
    return found


def _last_event_id(request: Request) -> str | None:
    value = request.headers.get("last-event-id", "").strip() or None
    if value is not None:
        try:
            resume_floor_ms(value)
        except BadEventId:
            raise ApiError(
                400, "validation_error", "Last-Event-ID is not an event id", {"Last-Event-ID": "not an event id"}
            ) from None
    return value


async def _listen(request: Request, *, task: str | None = None, owner: str | None = None, everyone: bool = False) -> Listener:
    try:
        return await hub(request).listen(task=task, owner=owner, everyone=everyone)
    except ShuttingDown:
        raise ApiError(503, "unavailable", "the server is restarting; reconnect shortly") from None


def _body(
    history: Sequence[LiveEvent], listener: Listener | None, *, task_over: bool | None, heartbeat_s: float
) -> AsyncIterator[bytes]:
    """The stream: its history, then live events (each once), pings when idle. `task_over`:
    None for an events stream (endless); for a task stream, whether its history already holds
    its terminal event (then it ends after the history, else after the live terminal event)."""
    seen = {event.id for event in history}

    async def body() -> AsyncIterator[bytes]:
        yield RETRY + b"".join(event.frame for event in history)
        if task_over or listener is None:
            return
        while True:
            events = await listener.take(heartbeat_s)
            if listener.over:
                return
            if not events:
                yield PING
                continue
            # Events committed while the history was read come both ways: sent once.
            fresh = [event for event in events if event.id not in seen]
            for position, event in enumerate(fresh):
                if task_over is not None and event.ends_task:
                    yield b"".join(e.frame for e in fresh[: position + 1])
                    return
            if fresh:
                yield b"".join(event.frame for event in fresh)

    return body()


async def task_stream(request: Request) -> Response:
    rt, who, live = runtime(request), caller(request), hub(request)
    task_id = request.path_params["task_id"]
    last = _last_event_id(request)
    aredis = rt.store.aredis
    assert aredis is not None
    raw = await aredis.get(task_key(task_id))
    if raw is None or not who.owns(Task.loads(raw).owner):
        raise ApiError(404, "not_found", "no such task")
    history = await live.history.subject_events(task_id)
    # A task's terminal event is written with its status: once read here, nothing is to come.
    listener = None
    if not any(event.ends_task for event in history):
        listener = await _listen(request, task=task_id)
        try:
            history = await live.history.subject_events(task_id)  # again, now that it listens
        except BaseException:
            live.leave(listener)
            raise
    over = any(event.ends_task for event in history)
    history = history[after([event.id for event in history], last) :]
    body = _body(history, listener, task_over=over, heartbeat_s=rt.settings.stream_heartbeat_s)
    return EventStream(body, (lambda: live.leave(listener)) if listener is not None else (lambda: None))


async def events_stream(request: Request) -> Response:
    rt, who, live = runtime(request), caller(request), hub(request)
    last = _last_event_id(request)
    listener = await (_listen(request, everyone=True) if who.admin else _listen(request, owner=who.key_id))
    try:
        history: list[LiveEvent] = []
        if last is not None:
            history = await (live.history.everyone_after(last) if who.admin else live.history.owner_after(who.key_id, last))
    except BaseException:
        live.leave(listener)
        raise
    body = _body(history, listener, task_over=None, heartbeat_s=rt.settings.stream_heartbeat_s)
    return EventStream(body, lambda: live.leave(listener))


routes = [
    Route("/v1/tasks/{task_id}/stream", task_stream, methods=["GET"]),
    Route("/v1/events/stream", events_stream, methods=["GET"]),
]
