"""`GET /v1/tasks/{id}/video`: our stored copy of a task's video.

A local copy is served here, with single-range requests (206, 416), its sha256 as ETag (304 on
If-None-Match) and its length; an S3 copy is a 307 to a presigned URL that lasts
STORAGE_PRESIGN_S. Before a copy is kept, or when none will be: 404 `video_not_stored`. After the
retention sweep deleted it (or once `stored_until` has passed): 410 `video_expired`.

`serve_video` is the one way a copy is served: this route and the dashboard's
(`/dashboard/tasks/{id}/video`, signed in by its session cookie) differ only in who the caller is.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from service.auth import Caller
from service.domain.clock import iso_to_unix
from service.domain.storage import Unsatisfiable, byte_range, object_name
from service.domain.tasks import TaskResult
from service.errors import ApiError
from service.routes.context import caller, runtime
from service.routes.tasks import owned_task

CHUNK = 256 * 1024


async def task_video(request: Request) -> Response:
    return await serve_video(request, caller(request))


async def serve_video(request: Request, who: Caller) -> Response:
    """The stored copy of the task `task_id` (a path parameter) to `who`: the API's route and the
    dashboard's (which signs in with its session cookie, scoped to /dashboard)."""
    rt = runtime(request)
    task_id = request.path_params["task_id"]
    task = await run_in_threadpool(owned_task, rt, who, task_id)
    if task is None:
        raise ApiError(404, "not_found", "no such task")
    result = task.result
    if rt.storage is None or result is None or result.sha256 is None:
        raise ApiError(404, "video_not_stored", _not_stored_message(result, stored=rt.storage is not None))
    if result.stored_until is not None and iso_to_unix(result.stored_until) <= time.time():
        raise ApiError(410, "video_expired", "the stored copy has passed its retention period")
    where = await run_in_threadpool(rt.storage.locate, object_name(task.id), expires_s=rt.settings.storage_presign_s)
    if where is None:
        raise ApiError(410, "video_expired", "the stored copy has been deleted")
    if isinstance(where, str):
        return RedirectResponse(where, status_code=307, headers={"Cache-Control": "no-store"})
    return await _serve(request, where, result, result.sha256)


def _not_stored_message(result: TaskResult | None, *, stored: bool) -> str:
    if not stored:
        return "this server keeps no copies of videos (STORAGE_URL=none)"
    if result is not None and result.storage_error is not None:
        return f"the video could not be stored: {result.storage_error.code}: {result.storage_error.message}"
    return "the video is not stored yet: it is kept once the task has succeeded and the download is done"


async def _serve(request: Request, path: Path, result: TaskResult, sha256: str) -> Response:
    etag = f'"{sha256}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, max-age=3600",
        "Content-Disposition": f'inline; filename="{path.name}"',
    }
    media_type = result.content_type or "video/mp4"
    if etag in {tag.strip() for tag in request.headers.get("if-none-match", "").split(",")}:
        return Response(status_code=304, headers=headers)
    try:
        handle = await anyio.open_file(path, "rb")
    except FileNotFoundError as exc:
        raise ApiError(410, "video_expired", "the stored copy has been deleted") from exc
    # The size of the file opened: a copy replaced meanwhile is served whole, not mixed.
    size = os.fstat(handle.wrapped.fileno()).st_size
    wanted_range = request.headers.get("range") if request.headers.get("if-range", etag) == etag else None
    try:
        span = byte_range(wanted_range, size)
    except Unsatisfiable:
        await handle.aclose()
        raise ApiError(
            416, "range_not_satisfiable", f"the video has {size} bytes", headers={"Content-Range": f"bytes */{size}"}
        ) from None
    first, last = span if span is not None else (0, size - 1)
    length = last - first + 1 if size else 0
    headers["Content-Length"] = str(length)
    status = 200
    if span is not None:
        status = 206
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    body = _read(handle, first, length) if request.method != "HEAD" else _nothing(handle)
    return StreamingResponse(body, status_code=status, headers=headers, media_type=media_type)


async def _read(handle: anyio.AsyncFile[bytes], first: int, length: int) -> AsyncIterator[bytes]:
    try:
        await handle.seek(first)
        left = length
        while left > 0:
            chunk = await handle.read(min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        await handle.aclose()


async def _nothing(handle: anyio.AsyncFile[bytes]) -> AsyncIterator[bytes]:
    await handle.aclose()
    return
    yield b""  # an async generator that yields nothing


routes = [Route("/v1/tasks/{task_id}/video", task_video, methods=["GET", "HEAD"])]
