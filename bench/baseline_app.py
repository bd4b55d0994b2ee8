"""The baseline for bench/ingest.py: a bare Starlette POST endpoint that reads the body and answers JSON."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def receive(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"accepted": True})


app = Starlette(routes=[Route("/callbacks/apikley/{task_id}/{token}", receive, methods=["POST"])])
