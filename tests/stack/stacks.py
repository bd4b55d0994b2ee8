"""Stacks that own their Redis: for tests that stop Redis, fill it with thousands of tasks, or
would otherwise run the shared server out of databases. Also a provider simulator in its own
process, for loads that would make the test process's GIL the bottleneck."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from service.redis_server import RedisServer, free_port
from tests.stack.conftest import ROOT, Simulator, Stack, wait_for


@dataclass
class OwnedStack:
    redis_server: RedisServer
    stack: Stack


@contextmanager
def owned_stack(
    base_dir: Path,
    simulator: Simulator,
    env: dict[str, str] | None = None,
    *,
    workers: int = 1,
    appendonly: bool = False,
) -> Iterator[OwnedStack]:
    """A redis-server of its own (AOF on if asked), then web and `workers` workers on its db 0."""
    logs = base_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    server = RedisServer(base_dir / "redis", appendonly=appendonly).start()
    stack = Stack(redis_url=server.url, simulator=simulator, env_overrides=env or {}, log_dir=logs)
    try:
        stack.start_web()
        for _ in range(workers):
            stack.start_worker()
        yield OwnedStack(server, stack)
    finally:
        stack.stop()
        server.stop()


@contextmanager
def simulator_process(log_dir: Path, api_key: str = "sandbox") -> Iterator[Simulator]:
    """`kling-relay simulator` as its own process."""
    port = free_port()
    args = [sys.executable, "-m", "service.cli", "simulator", "--port", str(port), "--api-key", api_key]
    with open(log_dir / "simulator.log", "wb") as log:  # the child keeps its own copy
        proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    sim = Simulator(f"http://127.0.0.1:{port}")

    def up() -> bool:
        try:
            return sim.http.get("/_sim/config").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout_s=20, interval_s=0.1, what="the simulator process to start")
        yield sim
    finally:
        proc.terminate()
        proc.wait(timeout=10)
