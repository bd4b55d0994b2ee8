"""API errors as named exceptions, rendered in one place as `{"error": {...}}`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, fields: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields
        # Sent with the error, e.g. `Retry-After` on a 429.
        self.headers = headers or {}


def validation_error(exc: ValidationError) -> ApiError:
    fields: dict[str, str] = {}
    for err in exc.errors():
        name = ".".join(str(part) for part in err["loc"]) or "body"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "is not a known field"
        fields.setdefault(name, message)
    names = ", ".join(fields)
    return ApiError(422, "validation_error", f"invalid request: {names}", fields)


def render(status: int, code: str, message: str, fields: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, object] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    return JSONResponse({"error": body}, status_code=status)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    response = render(exc.status, exc.code, exc.message, exc.fields)
    response.headers.update(exc.headers)
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return render(exc.status_code, code, str(exc.detail))


async def _redis_down(request: Request, exc: Exception) -> Response:
    log.warning("redis unavailable: %s", type(exc).__name__)
    response = render(503, "unavailable", "storage is temporarily unavailable; retry shortly")
    response.headers["Retry-After"] = "1"
    return response


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client hung up mid-body (or the server cut a stalled one off): nobody reads an answer.
    log.info("client disconnected before its request body was read: %s %s", request.method, request.url.path)
    return Response(status_code=400)


EXCEPTION_HANDLERS: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
    ClientDisconnect: _client_gone,
    ApiError: _api_error,
    HTTPException: _http_error,
    RedisConnectionError: _redis_down,
    RedisTimeoutError: _redis_down,
}


async def error_response(request: Request, exc: Exception) -> Response | None:
    """The app's answer to `exc` (EXCEPTION_HANDLERS, as Starlette looks them up: by the
    exception's class, then its bases), for code that runs ahead of the app's exception
    middleware; None for an exception no handler takes (a 500)."""
    for kind in type(exc).__mro__:
        handler = EXCEPTION_HANDLERS.get(kind)
        if handler is not None:
            return await handler(request, exc)
    return None
