"""`kling-relay dev`: the whole stack in one terminal for a first run.

Starts what is missing from the environment (an embedded redis-server when REDIS_URL is unset,
the provider simulator when no provider key is set, an API key and callback secret), then the
web and worker processes, and stops them all on Ctrl-C or when any one of them dies.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.redis_server import RedisServer, free_port
from service.settings import get_settings


def _wait_http(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=0.5)
        except httpx.HTTPError:
            time.sleep(0.1)
        else:
            return
    raise RuntimeError(f"{url} did not come up")


def _cli_name() -> str:
    """How the user can call this CLI from their shell: by name if it is on PATH, else by path."""
    script = Path(sys.executable).parent / "kling-relay"
    on_path = shutil.which("kling-relay")
    if on_path and Path(on_path).resolve() == script.resolve():
        return "kling-relay"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def run_dev(port: int | None = None) -> int:
    # SIGTERM (e.g. from a supervisor) must tear the children down just like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    settings = get_settings()
    env = dict(os.environ)
    children: list[subprocess.Popen[bytes]] = []
    redis: RedisServer | None = None
    exe = [sys.executable, "-m", "service.cli"]
    web_port = port or settings.port
    try:
        if not settings.redis_url and not settings.redis_sentinels:
            redis = RedisServer(Path("var/redis").resolve(), appendonly=True).start()
            env["REDIS_URL"] = redis.url
        if not settings.apikley_api_key and not settings.novita_api_key:
            sim_port = free_port()
            children.append(subprocess.Popen([*exe, "simulator", "--port", str(sim_port)], env=env))
            sim_url = f"http://127.0.0.1:{sim_port}"
            _wait_http(f"{sim_url}/_sim/config")
            env.update(APIKLEY_API_KEY="sandbox", APIKLEY_BASE_URL=sim_url, NOVITA_API_KEY="sandbox", NOVITA_BASE_URL=sim_url)
            print(f"sandbox: provider simulator at {sim_url} (no provider key set)")
        api_key = settings.kling_relay_api_keys[0] if settings.kling_relay_api_keys else f"dev_{secrets.token_urlsafe(18)}"
        env.setdefault("KLING_RELAY_API_KEYS", api_key)
        env.setdefault("CALLBACK_SECRET", secrets.token_urlsafe(32))
        env.setdefault("ALLOW_PRIVATE_WEBHOOKS", "true")
        env["PORT"] = str(web_port)
        env.setdefault("PUBLIC_BASE_URL", f"http://127.0.0.1:{web_port}")
        env.setdefault("WORKER_METRICS_PORT", str(free_port()))
        children.append(subprocess.Popen([*exe, "web"], env=env))
        children.append(subprocess.Popen([*exe, "worker"], env=env))
        base = f"http://127.0.0.1:{web_port}"
        _wait_http(f"{base}/healthz")
        print(
            f"\nkling-relay is running at {base}\n"
            f"API key: {api_key}\n\n"
            "Make a video from another terminal (live status, then the video URL):\n\n"
            f"  export KLING_RELAY_URL={base} KLING_RELAY_API_KEY={api_key}\n"
            f"  {_cli_name()} submit \"a red fox running through snow\" --wait\n\n"
            "or with curl:\n\n"
            f"  curl -s -X POST {base}/v1/tasks -H 'Authorization: Bearer {api_key}' \\\n"
            f"       -H 'Content-Type: application/json' -d '{{\"prompt\": \"a red fox running through snow\"}}'\n\n"
            f"Dashboard: {base}/dashboard?key={api_key}\n"
            f"API docs:  {base}/docs\n"
            f"Metrics:   {base}/metrics (web) and http://127.0.0.1:{env['WORKER_METRICS_PORT']}/metrics (worker)\n\n"
            "Press Ctrl-C to stop.\n",
            flush=True,
        )
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    else:
        print("a process exited; stopping the rest", file=sys.stderr)
        return 1
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
        if redis is not None:
            redis.stop()
