"""Callback received → subscriber receives the event: p50/p99 at a steady callback rate.

Starts its own redis-server, the real web process (uvicorn, uvloop + httptools), one real
`kling-relay worker`, and 10 subscriber endpoints (an aiohttp server in its own process that
stamps each arrival). Callbacks for distinct tasks are posted at `--rate` per second; each moves
its task `submitted → succeeded`, whose event fans out to every subscriber. The baseline is the
same client posting straight to the same subscriber endpoints at the same rate (the floor:
loopback HTTP on this machine).

    python bench/latency.py [--rate 100] [--seconds 10] [--subscribers 10]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
from aiohttp import web
from common import ROOT, uvicorn_process
from ingest import SECRET, seed
from redis import Redis

from service.redis_server import RedisServer, free_port

TARGET_P50_MS = 20
TARGET_P99_MS = 100


def serve_receivers(port: int, count: int) -> None:
    """Subscriber endpoints that stamp each arrival: GET /receipts returns [(key, unix_s), ...]."""
    receipts: list[tuple[str, float]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        arrived = time.time()
        # Webhook deliveries carry the task id in data.id; baseline posts carry it as the body.
        key = request.headers.get("x-bench-key") or _task_id(body)
        receipts.append((key, arrived))
        return web.Response(status=204)

    async def dump(request: web.Request) -> web.Response:
        return web.json_response(receipts)

    app = web.Application()
    for i in range(count):
        app.router.add_post(f"/hook/{i}", hook)
    app.router.add_get("/receipts", dump)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _task_id(body: bytes) -> str:
    import orjson

    return str(orjson.loads(body)["data"]["id"])


async def post_at_rate(requests: list[tuple[str, bytes, dict[str, str], str]], rate: float) -> dict[str, float]:
    """POST each (url, body, headers, key) at a steady rate; returns key → send time."""
    sent: dict[str, float] = {}
    async with aiohttp.ClientSession() as session:

        async def one(url: str, body: bytes, headers: dict[str, str], key: str) -> None:
            sent[key] = time.time()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status >= 300:
                    raise RuntimeError(f"{url} answered {response.status}")

        start = time.perf_counter()
        pending = []
        for i, (url, body, headers, key) in enumerate(requests):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(one(url, body, headers, key)))
        await asyncio.gather(*pending)
    return sent


def percentiles(latencies_ms: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(latencies_ms, n=100, method="inclusive")
    return cuts[49], cuts[98]


def receipts(url: str) -> list[tuple[str, float]]:
    return [(k, t) for k, t in httpx.get(f"{url}/receipts").json()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    count = int(args.rate * args.seconds)

    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis") as server:
        hook_port = free_port()
        receiver = multiprocessing.Process(target=serve_receivers, args=(hook_port, args.subscribers), daemon=True)
        receiver.start()
        hooks = f"http://127.0.0.1:{hook_port}"
        while True:
            try:
                httpx.get(f"{hooks}/receipts")
                break
            except httpx.HTTPError:
                time.sleep(0.05)

        # Baseline: the same client straight to the subscribers, same rate, same fan-out width.
        body = b'{"bench": true}'
        direct = [
            (f"{hooks}/hook/{i % args.subscribers}", body, {"x-bench-key": f"b{i}"}, f"b{i}")
            for i in range(count * args.subscribers)
        ]
        sent = asyncio.run(post_at_rate(direct, args.rate * args.subscribers))
        base = [(t - sent[k]) * 1000 for k, t in receipts(hooks) if k in sent]

        lines = Path(tmp) / "callbacks.tsv"
        redis = Redis(port=server.port)
        seed(redis, count, lines)
        env = {
            **os.environ, "REDIS_URL": server.url, "CALLBACK_SECRET": SECRET, "KLING_RELAY_API_KEYS": "bench",
            "APIKLEY_API_KEY": "bench", "APIKLEY_CONFIRM_CALLBACKS": "false", "ALLOW_PRIVATE_WEBHOOKS": "true",
            # The seeded results name no real video: no store jobs beside the deliveries measured.
            "STORAGE_URL": "none",
        }
        workers = [
            subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], env=env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(args.workers)
        ]
        try:
            with uvicorn_process("service.app:create_app", env, factory=True) as url:
                auth = {"Authorization": "Bearer bench"}
                for i in range(args.subscribers):
                    httpx.post(f"{url}/v1/subscriptions", headers=auth,
                               json={"url": f"{hooks}/hook/{i}", "event_types": ["*"]}).raise_for_status()
                callbacks = []
                for line in lines.read_text().splitlines():
                    path, payload = line.split("\t", 1)
                    task_id = path.split("/")[3]
                    callbacks.append((f"{url}{path}", payload.encode(), {"content-type": "application/json"}, task_id))
                sent = asyncio.run(post_at_rate(callbacks, args.rate))
                expected = len(base) + count * args.subscribers
                deadline = time.monotonic() + 60
                while len(got := receipts(hooks)) < expected and time.monotonic() < deadline:
                    time.sleep(0.2)
        finally:
            for worker in workers:
                worker.terminate()
                worker.wait(timeout=10)
            receiver.terminate()

    ours = [(t - sent[k]) * 1000 for k, t in got if k in sent]
    b50, b99 = percentiles(base)
    p50, p99 = percentiles(ours)
    print(f"{count} callbacks at {args.rate:.0f}/s, {args.subscribers} subscribers, {args.workers} worker(s): "
          f"{len(ours)} deliveries received")
    print(f"baseline (direct POST to the subscribers): p50 {b50:.1f} ms  p99 {b99:.1f} ms")
    print(f"callback → subscriber:                    p50 {p50:.1f} ms (target <= {TARGET_P50_MS})  "
          f"p99 {p99:.1f} ms (target <= {TARGET_P99_MS})  "
          f"{'MET' if p50 <= TARGET_P50_MS and p99 <= TARGET_P99_MS else 'NOT MET'}")
    print(f"RESULT p50_ms={p50:.1f} p99_ms={p99:.1f} baseline_p50_ms={b50:.1f} baseline_p99_ms={b99:.1f}")


if __name__ == "__main__":
    main()
