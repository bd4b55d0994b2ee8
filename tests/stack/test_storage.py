"""Stored videos from outside: a succeeded task's video is downloaded by the worker, kept in a
local folder, shown on the task, announced once (`task.stored`) and served with Range/ETag;
failures are visible without undoing the success; retention deletes copies; a worker killed
mid-download still stores the video once."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.domain.storage import DownloadProblem
from service.keys import STORAGE_DUE, STORED
from service.redis_server import RedisServer
from service.simulator.state import video_chunks
from service.storage.download import DownloadRules, download
from tests.stack.conftest import (
    API_KEY,
    ServedApp,
    Simulator,
    Stack,
    start_stack,
    wait_for,
)
from tests.stack.receivers import events_of, run_task, serve_receiver, subscribe

OTHER_KEY = "test-key-2"
MAX_BYTES = 200_000
ENV = {
    "KLING_RELAY_API_KEYS": f"{API_KEY},{OTHER_KEY}",
    "STORAGE_MAX_BYTES": str(MAX_BYTES),
    "STORAGE_RETRY_INITIAL_S": "0.2",
    "STORAGE_RETRY_MAX_S": "0.5",
    "STORAGE_TIMEOUT_S": "3",
}


def sha256_of(size: int) -> str:
    return hashlib.sha256(b"".join(video_chunks(size))).hexdigest()


def stored_or_failed(api: httpx.Client, task_id: str, timeout_s: float = 30) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        task: dict[str, Any] = api.get(f"/v1/tasks/{task_id}").json()
        result = task.get("result") or {}
        return task if result.get("sha256") or result.get("storage_error") else None

    return wait_for(check, timeout_s=timeout_s, what=f"task {task_id}'s video to be stored or given up")  # type: ignore[no-any-return]


def storage_events(api: httpx.Client, task_id: str) -> list[str]:
    return [e["type"] for e in events_of(api, task_id) if e["type"] in ("task.stored", "task.storage_failed")]


def sim_video_requests(sim: Simulator, provider_task_id: str) -> int:
    return next((t["video_requests"] for t in sim.tasks() if t["task_id"] == provider_task_id), 0)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("videos")


def storage_stack(redis_server: RedisServer, simulator: Simulator, base: Path, videos: Path, **env: str) -> Stack:
    base.mkdir(parents=True, exist_ok=True)
    return start_stack(redis_server, simulator, base, {**ENV, "STORAGE_URL": videos.as_uri(), **env})


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, simulator: Simulator, tmp_path_factory: pytest.TempPathFactory, videos: Path
) -> Iterator[Stack]:
    stack = storage_stack(redis_server, simulator, tmp_path_factory.mktemp("logs"), videos)
    yield stack
    stack.stop()


def test_a_finished_tasks_video_is_stored_announced_once_and_served(
    stack: Stack, api: httpx.Client, sim: Simulator, videos: Path
) -> None:
    size = 100_000
    sim.configure(video_bytes=size)
    with serve_receiver() as receiver:
        subscribe(api, receiver.answer("stored"), ["task.stored"])
        task = run_task(api)
        done = stored_or_failed(api, task["id"])
        result = done["result"]
        assert done["status"] == "succeeded"
        assert result["sha256"] == sha256_of(size) and result["bytes"] == size
        assert result["content_type"] == "video/mp4" and result["storage_error"] is None
        assert result["stored_url"] == f"{stack.url}/v1/tasks/{task['id']}/video"
        assert result["video_url"] == task["result"]["video_url"]  # the provider's URL stays shown
        assert (videos / f"{task['id']}.mp4").read_bytes() == b"".join(video_chunks(size))
        [delivered] = receiver.wait_for_count("stored", 1)
        body = delivered.json()
        assert body["type"] == "task.stored" and body["data"]["id"] == task["id"]
        assert body["data"]["result"]["sha256"] == result["sha256"]
    assert storage_events(api, task["id"]) == ["task.stored"]
    assert stack.redis().zscore(STORED, task["id"]) is not None
    assert stack.redis().zscore(STORAGE_DUE, task["id"]) is None

    whole = api.get(result["stored_url"])
    assert whole.status_code == 200
    assert whole.content == b"".join(video_chunks(size))
    assert whole.headers["etag"] == f'"{result["sha256"]}"'
    assert whole.headers["content-length"] == str(size)
    assert whole.headers["content-type"] == "video/mp4"
    assert whole.headers["accept-ranges"] == "bytes"

    part = api.get(result["stored_url"], headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206
    assert part.content == whole.content[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{size}"
    assert part.headers["content-length"] == "1000"
    tail = api.get(result["stored_url"], headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == whole.content[-10:]
    beyond = api.get(result["stored_url"], headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"
    cached = api.get(result["stored_url"], headers={"If-None-Match": whole.headers["etag"]})
    assert cached.status_code == 304 and cached.content == b""

    with stack.client(OTHER_KEY) as other:
        refused = other.get(result["stored_url"])
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
    assert stack.client(None).get(result["stored_url"]).status_code == 401


def test_downloads_are_retried_until_the_video_answers(stack: Stack, api: httpx.Client, sim: Simulator) -> None:
    sim.configure(video_responses=[503] * 1000)
    task = run_task(api)
    # Tries keep failing: the task has succeeded, its copy is not there yet.
    wait_for(lambda: sim_video_requests(sim, task["provider_task_id"]) >= 3, what="three failed downloads")
    waiting = api.get(f"/v1/tasks/{task['id']}/video")
    assert waiting.status_code == 404 and waiting.json()["error"]["code"] == "video_not_stored"
    assert api.get(f"/v1/tasks/{task['id']}").json()["result"]["sha256"] is None
    sim.configure(video_responses=[])
    done = stored_or_failed(api, task["id"])
    assert done["result"]["sha256"] == sha256_of(4096)
    assert storage_events(api, task["id"]) == ["task.stored"]
    assert api.get(f"/v1/tasks/{task['id']}/video").status_code == 200


@pytest.mark.parametrize(
    ("config", "code"),
    [
        ({"video_bytes": MAX_BYTES + 1}, "too_large"),
        ({"video_content_type": "text/html"}, "wrong_content_type"),
    ],
    ids=["oversized", "wrong type"],
)
def test_a_video_we_will_not_keep_fails_visibly_without_undoing_success(
    stack: Stack, api: httpx.Client, sim: Simulator, config: dict[str, Any], code: str
) -> None:
    sim.configure(**config)
    task = run_task(api)
    done = stored_or_failed(api, task["id"])
    assert done["status"] == "succeeded" and done["error"] is None
    assert done["result"]["storage_error"]["code"] == code
    assert done["result"]["storage_error"]["attempts"] == 1  # no retry mends it
    assert done["result"]["sha256"] is None and done["result"]["stored_url"] is None
    assert storage_events(api, task["id"]) == ["task.storage_failed"]
    refused = api.get(f"/v1/tasks/{task['id']}/video")
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "video_not_stored" and code in refused.json()["error"]["message"]
    assert stack.redis().zscore(STORAGE_DUE, task["id"]) is None


def test_retries_stop_when_the_providers_url_expires(stack: Stack, api: httpx.Client, sim: Simulator) -> None:
    # Novita states its URL's lifetime; the copy is given up on once the next try would be too late.
    sim.configure(video_responses=[404] * 1000, video_url_ttl=4)
    created = api.post("/v1/tasks", json={"prompt": "a kite over dunes", "provider": "novita"}).json()
    done = stored_or_failed(api, created["id"])
    error = done["result"]["storage_error"]
    assert done["status"] == "succeeded"
    assert error["code"] == "http_error" and "404" in error["message"] and error["attempts"] >= 2
    assert storage_events(api, created["id"]) == ["task.storage_failed"]


def test_a_private_address_is_refused_when_private_webhooks_are_not_allowed(
    redis_server: RedisServer, simulator: Simulator, sim: Simulator, tmp_path: Path
) -> None:
    # The simulator's video URLs name 127.0.0.1: this stack refuses them like a webhook URL.
    stack = storage_stack(redis_server, simulator, tmp_path / "logs", tmp_path / "videos", ALLOW_PRIVATE_WEBHOOKS="false")
    try:
        with stack.client() as api:
            task = run_task(api)
            done = stored_or_failed(api, task["id"])
            assert done["status"] == "succeeded"
            assert done["result"]["storage_error"]["code"] == "unsafe_url"
            assert "loopback" in done["result"]["storage_error"]["message"]
            assert sim_video_requests(sim, task["provider_task_id"]) == 0
    finally:
        stack.stop()


def test_a_name_resolving_to_a_private_address_is_refused_before_connecting(tmp_path: Path) -> None:
    """A name only our resolver knows, pointing at a loopback listener (the simulator): refused
    unless private addresses are allowed, and then the connection goes where the resolver said."""
    requested: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        requested.append(host)
        return ["127.0.0.1"]

    with ServedApp(_video_app()) as served:
        url = f"http://videos.relay-test.example:{served.port}/v.mp4"
        rules = DownloadRules(max_bytes=MAX_BYTES, timeout_s=5, allow_private=False)
        with pytest.raises(DownloadProblem) as refused:
            download(url, tmp_path / "refused.part", rules, resolver=resolver)
        assert refused.value.code == "unsafe_url" and not refused.value.retryable
        assert "loopback" in refused.value.message
        allowed = DownloadRules(max_bytes=MAX_BYTES, timeout_s=5, allow_private=True)
        got = download(url, tmp_path / "allowed.part", allowed, resolver=resolver)
        assert got.sha256 == sha256_of(4096) and got.content_type == "video/mp4"
        # Every redirect hop is checked as a webhook URL is: no scheme but http(s).
        with pytest.raises(DownloadProblem) as redirected:
            download(f"http://videos.relay-test.example:{served.port}/redirect", tmp_path / "r.part", allowed, resolver=resolver)
        assert redirected.value.code == "unsafe_url" and "scheme" in redirected.value.message
    assert requested and set(requested) == {"videos.relay-test.example"}


def _video_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import RedirectResponse, Response
    from starlette.routing import Route

    async def video(request: Any) -> Response:
        return Response(b"".join(video_chunks(4096)), media_type="video/mp4")

    async def redirect(request: Any) -> Response:
        return RedirectResponse("file:///etc/passwd", status_code=302)

    return Starlette(routes=[Route("/v.mp4", video), Route("/redirect", redirect)])


def test_retention_deletes_expired_copies(
    redis_server: RedisServer, simulator: Simulator, sim: Simulator, tmp_path: Path
) -> None:
    videos = tmp_path / "videos"
    stack = storage_stack(redis_server, simulator, tmp_path / "logs", videos, STORAGE_RETENTION_S="2")
    try:
        with stack.client() as api:
            task = run_task(api)
            done = stored_or_failed(api, task["id"])
            assert done["result"]["stored_until"] is not None

            def deleted() -> bool:
                return not (videos / f"{task['id']}.mp4").exists() and stack.redis().zscore(STORED, task["id"]) is None

            wait_for(deleted, what="the expired copy to be deleted")
            gone = api.get(f"/v1/tasks/{task['id']}/video")
            assert gone.status_code == 410 and gone.json()["error"]["code"] == "video_expired"
            # The task itself is untouched: still succeeded, still naming what was kept.
            after = api.get(f"/v1/tasks/{task['id']}").json()
            assert after["status"] == "succeeded" and after["result"]["sha256"] == done["result"]["sha256"]
            assert storage_events(api, task["id"]) == ["task.stored"]
    finally:
        stack.stop()


def test_a_worker_killed_mid_download_still_stores_the_video_once(
    redis_server: RedisServer, simulator: Simulator, sim: Simulator, tmp_path: Path
) -> None:
    size = 1_000_000
    videos = tmp_path / "videos"
    stack = storage_stack(redis_server, simulator, tmp_path / "logs", videos, STORAGE_MAX_BYTES=str(size))
    sim.configure(video_bytes=size, video_trickle_s=2)
    try:
        with stack.client() as api:
            task = run_task(api)
            wait_for(lambda: sim_video_requests(sim, task["provider_task_id"]) >= 1, what="the download to start")
            assert api.get(f"/v1/tasks/{task['id']}").json()["result"]["sha256"] is None
            stack.kill_workers()
            stack.start_worker()
            # Picked up again once its try is overdue (2 × STORAGE_TIMEOUT_S + 5 + JOB_GRACE_S).
            done = stored_or_failed(api, task["id"], timeout_s=90)
            assert done["result"]["sha256"] == sha256_of(size) and done["result"]["bytes"] == size
            assert storage_events(api, task["id"]) == ["task.stored"]
            assert sim_video_requests(sim, task["provider_task_id"]) >= 2
            assert (videos / f"{task['id']}.mp4").read_bytes() == b"".join(video_chunks(size))
            assert sorted(p.name for p in videos.glob("*.mp4")) == [f"{task['id']}.mp4"]
            assert api.get(f"/v1/tasks/{task['id']}/video").content == b"".join(video_chunks(size))
    finally:
        stack.stop()
