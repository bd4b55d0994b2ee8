"""Reading request bodies safely: a size cap before anything is parsed, JSON or a clear 4xx."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from service.errors import ApiError


async def read_limited(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, "payload_too_large", f"body exceeds {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, "payload_too_large", f"body exceeds {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, max_bytes: int, *, empty: Any = None) -> Any:
    """The body's JSON; `empty` (when not None) stands for a missing body, for optional bodies."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    raw = await read_limited(request, max_bytes)
    if empty is not None and not raw.strip():
        return empty
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc.msg}") from exc


def json_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ApiError(422, "validation_error", "body must be a JSON object", {"body": "must be an object"})
    return value
