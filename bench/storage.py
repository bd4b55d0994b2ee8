"""Stored videos: download throughput through the real store job, and the Redis bytes a stored
copy adds to a task.

Starts its own redis-server, the provider simulator (its own process), `kling-relay web` and one
worker storing into a temporary folder. For each round, one task whose simulated video is
`--mb` MB: the throughput is bytes / (the `task.stored` event's time − the `task.succeeded`
event's time), so it covers the whole job (queue pick-up, download, hashing, fsync, rename, the
Redis write), not the download alone. The worker's own log line gives the download-and-keep
figure too. Redis bytes: MEMORY USAGE of the task and its events before the copy (the state as
`task.succeeded` left it, rebuilt from that event) and after, plus the `kr:stored` entry.

    python bench/storage.py [--mb 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
from common import ROOT, answers_200, wait
from redis import Redis

from service.domain.clock import iso_to_unix
from service.keys import STORED, events_key, task_key
from service.redis_server import RedisServer, free_port

API_KEY = "bench-key"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


@contextmanager
def stack(base: Path, max_bytes: int) -> Iterator[tuple[str, str, Redis, Path]]:
    redis_server = RedisServer(base / "redis", appendonly=False).start()
    sim_port, web_port = free_port(), free_port()
    sim_url, web_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{web_port}"
    videos = base / "videos"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("APIKLEY_", "NOVITA_", "KLING_RELAY_", "STORAGE_"))},
        "REDIS_URL": redis_server.url,
        "KLING_RELAY_API_KEYS": API_KEY,
        "CALLBACK_SECRET": "bench-secret",
        "PUBLIC_BASE_URL": web_url,
        "PORT": str(web_port),
        "APIKLEY_API_KEY": "sandbox",
        "APIKLEY_BASE_URL": sim_url,
        "ALLOW_PRIVATE_WEBHOOKS": "true",
        "POLL_INITIAL_S": "0.3",
        "STORAGE_URL": videos.as_uri(),
        "STORAGE_MAX_BYTES": str(max_bytes),
    }
    procs: list[subprocess.Popen[bytes]] = []
    log_path = base / "processes.log"

    def spawn(*args: str) -> None:
        # Each process appends to the one log; ours is closed once the child has its own.
        with open(log_path, "ab") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "service.cli", *args], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
                )
            )

    try:
        spawn("simulator", "--port", str(sim_port))
        spawn("web")
        spawn("worker")
        wait(lambda: answers_200(f"{sim_url}/_sim/config") and answers_200(f"{web_url}/healthz"), 30, "simulator and web")
        yield sim_url, web_url, Redis.from_url(redis_server.url), log_path
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
            proc.wait()
        redis_server.stop()


def one_round(sim: str, web: str, redis: Redis, size: int) -> tuple[float, dict[str, int]]:
    httpx.patch(f"{sim}/_sim/config", json={"video_bytes": size}).raise_for_status()
    created = httpx.post(f"{web}/v1/tasks", json={"prompt": "a long shot of the sea", "provider": "apikley"}, headers=HEADERS)
    created.raise_for_status()
    task_id = created.json()["id"]

    def stored() -> dict[str, Any] | None:
        body: dict[str, Any] = httpx.get(f"{web}/v1/tasks/{task_id}", headers=HEADERS).json()
        result = body.get("result") or {}
        if result.get("storage_error"):
            raise SystemExit(f"not stored: {result['storage_error']}")
        return body if result.get("sha256") else None

    wait(stored, 600, "the video to be stored")
    events = httpx.get(f"{web}/v1/tasks/{task_id}/events", headers=HEADERS).json()["data"]
    by_type = {e["type"]: e for e in events}
    seconds = iso_to_unix(by_type["task.stored"]["created_at"]) - iso_to_unix(by_type["task.succeeded"]["created_at"])
    return size / seconds / 1e6, redis_bytes(redis, task_id, by_type["task.succeeded"], by_type["task.stored"])


def redis_bytes(redis: Redis, task_id: str, succeeded: dict[str, Any], stored_event: dict[str, Any]) -> dict[str, int]:
    """Bytes the copy added: measured now, and on a scratch copy of the state before it."""
    after = int(redis.memory_usage(task_key(task_id)) or 0) + int(redis.memory_usage(events_key(task_id)) or 0)
    scratch_task, scratch_events = f"bench:before:{task_id}", f"bench:before:events:{task_id}"
    raw_events = redis.lrange(events_key(task_id), 0, -1)
    redis.set(scratch_task, orjson.dumps(succeeded["data"]))
    redis.rpush(scratch_events, *raw_events[:-1])
    before = int(redis.memory_usage(scratch_task) or 0) + int(redis.memory_usage(scratch_events) or 0)
    redis.delete(scratch_task, scratch_events)
    entries = int(redis.zcard(STORED))
    index = int(redis.memory_usage(STORED) or 0) // max(entries, 1)
    # Every succeeded task now carries the storage fields, null until kept: in the task and in
    # its task.succeeded event alike.
    result = succeeded["data"]["result"]
    bare = {k: v for k, v in result.items() if k in ("video_url", "expires_at")}
    nulls = 2 * (len(orjson.dumps(result)) - len(orjson.dumps(bare)))
    return {
        "task_and_events": after - before,
        "stored_index_entry": index,
        "event_json": len(orjson.dumps(stored_event)),
        "null_fields_before_kept": nulls,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = int(args.mb * 1e6)
    with tempfile.TemporaryDirectory() as tmp, stack(Path(tmp), max_bytes=size * 2) as (sim, web, redis, log_path):
        rates, added = [], []
        for _ in range(args.rounds):
            rate, extra = one_round(sim, web, redis, size)
            rates.append(rate)
            added.append(extra)
            print(f"round: {rate:.1f} MB/s through the job; redis bytes added {extra}", flush=True)
        job_rates = [float(m) for m in re.findall(r"mb_per_s=([0-9.]+)", log_path.read_text(errors="replace"))]
    print(
        f"RESULT video_mb={args.mb:g} job_mb_per_s={statistics.median(rates):.1f} "
        f"download_and_keep_mb_per_s={statistics.median(job_rates) if job_rates else 0:.1f} "
        f"redis_bytes_per_task={statistics.median(a['task_and_events'] + a['stored_index_entry'] for a in added):.0f} "
        f"null_fields_per_succeeded_task={added[0]['null_fields_before_kept']}"
    )


if __name__ == "__main__":
    main()
