"""The web's pipelined Redis client (service/redis_async.py) against redis-py's asyncio client.

Each operation is the callback receiver's pair: GET a ~1 KB value, then EVALSHA a compare-and-set
script (service/cas.py's) with 10 arguments that writes it back. N coroutines run operations
back to back on one uvloop loop against a redis-server started here (no AOF, so Redis is not the
limit). Blocks alternate between the clients at each concurrency, so a change in how busy the
machine is hits both alike; figures are the medians of the blocks. CPU is this process's only
(the client's work; redis-server's is not counted).

redis.asyncio runs with the options the service gives redis-py (service/redis_client.py
CLIENT_OPTIONS: health checks, keepalive, timeouts) and a pool big enough for a connection per
concurrent command (its default refuses the 101st); hiredis parses its replies (checked below).

    python bench/redis_clients.py [--seconds 1.5] [--blocks 2] [--concurrency 1,16,64,256]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio
import uvloop
from common import ROOT  # noqa: F401  (puts the repository on sys.path)
from redis.utils import HIREDIS_AVAILABLE

from service.cas import spelled
from service.redis_async import PipelinedRedis
from service.redis_client import CLIENT_OPTIONS
from service.redis_server import RedisServer
from service.scripts import source

VALUE = b"x" * 1024

Op = Callable[[int], Awaitable[Any]]


def pipelined_op(client: PipelinedRedis) -> Op:
    cas = client.register_script(source("cas"))

    async def op(i: int) -> Any:
        key = f"bench:{i}"
        raw = await client.get(key)
        return await cas(keys=[key], args=[raw or "", *spelled(("SET", key, VALUE), ("ZADD", "bench:idx", 0, key))])

    return op


def redis_py_op(client: redis.asyncio.Redis) -> Op:
    cas = client.register_script(source("cas"))

    async def op(i: int) -> Any:
        key = f"bench:{i}"
        raw = await client.get(key)
        return await cas(keys=[key], args=[raw or "", *spelled(("SET", key, VALUE), ("ZADD", "bench:idx", 0, key))])

    return op


async def block(op: Op, concurrency: int, seconds: float) -> tuple[float, float]:
    """(operations/s, CPU µs per operation) of `concurrency` coroutines for `seconds`."""
    await asyncio.gather(*(op(i) for i in range(concurrency)))  # connections open, scripts loaded
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    counts = [0] * concurrency

    async def worker(i: int) -> None:
        while loop.time() < end:
            await op(i)
            counts[i] += 1

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    ops = sum(counts)
    return ops / wall, cpu / ops * 1e6


async def run(port: int, levels: list[int], blocks: int, seconds: float) -> dict[str, dict[int, list[tuple[float, float]]]]:
    async def fixed() -> tuple[str, int]:
        return "127.0.0.1", port

    pipelined = PipelinedRedis(fixed)
    # Its default pool refuses a 101st concurrent command (MaxConnectionsError): room for all.
    redis_py = redis.asyncio.Redis(host="127.0.0.1", port=port, max_connections=max(levels) + 1, **CLIENT_OPTIONS)
    clients = {"pipelined": pipelined_op(pipelined), "redis_asyncio": redis_py_op(redis_py)}
    results: dict[str, dict[int, list[tuple[float, float]]]] = {name: {n: [] for n in levels} for name in clients}
    for n in levels:
        for b in range(blocks):
            # Alternate which goes first, so neither always follows the other.
            order = list(clients.items()) if b % 2 == 0 else list(reversed(clients.items()))
            for name, op in order:
                results[name][n].append(await block(op, n, seconds))
    await pipelined.aclose()
    await redis_py.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.5, help="time per block")
    parser.add_argument("--blocks", type=int, default=2, help="blocks per client and concurrency, alternating")
    parser.add_argument("--concurrency", default="1,16,64,256", help="coroutines, comma-separated")
    args = parser.parse_args()
    if not HIREDIS_AVAILABLE:
        raise SystemExit("hiredis is not installed: redis-py would parse in Python, which is not the comparison")
    levels = [int(n) for n in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis", appendonly=False) as server:
        results = uvloop.run(run(server.port, levels, args.blocks, args.seconds))

    print(f"{'coroutines':>10} {'client':>14} {'ops/s':>10} {'CPU µs/op':>10}   (blocks)")
    fields: list[str] = []
    for n in levels:
        for name, by_level in results.items():
            rates = [rate for rate, _ in by_level[n]]
            cpus = [cpu for _, cpu in by_level[n]]
            rate, cpu = statistics.median(rates), statistics.median(cpus)
            blocks = ", ".join(f"{r:,.0f}/{c:.0f}" for r, c in by_level[n])
            print(f"{n:>10} {name:>14} {rate:>10,.0f} {cpu:>10.1f}   ({blocks})")
            fields += [f"{name}_c{n}_ops_per_s={rate:.0f}", f"{name}_c{n}_cpu_us={cpu:.1f}"]
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    main()
