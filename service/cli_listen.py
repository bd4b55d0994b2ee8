"""`kling-relay listen --forward-to URL [--events TYPES]`: the caller's live events, POSTed to a
local receiver, signed, for developing a webhook receiver without exposing it to the internet.

It follows `GET /v1/events/stream`, filters with the subscriptions' matching (`task.*`, exact
names, `*`), signs each event with Standard Webhooks under a `whsec_` secret made at start (and
printed, with how to verify it), and POSTs the event JSON byte for byte as a webhook delivery
would. One line per delivery on stdout; notes on stderr. A dropped stream is followed again with
`Last-Event-ID`, so nothing is missed or repeated; the receiver's answers are not retried.

The target may be any http(s) URL: this runs on the developer's machine with the developer's
own network reach, so unlike the server's webhooks (vetted against SSRF) there is nobody else's
network to protect; in practice it is `localhost`, as with `stripe listen`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
import orjson

from service.cli_client import (
    EXIT_API_ERROR,
    EXIT_USAGE,
    ApiClient,
    CliError,
    Output,
    describe_error,
    run,
)
from service.sse_client import StreamRefused, follow
from service.webhooks.policy import WILDCARD, matches
from service.webhooks.signing import generate_secret, webhook_headers

# Waits before following the stream again after it broke (the last one repeats).
RECONNECT_S = (0.5, 1.0, 2.0, 5.0)
# Silence this long on the stream (the server pings every STREAM_HEARTBEAT_S, 15 s by default)
# means the connection is dead: follow it again.
STREAM_SILENCE_S = 60.0
VERIFY_HINT = """verify deliveries with any Standard Webhooks library, e.g. in Python:
  from standardwebhooks import Webhook
  Webhook("{secret}").verify(body, headers)  # raises if the signature is wrong"""


def _patterns(events: str | None) -> list[str]:
    return [p.strip() for p in (events or WILDCARD).split(",") if p.strip()] or [WILDCARD]


def _check_target(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(EXIT_USAGE, f"--forward-to must be an http(s) URL, e.g. http://localhost:3000/webhooks (got {url!r})")
    return url


class Forwarder:
    """Signs and POSTs one event at a time to the target, printing a line for each."""

    def __init__(self, target: str, secret: str, out: Output, *, timeout_s: float) -> None:
        self.target = target
        self.secret = secret
        self.out = out
        self.http = httpx.Client(timeout=timeout_s, headers={"User-Agent": "kling-relay-listen"})

    def forward(self, event_id: str, event_type: str, body: bytes) -> None:
        headers = webhook_headers([self.secret], event_id, int(time.time()), body)
        started = time.monotonic()
        try:
            response = self.http.post(self.target, content=body, headers={**headers, "Content-Type": "application/json"})
            answer = str(response.status_code)
        except httpx.HTTPError as exc:
            answer = f"error ({type(exc).__name__})"
        took_ms = (time.monotonic() - started) * 1000
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        self.out.line(f"{stamp}  {event_type:<22} {event_id}  -> {answer}  {took_ms:.0f} ms")
        self.out.out.flush()

    def close(self) -> None:
        self.http.close()


def listen(client: ApiClient, args: argparse.Namespace, out: Output, *, sleep: Callable[[float], None] = time.sleep) -> int:
    target = _check_target(args.forward_to)
    patterns = _patterns(args.events)
    secret = generate_secret()
    out.note(f"forwarding your events ({', '.join(patterns)}) from {client.url} to {target}")
    out.note(f"signing secret: {secret}")
    out.note(VERIFY_HINT.format(secret=secret))
    forwarder = Forwarder(target, secret, out, timeout_s=args.forward_timeout)
    last: str | None = None
    failures = 0
    try:
        while True:
            try:
                for message in follow(client.http, "/v1/events/stream", last_event_id=last, read_timeout_s=STREAM_SILENCE_S):
                    failures = 0
                    if not message.data or message.id is None:
                        continue
                    last = message.id
                    if matches(patterns, message.event):
                        forwarder.forward(message.id, message.event, message.data.encode())
                reason = "the server ended the stream"
            except StreamRefused as exc:
                if exc.response.status_code < 500 and exc.response.status_code != 429:
                    raise CliError(EXIT_API_ERROR, describe_error(exc.response)) from exc
                reason = describe_error(exc.response)
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            except orjson.JSONDecodeError as exc:  # pragma: no cover (the server sends JSON)
                reason = str(exc)
            wait = RECONNECT_S[min(failures, len(RECONNECT_S) - 1)]
            failures += 1
            out.note(f"stream interrupted ({reason}); reconnecting in {wait:g}s" + (f" after {last}" if last else ""))
            sleep(wait)
    finally:
        forwarder.close()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser, leaf_help: str) -> None:
    """Add `listen` to the `kling-relay` parser (`common`: the client commands' shared options)."""
    parser = sub.add_parser(
        "listen",
        parents=[common],
        help="forward your live events, signed, to a local URL (for developing a webhook receiver)",
        description=(
            "follow GET /v1/events/stream and POST each event to --forward-to, signed with Standard\n"
            "Webhooks under a whsec_ secret printed at start. One line per delivery on stdout:\n\n"
            "  kling-relay listen --forward-to http://localhost:3000/webhooks --events 'task.*'"
        ),
        epilog=leaf_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--forward-to", required=True, metavar="URL", help="where to POST each event (any http(s) URL; usually localhost)"
    )
    parser.add_argument(
        "--events",
        default=None,
        metavar="TYPES",
        help="comma-separated event types or patterns, as for subscriptions (default: '*')",
    )
    parser.add_argument(
        "--forward-timeout", type=float, default=10.0, metavar="S", help="seconds to wait for the receiver's answer (default: 10)"
    )
    parser.set_defaults(run=run(listen), log_level="WARNING")
