"""Shared pieces of the benchmarks: processes on free ports, wrk runs, result lines."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.redis_server import free_port  # noqa: E402

T = TypeVar("T")


def wait(probe: Callable[[], T | None], timeout_s: float = 120, what: str = "condition") -> T:
    """Poll `probe` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def answers_200(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        sys.exit("wrk is needed for this benchmark: apt-get install wrk")
    return path


# The HTTP protocol `kling-relay web` serves with (service/cli.py `_web`): httptools with limits.
WEB_PROTOCOL = "service.http_server:LimitedHttpToolsProtocol"


@dataclass(frozen=True)
class Served:
    url: str
    pid: int

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def _serving(args: list[str], port: int, env: dict[str, str], what: str, *, log: Path | None = None) -> Iterator[Served]:
    """Run a server process (`args`, listening on `port`) until the block ends; its output goes
    to `log` if given."""
    with open(log or os.devnull, "ab") as out:
        proc = subprocess.Popen(args, env={**os.environ, **env}, cwd=ROOT, **({"stdout": out, "stderr": out} if log else {}))
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    httpx.get(f"{url}/", timeout=0.5)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError(f"{what} did not start") from None
                    time.sleep(0.1)
            yield Served(url, proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@contextmanager
def uvicorn_server(target: str, env: dict[str, str], *, factory: bool = False, http: str = WEB_PROTOCOL) -> Iterator[Served]:
    """Serve `target` with one uvicorn process (uvloop, and the web's HTTP protocol unless told
    otherwise), logging warnings only."""
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port),
            "--loop", "uvloop", "--http", http, "--no-access-log", "--log-level", "warning"]
    if factory:
        args.append("--factory")
    with _serving(args, port, env, target) as served:
        yield served


@contextmanager
def web_server(env: dict[str, str], log: Path) -> Iterator[Served]:
    """`kling-relay web` exactly as production runs it (its logging included: a JSON line per
    task event and per request, written to `log`)."""
    port = free_port()
    args = [sys.executable, "-m", "service.cli", "web", "--host", "127.0.0.1", "--port", str(port)]
    with _serving(args, port, env, "kling-relay web", log=log) as served:
        yield served


@contextmanager
def uvicorn_process(target: str, env: dict[str, str], *, factory: bool = False, http: str = WEB_PROTOCOL) -> Iterator[str]:
    """`uvicorn_server`, for callers that need only its URL."""
    with uvicorn_server(target, env, factory=factory, http=http) as served:
        yield served.url


def run_wrk(
    url: str, script: Path, *, seconds: int, extra: list[str] | None = None, connections: int = 64, threads: int = 2
) -> float:
    """Requests/s that wrk measured; fails loudly if any response was not 2xx."""
    out = subprocess.run(
        [require_wrk(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url, "--", *(extra or [])],
        capture_output=True, text=True, check=True,
    ).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        raise RuntimeError(f"{non_2xx.group(1)} non-2xx responses:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return float(match.group(1))
