"""Real parts for every stack test: a redis-server on a free port, the provider simulator served by
uvicorn, and the service itself as real `kling-relay web` / `kling-relay worker` processes."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import httpx
import pytest
import uvicorn
from _pytest.nodeid import NodeId
from redis import Redis
from starlette.applications import Starlette

from service.redis_server import RedisServer, free_port
from service.simulator.app import create_simulator_app

if TYPE_CHECKING:
    from tests.stack.receivers import Receiver

API_KEY = "test-key-1"
CALLBACK_SECRET = "test-callback-secret"
ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], Any], timeout_s: float = 20.0, interval_s: float = 0.05, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


class ServedApp:
    """A Starlette app served by a real uvicorn server in a background thread."""

    def __init__(self, app: Starlette, port: int | None = None) -> None:
        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.thread.start()
        wait_for(lambda: self.server.started, timeout_s=10, what="uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give each schemathesis test its own id. Schemathesis names a test per API operation
    (`test_x[POST /v1/tasks]`), but pytest 9.2 builds an item's id from its original name and
    parametrization only, so all of them share `test_x`; xdist tells tests apart by id and would
    run one per shared id."""
    ids = Counter(item.nodeid for item in items)
    for item in items:
        if ids[item.nodeid] > 1 and item.parent is not None and item.name != item.nodeid.rpartition("::")[2]:
            item._id = NodeId.parse(f"{item.parent.nodeid}::{item.name}")  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False) as server:
        yield server


@pytest.fixture(scope="session")
def simulator() -> Iterator[Simulator]:
    with ServedApp(create_simulator_app(api_key="sandbox")) as served:
        yield Simulator(served.url)


class Simulator:
    """Test-side handle on the simulator's control API."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)

    def reset(self, **config: Any) -> None:
        self.http.post("/_sim/reset").raise_for_status()
        if config:
            self.configure(**config)

    def configure(self, **config: Any) -> dict[str, Any]:
        response = self.http.patch("/_sim/config", json=config)
        response.raise_for_status()
        return response.json()

    def tasks(self) -> list[dict[str, Any]]:
        body = self.http.get("/_sim/tasks").json()
        return body["tasks"] if isinstance(body, dict) else body

    def callbacks(self) -> list[dict[str, Any]]:
        body = self.http.get("/_sim/callbacks").json()
        return body["callbacks"] if isinstance(body, dict) else body


# One Redis database per module stack. Each xdist worker is a session of its own, with its own
# redis-server, simulator and this counter.
_databases = itertools.count(1)

# Timings scaled down so the whole pipeline runs in seconds.
FAST_ENV = {
    "SUBMIT_RETRY_DELAYS_S": "0.2,0.3,0.4",
    "SUBMIT_LEASE_S": "3",
    "JOB_GRACE_S": "6",
    "SUBMIT_UNCONFIRMED_S": "60",
    "SWEEP_INTERVAL_S": "1",
    "WORKER_TTL_S": "17",
    "POLL_INITIAL_S": "0.3",
    "POLL_FACTOR": "1.5",
    "POLL_MAX_S": "1",
    "APIKLEY_CALLBACK_GRACE_S": "30",
    "TASK_DEADLINE_S": "120",
    "PROVIDER_TIMEOUT_S": "4",
}


@dataclass
class Stack:
    """The service under test: real web and worker processes against one Redis database."""

    redis_url: str
    simulator: Simulator
    env_overrides: dict[str, str]
    log_dir: Path
    port: int = field(default_factory=free_port)
    web: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("APIKLEY_", "NOVITA_", "KLING_RELAY_"))}
        env.update(
            REDIS_URL=self.redis_url,
            KLING_RELAY_API_KEYS=API_KEY,
            CALLBACK_SECRET=CALLBACK_SECRET,
            PUBLIC_BASE_URL=self.url,
            HOST="127.0.0.1",
            PORT=str(self.port),
            APIKLEY_API_KEY="sandbox",
            APIKLEY_BASE_URL=self.simulator.url,
            NOVITA_API_KEY="sandbox",
            NOVITA_BASE_URL=self.simulator.url,
            ALLOW_PRIVATE_WEBHOOKS="true",
            # No copies of videos unless a module asks (tests/stack/test_storage.py): a
            # `task.stored` event after every success would join every event list asserted.
            STORAGE_URL="none",
            PYTHONUNBUFFERED="1",
        )
        env.update(FAST_ENV)
        env.update(self.env_overrides)
        return env

    def _spawn(self, name: str) -> subprocess.Popen[bytes]:
        # The child keeps its own copy of the file; ours is closed at once.
        with open(self.log_dir / f"{name}-{time.monotonic_ns()}.log", "wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "service.cli", name], env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )

    def start_web(self) -> None:
        for _ in range(3):
            web = self.web = self._spawn("web")
            wait_for(self._web_settled, timeout_s=20, interval_s=0.1, what="web to start")
            if web.poll() is None:
                return
            # It exited: most likely its port was taken between our choosing it and its binding it
            # (client connections draw from the same range). Before any worker has been told
            # this address, choose another.
            if not self.workers:
                self.port = free_port()
        raise AssertionError(f"web exited with {web.returncode} three times: see its log in {self.log_dir}")

    def _web_settled(self) -> bool:
        """Up, or exited."""
        return (self.web is not None and self.web.poll() is not None) or self._web_up()

    def _web_up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def start_worker(self) -> subprocess.Popen[bytes]:
        worker = self._spawn("worker")
        self.workers.append(worker)
        return worker

    def kill_workers(self) -> None:
        """SIGKILL: the worker gets no chance to tidy up, as in a real crash."""
        for worker in self.workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        self.workers.clear()

    def stop(self) -> None:
        procs = [*self.workers, *([self.web] if self.web else [])]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def client(self, api_key: str | None = API_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)

    def redis(self) -> Redis:
        return Redis.from_url(self.redis_url)


def start_stack(redis_server: RedisServer, simulator: Simulator, log_dir: Path, env: dict[str, str] | None = None) -> Stack:
    db = next(_databases)
    assert db < 64, "more stacks than Redis databases"
    url = f"redis://127.0.0.1:{redis_server.port}/{db}"
    Redis.from_url(url).flushdb()
    stack = Stack(redis_url=url, simulator=simulator, env_overrides=env or {}, log_dir=log_dir)
    stack.start_web()
    stack.start_worker()
    return stack


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, redis_server: RedisServer, simulator: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One web and one worker per test module; a module may set STACK_ENV to change settings."""
    env = getattr(request.module, "STACK_ENV", {})
    stack = start_stack(redis_server, simulator, tmp_path_factory.mktemp("logs"), env)
    yield stack
    stack.stop()


# The settings of the web that reading modules share: the HTTP limits test_http_limits checks.
READING_WEB_ENV = {"HTTP_READ_TIMEOUT_S": "2.0", "HTTP_KEEPALIVE_S": "1"}


@pytest.fixture(scope="session")
def reading_web(redis_server: RedisServer, simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One web process, no worker, shared by the modules that only read (the API docs, the HTTP
    limits), one module at a time on each xdist worker: nothing they send changes state, so none
    can disturb the next."""
    db = next(_databases)
    url = f"redis://127.0.0.1:{redis_server.port}/{db}"
    Redis.from_url(url).flushdb()
    stack = Stack(redis_url=url, simulator=simulator, env_overrides=READING_WEB_ENV, log_dir=tmp_path_factory.mktemp("reading"))
    stack.start_web()
    yield stack
    stack.stop()


@pytest.fixture(scope="module", autouse=True)
def simulator_at_defaults(simulator: Simulator) -> None:
    """Each module starts with the shared simulator at its defaults, whatever the module before
    it on this xdist worker configured (a slow queue or dropped callbacks would stall a module
    that never asked for them)."""
    simulator.reset()


@pytest.fixture
def sim(simulator: Simulator) -> Simulator:
    """The simulator, reset to its defaults for this test."""
    simulator.reset()
    return simulator


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client() as client:
        yield client


def wait_for_status(api: httpx.Client, task_id: str, statuses: set[str] | str, timeout_s: float = 20.0) -> dict[str, Any]:
    wanted = {statuses} if isinstance(statuses, str) else statuses

    def check() -> dict[str, Any] | None:
        task = api.get(f"/v1/tasks/{task_id}").json()
        return task if task.get("status") in wanted else None

    return wait_for(check, timeout_s=timeout_s, what=f"task {task_id} to reach {sorted(wanted)}")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """A webhook subscriber server for the module (tests/stack/receivers.py)."""
    from tests.stack.receivers import serve_receiver  # it imports this module

    with serve_receiver() as served:
        yield served


@pytest.fixture
def subs(api: httpx.Client) -> Iterator[list[str]]:
    """Subscription ids made by a test, deleted afterwards so later tests' events skip them."""
    made: list[str] = []
    yield made
    for sub_id in made:
        api.delete(f"/v1/subscriptions/{sub_id}")
