"""Many machines in miniature: two web and two worker processes against one Redis share the work,
and every transition and every delivery still happens exactly once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis
from rq import Worker

from service.redis_server import RedisServer
from tests.stack.conftest import Simulator, Stack, wait_for
from tests.stack.receivers import Receiver, serve_receiver, subscribe

TASKS = 20


@pytest.fixture
def two_by_two(simulator: Simulator, tmp_path: Path) -> Iterator[tuple[Stack, Stack]]:
    """Web A + worker 1 and web B + worker 2 on one Redis; each worker hands providers its own
    web's callback URL, so callbacks arrive at both webs, as behind a load balancer."""
    simulator.reset()
    with RedisServer(tmp_path / "redis", appendonly=False) as redis_server:
        stacks = [Stack(redis_url=redis_server.url, simulator=simulator, env_overrides={}, log_dir=tmp_path) for _ in range(2)]
        try:
            for stack in stacks:
                stack.start_web()
                stack.start_worker()
            yield stacks[0], stacks[1]
        finally:
            for stack in stacks:
                stack.stop()


def test_two_webs_and_two_workers_share_the_work_without_duplicates(two_by_two: tuple[Stack, Stack]) -> None:
    web_a, web_b = two_by_two
    redis = Redis.from_url(web_a.redis_url)
    wait_for(lambda: len(Worker.all(connection=redis)) == 2, timeout_s=15, what="both workers to register")
    with serve_receiver() as receiver, web_a.client() as api_a, web_b.client() as api_b:
        assert isinstance(receiver, Receiver)
        subscribe(api_a, receiver.answer("all"))
        ids = []
        for n in range(TASKS):
            api = (api_a, api_b)[n % 2]
            created = api.post("/v1/tasks", json={"prompt": f"scene {n}", "provider": ("apikley", "novita")[n // 2 % 2]})
            assert created.status_code == 202, created.text
            ids.append(created.json()["id"])

        def all_succeeded() -> list[dict[str, object]] | None:
            tasks = [(api_a, api_b)[i % 2].get(f"/v1/tasks/{task_id}").json() for i, task_id in enumerate(ids)]
            return tasks if all(t["status"] == "succeeded" for t in tasks) else None

        wait_for(all_succeeded, timeout_s=40, interval_s=0.2, what="every task to succeed")
        events = {task_id: api_b.get(f"/v1/tasks/{task_id}/events").json()["data"] for task_id in ids}
        expected = sum(len(found) for found in events.values())
        receiver.wait_for_count("all", expected, timeout_s=20)
        time.sleep(0.5)  # time for any duplicate to arrive too
        received = receiver.received("all")

    for task_id, found in events.items():
        moves = [e["type"] for e in found if e["type"] != "task.progress"]
        assert moves[0] == "task.submitted" and moves[-1] == "task.succeeded", (task_id, moves)
        assert len(moves) == len(set(moves)), f"duplicate transition for {task_id}: {moves}"
        assert [e["sequence"] for e in found] == list(range(1, len(found) + 1)), task_id

    per_event = Counter(r.webhook_id for r in received)
    assert set(per_event) == {e["id"] for found in events.values() for e in found}
    assert max(per_event.values()) == 1, [i for i, n in per_event.items() if n > 1]

    jobs_done = {w.name: w.successful_job_count for w in Worker.all(connection=redis)}
    assert len(jobs_done) == 2 and all(count > 0 for count in jobs_done.values()), jobs_done
    # Each web counts the tasks it created itself (its own /metrics).
    for web in (web_a, web_b):
        counted = [
            line
            for line in httpx.get(f"{web.url}/metrics").text.splitlines()
            if line.startswith("kling_relay_tasks_created_total")
        ]
        assert sum(float(line.split()[-1]) for line in counted) == TASKS // 2, counted
