"""Finished tasks expire after the retention period, and so do their index entries."""

from __future__ import annotations

import httpx

from tests.stack.conftest import Simulator, Stack, wait_for, wait_for_status

STACK_ENV = {"TASK_RETENTION_S": "2"}


def test_finished_task_and_its_events_expire_and_leave_the_listing(stack: Stack, api: httpx.Client, sim: Simulator) -> None:
    task = api.post("/v1/tasks", json={"prompt": "a candle burning down", "provider": "apikley"}).json()
    assert wait_for_status(api, task["id"], {"succeeded", "failed"})["status"] == "succeeded"
    redis = stack.redis()
    wait_for(lambda: api.get(f"/v1/tasks/{task['id']}").status_code == 404, timeout_s=15, what="the task to expire")
    assert not redis.exists(f"kr:events:{task['id']}")
    wait_for(lambda: task["id"].encode() not in redis.zrange("kr:idx:all", 0, -1), timeout_s=15, what="the index to be trimmed")
    assert task["id"] not in [t["id"] for t in api.get("/v1/tasks").json()["data"]]
