"""`/dashboard`: recent tasks with their status, progress, events and deliveries, live over
server-sent events; a task's page (its stored video, a cancel button); subscriptions with their
health; each delivery's attempts with a "Retry now" button.

Access: any key of `KLING_RELAY_API_KEYS` or `KLING_RELAY_ADMIN_KEYS`. A browser signs in once,
with the form or by opening `/dashboard?key=<API key>` (what `kling-relay dev` prints); the server
answers with a session cookie (`service.sessions`) and a redirect that drops the key from the
address bar. `Authorization: Bearer <key>` works too. Who is signed in is
`service.sessions.session_caller`; every POST but the sign-in passes `require_csrf`. Every answer
carries the security headers of `HEADERS` (a CSP allowing only the pages' hashed inline script and
style, no framing, no caching). Log lines mask `key=` values.

Buttons (cancel, retry, enable, disable) call the same functions as the API's routes
(`routes.tasks.cancel`, `routes.deliveries.retry`, `routes.subscriptions.change_subscription`);
the video is served by `routes.video.serve_video`, here under /dashboard where the cookie goes.

Live updates: `/dashboard/stream` re-reads from Redis every `TICK_S` and sends what changed: on
the task list each changed row as a rendered `<tr>`; on a task's or a delivery's page (`?task=`,
`?delivery=`) each changed part (`section`), so parts that did not change, a playing video among
them, are left alone. Reading Redis (rather than listening to the workers) means any web process
can serve any dashboard, and it costs a few small reads per viewer per tick.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol
from urllib.parse import parse_qs, quote, urlencode

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
    TaskPage,
    TaskView,
    content_security_policy_for,
    delivery_page,
    delivery_sections,
    delivery_target,
    login_page,
    section_update,
    subscription_page,
    subscriptions_page,
    task_page,
    task_row,
    task_sections,
    tasks_page,
)
from service.domain.clock import iso_to_unix
from service.domain.events import Event
from service.domain.status import TaskStatus
from service.domain.tasks import Task
from service.errors import ApiError
from service.keys import events_key
from service.routes.context import runtime
from service.routes.deliveries import owned_delivery, retry
from service.routes.params import enum_param
from service.routes.subscriptions import change_subscription, owned_subscription
from service.routes.tasks import cancel
from service.routes.video import serve_video
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
from service.webhooks.models import (
    TASK_WEBHOOK,
    Delivery,
    SubscriptionUpdate,
    SubscriptionWithHealth,
)
from service.webhooks.policy import DeliveryStatus, delivery_id

HEADERS = browser_headers(CONTENT_SECURITY_POLICY, cache_control="no-store")
PAGE_SIZE = 25
TICK_S = 1.0
DELIVERY_GONE = "delivery (delivery logs expire after WEBHOOK_LOG_TTL_S)"


class DetailPage(Protocol):
    """A page that can be shown again with a note saying why an action was refused."""

    def __call__(self, request: Request, note: str = ..., status_code: int = ...) -> Awaitable[Response]: ...
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
    events = {task.id: [Event.loads(raw) for raw in raws] for task, raws in zip(tasks, raw_events, strict=True)}
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


def _not_found(what: str) -> HTMLResponse:
    return HTMLResponse(f"<p>No such {what}.</p>", status_code=404)


def load_task_page(rt: Runtime, who: Caller, task_id: str) -> TaskPage | None:
    task = rt.store.get(task_id)
    if task is None or not who.owns(task.owner):
        return None
    return _task_page(rt, who, task)


def _task_page(rt: Runtime, who: Caller, task: Task) -> TaskPage:
    [view] = load_views(rt, who, [task], max_subscribers=None)
    subs = rt.subscriptions.get_many(sorted({d.subscription_id for d in view.deliveries if d.subscription_id}))
    return TaskPage(view, {sub_id: sub.url for sub_id, sub in subs.items()}, storing=rt.storage is not None, now=time.time())


async def task_detail(request: Request, note: str = "", status_code: int = 200) -> Response:
    who = session_caller(request)
    if who is None:
        return HTMLResponse(login_page(), status_code=401)
    rt = runtime(request)
    page = await run_in_threadpool(load_task_page, rt, who, request.path_params["task_id"])
    if page is None:
        return _not_found("task (finished tasks expire after TASK_RETENTION_S)")
    media_origin = rt.storage.media_origin() if rt.storage is not None else None
    # Copies in a bucket are played from its presigned URLs: this page's policy allows that origin.
    headers = {"Content-Security-Policy": content_security_policy_for(media_origin)} if media_origin else None
    return HTMLResponse(task_page(page, csrf=page_csrf_token(request), note=note), status_code=status_code, headers=headers)


async def task_video(request: Request) -> Response:
    who = session_caller(request)
    if who is None:
        raise ApiError(401, "unauthorized", "sign in at /dashboard first")
    return await serve_video(request, who)


async def _signed_post(request: Request) -> Caller | None:
    """Who is signed in, once the CSRF checks pass (403 otherwise); None: nobody is."""
    who = session_caller(request)
    if who is not None:
        require_csrf(request, await _form(request))
    return who


async def _act(
    request: Request, act: Callable[[Runtime, Caller], object], *, what: str, page: DetailPage, back: str
) -> Response:
    """A dashboard button: a signed-in, same-site POST (401/403 otherwise) runs `act` off the loop,
    then goes `back` (303); refused, it shows the not-found page for `what`, or `page` again
    saying why."""
    who = await _signed_post(request)
    if who is None:
        return HTMLResponse(login_page(), status_code=401)
    try:
        await run_in_threadpool(act, runtime(request), who)
    except ApiError as exc:
        if exc.status == 404:
            return _not_found(what)
        return await page(request, note=exc.message, status_code=exc.status)
    return RedirectResponse(back, status_code=303)


async def cancel_task(request: Request) -> Response:
    task_id = request.path_params["task_id"]
    return await _act(
        request,
        lambda rt, who: cancel(rt, who, task_id),
        what="task",
        page=task_detail,
        back=f"/dashboard/tasks/{quote(task_id)}",
    )


async def subscriptions_list(request: Request) -> Response:
    who = session_caller(request)
    if who is None:
        return HTMLResponse(login_page(), status_code=401)
    rt = runtime(request)
    cursor = request.query_params.get("cursor") or None

    def load() -> tuple[list[SubscriptionWithHealth], str | None]:
        page = rt.subscriptions.list(cursor=cursor, limit=PAGE_SIZE, owner=_listed(who))
        return rt.subscriptions.with_health(page.subscriptions), page.next_cursor

    views, next_cursor = await run_in_threadpool(load)
    return HTMLResponse(subscriptions_page(views, next_cursor=next_cursor, csrf=page_csrf_token(request)))


async def subscription_detail(request: Request, note: str = "", status_code: int = 200) -> Response:
    who = session_caller(request)
    if who is None:
        return HTMLResponse(login_page(), status_code=401)
    rt = runtime(request)
    status = enum_param(request, "status", DeliveryStatus, blank_is_none=True)
    cursor = request.query_params.get("cursor") or None

    def load() -> tuple[SubscriptionWithHealth, list[Delivery], str | None]:
        sub = owned_subscription(rt, who, request.path_params["sub_id"])
        deliveries, next_cursor = rt.deliveries.for_subscription(sub.id, status=status, cursor=cursor, limit=PAGE_SIZE)
        [view] = rt.subscriptions.with_health([sub])
        return view, deliveries, next_cursor

    try:
        view, deliveries, next_cursor = await run_in_threadpool(load)
    except ApiError as exc:
        if exc.status == 404:
            return _not_found("subscription")
        raise
    page = subscription_page(
        view,
        deliveries,
        status=status.value if status else None,
        next_cursor=next_cursor,
        csrf=page_csrf_token(request),
        note=note,
    )
    return HTMLResponse(page, status_code=status_code)


async def _switch(request: Request, enabled: bool) -> Response:
    sub_id = request.path_params["sub_id"]

    def switch(rt: Runtime, who: Caller) -> None:
        change_subscription(rt, owned_subscription(rt, who, sub_id), SubscriptionUpdate(enabled=enabled))

    return await _act(
        request, switch, what="subscription", page=subscription_detail, back=f"/dashboard/subscriptions/{quote(sub_id)}"
    )


async def enable_subscription(request: Request) -> Response:
    return await _switch(request, True)


async def disable_subscription(request: Request) -> Response:
    return await _switch(request, False)


def _delivery_view(rt: Runtime, who: Caller, delivery_id: str) -> tuple[Delivery, str]:
    """The delivery (404 unless the caller owns it) and where it goes, as shown."""
    delivery = owned_delivery(rt, who, delivery_id)
    sub = rt.subscriptions.get(delivery.subscription_id) if delivery.subscription_id else None
    return delivery, delivery_target(delivery, {sub.id: sub.url} if sub else {})


async def delivery_detail(request: Request, note: str = "", status_code: int = 200) -> Response:
    who = session_caller(request)
    if who is None:
        return HTMLResponse(login_page(), status_code=401)
    try:
        delivery, to = await run_in_threadpool(_delivery_view, runtime(request), who, request.path_params["delivery_id"])
    except ApiError as exc:
        if exc.status == 404:
            return _not_found(DELIVERY_GONE)
        raise
    return HTMLResponse(delivery_page(delivery, to, csrf=page_csrf_token(request), note=note), status_code=status_code)


async def retry_delivery(request: Request) -> Response:
    delivery_id = request.path_params["delivery_id"]
    # Refused (in flight, subscription disabled or deleted): the page again, saying why.
    return await _act(
        request,
        lambda rt, who: retry(rt, who, delivery_id),
        what=DELIVERY_GONE,
        page=delivery_detail,
        back=f"/dashboard/deliveries/{quote(delivery_id)}",
    )


def _fingerprint(task: Task) -> tuple[int, str, int | None]:
    return (task.sequence, task.updated_at, task.progress)


Tick = Callable[[], list[bytes]]


def _rows(rt: Runtime, who: Caller, status: TaskStatus | None) -> Tick:
    """The task list's changed rows, as `task` events."""
    sent: dict[str, tuple[tuple[int, str, int | None], str]] = {}

    def tick() -> list[bytes]:
        tasks = rt.store.page(status=status, cursor=None, limit=PAGE_SIZE, owner=_listed(who)).tasks
        now = time.time()
        hot = [
            t for t in tasks
            if t.id not in sent or sent[t.id][0] != _fingerprint(t) or now - iso_to_unix(t.updated_at) < SETTLING_S
        ]
        events = []
        # Oldest first, so rows new to the page land above each other newest-on-top.
        for view in reversed(load_views(rt, who, hot, max_subscribers=MAX_SUBSCRIBERS_IN_LIST)):
            html = task_row(view)
            if sent.get(view.task.id, (None, ""))[1] != html:
                sent[view.task.id] = (_fingerprint(view.task), html)
                events.append(b"event: task\ndata: " + orjson.dumps({"id": view.task.id, "html": html}) + b"\n\n")
        return events

    return tick


def _sections(load: Callable[[], dict[str, str] | None]) -> Tick:
    """A live page's changed parts, as `section` events. A page whose subject is gone (expired)
    is left as it is."""
    sent: dict[str, str] = {}

    def tick() -> list[bytes]:
        events = []
        for name, html in (load() or {}).items():
            update = section_update(name, html)
            if sent.get(name) != update["v"]:
                sent[name] = update["v"]
                events.append(b"event: section\ndata: " + orjson.dumps(update) + b"\n\n")
        return events

    return tick


def _task_sections(rt: Runtime, who: Caller, task_id: str, csrf: str | None) -> Tick:
    # Everything is re-read only when the task moved, moved lately, or has deliveries pending;
    # otherwise a tick is one GET of the task.
    last: dict[str, tuple[tuple[int, str, int | None], bool, dict[str, str]]] = {}

    def load() -> dict[str, str] | None:
        task = rt.store.get(task_id)
        if task is None or not who.owns(task.owner):
            return None
        seen = last.get("page")
        if (
            seen is not None
            and seen[0] == _fingerprint(task)
            and not seen[1]
            and time.time() - iso_to_unix(task.updated_at) >= SETTLING_S
        ):
            return seen[2]
        page = _task_page(rt, who, task)
        sections = task_sections(page, csrf=csrf)
        pending = any(d.status is DeliveryStatus.PENDING for d in page.view.deliveries)
        last["page"] = (_fingerprint(task), pending, sections)
        return sections

    return _sections(load)


def _delivery_sections(rt: Runtime, who: Caller, delivery_id: str, csrf: str | None) -> Tick:
    def load() -> dict[str, str] | None:
        try:
            delivery, to = _delivery_view(rt, who, delivery_id)
        except ApiError:
            return None
        return delivery_sections(delivery, to, csrf=csrf)

    return _sections(load)


async def stream(request: Request) -> Response:
    who = session_caller(request)
    if who is None:
        raise ApiError(401, "unauthorized", "sign in at /dashboard first")
    rt = runtime(request)
    csrf = page_csrf_token(request)
    params = request.query_params
    if "task" in params:
        tick = _task_sections(rt, who, params["task"], csrf)
    elif "delivery" in params:
        tick = _delivery_sections(rt, who, params["delivery"], csrf)
    else:
        tick = _rows(rt, who, enum_param(request, "status", TaskStatus, blank_is_none=True))

    async def events() -> AsyncIterator[bytes]:
        yield b"retry: 1000\n\n"
        ends = time.monotonic() + STREAM_LIFETIME_S
        while time.monotonic() < ends:
            # Re-checked every tick: an open stream ends with its session, not up to a lifetime later.
            if session_caller(request) is None:
                yield b"event: signed-out\ndata: {}\n\n"
                return
            try:
                sent = await run_in_threadpool(tick)
            except (RedisConnectionError, RedisTimeoutError):
                # Headers are already sent, so say so in the stream and try again next tick.
                yield b": storage unavailable\n\n"
                await asyncio.sleep(TICK_S)
                continue
            for event in sent:
                yield event
            if not sent:
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
    Route("/dashboard/tasks/{task_id}/video", task_video, methods=["GET", "HEAD"], middleware=_secured),
    Route("/dashboard/tasks/{task_id}/cancel", cancel_task, methods=["POST"], middleware=_secured),
    Route("/dashboard/subscriptions", subscriptions_list, methods=["GET"], middleware=_secured),
    Route("/dashboard/subscriptions/{sub_id}", subscription_detail, methods=["GET"], middleware=_secured),
    Route("/dashboard/subscriptions/{sub_id}/enable", enable_subscription, methods=["POST"], middleware=_secured),
    Route("/dashboard/subscriptions/{sub_id}/disable", disable_subscription, methods=["POST"], middleware=_secured),
    Route("/dashboard/deliveries/{delivery_id}", delivery_detail, methods=["GET"], middleware=_secured),
    Route("/dashboard/deliveries/{delivery_id}/retry", retry_delivery, methods=["POST"], middleware=_secured),
]
