"""Fan-out benchmark: one event to 200 local subscribers, deliveries/s in one worker process,
beside a raw aiohttp client posting the same bytes to the same endpoints in the same run.

    .venv/bin/python bench/fanout.py [--subscribers 200] [--rounds 20]

It starts its own redis-server, a subscriber server (aiohttp, one process, one path per
subscriber) and a real `kling-relay worker`, then for each round appends one event and pushes
its outbox entry exactly as a task transition does, timing from the push until every delivery
is recorded. Targets (docs/performance.md): ≥ 2,500 deliveries/s and ≥ 0.6× the raw client.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service import outbox  # noqa: E402
from service.domain.clock import now_iso  # noqa: E402
from service.domain.events import make_event  # noqa: E402
from service.domain.ids import new_id  # noqa: E402
from service.domain.status import TaskStatus  # noqa: E402
from service.domain.tasks import Task, TaskInput, TaskResult  # noqa: E402
from service.keys import INFLIGHT_PREFIX, delivery_key, events_key  # noqa: E402
from service.redis_server import RedisServer, free_port  # noqa: E402
from service.webhooks.models import Delivery, Subscription  # noqa: E402
from service.webhooks.policy import SigningSecret, delivery_id  # noqa: E402
from service.webhooks.signing import generate_secret  # noqa: E402
from service.webhooks.store import SubscriptionStore  # noqa: E402
from workers.delivery_engine import new_event_loop  # noqa: E402

TARGET_PER_S = 2500
TARGET_RATIO = 0.6
BLOCKS = 5


def serve_subscribers(port: int, count: int) -> None:
    """The subscriber side: `count` distinct paths, each answering 204 like a healthy receiver."""

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    app = web.Application()
    for i in range(count):
        app.router.add_post(f"/hook/{i}", hook)
    # uvloop keeps the receiving side cheap, so the client side is what this measures.
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=new_event_loop())


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listening on {port}") from None
            time.sleep(0.05)
        else:
            return


def sample_event_body(task_id: str) -> tuple[str, bytes]:
    """A realistic `task.succeeded` event (the full task in `data`, ~1 KB), as stored."""
    now = now_iso()
    task = Task(
        id=task_id,
        provider="apikley",
        provider_task_id="task_kling_1795523103435",
        status=TaskStatus.SUCCEEDED,
        input=TaskInput(prompt="a red fox running through fresh snow at dawn, cinematic, 35mm", duration="5"),
        result=TaskResult(video_url="https://cdn.example.com/videos/0123456789abcdef.mp4", expires_at=now),
        progress=100,
        created_at=now,
        updated_at=now,
        metadata={"customer": "bench", "order": 42},
        sequence=2,
    )
    event = make_event(task, "task.succeeded", event_id=new_id("evt"), created_at=now)
    return event.id, event.dumps()


def run_engine(redis: Redis, sub_ids: list[str], rounds: int) -> list[float]:
    """Seconds per round, from one event entering the outbox until every delivery is recorded."""
    # The event's outbox entry stays in the dispatcher's in-flight list until the last of its
    # first attempts is recorded: the list's `del` event marks the end of a round. Waiting on it,
    # rather than polling, keeps this process off the two cores the worker and the subscribers
    # are measured on.
    redis.config_set("notify-keyspace-events", "Kg")
    events = redis.pubsub(ignore_subscribe_messages=True)
    events.psubscribe(f"__keyspace@0__:{INFLIGHT_PREFIX}*")
    timings = []
    for _ in range(rounds):
        task_id = new_id("task")
        event_id, body = sample_event_body(task_id)
        redis.rpush(events_key(task_id), body)
        started = time.perf_counter()
        outbox.push(redis, task_id, event_id)
        deadline = started + 30
        while (message := events.get_message(timeout=1)) is None or message["data"] != b"del":
            if time.perf_counter() > deadline:
                raise SystemExit("round timed out")
        timings.append(time.perf_counter() - started)
        raws = redis.mget([delivery_key(delivery_id(event_id, s)) for s in sub_ids])
        statuses = [Delivery.loads(raw).status.value if raw else "missing" for raw in raws]
        if any(status != "delivered" for status in statuses):
            raise SystemExit(f"round failed: {statuses.count('delivered')}/{len(sub_ids)} delivered")
    events.close()
    return timings


class Baseline:
    """The same POSTs from a plain aiohttp session: no Redis, no signing, no bookkeeping."""

    def __init__(self, urls: list[str], body: bytes) -> None:
        self.urls = urls
        self.body = body
        self.loop = asyncio.new_event_loop()
        self.session = self.loop.run_until_complete(self._session())

    async def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))

    async def _round(self) -> float:
        async def post(url: str) -> None:
            async with self.session.post(url, data=self.body, headers={"content-type": "application/json"}) as response:
                await response.read()
                assert response.status == 204

        started = time.perf_counter()
        await asyncio.gather(*(post(u) for u in self.urls))
        return time.perf_counter() - started

    def run(self, rounds: int) -> list[float]:
        return [self.loop.run_until_complete(self._round()) for _ in range(rounds)]

    def close(self) -> None:
        self.loop.run_until_complete(self.session.close())
        self.loop.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    n, rounds = args.subscribers, args.rounds

    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis", appendonly=False) as server:
        port = free_port()
        subscribers = multiprocessing.Process(target=serve_subscribers, args=(port, n), daemon=True)
        subscribers.start()
        worker = None
        try:
            wait_port(port)
            redis = Redis.from_url(server.url)
            store = SubscriptionStore(redis, event_ttl_s=3600)
            urls = [f"http://127.0.0.1:{port}/hook/{i}" for i in range(n)]
            now = now_iso()
            sub_ids = []
            for url in urls:
                sub = Subscription(id=new_id("sub"), url=url, event_types=["*"], created_at=now, updated_at=now,
                                   secrets=[SigningSecret(generate_secret())])
                store.create(sub)
                sub_ids.append(sub.id)

            env = {**os.environ, "REDIS_URL": server.url, "CALLBACK_SECRET": "bench", "ALLOW_PRIVATE_WEBHOOKS": "true"}
            with open(Path(tmp) / "worker.log", "wb") as log:  # the child keeps its own copy
                worker = subprocess.Popen(
                    [sys.executable, "-m", "service.cli", "worker"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
                )
            _, body = sample_event_body("task_bench")
            baseline = Baseline(urls, body)
            run_engine(redis, sub_ids, 2)  # warm-up: worker imports, pooled connections
            baseline.run(2)
            engine: list[float] = []
            raw: list[float] = []
            # Interleaved blocks, so a burst of load from elsewhere on the machine hits both alike.
            for _ in range(BLOCKS):
                engine += run_engine(redis, sub_ids, rounds // BLOCKS)
                raw += baseline.run(rounds // BLOCKS)
            baseline.close()
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(timeout=10)
            subscribers.terminate()
            subscribers.join(timeout=5)

    # Rates from the median round: robust to the odd round slowed by something else running here.
    engine_rate = n / statistics.median(engine)
    baseline_rate = n / statistics.median(raw)
    ratio = engine_rate / baseline_rate
    print(f"subscribers={n} rounds={len(engine)} (one event to {n} subscribers per round)")
    print(f"engine:   {engine_rate:7.0f} deliveries/s  median round {statistics.median(engine) * 1000:.1f} ms  "
          f"(mean {n * len(engine) / sum(engine):.0f}/s; target >= {TARGET_PER_S})")
    print(f"baseline: {baseline_rate:7.0f} requests/s    median round {statistics.median(raw) * 1000:.1f} ms  "
          f"(mean {n * len(raw) / sum(raw):.0f}/s; raw aiohttp client)")
    print(f"ratio:    {ratio:7.2f}                                     (target >= {TARGET_RATIO})")
    print(f"RESULT deliveries_per_s={engine_rate:.0f} baseline_per_s={baseline_rate:.0f} ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
