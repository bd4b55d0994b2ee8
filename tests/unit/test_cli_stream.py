"""`submit --wait` following a task's event stream, against an HTTP transport that plays the
server (no processes): the same output as polling, and polling when the stream is unavailable."""

from __future__ import annotations

import io
from collections.abc import Callable

import httpx
import orjson

from service.cli_client import (
    EXIT_OK,
    EXIT_TASK_FAILED,
    ApiClient,
    Output,
    wait_for_task,
)

TASK = {"id": "task_1", "status": "queued", "provider": "apikley"}


def _task(status: str, **extra: object) -> dict[str, object]:
    return {**TASK, "status": status, **extra}


def _sse(*tasks: dict[str, object]) -> bytes:
    wire = b"retry: 2000\n\n"
    for n, task in enumerate(tasks):
        event = {"id": f"evt_{n}", "type": f"task.{task['status']}", "sequence": n + 1, "data": task}
        wire += b"id: evt_%d\nevent: task.%s\ndata: %s\n\n" % (n, str(task["status"]).encode(), orjson.dumps(event))
        wire += b": ping\n\n"
    return wire


def _run(handler: Callable[[httpx.Request], httpx.Response]) -> tuple[int, str, str, list[str]]:
    asked: list[str] = []

    def record(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return handler(request)

    client = ApiClient("http://relay.test", "key", transport=httpx.MockTransport(record))
    out, err = io.StringIO(), io.StringIO()
    code = wait_for_task(client, dict(TASK), Output(out, err), timeout_s=60, interval_s=0)
    return code, out.getvalue(), err.getvalue(), asked


def test_wait_follows_the_stream_and_prints_what_polling_printed() -> None:
    done = _task("succeeded", result={"video_url": "https://cdn.example/v.mp4"})
    stream = _sse(_task("submitted"), _task("running"), done)

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/tasks/task_1/stream"
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream)

    code, out, err, asked = _run(handler)
    assert code == EXIT_OK and out == "https://cdn.example/v.mp4\n"
    assert [line.split()[1] for line in err.splitlines()] == ["queued", "submitted", "running", "succeeded"]
    assert asked == ["/v1/tasks/task_1/stream"]


def test_wait_polls_when_the_server_has_no_stream() -> None:
    polls = iter([_task("running"), _task("failed", error={"code": "generation_failed", "message": "no"})])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/stream"):
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "Not Found"}})
        return httpx.Response(200, json=next(polls))

    code, out, err, asked = _run(handler)
    assert code == EXIT_TASK_FAILED and out == ""
    assert err.splitlines()[-1] == "task_1 failed: generation_failed: no"
    assert asked == ["/v1/tasks/task_1/stream", "/v1/tasks/task_1", "/v1/tasks/task_1"]


def test_wait_polls_on_when_the_stream_ends_before_the_task() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/stream"):
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_sse(_task("submitted")))
        return httpx.Response(200, json=_task("succeeded", result={"video_url": "https://cdn.example/v.mp4"}))

    code, out, err, asked = _run(handler)
    assert code == EXIT_OK and out == "https://cdn.example/v.mp4\n"
    assert [line.split()[1] for line in err.splitlines()] == ["queued", "submitted", "succeeded"]
    assert asked == ["/v1/tasks/task_1/stream", "/v1/tasks/task_1"]
