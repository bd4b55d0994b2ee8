"""Where routes find the runtime and the caller."""

from __future__ import annotations

from starlette.requests import Request

from service.auth import Caller
from service.errors import ApiError
from service.runtime import Runtime


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def caller(request: Request) -> Caller:
    """The caller named by the request's `Authorization: Bearer <api key>` (401 if none is)."""
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <api key>")
    found = runtime(request).keys.caller(presented.strip())
    if found is None:
        raise ApiError(401, "unauthorized", "unknown API key")
    return found
