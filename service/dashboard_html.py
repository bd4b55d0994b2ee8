"""The dashboard's HTML, rendered on the server from plain data (pure: no I/O).

Everything a user typed (prompts, URLs, metadata, provider messages) is escaped, and only
`http(s)` URLs become links. Rows are whole `<tr>` elements with stable ids, so the live stream can
send a row and the page can swap it in. The pages' one inline script and one inline style are
constants, allowed by their hashes in `CONTENT_SECURITY_POLICY`; nothing else inline may run.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from html import escape
from urllib.parse import quote, urlencode

from service.domain.clock import iso_to_unix, unix_to_iso
from service.domain.events import Event
from service.domain.status import TaskStatus
from service.domain.subscriptions import SubscriptionView
from service.domain.tasks import Task
from service.security_headers import content_security_policy, inline_source
from service.sessions import CSRF_FIELD
from service.text import excerpt
from service.webhooks.models import (
    Attempt,
    Delivery,
    SubscriptionHealth,
    SubscriptionWithHealth,
)
from service.webhooks.policy import DeliveryStatus


@dataclass(frozen=True)
class TaskView:
    """A task with what the dashboard shows beside it."""

    task: Task
    events: list[Event] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)


STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
header { display: flex; gap: 1.5em; align-items: baseline; padding: .8em 1.5em; background: #1d2330; color: #fff; }
header a { color: #9cc3ff; } header h1 { font-size: 1.1em; margin: 0; }
main { padding: 1em 1.5em; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: .4em .6em; border-bottom: 1px solid #e3e6eb; vertical-align: top; }
th { font-weight: 600; background: #eef0f4; }
code { font-size: 12px; }
.status { display: inline-block; padding: .05em .55em; border-radius: 1em; font-weight: 600; font-size: 12px; }
.s-queued { background: #e3e6eb; } .s-submitted { background: #dbe8ff; } .s-running { background: #fff1c2; }
.s-succeeded, .s-delivered, .s-enabled { background: #d5f5dd; } .s-failed, .s-disabled { background: #ffd9d6; }
.s-pending { background: #fff1c2; }
.s-canceled { background: #e3e6eb; color: #6b7280; text-decoration: line-through; }
progress { width: 8em; height: .8em; margin-left: .5em; vertical-align: middle; accent-color: #d9a400; }
.live { font-size: 12px; } .live.on { color: #7ee08f; } .live.off { color: #ffb3ad; }
.muted { color: #6b7280; } .filters a { margin-right: .8em; } .more { margin: .8em 0; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; background: #fff; padding: 1em; }
dt { font-weight: 600; } dd { margin: 0; word-break: break-all; }
form { background: #fff; padding: 1.5em; max-width: 28em; } input[type=password] { width: 100%; padding: .4em; margin: .5em 0; }
header form, form.action { background: none; padding: 0; margin: 0; display: inline; }
header form { margin-left: auto; }
section#actions { margin: .6em 0; } section#actions form { margin-right: .6em; }
video { display: block; width: 480px; max-width: 100%; background: #000; margin: .6em 0; }
.error { color: #b42318; } .notice { background: #fff1c2; padding: .6em 1em; }
"""

LIVE_SCRIPT = """
const live = document.getElementById("live");
const tbody = document.querySelector("#tasks tbody");
const page = document.getElementById("page");
const source = new EventSource("/dashboard/stream" + (page ? "?" + page.dataset.live : window.location.search));
source.onopen = () => { live.textContent = "\\u25cf live"; live.className = "live on"; };
source.onerror = () => { live.textContent = "\\u25cb reconnecting"; live.className = "live off"; };
source.addEventListener("task", (message) => {
  const update = JSON.parse(message.data);
  const row = document.getElementById("task-" + update.id);
  if (row) { row.outerHTML = update.html; } else { tbody.insertAdjacentHTML("afterbegin", update.html); }
  const empty = document.getElementById("empty");
  if (empty) { empty.remove(); }
});
source.addEventListener("section", (message) => {
  const update = JSON.parse(message.data);
  const section = document.getElementById(update.id);
  if (section && section.dataset.v !== update.v) { section.innerHTML = update.html; section.dataset.v = update.v; }
});
source.addEventListener("signed-out", () => {
  source.close();
  live.textContent = "\\u25cb signed out: reload to sign in"; live.className = "live off";
});
"""


def content_security_policy_for(media_origin: str | None = None) -> str:
    """The dashboard's policy; videos come from this origin, and from `media_origin` too when
    stored copies are served from elsewhere (a presigned S3 URL)."""
    return content_security_policy({
        "default-src": "'none'",
        "script-src": inline_source(LIVE_SCRIPT),
        "style-src": inline_source(STYLE),
        "connect-src": "'self'",  # the live stream
        "media-src": f"'self' {media_origin}" if media_origin else "'self'",
        "form-action": "'self'",
        "base-uri": "'none'",
        "frame-ancestors": "'none'",
    })


CONTENT_SECURITY_POLICY = content_security_policy_for()

# What a browser would treat as an http(s) URL, and nothing that parsers might read otherwise
# (spaces and control characters, which browsers strip or skip, as in "java\tscript:").
_WEB_URL = re.compile(r"https?://[^\s\x00-\x1f\x7f]+", re.IGNORECASE)


def _page(title: str, body: str, *, live: bool = False, csrf: str | None = None) -> str:
    indicator = "<span id=live class='live off'>&#9675; connecting</span>" if live else ""
    head = signed_in = ""
    if csrf is not None:
        head = f"<meta name=csrf-token content='{escape(csrf)}'>"
        signed_in = (
            f"<form method=post action='/dashboard/logout'>{csrf_field(csrf)}"
            "<button type=submit>sign out</button></form>"
        )
    script = f"<script>{LIVE_SCRIPT}</script>" if live else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width, initial-scale=1'><title>{escape(title)}</title>"
        f"<style>{STYLE}</style>{head}</head><body>"
        "<header><h1>kling-relay</h1><a href='/dashboard'>tasks</a><a href='/dashboard/subscriptions'>subscriptions</a>"
        f"<a href='/docs'>API docs</a><a href='/metrics'>metrics</a>{indicator}{signed_in}</header>"
        f"<main>{body}</main>{script}</body></html>"
    )


def csrf_field(token: str | None) -> str:
    """The hidden input every dashboard form that POSTs must carry (none for a Bearer page:
    Bearer requests need no token)."""
    return f"<input type=hidden name={CSRF_FIELD} value='{escape(token)}'>" if token is not None else ""


def _action(path: str, label: str, csrf: str | None) -> str:
    """A button that POSTs to `path` with the session's CSRF token."""
    return (
        f"<form class=action method=post action='{escape(path)}'>{csrf_field(csrf)}"
        f"<button type=submit>{escape(label)}</button></form>"
    )


def link(url: str) -> str:
    """`url` as a link if it is an http(s) URL, else as plain text (a `javascript:` URL from a
    provider must not become something to click)."""
    if _WEB_URL.fullmatch(url):
        return f"<a href='{escape(url)}' rel='noopener noreferrer'>{escape(url)}</a>"
    return f"<code>{escape(url)}</code>"


def status_badge(status: str, progress: int | None = None) -> str:
    """The status, and while running the provider's percentage, as text and as a bar."""
    badge = f"<span class='status s-{escape(status)}'>{escape(status)}</span>"
    if progress is None or status != "running":
        return badge
    return f"<span class='status s-running'>running {progress}%</span><progress max=100 value={progress}></progress>"


DASH = "\u2014"


def _when(iso: str | None, empty: str = "never") -> str:
    return escape(iso) if iso else f"<span class=muted>{escape(empty)}</span>"


def _version(html: str) -> str:
    return hashlib.sha256(html.encode()).hexdigest()[:16]


def sections_html(sections: dict[str, str]) -> str:
    """The parts of a live page, each carrying a version of its content: the stream sends a part
    again, and the page swaps it in, only when it changed (a playing video is left alone)."""
    return "".join(f"<section id={name} data-v={_version(html)}>{html}</section>" for name, html in sections.items())


def section_update(name: str, html: str) -> dict[str, str]:
    """What the stream sends for one part (event `section`)."""
    return {"id": name, "v": _version(html), "html": html}


def _live_page(query: dict[str, str], sections: dict[str, str], note: str = "") -> str:
    notice = f"<p class=notice>{escape(note)}</p>" if note else ""
    return f"{notice}<div id=page data-live='{escape(urlencode(query))}'>{sections_html(sections)}</div>"


def events_summary(events: list[Event]) -> str:
    steps = [e.type.removeprefix("task.") for e in events if e.type != "task.progress"]
    progress = sum(1 for e in events if e.type == "task.progress")
    text = " \u2192 ".join(steps) or "\u2014"
    return escape(text) + (f" <span class=muted>(+{progress} progress)</span>" if progress else "")


def deliveries_summary(deliveries: list[Delivery]) -> str:
    if not deliveries:
        return "<span class=muted>\u2014</span>"
    counts = Counter(d.status.value for d in deliveries)
    return " \u00b7 ".join(f"{counts[s]} {s}" for s in ("delivered", "pending", "failed") if counts[s])


def task_row(view: TaskView) -> str:
    t = view.task
    return (
        f"<tr id='task-{escape(t.id)}' data-status='{escape(t.status.value)}'>"
        f"<td><a href='/dashboard/tasks/{quote(t.id)}'><code>{escape(t.id)}</code></a></td>"
        f"<td class=status-cell>{status_badge(t.status.value, t.progress)}</td>"
        f"<td>{escape(t.provider)}</td>"
        f"<td title='{escape(t.input.prompt)}'>{escape(excerpt(t.input.prompt))}</td>"
        f"<td class=events-cell>{events_summary(view.events)}</td>"
        f"<td class=deliveries-cell>{deliveries_summary(view.deliveries)}</td>"
        f"<td class=muted>{escape(t.updated_at)}</td></tr>"
    )


def tasks_page(views: list[TaskView], *, status: str | None, csrf: str | None = None) -> str:
    filters = "".join(
        f"<a href='/dashboard?status={s}'>{'<b>' + s + '</b>' if s == status else s}</a>" for s in TaskStatus
    )
    rows = (
        "".join(task_row(v) for v in views)
        or '<tr id=empty><td colspan=7 class=muted>No tasks yet: kling-relay submit "a red fox" --wait</td></tr>'
    )
    body = (
        f"<p class=filters><a href='/dashboard'>{'<b>all</b>' if status is None else 'all'}</a>{filters}</p>"
        "<table id=tasks><thead><tr><th>Task</th><th>Status</th><th>Provider</th><th>Prompt</th>"
        f"<th>Events</th><th>Deliveries</th><th>Updated</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    return _page("kling-relay dashboard", body, live=True, csrf=csrf)


@dataclass(frozen=True)
class TaskPage:
    """A task page's data beyond the task: where its deliveries go (subscription id → URL),
    whether this server keeps copies of videos, and the time copies are judged expired at."""

    view: TaskView
    subscription_urls: dict[str, str]
    storing: bool
    now: float


def task_sections(page: TaskPage, *, csrf: str | None) -> dict[str, str]:
    """The live parts of a task page: its facts, its buttons, its video, its events, its deliveries."""
    view = page.view
    t = view.task
    facts = [
        ("status", status_badge(t.status.value, t.progress)),
        ("provider", escape(t.provider) + (f" <code>{escape(t.provider_task_id)}</code>" if t.provider_task_id else "")),
        ("prompt", escape(t.input.prompt)),
        ("created", escape(t.created_at)),
        ("updated", escape(t.updated_at)),
    ]
    if t.result:
        facts.append(("video", link(t.result.video_url)))
    if t.error:
        facts.append(("error", escape(f"{t.error.code}: {t.error.message}")))
    if t.webhook_url:
        facts.append(("webhook_url", escape(t.webhook_url)))
    events = (
        "".join(
            f"<tr><td>{e.sequence}</td><td class=muted>{escape(e.created_at)}</td><td>{escape(e.type)}</td>"
            f"<td><code>{escape(e.id)}</code></td></tr>"
            for e in view.events
        )
        or "<tr><td colspan=4 class=muted>none yet</td></tr>"
    )
    deliveries = "".join(_delivery_row(d, page.subscription_urls) for d in view.deliveries) or (
        "<tr><td colspan=6 class=muted>none (no subscription matched, or none yet)</td></tr>"
    )
    cancel = "" if t.status.terminal else _action(f"/dashboard/tasks/{quote(t.id)}/cancel", "Cancel task", csrf)
    return {
        "facts": "<dl>" + "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts) + "</dl>",
        "actions": cancel,
        "media": _media(page),
        "events": (
            "<h3>Events</h3><table><thead><tr><th>#</th><th>At</th><th>Type</th><th>Id</th></tr></thead>"
            f"<tbody>{events}</tbody></table>"
        ),
        "deliveries": (
            "<h3>Deliveries</h3><table><thead><tr><th>Delivery</th><th>Event</th><th>To</th><th>Status</th>"
            f"<th>Attempts</th><th>Last answer</th></tr></thead><tbody>{deliveries}</tbody></table>"
        ),
    }


def _media(page: TaskPage) -> str:
    """Our stored copy, played here; or why there is none (yet)."""
    t, result = page.view.task, page.view.task.result
    if not page.storing or result is None:
        return ""
    if result.storage_error is not None:
        error = result.storage_error
        return f"<p class=muted>The video could not be stored: {escape(f'{error.code}: {error.message}')}</p>"
    if result.sha256 is None:
        return "<p class=muted>Storing the video\u2026</p>"
    if result.stored_until is not None and iso_to_unix(result.stored_until) <= page.now:
        return "<p class=muted>The stored copy was deleted after its retention period.</p>"
    kept = f", kept until {escape(result.stored_until)}" if result.stored_until else ""
    return (
        f"<video controls preload=metadata src='/dashboard/tasks/{quote(t.id)}/video'></video>"
        f"<p class=muted>Our stored copy ({result.bytes or 0} bytes{kept})</p>"
    )


def task_page(page: TaskPage, *, csrf: str | None = None, note: str = "") -> str:
    t = page.view.task
    body = f"<h2><code>{escape(t.id)}</code></h2>" + _live_page({"task": t.id}, task_sections(page, csrf=csrf), note)
    return _page(f"{t.id} \u2014 kling-relay", body, live=True, csrf=csrf)


def delivery_target(d: Delivery, subscription_urls: dict[str, str]) -> str:
    """Where a delivery goes, as shown: its subscription's URL, linking to its page; or the
    task's own `webhook_url`."""
    if d.subscription_id is None:
        return escape(d.webhook_url or "")
    url = subscription_urls.get(d.subscription_id, d.subscription_id)
    return f"<a href='/dashboard/subscriptions/{quote(d.subscription_id)}'>{escape(url)}</a>"


def _answer(attempt: Attempt | None) -> str:
    if attempt is None:
        return DASH
    return str(attempt.status_code) if attempt.status_code is not None else attempt.error or ""


def _delivery_link(d: Delivery) -> str:
    return f"<a href='/dashboard/deliveries/{quote(d.id)}'><code>{escape(d.id)}</code></a>"


def _delivery_row(d: Delivery, subscription_urls: dict[str, str]) -> str:
    last = d.attempts[-1] if d.attempts else None
    return (
        f"<tr id='delivery-{escape(d.id)}'><td>{_delivery_link(d)}</td><td>{escape(d.event_type)}</td>"
        f"<td>{delivery_target(d, subscription_urls)}</td><td>{status_badge(d.status.value)}</td><td>{d.attempt_count}</td>"
        f"<td>{escape(_answer(last))}</td></tr>"
    )


def _state(sub: SubscriptionView) -> str:
    if sub.enabled:
        return status_badge("enabled")
    why = (
        f" <span class=muted>{escape(sub.disabled_reason or '')}"
        + (f", since {escape(sub.disabled_at)}" if sub.disabled_at else "")
        + "</span>"
    )
    return status_badge("disabled") + why


def _streak(health: SubscriptionHealth) -> str:
    if not health.streak:
        return "0"
    since = f" <span class=muted>failing since {escape(health.failing_since)}</span>" if health.failing_since else ""
    return f"{health.streak} failed attempt{'s' if health.streak != 1 else ''}{since}"


def _last_failure(health: SubscriptionHealth) -> str:
    if health.failure_at is None:
        return _when(None)
    return f"{escape(health.failure_at)} <code>{escape(excerpt(health.failure or '', 80))}</code>"


def subscriptions_page(views: list[SubscriptionWithHealth], *, next_cursor: str | None, csrf: str | None = None) -> str:
    rows = "".join(
        f"<tr id='sub-{escape(v.id)}'>"
        f"<td><a href='/dashboard/subscriptions/{quote(v.id)}'>{escape(v.url)}</a>"
        + (f"<br><span class=muted>{escape(v.description)}</span>" if v.description else "")
        + f"</td><td><code>{escape(', '.join(v.event_types))}</code></td>"
        f"<td class=state-cell>{_state(v)}</td><td class=success-cell>{_when(v.health.success_at)}</td>"
        f"<td class=streak-cell>{_streak(v.health)}</td><td class=failure-cell>{_last_failure(v.health)}</td></tr>"
        for v in views
    ) or "<tr><td colspan=6 class=muted>No subscriptions yet: POST /v1/subscriptions (see the API docs)</td></tr>"
    more = (
        f"<p class=more><a href='/dashboard/subscriptions?cursor={quote(next_cursor)}'>older \u2192</a></p>"
        if next_cursor
        else ""
    )
    body = (
        "<h2>Subscriptions</h2><table id=subscriptions><thead><tr><th>Endpoint</th><th>Events</th><th>State</th>"
        f"<th>Last success</th><th>Failure streak</th><th>Last failure</th></tr></thead><tbody>{rows}</tbody></table>{more}"
    )
    return _page("subscriptions \u2014 kling-relay", body, csrf=csrf)


def subscription_page(
    view: SubscriptionWithHealth, deliveries: list[Delivery], *, status: str | None, next_cursor: str | None,
    csrf: str | None = None, note: str = "",
) -> str:
    sub, health = view, view.health
    base = f"/dashboard/subscriptions/{quote(sub.id)}"
    facts = [
        ("endpoint", escape(sub.url)),
        ("description", escape(sub.description or "")),
        ("events", f"<code>{escape(', '.join(sub.event_types))}</code>"),
        ("state", _state(sub)),
        ("last success", _when(health.success_at)),
        ("failure streak", _streak(health)),
        ("last failure", _last_failure(health)),
        ("created", escape(sub.created_at)),
    ]
    toggle = (
        _action(f"{base}/disable", "Disable", csrf) if sub.enabled else _action(f"{base}/enable", "Enable", csrf)
    )
    filters = "".join(
        f"<a href='{base}?status={s}'>{'<b>' + s.value + '</b>' if s.value == status else s.value}</a>" for s in DeliveryStatus
    )
    rows = (
        "".join(
            f"<tr id='delivery-{escape(d.id)}'><td>{_delivery_link(d)}</td><td>{escape(d.event_type)}</td>"
            f"<td>{_subject(d.subject_id)}</td><td>{status_badge(d.status.value)}</td><td>{d.attempt_count}</td>"
            f"<td class=muted>{_when(d.attempts[-1].at if d.attempts else None, DASH)}</td>"
            f"<td>{escape(_answer(d.attempts[-1] if d.attempts else None))}</td></tr>"
            for d in deliveries
        )
        or "<tr><td colspan=7 class=muted>none within WEBHOOK_LOG_TTL_S</td></tr>"
    )
    query = f"&status={quote(status)}" if status else ""
    more = f"<p class=more><a href='{base}?cursor={quote(next_cursor)}{query}'>older \u2192</a></p>" if next_cursor else ""
    notice = f"<p class=notice>{escape(note)}</p>" if note else ""
    body = (
        f"{notice}<h2>Subscription <code>{escape(sub.id)}</code></h2><dl>"
        + "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
        + f"</dl><p>{toggle}</p><h3>Deliveries</h3>"
        f"<p class=filters><a href='{base}'>{'<b>all</b>' if status is None else 'all'}</a>{filters}</p>"
        "<table id=deliveries><thead><tr><th>Delivery</th><th>Event</th><th>About</th><th>Status</th><th>Attempts</th>"
        f"<th>Last attempt</th><th>Last answer</th></tr></thead><tbody>{rows}</tbody></table>{more}"
    )
    return _page(f"{sub.id} \u2014 kling-relay", body, csrf=csrf)


def _subject(subject_id: str) -> str:
    if subject_id.startswith("task_"):
        return f"<a href='/dashboard/tasks/{quote(subject_id)}'><code>{escape(subject_id)}</code></a>"
    return f"<code>{escape(subject_id)}</code>"


def delivery_sections(d: Delivery, to: str, *, csrf: str | None) -> dict[str, str]:
    """The live parts of a delivery page: its facts with the retry button, and its attempts."""
    facts = [
        ("status", status_badge(d.status.value)),
        ("event", f"{escape(d.event_type)} <code>{escape(d.event_id)}</code>"),
        ("about", _subject(d.subject_id)),
        ("to", to),
        ("attempts", str(d.attempt_count)),
        ("next attempt", _when(unix_to_iso(d.next_attempt_at) if d.next_attempt_at is not None else None, "none scheduled")),
        ("created", escape(d.created_at)),
        ("updated", escape(d.updated_at)),
    ]
    if d.last_error:
        facts.append(("last error", escape(d.last_error)))
    attempts = "".join(
        f"<tr class=attempt><td>{a.number}</td><td>{escape(a.at)}</td>"
        f"<td>{status_badge('delivered' if a.error is None else 'failed')} {escape(_answer(a))}</td>"
        f"<td>{a.latency_ms} ms</td><td><code>{escape(excerpt(a.response_body or '', 120))}</code></td></tr>"
        for a in reversed(d.attempts)
    ) or "<tr><td colspan=5 class=muted>none yet</td></tr>"
    return {
        "facts": "<dl>" + "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts) + "</dl>"
        + _action(f"/dashboard/deliveries/{quote(d.id)}/retry", "Retry now", csrf),
        "attempts": (
            "<h3>Attempts</h3><table id=attempts><thead><tr><th>#</th><th>At</th><th>Answer</th><th>Took</th>"
            f"<th>Response body</th></tr></thead><tbody>{attempts}</tbody></table>"
        ),
    }


def delivery_page(d: Delivery, to: str, *, csrf: str | None = None, note: str = "") -> str:
    body = f"<h2>Delivery <code>{escape(d.id)}</code></h2>" + _live_page(
        {"delivery": d.id}, delivery_sections(d, to, csrf=csrf), note
    )
    return _page(f"{d.id} \u2014 kling-relay", body, live=True, csrf=csrf)


def login_page(message: str = "") -> str:
    note = f"<p class=error>{escape(message)}</p>" if message else ""
    body = (
        "<form method=post action='/dashboard/login'><h2>Dashboard sign-in</h2>"
        "<label>API key (one of KLING_RELAY_API_KEYS or KLING_RELAY_ADMIN_KEYS)"
        "<input type=password name=key autofocus></label>"
        f"{note}<button type=submit>Open the dashboard</button></form>"
    )
    return _page("kling-relay dashboard: sign in", body)
