"""Where routes find the runtime and the caller's API key."""

from __future__ import annotations

from starlette.requests import Request

from service.auth import require_api_key
from service.runtime import Runtime


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def api_key(request: Request) -> str:
    return require_api_key(request, runtime(request).settings.kling_relay_api_keys)
