"""`/dashboard`: recent tasks with their status, events and deliveries, live over server-sent events.

Access: any key of `KLING_RELAY_API_KEYS` or `KLING_RELAY_ADMIN_KEYS`. A browser signs in once,
with the form or by opening `/dashboard?key=<API key>` (what `kling-relay dev` prints); the server
answers with a session cookie (`service.sessions`) and a redirect that drops the key from the
address bar. `Authorization: Bearer <key>` works too. Who is signed in is
`service.sessions.session_caller`; every POST but the sign-in passes `require_csrf`. Every answer
carries the security headers of `HEADERS` (a CSP allowing only the pages' hashed inline script and
style, no framing, no caching). Log lines mask `key=` values.

Live updates: `/dashboard/stream` re-reads the recent tasks from Redis every `TICK_S` and sends
each row that changed as a rendered `<tr>`. Reading Redis (rather than listening to the workers)
means any web process can serve any dashboard, and it costs one small read per viewer per tick.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlencode

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from service.auth import Caller
from service.dashboard_html import (
    CONTENT_SECURITY_POLICY,
    TaskView,
    login_page,
    task_page,
    task_row,
    tasks_page,
)
from service.domain.clock import iso_to_unix
from service.domain.events import Event
from service.domain.status import TaskStatus
from service.domain.tasks import Task
from service.errors import ApiError
from service.keys import events_key
from service.routes.context import runtime
from service.routes.params import enum_param
from service.runtime import Runtime
from service.security_headers import SecurityHeaders, browser_headers
from service.sessions import (
    end_session,
    page_csrf_token,
    require_csrf,
    same_origin,
    session_caller,
    start_session,
)
from service.webhooks.models import TASK_WEBHOOK, Delivery
from service.webhooks.policy import delivery_id

HEADERS = browser_headers(CONTENT_SECURITY_POLICY, cache_control="no-store")
PAGE_SIZE = 25
TICK_S = 1.0
# A stream ends after this long and the browser reconnects by itself: no connection outlives a
# deploy for long, and load balancers' idle timeouts never bite.
STREAM_LIFETIME_S = 60.0
# Rows changed this recently are re-read every tick even when the task did not move: their
# deliveries may still be landing.
SETTLING_S = 120.0
# Delivery ids derive from (event, subscriber), so a task's deliveries are found by trying each
# subscription; past this many subscriptions the list view leaves them to the task page.
MAX_SUBSCRIBERS_IN_LIST = 50


UNKNOWN_KEY = "That key is not one of KLING_RELAY_API_KEYS or KLING_RELAY_ADMIN_KEYS."
# Where a sign-in link opened from another site lands: the form, saying why.
CROSS_SITE_LINK = "crosssite"


async def _form(request: Request) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs((await request.body())[:4096].decode(errors="replace")).items()}


def _listed(who: Caller) -> str | None:
    """Whose tasks the dashboard lists: the signed-in key's own, or everyone's for an admin."""
    return None if who.admin else who.key_id


def load_views(
    rt: Runtime, who: Caller, tasks: list[Task], *, max_subscribers: int | None
) -> list[TaskView]:
    """The tasks with their events and deliveries, in three round trips whatever their number."""
    if not tasks:
        return []
    with rt.redis.pipeline(transaction=False) as pipe:
        for task in tasks:
            pipe.lrange(events_key(task.id), 0, -1)
        raw_events = pipe.execute()
    events = {task.id: [Event.loads(raw) for raw in raws] for task, raws in zip(tasks, raw_events)}
    # Deliveries to the caller's subscriptions only: another key's endpoints are not its to see.
    sub_ids = rt.subscriptions.ids(owner=_listed(who))
    deliveries: dict[str, list[Delivery]] = {task.id: [] for task in tasks}
    if max_subscribers is None or len(sub_ids) <= max_subscribers:
        wanted = []
        for task in tasks:
            subscribers = [*sub_ids, *([TASK_WEBHOOK] if task.webhook_url else [])]
            wanted += [delivery_id(event.id, sub) for event in events[task.id] for sub in subscribers]
        for d in rt.deliveries.get_many(wanted):
            deliveries[d.subject_id].append(d)
    for found in deliveries.values():
        found.sort(key=lambda d: (d.created_at, d.id))
    return [TaskView(task, events[task.id], deliveries[task.id]) for task in tasks]


async def dashboard(request: Request) -> Response:
    key = request.query_params.get("key")
    if key is not None:
        return _sign_in_by_link(request, key)
    who = session_caller(request)
    if who is None:
        cross_site = request.query_params.get("signin") == CROSS_SITE_LINK
        note = "Sign-in links work only when opened directly, not from another site: paste the key here." if cross_site else ""
        return HTMLResponse(login_page(note), status_code=401)
    rt = runtime(request)
    status = enum_param(request, "status", TaskStatus, blank_is_none=True)

    def load() -> list[TaskView]:
        page = rt.store.page(status=status, cursor=None, limit=PAGE_SIZE, owner=_listed(who))
        return load_views(rt, who, page.tasks, max_subscribers=MAX_SUBSCRIBERS_IN_LIST)

    views = await run_in_threadpool(load)
    return HTMLResponse(tasks_page(views, status=status.value if status else None, csrf=page_csrf_token(request)))


def _sign_in_by_link(request: Request, key: str) -> Response:
    """Sign in with `?key=`, then redirect at once to the same address without the key."""
    if request.headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        # A link on another site would sign the visitor in as whoever wrote it (login CSRF).
        return RedirectResponse(f"/dashboard?signin={CROSS_SITE_LINK}", status_code=303)
    who = runtime(request).keys.caller(key)
    if who is None:
        return HTMLResponse(login_page(UNKNOWN_KEY), status_code=401)
    rest = {k: v for k, v in request.query_params.items() if k != "key"}
    response = RedirectResponse("/dashboard" + (f"?{urlencode(rest)}" if rest else ""), status_code=303)
    start_session(request, response, who)
    return response


async def login(request: Request) -> Response:
    if not same_origin(request):
        # Login CSRF: another site's form would sign the visitor in as whoever wrote it.
        raise ApiError(403, "forbidden", "cross-site sign-in refused: use the form at /dashboard")
    key = (await _form(request)).get("key", "").strip()
    who = runtime(request).keys.caller(key) if key else None
    if who is None:
        return HTMLResponse(login_page(UNKNOWN_KEY), status_code=401)
    response = RedirectResponse("/dashboard", status_code=303)
    start_session(request, response, who)
    return response


async def logout(request: Request) -> Response:
    if session_caller(request) is None:
        return HTMLResponse(login_page(), status_code=401)
    require_csrf(request, await _form(request))
    response = RedirectResponse("/dashboard", status_code=303)
    end_session(request, response)
    return response


async def task_detail(request: Request) -> Response:
    who = session_caller(request)
    if who is None:
        return HTMLResponse(login_page(), status_code=401)
    rt = runtime(request)
    task_id = request.path_params["task_id"]

    def load() -> tuple[TaskView, dict[str, str]] | None:
        task = rt.store.get(task_id)
        if task is None or not who.owns(task.owner):
            return None
        [view] = load_views(rt, who, [task], max_subscribers=None)
        subs = rt.subscriptions.get_many(sorted({d.subscription_id for d in view.deliveries if d.subscription_id}))
        return view, {sub_id: sub.url for sub_id, sub in subs.items()}

    found = await run_in_threadpool(load)
    if found is None:
        return HTMLResponse("<p>No such task (finished tasks expire after TASK_RETENTION_S).</p>", status_code=404)
    return HTMLResponse(task_page(*found, csrf=page_csrf_token(request)))


def _fingerprint(task: Task) -> tuple[int, str, int | None]:
    return (task.sequence, task.updated_at, task.progress)


async def stream(request: Request) -> Response:
    who = session_caller(request)
    if who is None:
        raise ApiError(401, "unauthorized", "sign in at /dashboard first")
    rt = runtime(request)
    status = enum_param(request, "status", TaskStatus, blank_is_none=True)

    def changed_rows(sent: dict[str, tuple[tuple[int, str, int | None], str]]) -> list[tuple[str, str]]:
        tasks = rt.store.page(status=status, cursor=None, limit=PAGE_SIZE, owner=_listed(who)).tasks
        now = time.time()
        hot = [
            t for t in tasks
            if t.id not in sent or sent[t.id][0] != _fingerprint(t) or now - iso_to_unix(t.updated_at) < SETTLING_S
        ]
        rows = []
        # Oldest first, so rows new to the page land above each other newest-on-top.
        for view in reversed(load_views(rt, who, hot, max_subscribers=MAX_SUBSCRIBERS_IN_LIST)):
            html = task_row(view)
            if sent.get(view.task.id, (None, ""))[1] != html:
                sent[view.task.id] = (_fingerprint(view.task), html)
                rows.append((view.task.id, html))
        return rows

    async def events() -> AsyncIterator[bytes]:
        sent: dict[str, tuple[tuple[int, str, int | None], str]] = {}
        yield b"retry: 1000\n\n"
        ends = time.monotonic() + STREAM_LIFETIME_S
        while time.monotonic() < ends:
            # Re-checked every tick: an open stream ends with its session, not up to a lifetime later.
            if session_caller(request) is None:
                yield b"event: signed-out\ndata: {}\n\n"
                return
            try:
                rows = await run_in_threadpool(changed_rows, sent)
            except (RedisConnectionError, RedisTimeoutError):
                # Headers are already sent, so say so in the stream and try again next tick.
                yield b": storage unavailable\n\n"
                await asyncio.sleep(TICK_S)
                continue
            for task_id, html in rows:
                yield b"event: task\ndata: " + orjson.dumps({"id": task_id, "html": html}) + b"\n\n"
            if not rows:
                yield b": idle\n\n"  # lets proxies and the server notice a closed connection
            await asyncio.sleep(TICK_S)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})


_secured = [Middleware(SecurityHeaders, headers=HEADERS)]
routes = [
    Route("/dashboard", dashboard, methods=["GET"], middleware=_secured),
    Route("/dashboard/login", login, methods=["POST"], middleware=_secured),
    Route("/dashboard/logout", logout, methods=["POST"], middleware=_secured),
    Route("/dashboard/stream", stream, methods=["GET"], middleware=_secured),
    Route("/dashboard/tasks/{task_id}", task_detail, methods=["GET"], middleware=_secured),
]
