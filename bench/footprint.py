"""Redis footprint: bytes per finished task, round trips per callback, and memory as tasks flow.

1. Round trips: callbacks for seeded `submitted` tasks are posted with only the web process
   running, while MONITOR counts the commands clients send (commands a Lua script runs inside
   Redis are marked "lua" by MONITOR and are not round trips).
2. Bytes per task: a worker then fans those events out to 3 subscribers; once the delivery log
   TTL has passed, MEMORY USAGE of every key left (task, events, index entries, anything else)
   divided by the tasks is what a finished task costs at rest. The growth of used_memory (which
   adds the allocator's overhead) is printed beside it.
3. Flat memory: batch after batch of tasks flows through with short retention and log TTLs;
   used_memory is sampled after each batch; the second half's mean must not exceed the first's
   by 10% or more (expiry keeps up).

    python bench/footprint.py [--tasks 5000] [--flow-batches 10]
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
from collections.abc import Callable
from pathlib import Path

import aiohttp
import httpx
from common import ROOT, uvicorn_process
from ingest import SECRET, seed
from latency import serve_receivers
from redis import Redis

from service.keys import DELIVERIES_DUE, OUTBOX
from service.redis_server import RedisServer, free_port

TARGET_BYTES = 2048
TARGET_ROUNDTRIPS = 3
SUBSCRIBERS = 3
LOG_TTL_S = 3


async def post_all(url: str, lines: list[str], concurrency: int = 32) -> None:
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:

        async def one(line: str) -> None:
            path, body = line.split("\t", 1)
            async with gate, session.post(f"{url}{path}", data=body, headers={"content-type": "application/json"}) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"callback answered {r.status}")

        await asyncio.gather(*(one(line) for line in lines))


def count_roundtrips(port: int, run: Callable[[], None]) -> int:
    """Client-sent commands while `run` runs (MONITOR marks script-internal ones "lua")."""
    monitor = socket.create_connection(("127.0.0.1", port))
    monitor.sendall(b"MONITOR\r\n")
    monitor.recv(64)  # +OK
    run()
    time.sleep(0.5)
    monitor.settimeout(0.5)
    data = b""
    try:
        while chunk := monitor.recv(1 << 20):
            data += chunk
    except TimeoutError:
        pass
    monitor.close()
    lines = [line for line in data.split(b"\r\n") if line.startswith(b"+")]
    return sum(1 for line in lines if b" lua]" not in line and b'"MONITOR"' not in line)


def key_bytes(redis: Redis) -> int:
    return sum(redis.memory_usage(key) or 0 for key in redis.scan_iter(count=1000))


def used(redis: Redis) -> int:
    return int(redis.info("memory")["used_memory"])


def settle(redis: Redis, timeout_s: float = 120) -> None:
    """Wait until the outbox is drained and no delivery is pending."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not redis.llen(OUTBOX) and not redis.zcard(DELIVERIES_DUE) and not redis.llen("rq:queue:deliver"):
            return
        time.sleep(0.2)
    raise RuntimeError("deliveries did not settle")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--flow-batches", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis", appendonly=False) as server:
        redis = Redis(port=server.port)
        hook_port = free_port()
        receiver = multiprocessing.Process(target=serve_receivers, args=(hook_port, SUBSCRIBERS), daemon=True)
        receiver.start()
        env = {
            **os.environ, "REDIS_URL": server.url, "CALLBACK_SECRET": SECRET, "KLING_RELAY_API_KEYS": "bench",
            "APIKLEY_API_KEY": "bench", "APIKLEY_CONFIRM_CALLBACKS": "false", "ALLOW_PRIVATE_WEBHOOKS": "true",
            "WEBHOOK_LOG_TTL_S": str(LOG_TTL_S), "SWEEP_INTERVAL_S": "1", "WORKER_TTL_S": "17",
            # The callback path's keys alone; stored videos' bytes are bench/storage.py's figure.
            "STORAGE_URL": "none",
        }
        worker: subprocess.Popen[bytes] | None = None
        try:
            with uvicorn_process("service.app:create_app", env, factory=True) as url:
                for i in range(SUBSCRIBERS):
                    httpx.post(f"{url}/v1/subscriptions", headers={"Authorization": "Bearer bench"},
                               json={"url": f"http://127.0.0.1:{hook_port}/hook/{i}"}).raise_for_status()
                base_memory, base_keys = used(redis), key_bytes(redis)
                lines_file = Path(tmp) / "callbacks.tsv"
                seed(redis, args.tasks, lines_file)
                lines = lines_file.read_text().splitlines()
                # Warm up first: opening pooled connections costs a few commands once, not per callback.
                asyncio.run(post_all(url, lines[:200]))
                sample = lines[200:400]
                roundtrips = count_roundtrips(server.port, lambda: asyncio.run(post_all(url, sample))) / len(sample)
                asyncio.run(post_all(url, lines[400:]))

                worker = subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], env=env, cwd=ROOT,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                settle(redis)
                time.sleep(LOG_TTL_S + 2)
                redis.execute_command("MEMORY", "PURGE")
                per_task = (key_bytes(redis) - base_keys) / args.tasks
                per_task_used = (used(redis) - base_memory) / args.tasks
                rq_keys = len(redis.keys("rq:job:*"))

            # Flat memory: short retention, many batches.
            worker.terminate()
            worker.wait(timeout=10)
            env.update(TASK_RETENTION_S="2")
            worker = subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], env=env, cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            samples = []
            with uvicorn_process("service.app:create_app", env, factory=True) as url:
                for batch in range(args.flow_batches):
                    lines_file = Path(tmp) / f"flow{batch}.tsv"
                    seed_batch(redis, args.tasks, lines_file, batch)
                    asyncio.run(post_all(url, lines_file.read_text().splitlines()))
                    settle(redis)
                    time.sleep(max(LOG_TTL_S, 2) + 1.5)
                    samples.append(used(redis))
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(timeout=10)
            receiver.terminate()

    flowed = args.tasks * args.flow_batches
    # Flat means no trend: samples swing with what is mid-expiry, so compare the halves' means.
    first, second = samples[: len(samples) // 2], samples[len(samples) // 2 :]
    growth = statistics.fmean(second) / statistics.fmean(first) - 1
    print(f"receiver: {roundtrips:.2f} Redis round trips per callback (target <= {TARGET_ROUNDTRIPS})")
    print(f"at rest after the log TTL: {per_task:,.0f} bytes of keys per finished task with its events "
          f"(target <= {TARGET_BYTES}); used_memory grew {per_task_used:,.0f} bytes per task; "
          f"leftover RQ job hashes: {rq_keys}")
    print(f"flow of {flowed:,} tasks: used_memory per batch (MiB) "
          + " ".join(f"{s / 2**20:.1f}" for s in samples) + f"; second half vs first half {growth:+.1%} (target < 10%)")
    ok = roundtrips <= TARGET_ROUNDTRIPS and per_task <= TARGET_BYTES and growth < 0.10
    print("MET" if ok else "NOT MET")
    print(f"RESULT bytes_per_task={per_task:.0f} roundtrips_per_callback={roundtrips:.2f} "
          f"flow_tasks={flowed} memory_growth={growth:.3f}")


def seed_batch(redis: Redis, count: int, lines: Path, batch: int) -> None:
    """Like ingest.seed, with ids unique to the batch (and time-ordered, so retention trims them)."""
    from service.domain.ids import new_id

    seed(redis, count, lines, id_of=lambda i: new_id("task"))


if __name__ == "__main__":
    main()
