"""The callback receiver's own CPU per callback, in-process: the ASGI app called directly (no HTTP
server, no wrk), on a real Redis. Steadier than `bench/ingest.py` (one process, no machine in the
ratio), so it is the inner loop for work on the hot path; ingest is what proves a change.

Each callback is `bench/ingest.py`'s: a different task each, moved `submitted → succeeded`, with
stored videos on as by default. 32 concurrent callers, three measured rounds after a warm-up.

    python bench/receiver_cpu.py [--callbacks 20000] [--storage file:///path|none] [--logs]

`--logs` logs as `kling-relay web` does (INFO, JSON lines, to /dev/null).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the project on sys.path)
import uvloop
from ingest import SECRET, seed
from redis import Redis
from starlette.types import ASGIApp, Message

from service.redis_server import RedisServer

CALLERS = 32
WARM_UP = 2000


async def _deliver(app: ASGIApp, lines: list[tuple[str, bytes]]) -> None:
    """Each line's callback through the app, CALLERS at a time; every answer must be 200."""

    async def one(path: str, body: bytes) -> None:
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> Message:
            if messages:
                return messages.pop()
            await asyncio.Event().wait()  # the body is read once; nothing more will come
            raise AssertionError("unreachable")

        statuses: list[int] = []

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
                 "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
                 "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
        await app(scope, receive, send)
        if statuses != [200]:
            raise RuntimeError(f"callback answered {statuses}")

    pending = iter(lines)

    async def caller() -> None:
        for path, body in pending:
            await one(path, body)

    await asyncio.gather(*(caller() for _ in range(CALLERS)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--callbacks", type=int, default=20000, help="callbacks per measured round")
    parser.add_argument("--storage", default=None, help="STORAGE_URL (default: a folder in the run's temp dir)")
    parser.add_argument("--logs", action="store_true", help="log at INFO as `kling-relay web` does")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis", appendonly=False) as server:
        tsv = Path(tmp) / "callbacks.tsv"
        seed(Redis(port=server.port), WARM_UP + 3 * args.callbacks, tsv)
        lines = [(path, body.encode()) for path, body in (line.rstrip("\n").split("\t") for line in tsv.open())]
        os.environ.update({
            "REDIS_URL": server.url, "CALLBACK_SECRET": SECRET, "KLING_RELAY_API_KEYS": "bench", "APIKLEY_API_KEY": "bench",
            "APIKLEY_CONFIRM_CALLBACKS": "false", "STORAGE_URL": args.storage or (Path(tmp) / "videos").as_uri(),
        })
        if args.logs:
            from service.logs import configure_logging

            sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the whole run)
            configure_logging()
        else:
            logging.disable(logging.WARNING)
        from service.app import create_app

        app = create_app()
        loop = uvloop.new_event_loop()
        loop.run_until_complete(_deliver(app, lines[:WARM_UP]))
        rounds = []
        for r in range(3):
            batch = lines[WARM_UP + r * args.callbacks: WARM_UP + (r + 1) * args.callbacks]
            started = time.process_time()
            loop.run_until_complete(_deliver(app, batch))
            rounds.append((time.process_time() - started) / len(batch) * 1e6)
    best = min(rounds)
    print(f"CPU per callback, in-process: {', '.join(f'{r:.1f}' for r in rounds)} µs (best {best:.1f})", file=sys.__stdout__)
    print(f"RESULT cpu_us_per_callback={best:.1f}", file=sys.__stdout__)


if __name__ == "__main__":
    main()
