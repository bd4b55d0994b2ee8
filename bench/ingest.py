"""Verified Apikley callbacks per second into the real receiver, against a bare Starlette endpoint.

Each callback is for a different task, carries a valid per-task token and a matching taskId, and
moves its task `submitted → succeeded` (one transition, one event, its outbox entry pushed, and,
stored videos being on by default, the task made due its copy). The bare endpoint and ours run as
one uvicorn process each (uvloop + httptools; ours with the web's HTTP limits,
service/http_server.py) and are loaded by wrk on loopback in alternating blocks, each block of
ours on tasks of its own, so a change in how busy the machine is hits all alike; the figures are
the medians of the blocks. Each server's CPU per request (user + system, from /proc) is reported
too: on a shared machine it moves less than the rates do.

Ours is measured twice: the receiver as the target has always been measured (the app under
uvicorn, logging warnings only), and `kling-relay web` exactly as production runs it, its INFO
log included (one JSON line per callback; written to a file here): the ratio a deployment sees.

    python bench/ingest.py [--seconds 4] [--blocks 3] [--tasks 40000] [--app module:factory]

`--app redis_py_app:create_app` serves the receiver on redis-py's asyncio client instead
(bench/redis_py_app.py), to compare the two Redis clients end to end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import orjson
from common import ROOT, Served, run_wrk, uvicorn_server, web_server
from redis import Redis

from service.auth import key_id
from service.domain.status import TaskStatus
from service.domain.tasks import Task, TaskInput
from service.domain.tokens import callback_token
from service.keys import index_key, task_key
from service.redis_server import RedisServer

TARGET_RATIO = 0.35
SECRET = "bench-secret"
NOW = "2026-01-01T00:00:00.000Z"
OWNER = key_id("bench")


def seed(redis: Redis, count: int, lines: Path, id_of: Callable[[int], str] = lambda i: f"task_bench{i:08d}") -> None:
    """Tasks already submitted to Apikley, and for each the callback that will finish it."""
    pipe = redis.pipeline(transaction=False)
    with lines.open("w") as out:
        for i in range(count):
            task_id = id_of(i)
            provider_id = f"task_kling_{i}"
            # Owned, as tasks made through the API are: a transition also moves it in its owner's index.
            task = Task(id=task_id, owner=OWNER, provider="apikley", provider_task_id=provider_id, status=TaskStatus.SUBMITTED,
                        input=TaskInput(prompt="bench"), created_at=NOW, updated_at=NOW, sequence=1)
            pipe.set(task_key(task_id), task.dumps())
            for owner in (None, OWNER):
                pipe.zadd(index_key(TaskStatus.SUBMITTED, owner), {task_id: 0})
            body = {"code": 200, "msg": "success", "data": {
                "taskId": provider_id, "state": "success", "model": "kling/v2-1-master-text-to-video",
                "resultJson": orjson.dumps({"resultUrls": [f"https://cdn.example/{i}.mp4"]}).decode(),
                "failCode": "", "failMsg": "", "costTime": 1000, "completeTime": 1, "createTime": 0, "updateTime": 1}}
            out.write(f"/callbacks/apikley/{task_id}/{callback_token(SECRET, task_id)}\t{orjson.dumps(body).decode()}\n")
            if i % 5000 == 4999:
                pipe.execute()
    pipe.execute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=4, help="wrk time per block")
    parser.add_argument("--blocks", type=int, default=3, help="blocks per server, alternating")
    parser.add_argument("--tasks", type=int, default=40000, help="tasks seeded per block")
    parser.add_argument("--app", default="service.app:create_app", help="app factory to serve (modules in bench/ are importable)")
    args = parser.parse_args()
    script = ROOT / "bench" / "callbacks.lua"
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis") as server:
        redis = Redis(port=server.port)
        # Two servers of ours, each block on tasks of its own.
        files = [Path(tmp) / f"callbacks-{b}.tsv" for b in range(2 * args.blocks)]
        for b, lines in enumerate(files):
            seed(redis, args.tasks, lines, id_of=lambda i, b=b: f"task_bench{b:02d}{i:08d}")
        env = {"REDIS_URL": server.url, "CALLBACK_SECRET": SECRET, "KLING_RELAY_API_KEYS": "bench",
               "APIKLEY_API_KEY": "bench", "APIKLEY_CONFIRM_CALLBACKS": "false", "PYTHONPATH": str(ROOT / "bench"),
               # Stored videos as by default (no worker runs here, so nothing is downloaded).
               "STORAGE_URL": (Path(tmp) / "videos").as_uri()}
        rates: dict[str, list[float]] = {"baseline": [], "receiver": [], "web": []}
        cpus: dict[str, list[float]] = {name: [] for name in rates}

        def measured(name: str, served: Served, lines: Path) -> None:
            before = served.cpu_s()
            rate = run_wrk(served.url, script, seconds=args.seconds, extra=[str(lines), "2"])
            rates[name].append(rate)
            cpus[name].append((served.cpu_s() - before) / (rate * args.seconds) * 1e6)

        # The bare endpoint stays on stock httptools: it is the yardstick, so what our HTTP limits
        # cost shows in the ratio instead of cancelling out.
        with uvicorn_server("baseline_app:app", {"PYTHONPATH": str(ROOT / "bench")}, http="httptools") as baseline, \
                uvicorn_server(args.app, env, factory=True) as receiver, web_server(env, Path(tmp) / "web.log") as web:
            for b in range(args.blocks):
                measured("baseline", baseline, files[2 * b])
                measured("receiver", receiver, files[2 * b])
                measured("web", web, files[2 * b + 1])
        succeeded = redis.zcard(index_key(TaskStatus.SUCCEEDED))

    rate = {name: statistics.median(values) for name, values in rates.items()}
    cpu = {name: statistics.median(values) for name, values in cpus.items()}
    ratio, web_ratio = rate["receiver"] / rate["baseline"], rate["web"] / rate["baseline"]

    def blocks(name: str) -> str:
        return ", ".join(f"{r:,.0f}" for r in rates[name])

    print(f"bare Starlette endpoint:  {rate['baseline']:,.0f} req/s       (blocks: {blocks('baseline')}); "
          f"{cpu['baseline']:.0f} µs CPU per request")
    print(f"kling-relay receiver:     {rate['receiver']:,.0f} callbacks/s (blocks: {blocks('receiver')}); "
          f"{cpu['receiver']:.0f} µs CPU per callback")
    print(f"`kling-relay web` (logs): {rate['web']:,.0f} callbacks/s (blocks: {blocks('web')}); "
          f"{cpu['web']:.0f} µs CPU per callback; {succeeded:,} tasks moved to succeeded in all")
    print(f"ratio {ratio:.2f} (target >= {TARGET_RATIO}) {'MET' if ratio >= TARGET_RATIO else 'NOT MET'}; "
          f"as production runs it {web_ratio:.2f}")
    if max(rates["receiver"] + rates["web"]) * args.seconds >= args.tasks:
        print(
            "warning: a block may have run out of seeded tasks; later callbacks were duplicates (raise --tasks)", file=sys.stderr
        )
    print(f"RESULT callbacks_per_s={rate['receiver']:.0f} baseline_per_s={rate['baseline']:.0f} ratio={ratio:.2f} "
          f"cpu_us_per_callback={cpu['receiver']:.0f} baseline_cpu_us={cpu['baseline']:.0f} "
          f"web_callbacks_per_s={rate['web']:.0f} web_ratio={web_ratio:.2f} web_cpu_us_per_callback={cpu['web']:.0f}")


if __name__ == "__main__":
    main()
