"""`kling-relay listen` as a real process against a real stack: it forwards the key's events,
signed, to a real local receiver (verified with the `standardwebhooks` package), filters them
like subscriptions do, follows the stream again after the web restarts (missing nothing), and
exits 2 without a key. Also: stopping the web ends its open streams at once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from tests.stack.conftest import API_KEY, ROOT, Stack, wait_for
from tests.stack.receivers import Receiver, events_of, run_task, serve_receiver
from tests.stack.sse import StreamReader

STACK_ENV = {"STREAM_HEARTBEAT_S": "0.5"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as served:
        yield served


class Listen:
    def __init__(self, stack: Stack, tmp: Path, *args: str, key: str | None = API_KEY) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KLING_RELAY_")}
        env.update(KLING_RELAY_URL=stack.url, PYTHONUNBUFFERED="1")
        if key:
            env["KLING_RELAY_API_KEY"] = key
        self.out, self.err = tmp / "listen.out", tmp / "listen.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "listen", *args], env=env, cwd=ROOT, stdout=out, stderr=err
            )

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    def secret(self) -> str:
        found = wait_for(lambda: re.search(r"signing secret: (whsec_\S+)", self.stderr), what="the secret")
        return str(found[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_listen_without_a_key_exits_2_and_says_why(stack: Stack, tmp_path: Path) -> None:
    listen = Listen(stack, tmp_path, "--forward-to", "http://127.0.0.1:9/hooks", key=None)
    assert listen.proc.wait(timeout=30) == 2
    assert "no API key" in listen.stderr and listen.stdout == ""


def test_listen_forwards_signed_filtered_events_and_follows_again_after_the_web_restarts(
    stack: Stack, api: httpx.Client, receiver: Receiver, tmp_path: Path
) -> None:
    url = receiver.answer("listen", then=200)
    listen = Listen(stack, tmp_path, "--forward-to", url, "--events", "task.succeeded,task.submitted")
    try:
        secret = listen.secret()
        wait_for(lambda: _streams_open(stack) >= 1, what="listen to follow the stream")
        first = run_task(api)["id"]
        got = receiver.wait_for_count("listen", 2)
        assert [Webhook(secret).verify(r.body, r.headers)["type"] for r in got] == ["task.submitted", "task.succeeded"]
        stored = {e["id"] for e in events_of(api, first)}
        assert {r.webhook_id for r in got} <= stored
        assert got[1].body == stack.redis().lrange(f"kr:events:{first}", -1, -1)[0]  # byte for byte
        # One status line per delivery: time, type, id, the receiver's answer, latency.
        wait_for(lambda: len(listen.stdout.splitlines()) >= 2, what="status lines")
        lines = listen.stdout.splitlines()
        assert re.search(r"task\.succeeded\s+evt_\S+\s+-> 200\s+\d+ ms$", lines[1])

        assert stack.web is not None
        stack.web.terminate()
        stack.web.wait(timeout=15)
        stack.start_web()
        wait_for(lambda: "reconnecting" in listen.stderr, what="listen to notice")
        wait_for(lambda: _streams_open(stack) >= 1, what="listen to follow the stream again")
        task_id = api.post("/v1/tasks", json={"prompt": "after the restart", "provider": "apikley"}).json()["id"]
        more = receiver.wait_for_count("listen", 4)[2:]
        assert [Webhook(secret).verify(r.body, r.headers)["data"]["id"] for r in more] == [task_id, task_id]
        assert len({r.webhook_id for r in receiver.received("listen")}) == 4  # none repeated
    finally:
        listen.stop()


def test_stopping_the_web_ends_its_streams_at_once(stack: Stack, tmp_path: Path) -> None:
    reader = StreamReader(f"{stack.url}/v1/events/stream", API_KEY)
    wait_for(lambda: reader.connected, what="the stream to open")
    web = stack.web
    assert web is not None
    web.terminate()
    assert web.wait(timeout=15) in (0, -15)  # uvicorn re-raises the SIGTERM once it has shut down
    reader.join(timeout_s=5)
    assert reader.ended  # the server ended it: the response completed
    logs = "".join(p.read_text(errors="replace") for p in stack.log_dir.glob("web-*.log"))
    assert "timeout graceful shutdown exceeded" not in logs
    stack.start_web()


def _streams_open(stack: Stack) -> float:
    text = httpx.get(f"{stack.url}/metrics").text
    match = re.search(r"^kling_relay_live_streams (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else 0.0
