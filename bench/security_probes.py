"""The attacks of the hardening review, run against a real stack; prints what each one got.

Starts redis-server, the provider simulator, `kling-relay web` and one worker from a checkout
(this one, or `--root` another, e.g. an older commit in a git worktree, to compare), with two
API keys (Alice, Bob) and a subscriber on loopback, then probes it from outside. Everything stays
on 127.0.0.1.

    python bench/security_probes.py [--root PATH] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from common import ROOT, answers_200, wait
from redis import Redis

from service.keys import PREFIX
from service.redis_server import RedisServer, free_port

ALICE, BOB = "probe-key-alice-0123456789", "probe-key-bob-9876543210"
SECRET = "probe-callback-secret"



class Receiver:
    """A loopback webhook receiver counting POSTs per path; /slow answers after 1.5 s with 500."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        lock = threading.Lock()
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                with lock:
                    hits[self.path] = hits.get(self.path, 0) + 1
                if self.path == "/slow":
                    time.sleep(1.5)
                    self.send_response(500)
                else:
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@contextmanager
def stack(root: Path, base: Path) -> Iterator[dict[str, Any]]:
    redis_server = RedisServer(base / "redis", appendonly=False).start()
    sim_port, web_port = free_port(), free_port()
    web_url, sim_url = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{sim_port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("APIKLEY_", "NOVITA_", "KLING_RELAY_"))},
        "REDIS_URL": redis_server.url, "KLING_RELAY_API_KEYS": f"{ALICE},{BOB}", "CALLBACK_SECRET": SECRET,
        "PUBLIC_BASE_URL": web_url, "PORT": str(web_port), "APIKLEY_API_KEY": "sandbox", "APIKLEY_BASE_URL": sim_url,
        "NOVITA_API_KEY": "sandbox", "NOVITA_BASE_URL": sim_url, "ALLOW_PRIVATE_WEBHOOKS": "true",
        "APIKLEY_CONFIRM_CALLBACKS": "false", "WEBHOOK_RETRY_SCHEDULE_S": "0,0.5", "SWEEP_INTERVAL_S": "1",
        "PYTHONPATH": str(root),
    }
    log = base / "web.log"
    procs = []
    with open(log, "wb") as web_log, open(base / "other.log", "wb") as other_log:
        def spawn(args: list[str], out: Any) -> subprocess.Popen[bytes]:
            proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", *args], env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT
            )
            procs.append(proc)
            return proc

        spawn(["simulator", "--port", str(sim_port)], other_log)
        web = spawn(["web"], web_log)
        spawn(["worker"], other_log)
        try:
            wait(lambda: answers_200(f"{web_url}/healthz") and answers_200(f"{sim_url}/_sim/config"), what="the stack")
            yield {"web": web_url, "sim": sim_url, "redis": Redis.from_url(redis_server.url), "web_pid": web.pid, "log": log}
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
            redis_server.stop()



def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def client(s: dict[str, Any], key: str) -> httpx.Client:
    return httpx.Client(base_url=s["web"], headers={"Authorization": f"Bearer {key}"}, timeout=30)


def huge_header(s: dict[str, Any]) -> str:
    port = int(s["web"].rsplit(":", 1)[1])
    before = rss_mb(s["web_pid"])
    answers = []
    for _ in range(4):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sent = 0
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            chunk = b"a" * (1024 * 1024)
            for _ in range(64):
                sock.sendall(chunk)
                sent += len(chunk)
            sock.sendall(b"\r\n\r\n")
            status = sock.recv(64).split(b"\r\n", 1)[0].decode(errors="replace") or "closed"
        except OSError as exc:
            status = f"closed after {sent // (1024 * 1024)} MB ({type(exc).__name__})"
        finally:
            sock.close()
        answers.append(status)
    return f"{answers[0]}; web RSS {before:.0f} → {rss_mb(s['web_pid']):.0f} MB after four"


def slow_headers(s: dict[str, Any]) -> str:
    port = int(s["web"].rsplit(":", 1)[1])
    socks = []
    for _ in range(50):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost:")
        socks.append(sock)
    time.sleep(40)
    closed = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            sock.recv(1024)  # EOF, or an answer (408) the server closed after
            closed += 1
        except BlockingIOError:
            pass  # still open, still waiting
        except OSError:
            closed += 1
        sock.close()
    return f"{closed} of 50 half-header connections closed by the server within 40 s"


def provider_url(s: dict[str, Any]) -> str:
    with client(s, ALICE) as alice:
        httpx.patch(f"{s['sim']}/_sim/config", json={"callback_mode": "drop"})
        task = alice.post("/v1/tasks", json={"prompt": "hostile provider", "provider": "apikley"}).json()
        pid = wait(lambda: alice.get(f"/v1/tasks/{task['id']}").json()["provider_task_id"], what="submitted")
        token = _token(task["id"])
        record = {
            "taskId": pid,
            "state": "success",
            "resultJson": json.dumps({"resultUrls": ["javascript:alert(document.cookie)"]}),
        }
        httpx.post(f"{s['web']}/callbacks/apikley/{task['id']}/{token}", json={"code": 200, "msg": "success", "data": record})
        done = wait(
            lambda: (t := alice.get(f"/v1/tasks/{task['id']}").json())["status"] in ("succeeded", "failed") and t, what="the task"
        )
        page = httpx.get(f"{s['web']}/dashboard/tasks/{task['id']}", headers={"Authorization": f"Bearer {ALICE}"}).text
        httpx.patch(f"{s['sim']}/_sim/config", json={"callback_mode": "normal"})
    stored = (done.get("result") or {}).get("video_url")
    linked = 'href="javascript:' in page or "href='javascript:" in page
    code = (done.get("error") or {}).get("code")
    return f"task {done['status']} ({code}); video_url stored: {stored!r}; dashboard links it: {linked}"


def _token(task_id: str) -> str:
    import base64

    digest = hmac.new(SECRET.encode(), f"apikley-callback:{task_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def security_headers(s: dict[str, Any]) -> str:
    found = []
    for path in ("/dashboard", "/docs"):
        headers = httpx.get(f"{s['web']}{path}", headers={"Authorization": f"Bearer {ALICE}"}).headers
        present = [
            h for h in ("content-security-policy", "x-frame-options", "x-content-type-options", "referrer-policy") if h in headers
        ]
        found.append(f"{path}: {', '.join(present) or 'none'}")
    return "; ".join(found)


def deep_json(s: dict[str, Any]) -> str:
    body = '{"prompt": "deep", "metadata": ' + '{"a": ' * 299 + "{}" + "}" * 299 + "}"
    sub = '{"url": "http://127.0.0.1:9/x", "metadata": ' + '{"a": ' * 299 + "{}" + "}" * 299 + "}"
    with client(s, ALICE) as alice:
        a = alice.post("/v1/tasks", content=body, headers={"Content-Type": "application/json"}).status_code
        b = alice.post("/v1/subscriptions", content=sub, headers={"Content-Type": "application/json"}).status_code
    return f"metadata 300 deep: task {a}, subscription {b}"


def tenancy(s: dict[str, Any], receiver: Receiver) -> str:
    with client(s, ALICE) as alice, client(s, BOB) as bob:
        sub = alice.post("/v1/subscriptions", json={"url": f"{receiver.url}/alice"}).json()
        read = bob.get(f"/v1/subscriptions/{sub['id']}").status_code
        patched = bob.patch(f"/v1/subscriptions/{sub['id']}", json={"url": f"{receiver.url}/stolen"}).status_code
        rotated = bob.post(f"/v1/subscriptions/{sub['id']}/rotate-secret").status_code
        same_secret = alice.get("/v1/webhooks/default/secret").json() == bob.get("/v1/webhooks/default/secret").json()
        deleted = bob.delete(f"/v1/subscriptions/{sub['id']}").status_code
    return (
        f"Bob on Alice's subscription: read {read}, re-point {patched}, rotate {rotated}, delete {deleted}; "
        f"same default secret: {same_secret}"
    )


def keys_in_logs(s: dict[str, Any]) -> str:
    httpx.get(f"{s['web']}/dashboard?%6Bey={ALICE}")
    httpx.get(f"{s['web']}/dashboard?KEY={ALICE}")
    time.sleep(0.5)
    return f"Alice's key in the access log: {ALICE in s['log'].read_text()}"


def replays(s: dict[str, Any], receiver: Receiver) -> str:
    with client(s, ALICE) as alice:
        sub = alice.post("/v1/subscriptions", json={"url": f"{receiver.url}/replayed"}).json()
        for n in range(3):
            alice.post("/v1/tasks", json={"prompt": f"replayed {n}", "provider": "novita"})
        wait(lambda: receiver.hits.get("/replayed", 0) >= 6, what="deliveries")
        before = receiver.hits.get("/replayed", 0)
        statuses = Counter(
            alice.post(f"/v1/subscriptions/{sub['id']}/replay", json={"since": "2000-01-01T00:00:00Z"}).status_code
            for _ in range(40)
        )
        time.sleep(3)
    caused = receiver.hits.get("/replayed", 0) - before
    return f"40 replay calls in a row: {dict(sorted(statuses.items()))} by status; POSTs they caused: {caused}"


def dashboard_cookie(s: dict[str, Any]) -> str:
    cookies = []
    for _ in range(2):
        response = httpx.post(f"{s['web']}/dashboard/login", data={"key": ALICE}, headers={"Origin": s["web"]})
        cookies.append(response.cookies.get("kr_dashboard") or response.headers.get("set-cookie", "")[:60])
        time.sleep(1.1)
    fixed = hmac.new(ALICE.encode(), b"kling-relay dashboard v1", hashlib.sha256).hexdigest()
    return f"two sign-ins give the same cookie: {cookies[0] == cookies[1]}; cookie is HMAC(key, constant): {cookies[0] == fixed}"


def manual_retries(s: dict[str, Any], receiver: Receiver) -> str:
    with client(s, ALICE) as alice:
        sub = alice.post("/v1/subscriptions", json={"url": f"{receiver.url}/retried", "event_types": ["task.succeeded"]}).json()
        alice.post("/v1/tasks", json={"prompt": "retried", "provider": "novita"})
        [delivery] = wait(
            lambda: [
                d for d in alice.get(f"/v1/subscriptions/{sub['id']}/deliveries").json()["data"] if d["status"] == "delivered"
            ],
            what="a delivery",
        )
        before = receiver.hits.get("/retried", 0)
        with ThreadPoolExecutor(20) as pool:
            list(pool.map(lambda _: alice.post(f"/v1/deliveries/{delivery['id']}/retry").status_code, range(20)))
        time.sleep(4)
        logged = alice.get(f"/v1/deliveries/{delivery['id']}").json()["attempt_count"] - 1
    return f"20 concurrent retries (the worker running): {receiver.hits.get('/retried', 0) - before} sends, {logged} logged"


def orphan_keys(s: dict[str, Any], receiver: Receiver) -> str:
    redis: Redis = s["redis"]
    with client(s, ALICE) as alice:
        sub = alice.post("/v1/subscriptions", json={"url": f"{receiver.url}/slow", "event_types": ["task.succeeded"]}).json()
        alice.post("/v1/tasks", json={"prompt": "deleted mid-delivery", "provider": "novita"})
        wait(lambda: receiver.hits.get("/slow", 0) >= 1, what="the first attempt")
        alice.delete(f"/v1/subscriptions/{sub['id']}")
        time.sleep(4)
    left = [k.decode() for k in redis.scan_iter(match=f"{PREFIX}:*{sub['id']}*") if redis.ttl(k) == -1]
    return f"keys of the deleted subscription with no TTL: {left or 'none'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    receiver = Receiver()
    results: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp, stack(args.root.resolve(), Path(tmp)) as s:
        probes: dict[str, Callable[[], str]] = {
            "64 MB request header": lambda: huge_header(s),
            "50 connections sending half a header": lambda: slow_headers(s),
            "provider result URL javascript:": lambda: provider_url(s),
            "security headers": lambda: security_headers(s),
            "metadata nested 300 deep": lambda: deep_json(s),
            "another key's subscriptions and secret": lambda: tenancy(s, receiver),
            "API key as ?%6Bey= in the dashboard URL": lambda: keys_in_logs(s),
            "repeated replays": lambda: replays(s, receiver),
            "dashboard cookie": lambda: dashboard_cookie(s),
            "20 concurrent manual retries": lambda: manual_retries(s, receiver),
            "subscription deleted during its first attempt": lambda: orphan_keys(s, receiver),
        }
        for name, probe in probes.items():
            try:
                results[name] = probe()
            except Exception as exc:  # noqa: BLE001 (a probe that breaks is a result too)
                results[name] = f"probe failed: {type(exc).__name__}: {exc}"
            print(f"{name}: {results[name]}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
