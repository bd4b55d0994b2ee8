"""Where routes find the runtime and the caller."""

from __future__ import annotations

from starlette.requests import Request

from service.auth import Caller, authenticate
from service.runtime import Runtime


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def caller(request: Request) -> Caller:
    return authenticate(request, runtime(request).keys)
