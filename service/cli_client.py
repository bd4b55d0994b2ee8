"""The HTTP-client commands of `kling-relay`: submit, tasks, subscriptions, deliveries, replay.

They talk to a running service over its public API only (`--url`, `--api-key`), so they work
against any deployment. Results go to stdout (a video URL, an id, a table, or JSON with
`--json`) and everything meant for a person (live status, hints, errors) to stderr, so scripts
can capture the one and ignore the other. Exit codes: see `EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import httpx
import orjson

from service.domain.tasks import AUTO
from service.providers import registry
from service.sse_client import StreamRefused, follow
from service.text import excerpt

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_USAGE = 2
EXIT_API_ERROR = 3
EXIT_TIMEOUT = 4
EXIT_CODES = f"""exit codes:
  {EXIT_OK}  success (with --wait: the task succeeded)
  {EXIT_TASK_FAILED}  the task failed or was canceled (submit --wait)
  {EXIT_USAGE}  usage or configuration error (bad option, no API key)
  {EXIT_API_ERROR}  the API refused the request or could not be reached
  {EXIT_TIMEOUT}  timed out (the API did not answer, or the task did not finish within --timeout)
"""
DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = {"succeeded", "failed", "canceled"}
# Where a status sits on the progress bar when the provider reports no percentage.
STAGE_PERCENT = {"queued": 2, "submitted": 10, "running": 30, "succeeded": 100, "failed": 100, "canceled": 100}


class CliError(Exception):
    """Ends the command with `exit_code` after printing `message` to stderr."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


def default_url() -> str:
    return os.environ.get("KLING_RELAY_URL") or DEFAULT_URL


def default_api_key() -> str | None:
    key = os.environ.get("KLING_RELAY_API_KEY")
    if key:
        return key
    keys = [k.strip() for k in os.environ.get("KLING_RELAY_API_KEYS", "").split(",") if k.strip()]
    return keys[0] if keys else None


class ApiClient:
    """A thin httpx client that turns every failure into a `CliError` with the right exit code."""

    def __init__(self, url: str, api_key: str, timeout_s: float = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "kling-relay-cli"},
            timeout=timeout_s,
            transport=transport,
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise CliError(EXIT_TIMEOUT, f"{self.url} did not answer in time ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise CliError(EXIT_API_ERROR, f"cannot reach {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise CliError(EXIT_API_ERROR, describe_error(response))
        if not response.content:
            return None
        return response.json()

    def close(self) -> None:
        self.http.close()


def describe_error(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        text = f"{response.status_code} {error['code']}: {error['message']}"
        fields = error.get("fields") or {}
        return text + "".join(f"\n  {name}: {problem}" for name, problem in fields.items())
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code}: {response.text[:200]}"


@dataclass
class Output:
    out: TextIO
    err: TextIO
    as_json: bool = False

    def json(self, value: Any) -> None:
        self.out.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")

    def line(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def note(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()

    def table(self, rows: list[list[str]], header: list[str]) -> None:
        widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            self.line("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


Command = Callable[[ApiClient, argparse.Namespace, Output], int]


def run(command: Command) -> Callable[[argparse.Namespace], int]:
    """Adapt a client command to the CLI: resolve --url/--api-key, map errors to exit codes."""

    def runner(args: argparse.Namespace) -> int:
        out = Output(sys.stdout, sys.stderr, as_json=getattr(args, "json", False))
        api_key = args.api_key or default_api_key()
        if not api_key:
            out.note("kling-relay: no API key: pass --api-key or set KLING_RELAY_API_KEY (or KLING_RELAY_API_KEYS)")
            return EXIT_USAGE
        client = ApiClient(args.url or default_url(), api_key, timeout_s=args.request_timeout)
        try:
            return command(client, args, out)
        except CliError as exc:
            out.note(f"kling-relay: {exc.message}")
            return exc.exit_code
        finally:
            client.close()

    return runner


# --- submit -----------------------------------------------------------------------------------


def _submit(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    body: dict[str, Any] = {"prompt": args.prompt}
    for name in ("provider", "duration", "aspect_ratio", "negative_prompt", "cfg_scale", "webhook_url"):
        value = getattr(args, name)
        if value is not None:
            body[name] = value
    if args.metadata is not None:
        try:
            body["metadata"] = orjson.loads(args.metadata)
        except orjson.JSONDecodeError as exc:
            raise CliError(EXIT_USAGE, f"--metadata is not valid JSON: {exc}") from exc
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    task = client.request("POST", "/v1/tasks", json=body, headers=headers)
    if not args.wait:
        if out.as_json:
            out.json(task)
        else:
            out.line(task["id"])
            out.note(f"{task['id']} {task['status']} on {task['provider']}; follow it with: kling-relay tasks show {task['id']}")
        return EXIT_OK
    return wait_for_task(client, task, out, timeout_s=args.timeout, interval_s=args.poll_interval)


def wait_for_task(client: ApiClient, task: dict[str, Any], out: Output, *, timeout_s: float, interval_s: float) -> int:
    """Show the task's status live until it ends; print its video URL (stdout) on success.

    Follows the task's event stream; if the server offers none (an older one) or the stream
    breaks, asks for the task every `interval_s` instead. The output is the same either way."""
    started = time.monotonic()
    status_line = StatusLine(out.err)

    def show(current: dict[str, Any]) -> None:
        status_line.show(current, time.monotonic() - started)
        if current["status"] not in TERMINAL and time.monotonic() - started > timeout_s:
            status_line.done()
            raise CliError(
                EXIT_TIMEOUT,
                f"{current['id']} still {current['status']} after {timeout_s:g}s (kling-relay tasks show {current['id']})",
            )

    try:
        show(task)
        if task["status"] not in TERMINAL:
            task = _follow_task(client, task, show, timeout_s - (time.monotonic() - started))
        while task["status"] not in TERMINAL:
            time.sleep(interval_s)
            task = client.request("GET", f"/v1/tasks/{task['id']}")
            show(task)
    finally:
        status_line.done()
    if out.as_json:
        out.json(task)
    if task["status"] == "failed":
        error = task.get("error") or {}
        out.note(f"{task['id']} failed: {error.get('code', '?')}: {error.get('message', '')}")
        return EXIT_TASK_FAILED
    if task["status"] == "canceled":
        out.note(f"{task['id']} was canceled")
        return EXIT_TASK_FAILED
    if not out.as_json:
        out.line((task.get("result") or {}).get("video_url", ""))
    return EXIT_OK


def _follow_task(
    client: ApiClient, task: dict[str, Any], show: Callable[[dict[str, Any]], None], timeout_s: float
) -> dict[str, Any]:
    """The task as of its last event on its stream (`show`n as each arrives; a heartbeat re-checks
    the deadline), or as given if the stream is unavailable or breaks (the caller polls on)."""
    try:
        for message in follow(client.http, f"/v1/tasks/{task['id']}/stream", read_timeout_s=max(timeout_s, 0.1)):
            if message.data:
                task = orjson.loads(message.data)["data"]
            show(task)
            if task["status"] in TERMINAL:
                break
    except httpx.TimeoutException:
        show(task)  # past the deadline: raises
    except (httpx.HTTPError, StreamRefused, orjson.JSONDecodeError, KeyError, TypeError):
        pass
    return task


class StatusLine:
    """The live `status [####----] 40% 12s` line: redrawn in place on a terminal, one line per
    change otherwise (CI logs, pipes)."""

    WIDTH = 24

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last = ""

    def show(self, task: dict[str, Any], elapsed_s: float) -> None:
        status = task["status"]
        progress = task.get("progress")
        percent = progress if isinstance(progress, int) and status == "running" else STAGE_PERCENT.get(status, 0)
        if self.tty:
            filled = round(self.WIDTH * percent / 100)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            self.stream.write(f"\r{task['id']} {status:<9} [{bar}] {percent:3d}% {elapsed_s:5.0f}s")
            self.stream.flush()
            return
        text = f"{task['id']} {status}" + (f" {percent}%" if status == "running" and progress is not None else "")
        if text != self.last:
            self.stream.write(f"{text} ({elapsed_s:.0f}s)\n")
            self.stream.flush()
            self.last = text

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
            self.tty = False  # one newline, however often this is called


# --- listings -----------------------------------------------------------------------------------

Row = Callable[[dict[str, Any]], list[str]]


def _list(client: ApiClient, args: argparse.Namespace, out: Output, path: str, headers: list[str], row: Row) -> int:
    """One page of a listing (`--limit`, `--status` where the command has it, `--cursor`), as a
    table or, with --json, as the API's page."""
    params: dict[str, Any] = {"limit": args.limit}
    if getattr(args, "status", None):
        params["status"] = args.status
    if args.cursor:
        params["cursor"] = args.cursor
    page = client.request("GET", path, params=params)
    if out.as_json:
        out.json(page)
        return EXIT_OK
    out.table([row(item) for item in page["data"]], headers)
    if page.get("next_cursor"):
        out.note(f"more: --cursor {page['next_cursor']}")
    return EXIT_OK


# --- tasks ------------------------------------------------------------------------------------


def _tasks_list(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    return _list(
        client, args, out, "/v1/tasks", ["ID", "STATUS", "PROVIDER", "CREATED", "PROMPT"],
        lambda t: [t["id"], t["status"], t["provider"], t["created_at"], excerpt(t["input"]["prompt"], 40)],
    )


def _tasks_show(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    task = client.request("GET", f"/v1/tasks/{args.task_id}")
    events = client.request("GET", f"/v1/tasks/{args.task_id}/events")["data"]
    if out.as_json:
        out.json({**task, "events": events})
        return EXIT_OK
    out.line(f"id:        {task['id']}")
    out.line(f"status:    {task['status']}" + (f" ({task['progress']}%)" if task.get("progress") is not None else ""))
    out.line(f"provider:  {task['provider']}" + (f" ({task['provider_task_id']})" if task.get("provider_task_id") else ""))
    out.line(f"prompt:    {excerpt(task['input']['prompt'], 70)}")
    out.line(f"created:   {task['created_at']}")
    out.line(f"updated:   {task['updated_at']}")
    if task.get("result"):
        out.line(f"video_url: {task['result']['video_url']}")
    if task.get("error"):
        out.line(f"error:     {task['error']['code']}: {task['error']['message']}")
    out.line("events:")
    for event in events:
        out.line(f"  {event['sequence']:>3}  {event['created_at']}  {event['type']:<15} {event['id']}")
    return EXIT_OK


def _tasks_cancel(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    task = client.request("POST", f"/v1/tasks/{args.task_id}/cancel")
    if out.as_json:
        out.json(task)
        return EXIT_OK
    out.line(task["status"])
    out.note(f"{task['id']} canceled; the provider may still finish it, and charge for it")
    return EXIT_OK


# --- subscriptions, deliveries, replay ----------------------------------------------------------


def _subscriptions_add(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    body: dict[str, Any] = {"url": args.url_to_call}
    if args.events:
        body["event_types"] = [e.strip() for e in args.events.split(",") if e.strip()]
    if args.description:
        body["description"] = args.description
    sub = client.request("POST", "/v1/subscriptions", json=body)
    if out.as_json:
        out.json(sub)
        return EXIT_OK
    out.line(sub["id"])
    out.line(sub["secret"])
    out.note(f"subscribed {sub['url']} to {', '.join(sub['event_types'])}; the secret above is shown only once")
    return EXIT_OK


def _subscriptions_list(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    def row(s: dict[str, Any]) -> list[str]:
        enabled = "yes" if s["enabled"] else f"no ({s.get('disabled_reason') or 'manual'})"
        health = s["health"]
        return [s["id"], enabled, ",".join(s["event_types"]), str(health["streak"]), health["success_at"] or "never", s["url"]]

    # STREAK: failed attempts since the last success (the dashboard's "failure streak").
    return _list(client, args, out, "/v1/subscriptions", ["ID", "ENABLED", "EVENTS", "STREAK", "LAST SUCCESS", "URL"], row)


def _subscriptions_rm(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    client.request("DELETE", f"/v1/subscriptions/{args.subscription_id}")
    out.note(f"deleted {args.subscription_id}")
    return EXIT_OK


def _subscriptions_rotate(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    rotated = client.request("POST", f"/v1/subscriptions/{args.subscription_id}/rotate-secret")
    if out.as_json:
        out.json(rotated)
        return EXIT_OK
    out.line(rotated["secret"])
    if rotated.get("previous_secret_expires_at"):
        out.note(f"the previous secret keeps signing until {rotated['previous_secret_expires_at']}")
    return EXIT_OK


def _subscriptions_test(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    body = {"event_type": args.event_type} if args.event_type else {}
    delivery = client.request("POST", f"/v1/subscriptions/{args.subscription_id}/test", json=body)
    if out.as_json:
        out.json(delivery)
        return EXIT_OK
    out.line(delivery["id"])
    out.note(
        f"sending a test {delivery['event_type']} event to {args.subscription_id}: "
        f"see `kling-relay deliveries list {args.subscription_id}`"
    )
    return EXIT_OK


def _deliveries_list(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    def row(d: dict[str, Any]) -> list[str]:
        last = d["attempts"][0] if d["attempts"] else {}
        answer = str(last.get("status_code") or last.get("error") or "-")
        return [d["id"], d["status"], d["event_type"], d["subject_id"], str(d["attempt_count"]), excerpt(answer, 30)]

    path = f"/v1/subscriptions/{args.subscription_id}/deliveries"
    return _list(client, args, out, path, ["ID", "STATUS", "EVENT", "SUBJECT", "ATTEMPTS", "LAST ANSWER"], row)


def _deliveries_retry(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    delivery = client.request("POST", f"/v1/deliveries/{args.delivery_id}/retry")
    if out.as_json:
        out.json(delivery)
    else:
        out.note(f"{delivery['id']} is {delivery['status']}: sending again now")
    return EXIT_OK


def _replay(client: ApiClient, args: argparse.Namespace, out: Output) -> int:
    body: dict[str, Any] = {"since": args.since, "failed_only": args.failed_only}
    if args.until:
        body["until"] = args.until
    answer = client.request("POST", f"/v1/subscriptions/{args.subscription_id}/replay", json=body)
    if out.as_json:
        out.json(answer)
        return EXIT_OK
    out.line(str(answer["replayed"]))
    what = "failed deliveries" if args.failed_only else "events"
    note = f"re-sending {answer['replayed']} {what} since {args.since} to {args.subscription_id}"
    out.note(note + (" (truncated: replay again for the rest)" if answer.get("truncated") else ""))
    return EXIT_OK


# --- the parsers --------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument("--url", default=None, help=f"the service's base URL (default: $KLING_RELAY_URL or {DEFAULT_URL})")
    group.add_argument(
        "--api-key", default=None, help="bearer key (default: $KLING_RELAY_API_KEY, else the first of $KLING_RELAY_API_KEYS)"
    )
    group.add_argument(
        "--request-timeout", type=float, default=30.0, metavar="S", help="per-request timeout in seconds (default: 30)"
    )
    group.add_argument("--json", action="store_true", help="print the API's JSON instead of text")
    return common


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client commands to the `kling-relay` parser."""
    common = _common()
    fmt = argparse.RawDescriptionHelpFormatter

    def leaf(
        parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str, command: Command, help: str, description: str = ""
    ) -> argparse.ArgumentParser:
        parser = parent.add_parser(
            name, parents=[common], help=help, description=description or help, epilog=EXIT_CODES, formatter_class=fmt
        )
        parser.set_defaults(run=run(command), log_level="WARNING")
        return parser

    def group(name: str, help: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        parser = sub.add_parser(name, help=help, description=help, epilog=EXIT_CODES, formatter_class=fmt)
        return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")

    submit = leaf(
        sub,
        "submit",
        _submit,
        "create a video task; with --wait, follow it live and print the video URL",
        'create a task with POST /v1/tasks. Prints the task id, or with --wait shows its status and a\n'
        'progress bar on stderr until it ends, then prints the video URL on stdout:\n\n'
        '  URL=$(kling-relay submit "a red fox running through snow" --wait)',
    )
    submit.add_argument("prompt", help="what the video should show")
    submit.add_argument(
        "--provider", choices=[AUTO, *registry.names()], default=None, help="default: auto (the server's DEFAULT_PROVIDER)"
    )
    submit.add_argument("--duration", choices=["5", "10"], default=None, help="seconds of video (default: 5)")
    submit.add_argument("--aspect-ratio", choices=["16:9", "9:16", "1:1"], default=None, help="default: 16:9")
    submit.add_argument("--negative-prompt", default=None, help="what the video should avoid")
    submit.add_argument("--cfg-scale", type=float, default=None, help="prompt adherence, 0 to 1 in steps of 0.1")
    submit.add_argument("--webhook-url", default=None, help="a one-off webhook for this task's events")
    submit.add_argument("--metadata", default=None, metavar="JSON", help="a small JSON object echoed back on the task")
    submit.add_argument("--idempotency-key", default=None, help="the same key returns the same task (safe retries)")
    submit.add_argument("--wait", action="store_true", help="follow the task until it ends; print its video URL")
    submit.add_argument(
        "--timeout", type=float, default=900.0, metavar="S", help="with --wait: give up after S seconds (exit 4; default 900)"
    )
    submit.add_argument(
        "--poll-interval", type=float, default=1.0, metavar="S", help="with --wait: seconds between status checks"
    )

    tasks = group("tasks", "list, inspect and cancel tasks")
    listing = leaf(tasks, "list", _tasks_list, "list tasks, newest first")
    listing.add_argument("--status", choices=sorted(STAGE_PERCENT), default=None, help="only tasks in this status")
    listing.add_argument("--limit", type=int, default=20, help="how many (1-100, default 20)")
    listing.add_argument("--cursor", default=None, help="continue after this task id (printed as 'more:')")
    show = leaf(tasks, "show", _tasks_show, "show one task and its events")
    show.add_argument("task_id", metavar="ID")
    cancel = leaf(
        tasks,
        "cancel",
        _tasks_cancel,
        "cancel an unfinished task; prints its new status",
        "cancel a queued, submitted or running task (POST /v1/tasks/{id}/cancel) and print its new\n"
        "status. A finished task cannot be canceled (exit 3). Neither provider can stop a task it\n"
        "already has, so it may still be charged for.",
    )
    cancel.add_argument("task_id", metavar="ID")

    subs = group("subscriptions", "manage webhook subscriptions")
    add = leaf(subs, "add", _subscriptions_add, "subscribe a URL to events; prints the id and the signing secret (shown once)")
    add.add_argument("url_to_call", metavar="URL", help="where to POST events")
    add.add_argument(
        "--events", default=None, help="comma-separated event types or patterns (default: '*'; e.g. task.succeeded,task.failed)"
    )
    add.add_argument("--description", default=None)
    sub_list = leaf(
        subs, "list", _subscriptions_list, "list subscriptions, newest first, with their failure streak and last success"
    )
    sub_list.add_argument("--limit", type=int, default=20, help="how many (1-100, default 20)")
    sub_list.add_argument("--cursor", default=None)
    rm = leaf(subs, "rm", _subscriptions_rm, "delete a subscription")
    rm.add_argument("subscription_id", metavar="ID")
    rotate = leaf(subs, "rotate", _subscriptions_rotate, "rotate a subscription's signing secret; prints the new one")
    rotate.add_argument("subscription_id", metavar="ID")
    test = leaf(
        subs, "test", _subscriptions_test, "send a signed sample event, marked test, to a subscription; prints the delivery id"
    )
    test.add_argument("subscription_id", metavar="SUB_ID")
    test.add_argument("--event-type", default=None, metavar="TYPE", help="which event to sample (default: task.succeeded)")

    deliveries = group("deliveries", "inspect and retry webhook deliveries")
    dlv_list = leaf(deliveries, "list", _deliveries_list, "list a subscription's deliveries, newest first")
    dlv_list.add_argument("subscription_id", metavar="SUB_ID")
    dlv_list.add_argument("--status", choices=["pending", "delivered", "failed"], default=None)
    dlv_list.add_argument("--limit", type=int, default=20, help="how many (1-100, default 20)")
    dlv_list.add_argument("--cursor", default=None)
    retry = leaf(deliveries, "retry", _deliveries_retry, "send a delivery again now")
    retry.add_argument("delivery_id", metavar="DELIVERY_ID")

    replay = leaf(
        sub,
        "replay",
        _replay,
        "re-send a subscription's events since a time; prints how many",
        "re-send to a subscription every matching event since --since (or, with --failed-only, only\n"
        "its deliveries that ended failed). Prints how many deliveries were queued.",
    )
    replay.add_argument("subscription_id", metavar="SUB_ID")
    replay.add_argument("--since", required=True, metavar="ISO", help="e.g. 2025-01-31T12:00:00Z")
    replay.add_argument("--until", default=None, metavar="ISO")
    replay.add_argument("--failed-only", action="store_true", help="only deliveries that ended failed")

    from service import cli_listen  # it builds on this module

    cli_listen.register(sub, common, EXIT_CODES)
