"""Redis (with AOF, as production runs it) stopped mid-flow, or killed outright, and started
again: while it is down the web answers 503 with Retry-After on every route that needs it (never
a 500, never a crash); the same worker processes carry on once it is back; nothing accepted
before the outage is lost."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from service.domain.tokens import callback_token
from service.redis_server import RedisServer
from tests.stack.conftest import CALLBACK_SECRET, Simulator, wait_for
from tests.stack.faults.ledger import (
    Record,
    add_subscribers,
    create_tasks,
    judge,
    reconcile,
    settle,
)
from tests.stack.receivers import serve_receiver
from tests.stack.stacks import OwnedStack, owned_stack

# Beyond pytest's default 120 s: the books are read even after a bounded wait runs out.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

OUTAGE_ENV = {
    "APIKLEY_CALLBACK_GRACE_S": "2",
    "WEBHOOK_TIMEOUT_S": "2",
    "WEBHOOK_LEASE_S": "3",
    "WEBHOOK_RETRY_SCHEDULE_S": "0,0.5,1,1,2,2,2",
}
PROVIDERS = ["apikley", "novita"] * 6

Probe = Callable[[httpx.Client, str, str], httpx.Response]

# Every kind of request the web serves from Redis: (client, a task id, a subscription id) → answer.
PROBES: dict[str, Probe] = {
    "POST /v1/tasks": lambda c, t, s: c.post("/v1/tasks", json={"prompt": "during the outage", "provider": "apikley"}),
    "GET /v1/tasks": lambda c, t, s: c.get("/v1/tasks"),
    "GET /v1/tasks/{id}": lambda c, t, s: c.get(f"/v1/tasks/{t}"),
    "GET /v1/tasks/{id}/events": lambda c, t, s: c.get(f"/v1/tasks/{t}/events"),
    "POST /v1/subscriptions": lambda c, t, s: c.post("/v1/subscriptions", json={"url": "http://127.0.0.1:9/hook"}),
    "GET /v1/subscriptions": lambda c, t, s: c.get("/v1/subscriptions"),
    "GET /v1/subscriptions/{id}/deliveries": lambda c, t, s: c.get(f"/v1/subscriptions/{s}/deliveries"),
    "POST callback": lambda c, t, s: c.post(
        f"/callbacks/apikley/{t}/{callback_token(CALLBACK_SECRET, t)}",
        json={"code": 200, "msg": "success", "data": {"taskId": "task_kling_1", "state": "generating"}},
    ),
}


def sigterm(server: RedisServer) -> None:
    server.stop()  # a clean shutdown: Redis flushes and fsyncs its AOF


def sigkill(server: RedisServer) -> None:
    # No shutdown at all. What Redis acknowledged was already written to the AOF (fsynced
    # within a second), so only a machine crash inside that second could lose it.
    assert server.process is not None
    server.process.kill()
    server.process.wait()
    server.process = None


STOPS = {
    "Redis stopped and restarted (AOF) mid-flow": (
        sigterm,
        (
            "redis-server (appendonly yes, everysec) stopped (SIGTERM) with tasks mid-flight, held down until a provider"
            " callback was refused; started again on its AOF"
        ),
    ),
    "Redis killed -9 and restarted (AOF) mid-flow": (
        sigkill,
        (
            "redis-server (appendonly yes, everysec) SIGKILLed with tasks mid-flight, held down until a provider callback"
            " was refused; started again on its AOF"
        ),
    ),
}


@pytest.fixture
def aof_stack(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnedStack]:
    with owned_stack(tmp_path_factory.mktemp("redis-outage"), simulator, OUTAGE_ENV, workers=2, appendonly=True) as owned:
        yield owned


@pytest.mark.parametrize(("stop", "injection"), STOPS.values(), ids=STOPS.keys())
def test_redis_restarted_mid_flow_answers_503_meanwhile_and_loses_nothing(
    aof_stack: OwnedStack,
    sim: Simulator,
    record: Record,
    stop: Callable[[RedisServer], None],
    injection: str,
    request: pytest.FixtureRequest,
) -> None:
    stack, redis_server = aof_stack.stack, aof_stack.redis_server
    started = time.monotonic()
    sim.configure(queue_s=1, generate_s=2)
    with stack.client() as api, serve_receiver() as receiver:
        subs = add_subscribers(api, receiver, [f"outage-{n}" for n in range(3)])
        before = create_tasks(stack.url, [{"prompt": f"before the outage {n}", "provider": p} for n, p in enumerate(PROVIDERS)])
        wait_for(lambda: api.get(f"/v1/tasks/{before[0]}").json()["status"] != "queued", what="the first task to be submitted")
        processes = [stack.web, *stack.workers]

        stop(redis_server)
        # The outage lasts until the provider has called back into it at least once.
        wait_for(lambda: any(c["status_code"] == 503 for c in sim.callbacks()), timeout_s=20, what="a callback refused with 503")
        for name, probe in PROBES.items():
            response = probe(api, before[0], subs[0].id)
            assert response.status_code == 503, (name, response.status_code, response.text)
            assert response.json()["error"]["code"] == "unavailable", name
            assert int(response.headers["Retry-After"]) >= 1, name
        assert api.get("/readyz").status_code == 503
        assert api.get("/healthz").status_code == 200
        assert all(proc is not None and proc.poll() is None for proc in processes), "a process died with Redis"

        redis_server.start()
        wait_for(lambda: api.get("/readyz").status_code == 200, what="the web to see Redis again")
        after = create_tasks(stack.url, [{"prompt": f"after the outage {n}", "provider": p} for n, p in enumerate(PROVIDERS[:4])])
        task_ids = before + after
        tasks, events = settle(stack.url, api, task_ids, subs, timeout_s=90)
        figures = reconcile(
            request.node.callspec.id,
            injection,
            task_ids,
            tasks,
            events,
            subs,
            started,
        )
        # The same processes did all of it: they rode out the outage rather than being replaced.
        assert all(proc is not None and proc.poll() is None for proc in processes)
        assert stack.workers == processes[1:]
    judge(figures, record, stack)


def test_redis_down_while_first_attempts_land_sends_them_again_once_it_is_back(
    aof_stack: OwnedStack, sim: Simulator, record: Record
) -> None:
    """The fan-out's answers land while Redis is away, so recording them fails: the batch goes
    back to its dispatcher (its outbox entries never left the in-flight list) and, once Redis is
    back, what was never recorded is sent again."""
    stack, redis_server = aof_stack.stack, aof_stack.redis_server
    started = time.monotonic()
    with stack.client() as api, serve_receiver() as receiver:
        subs = add_subscribers(api, receiver, [f"landing-{n}" for n in range(3)], delay_s=1.5)
        task_ids = create_tasks(stack.url, [{"prompt": "answers land during the outage", "provider": "apikley"}])
        wait_for(lambda: any(s.receiver.received(s.path) for s in subs), what="a fan-out in flight")
        sigterm(redis_server)
        time.sleep(3)  # the held requests are answered, and their records fail to be written
        redis_server.start()
        tasks, events = settle(stack.url, api, task_ids, subs, timeout_s=60)
        figures = reconcile(
            "Redis down while first attempts land",
            "redis-server stopped while a fan-out's requests were held 1.5 s by the subscribers; started again 3 s later",
            task_ids, tasks, events, subs, started,
        )
    judge(figures, record, stack)
    assert figures.resent >= 1, figures  # answered but unrecorded, so sent again
