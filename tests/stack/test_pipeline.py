"""The core pipeline end to end: API → RQ submit → provider → verified callback → Redis state."""

from __future__ import annotations

import httpx

from tests.stack.conftest import Simulator, wait_for_status


def test_apikley_task_succeeds_through_a_real_callback(api: httpx.Client, sim: Simulator) -> None:
    created = api.post("/v1/tasks", json={"prompt": "a red fox running through snow", "provider": "apikley"})
    assert created.status_code == 202, created.text
    task = created.json()
    assert task["status"] == "queued"

    done = wait_for_status(api, task["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    assert done["result"]["video_url"].endswith(".mp4")
    assert done["provider_task_id"]
    events = api.get(f"/v1/tasks/{task['id']}/events").json()["data"]
    assert [e["type"] for e in events] == ["task.submitted", "task.succeeded"]
    assert [e["sequence"] for e in events] == [1, 2]
    assert events[-1]["data"]["status"] == "succeeded"
