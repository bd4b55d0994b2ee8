"""Live event streams: event-to-client latency with many streams open, against one stream.

One web process (uvicorn, as `kling-relay web` serves) on a fresh redis-server, with tasks seeded
as in bench/ingest.py. `--streams` clients follow `GET /v1/events/stream` (one API key's events,
so every stream gets every event), then verified Apikley callbacks finish the tasks one by one
at `--rate` per second; each stream notes when each task's `task.succeeded` reaches it. Latency
is from just before the callback is posted to the event's arrival at a client, so it includes
the receiver's own work; the same run with one stream is the baseline, and the difference is
what fanning out costs. The clients share one asyncio process (aiohttp) on the same machine.

    python bench/streams.py [--streams 500] [--events 100] [--rate 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
from common import ROOT, uvicorn_server
from ingest import SECRET, seed
from redis import Redis

from service.redis_server import RedisServer

API_KEY = "bench"  # ingest.seed's tasks belong to this key


async def follow(
    url: str, session: aiohttp.ClientSession, arrived: dict[str, list[float]], ready: asyncio.Event, opened: list[int],
    done: asyncio.Event, tally: list[int],
) -> int:
    """Read one stream until cancelled; note each task.succeeded's arrival (`tally`: arrivals so
    far and expected, across all streams; `done` set when all are in). Returns events read."""
    count = 0
    async with session.get(f"{url}/v1/events/stream", headers={"Authorization": f"Bearer {API_KEY}"}) as response:
        assert response.status == 200, response.status
        opened[0] += 1
        if opened[0] == opened[1]:
            ready.set()
        event = b""
        async for line in response.content:
            if line.startswith(b"event: "):
                event = line[7:].strip()
            elif line.startswith(b"data: ") and event == b"task.succeeded":
                now = time.perf_counter()
                arrived.setdefault(orjson.loads(line[6:])["data"]["id"], []).append(now)
                count += 1
                tally[0] += 1
                if tally[0] >= tally[1]:
                    done.set()
    return count


async def run(url: str, lines: list[str], streams: int, rate: float) -> tuple[list[float], int]:
    arrived: dict[str, list[float]] = {}
    sent: dict[str, float] = {}
    ready = asyncio.Event()
    opened = [0, streams]
    done = asyncio.Event()
    tally = [0, streams * len(lines)]
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session, \
            aiohttp.ClientSession() as poster:
        readers = [asyncio.create_task(follow(url, session, arrived, ready, opened, done, tally)) for _ in range(streams)]
        await asyncio.wait_for(ready.wait(), 60)
        for line in lines:
            path, body = line.split("\t", 1)
            task_id = path.split("/")[3]
            sent[task_id] = time.perf_counter()
            async with poster.post(f"{url}{path}", data=body, headers={"content-type": "application/json"}) as r:
                assert r.status == 200, await r.text()
            await asyncio.sleep(1 / rate)
        # Until every stream has every event, or a few seconds more.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 10)
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    latencies = [(at - sent[task]) * 1000 for task, ats in arrived.items() for at in ats]
    return latencies, sum(map(len, arrived.values()))


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--events", type=int, default=100, help="task.succeeded events per run")
    parser.add_argument("--rate", type=float, default=20, help="callbacks (so events) per second")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis") as server:
        redis = Redis(port=server.port)
        files = [Path(tmp) / f"callbacks-{n}.tsv" for n in range(2)]
        for n, path in enumerate(files):
            seed(redis, args.events, path, id_of=lambda i, n=n: f"task_stream{n}{i:08d}")
        env = {"REDIS_URL": server.url, "CALLBACK_SECRET": SECRET, "KLING_RELAY_API_KEYS": API_KEY,
               "APIKLEY_API_KEY": "bench", "APIKLEY_CONFIRM_CALLBACKS": "false", "PYTHONPATH": str(ROOT / "bench")}
        results = {}
        with uvicorn_server("service.app:create_app", env, factory=True) as served:
            for streams, path in ((1, files[0]), (args.streams, files[1])):
                lines = path.read_text().splitlines()
                cpu = served.cpu_s()
                latencies, delivered = asyncio.run(run(served.url, lines, streams, args.rate))
                cpu_ms_per_event = (served.cpu_s() - cpu) / len(lines) * 1000
                results[streams] = (latencies, delivered, streams * len(lines), cpu_ms_per_event)
    for streams, (latencies, delivered, expected, cpu_ms) in results.items():
        print(
            f"{streams:>4} stream(s): delivered {delivered}/{expected}; event-to-client p50 {percentile(latencies, 50):.1f} ms, "
            f"p99 {percentile(latencies, 99):.1f} ms; web CPU {cpu_ms:.1f} ms per event"
        )
    base, many = results[1], results[args.streams]
    print(f"RESULT streams={args.streams} delivered={many[1]}/{many[2]} p50_ms={percentile(many[0], 50):.1f} "
          f"p99_ms={percentile(many[0], 99):.1f} baseline_p50_ms={percentile(base[0], 50):.1f} "
          f"baseline_p99_ms={percentile(base[0], 99):.1f} web_cpu_ms_per_event={many[3]:.1f}")


if __name__ == "__main__":
    main()
