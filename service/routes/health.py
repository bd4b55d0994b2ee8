"""Liveness and readiness probes."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.routes.context import runtime


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    rt = runtime(request)
    try:
        await run_in_threadpool(rt.redis.ping)
    except Exception as exc:  # any Redis failure means "not ready", never a 500
        return JSONResponse({"status": "unavailable", "redis": type(exc).__name__}, status_code=503)
    return JSONResponse({"status": "ok"})


routes = [Route("/healthz", healthz), Route("/readyz", readyz)]
