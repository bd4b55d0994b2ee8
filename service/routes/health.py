"""Liveness and readiness probes."""

from __future__ import annotations

from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.routes.context import runtime


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """503 while Redis is unreachable. Ready otherwise, with `warnings` for what works only in
    part: callbacks that cannot reach us leave tasks to polling alone."""
    rt = runtime(request)
    try:
        await run_in_threadpool(rt.redis.ping)
    except RedisError as exc:  # any Redis failure (refused, timed out, loading…) means "not ready", never a 500
        return JSONResponse({"status": "unavailable", "redis": type(exc).__name__}, status_code=503)
    body: dict[str, object] = {"status": "ok"}
    if rt.callbacks_unreachable:
        body["callbacks"] = "unreachable"
        body["warnings"] = [rt.callbacks_unreachable]
    return JSONResponse(body)


routes = [Route("/healthz", healthz), Route("/readyz", readyz)]
