"""The Procfile runs the service under honcho (Foreman's Python clone), as a PaaS or a box would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from redis import Redis

from service.redis_server import RedisServer, free_port
from tests.stack.conftest import API_KEY, CALLBACK_SECRET, ROOT, wait_for

HONCHO = Path(sys.executable).parent / "honcho"


def test_honcho_accepts_the_procfile_with_a_web_and_a_worker() -> None:
    result = subprocess.run([str(HONCHO), "check"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "Valid procfile detected (web, worker)" in result.stderr + result.stdout


def test_honcho_start_serves_the_api_on_its_port_and_runs_a_worker(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis", appendonly=False) as redis_server:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KLING_RELAY_", "APIKLEY_", "NOVITA_", "REDIS_"))}
        env.update(
            # The Procfile names `kling-relay`: it must be on PATH, as in an activated virtualenv.
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            REDIS_URL=redis_server.url,
            KLING_RELAY_API_KEYS=API_KEY,
            CALLBACK_SECRET=CALLBACK_SECRET,
        )
        # honcho gives web the port asked for (and each later process type 100 more) in $PORT.
        honcho = subprocess.Popen(
            [str(HONCHO), "--no-colour", "-e", os.devnull, "start", "-p", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            def ready() -> bool:
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=0.5).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(ready, timeout_s=20, interval_s=0.1, what="web under honcho")
            workers = Redis.from_url(redis_server.url)
            wait_for(lambda: workers.scard("rq:workers") == 1, timeout_s=20, interval_s=0.1, what="the worker under honcho")
            listed = httpx.get(f"http://127.0.0.1:{port}/v1/tasks", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5)
            assert listed.status_code == 200
        finally:
            honcho.send_signal(signal.SIGTERM)
            try:
                honcho.wait(timeout=15)
            finally:
                if honcho.poll() is None:
                    os.killpg(honcho.pid, signal.SIGKILL)
        assert workers.scard("rq:workers") == 0, "the worker did not shut down cleanly"
