"""The dashboard's HTML, rendered on the server from plain data (pure: no I/O).

Everything a user typed (prompts, URLs, metadata, provider messages) is escaped, and only
`http(s)` URLs become links. Rows are whole `<tr>` elements with stable ids, so the live stream can
send a row and the page can swap it in. The pages' one inline script and one inline style are
constants, allowed by their hashes in `CONTENT_SECURITY_POLICY`; nothing else inline may run.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from html import escape
from urllib.parse import quote

from service.domain.events import Event
from service.domain.status import TaskStatus
from service.domain.tasks import Task
from service.security_headers import content_security_policy, inline_source
from service.sessions import CSRF_FIELD
from service.text import excerpt
from service.webhooks.models import Delivery


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
.s-succeeded, .s-delivered { background: #d5f5dd; } .s-failed { background: #ffd9d6; } .s-pending { background: #fff1c2; }
.s-canceled { background: #e3e6eb; color: #6b7280; text-decoration: line-through; }
.live { font-size: 12px; } .live.on { color: #7ee08f; } .live.off { color: #ffb3ad; }
.muted { color: #6b7280; } .filters a { margin-right: .8em; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; background: #fff; padding: 1em; }
dt { font-weight: 600; } dd { margin: 0; word-break: break-all; }
form { background: #fff; padding: 1.5em; max-width: 28em; } input[type=password] { width: 100%; padding: .4em; margin: .5em 0; }
header form { background: none; padding: 0; margin-left: auto; }
.error { color: #b42318; }
"""

STREAM_SCRIPT = """
const tbody = document.querySelector("#tasks tbody");
const live = document.getElementById("live");
const source = new EventSource("/dashboard/stream" + window.location.search);
source.onopen = () => { live.textContent = "\\u25cf live"; live.className = "live on"; };
source.onerror = () => { live.textContent = "\\u25cb reconnecting"; live.className = "live off"; };
source.addEventListener("task", (message) => {
  const update = JSON.parse(message.data);
  const row = document.getElementById("task-" + update.id);
  if (row) { row.outerHTML = update.html; } else { tbody.insertAdjacentHTML("afterbegin", update.html); }
  const empty = document.getElementById("empty");
  if (empty) { empty.remove(); }
});
source.addEventListener("signed-out", () => {
  source.close();
  live.textContent = "\\u25cb signed out: reload to sign in"; live.className = "live off";
});
"""

CONTENT_SECURITY_POLICY = content_security_policy({
    "default-src": "'none'",
    "script-src": inline_source(STREAM_SCRIPT),
    "style-src": inline_source(STYLE),
    "connect-src": "'self'",  # the live stream
    "form-action": "'self'",
    "base-uri": "'none'",
    "frame-ancestors": "'none'",
})

# What a browser would treat as an http(s) URL, and nothing that parsers might read otherwise
# (spaces and control characters, which browsers strip or skip, as in "java\tscript:").
_WEB_URL = re.compile(r"https?://[^\s\x00-\x1f\x7f]+", re.IGNORECASE)


def _page(title: str, body: str, *, head: str = "", live: bool = False, csrf: str | None = None) -> str:
    indicator = "<span id=live class='live off'>&#9675; connecting</span>" if live else ""
    signed_in = ""
    if csrf is not None:
        head += f"<meta name=csrf-token content='{escape(csrf)}'>"
        signed_in = (
            f"<form method=post action='/dashboard/logout'>{csrf_field(csrf)}"
            "<button type=submit>sign out</button></form>"
        )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width, initial-scale=1'><title>{escape(title)}</title>"
        f"<style>{STYLE}</style>{head}</head><body>"
        "<header><h1>kling-relay</h1><a href='/dashboard'>tasks</a><a href='/docs'>API docs</a>"
        f"<a href='/metrics'>metrics</a>{indicator}{signed_in}</header>"
        f"<main>{body}</main></body></html>"
    )


def csrf_field(token: str) -> str:
    """The hidden input every dashboard form that POSTs must carry."""
    return f"<input type=hidden name={CSRF_FIELD} value='{escape(token)}'>"


def link(url: str) -> str:
    """`url` as a link if it is an http(s) URL, else as plain text (a `javascript:` URL from a
    provider must not become something to click)."""
    if _WEB_URL.fullmatch(url):
        return f"<a href='{escape(url)}' rel='noopener noreferrer'>{escape(url)}</a>"
    return f"<code>{escape(url)}</code>"


def status_badge(status: str, progress: int | None = None) -> str:
    suffix = f" {progress}%" if progress is not None and status == "running" else ""
    return f"<span class='status s-{escape(status)}'>{escape(status)}{suffix}</span>"


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
    rows = "".join(task_row(v) for v in views) or "<tr id=empty><td colspan=7 class=muted>No tasks yet: kling-relay submit \"a red fox\" --wait</td></tr>"
    body = (
        f"<p class=filters><a href='/dashboard'>{'<b>all</b>' if status is None else 'all'}</a>{filters}</p>"
        "<table id=tasks><thead><tr><th>Task</th><th>Status</th><th>Provider</th><th>Prompt</th>"
        f"<th>Events</th><th>Deliveries</th><th>Updated</th></tr></thead><tbody>{rows}</tbody></table>"
        f"<script>{STREAM_SCRIPT}</script>"
    )
    return _page("kling-relay dashboard", body, live=True, csrf=csrf)


def task_page(view: TaskView, subscription_urls: dict[str, str], *, csrf: str | None = None) -> str:
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
    dl = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
    events = "".join(
        f"<tr><td>{e.sequence}</td><td class=muted>{escape(e.created_at)}</td><td>{escape(e.type)}</td><td><code>{escape(e.id)}</code></td></tr>"
        for e in view.events
    ) or "<tr><td colspan=4 class=muted>none yet</td></tr>"
    deliveries = "".join(_delivery_row(d, subscription_urls) for d in view.deliveries) or (
        "<tr><td colspan=6 class=muted>none (no subscription matched, or none yet)</td></tr>"
    )
    body = (
        f"<h2><code>{escape(t.id)}</code></h2><dl>{dl}</dl>"
        "<h3>Events</h3><table><thead><tr><th>#</th><th>At</th><th>Type</th><th>Id</th></tr></thead>"
        f"<tbody>{events}</tbody></table>"
        "<h3>Deliveries</h3><table><thead><tr><th>Delivery</th><th>Event</th><th>To</th><th>Status</th>"
        f"<th>Attempts</th><th>Last answer</th></tr></thead><tbody>{deliveries}</tbody></table>"
    )
    unsettled = not t.status.terminal or any(d.status.value == "pending" for d in view.deliveries)
    head = "<meta http-equiv=refresh content=2>" if unsettled else ""
    return _page(f"{t.id} \u2014 kling-relay", body, head=head, csrf=csrf)


def _delivery_row(d: Delivery, subscription_urls: dict[str, str]) -> str:
    to = subscription_urls.get(d.subscription_id or "", d.subscription_id or "") if d.subscription_id else d.webhook_url or ""
    last = d.attempts[-1] if d.attempts else None
    answer = "\u2014" if last is None else str(last.status_code or last.error or "")
    return (
        f"<tr id='delivery-{escape(d.id)}'><td><code>{escape(d.id)}</code></td><td>{escape(d.event_type)}</td>"
        f"<td>{escape(to)}</td><td>{status_badge(d.status.value)}</td><td>{d.attempt_count}</td>"
        f"<td>{escape(answer)}</td></tr>"
    )


def login_page(message: str = "") -> str:
    note = f"<p class=error>{escape(message)}</p>" if message else ""
    body = (
        "<form method=post action='/dashboard/login'><h2>Dashboard sign-in</h2>"
        "<label>API key (one of KLING_RELAY_API_KEYS or KLING_RELAY_ADMIN_KEYS)"
        "<input type=password name=key autofocus></label>"
        f"{note}<button type=submit>Open the dashboard</button></form>"
    )
    return _page("kling-relay dashboard: sign in", body)
