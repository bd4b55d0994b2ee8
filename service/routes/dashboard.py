"""`/dashboard`: recent tasks with their status, events and deliveries, live over server-sent events.

Access: any key of `KLING_RELAY_API_KEYS`. A browser signs in once, with the form or by opening
`/dashboard?key=<API key>` (what `kling-relay dev` prints); the server answers with a cookie and a
redirect that drops the key from the address bar. The cookie holds an HMAC of the key, never the
key itself, so it opens the (read-only) dashboard but cannot call the API; it is HttpOnly,
SameSite=Strict, scoped to /dashboard, and stops working when its key is removed. `Authorization:
Bearer <key>` works too. Log lines mask `key=` values.

Live updates: `/dashboard/stream` re-reads the recent tasks from Redis every `TICK_S` and sends
each row that changed as a rendered `<tr>`. Reading Redis (rather than listening to the workers)
means any web process can serve any dashboard, and it costs one small read per viewer per tick.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlencode

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from service.dashboard_html import TaskView, login_page, task_page, task_row, tasks_page
from service.domain.clock import iso_to_unix
from service.domain.events import Event
from service.domain.status import TaskStatus
from service.domain.tasks import Task
from service.errors import ApiError
from service.routes.context import runtime
from service.routes.subscriptions import WebhookStores, stores
from service.runtime import Runtime
from service.store import events_key
from service.webhooks.models import TASK_WEBHOOK, Delivery
from service.webhooks.policy import delivery_id

COOKIE = "kr_dashboard"
COOKIE_MAX_AGE_S = 12 * 3600
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


def cookie_token(api_key: str) -> str:
    return hmac.new(api_key.encode(), b"kling-relay dashboard v1", hashlib.sha256).hexdigest()


def _key_matches(presented: str, keys: list[str]) -> bool:
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(key.encode(), presented.encode())
    return matched


def _cookie_matches(presented: str, keys: list[str]) -> bool:
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(cookie_token(key).encode(), presented.encode())
    return matched


def signed_in(request: Request) -> bool:
    keys = runtime(request).settings.kling_relay_api_keys
    scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and bearer and _key_matches(bearer.strip(), keys):
        return True
    cookie = request.cookies.get(COOKIE)
    return cookie is not None and _cookie_matches(cookie, keys)


def _sign_in(request: Request, api_key: str, to: str) -> Response:
    response = RedirectResponse(to, status_code=303)
    response.set_cookie(
        COOKIE,
        cookie_token(api_key),
        max_age=COOKIE_MAX_AGE_S,
        path="/dashboard",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def _status_filter(request: Request) -> TaskStatus | None:
    value = request.query_params.get("status")
    if not value:
        return None
    try:
        return TaskStatus(value)
    except ValueError as exc:
        raise ApiError(400, "validation_error", "unknown status", {"status": f"must be one of {', '.join(TaskStatus)}"}) from exc


def load_views(rt: Runtime, webhooks: WebhookStores, tasks: list[Task], *, max_subscribers: int | None) -> list[TaskView]:
    """The tasks with their events and deliveries, in three round trips whatever their number."""
    if not tasks:
        return []
    with rt.redis.pipeline(transaction=False) as pipe:
        for task in tasks:
            pipe.lrange(events_key(task.id), 0, -1)
        raw_events = pipe.execute()
    events = {task.id: [Event.loads(raw) for raw in raws] for task, raws in zip(tasks, raw_events)}
    sub_ids = webhooks.subscriptions.ids()
    deliveries: dict[str, list[Delivery]] = {task.id: [] for task in tasks}
    if max_subscribers is None or len(sub_ids) <= max_subscribers:
        wanted = []
        for task in tasks:
            subscribers = [*sub_ids, *([TASK_WEBHOOK] if task.webhook_url else [])]
            wanted += [delivery_id(event.id, sub) for event in events[task.id] for sub in subscribers]
        for d in webhooks.deliveries.get_many(wanted):
            deliveries[d.subject_id].append(d)
    for found in deliveries.values():
        found.sort(key=lambda d: (d.created_at, d.id))
    return [TaskView(task, events[task.id], deliveries[task.id]) for task in tasks]


async def dashboard(request: Request) -> Response:
    key = request.query_params.get("key")
    if key is not None:
        if not _key_matches(key, runtime(request).settings.kling_relay_api_keys):
            return HTMLResponse(login_page("That key is not one of KLING_RELAY_API_KEYS."), status_code=401)
        rest = {k: v for k, v in request.query_params.items() if k != "key"}
        return _sign_in(request, key, "/dashboard" + (f"?{urlencode(rest)}" if rest else ""))
    if not signed_in(request):
        return HTMLResponse(login_page(), status_code=401)
    rt, webhooks = runtime(request), stores(request)
    status = _status_filter(request)

    def load() -> list[TaskView]:
        page = rt.store.page(status=status, cursor=None, limit=PAGE_SIZE)
        return load_views(rt, webhooks, page.tasks, max_subscribers=MAX_SUBSCRIBERS_IN_LIST)

    views = await run_in_threadpool(load)
    return HTMLResponse(tasks_page(views, status=status.value if status else None), headers={"Cache-Control": "no-store"})


async def login(request: Request) -> Response:
    form = parse_qs((await request.body())[:4096].decode(errors="replace"))
    key = (form.get("key") or [""])[0].strip()
    if not key or not _key_matches(key, runtime(request).settings.kling_relay_api_keys):
        return HTMLResponse(login_page("That key is not one of KLING_RELAY_API_KEYS."), status_code=401)
    return _sign_in(request, key, "/dashboard")


async def task_detail(request: Request) -> Response:
    if not signed_in(request):
        return HTMLResponse(login_page(), status_code=401)
    rt, webhooks = runtime(request), stores(request)
    task_id = request.path_params["task_id"]

    def load() -> tuple[TaskView, dict[str, str]] | None:
        task = rt.store.get(task_id)
        if task is None:
            return None
        [view] = load_views(rt, webhooks, [task], max_subscribers=None)
        subs = webhooks.subscriptions.get_many(sorted({d.subscription_id for d in view.deliveries if d.subscription_id}))
        return view, {sub_id: sub.url for sub_id, sub in subs.items()}

    found = await run_in_threadpool(load)
    if found is None:
        return HTMLResponse("<p>No such task (finished tasks expire after TASK_RETENTION_S).</p>", status_code=404)
    return HTMLResponse(task_page(*found), headers={"Cache-Control": "no-store"})


def _fingerprint(task: Task) -> tuple[int, str, int | None]:
    return (task.sequence, task.updated_at, task.progress)


async def stream(request: Request) -> Response:
    if not signed_in(request):
        raise ApiError(401, "unauthorized", "sign in at /dashboard first")
    rt, webhooks = runtime(request), stores(request)
    status = _status_filter(request)

    def changed_rows(sent: dict[str, tuple[tuple[int, str, int | None], str]]) -> list[tuple[str, str]]:
        tasks = rt.store.page(status=status, cursor=None, limit=PAGE_SIZE).tasks
        now = time.time()
        hot = [
            t for t in tasks
            if t.id not in sent or sent[t.id][0] != _fingerprint(t) or now - iso_to_unix(t.updated_at) < SETTLING_S
        ]
        rows = []
        # Oldest first, so rows new to the page land above each other newest-on-top.
        for view in reversed(load_views(rt, webhooks, hot, max_subscribers=MAX_SUBSCRIBERS_IN_LIST)):
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

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


routes = [
    Route("/dashboard", dashboard, methods=["GET"]),
    Route("/dashboard/login", login, methods=["POST"]),
    Route("/dashboard/stream", stream, methods=["GET"]),
    Route("/dashboard/tasks/{task_id}", task_detail, methods=["GET"]),
]
