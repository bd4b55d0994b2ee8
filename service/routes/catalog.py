"""`GET /v1/event-types`: every event type, what it means and the JSON Schema of its payload."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.domain.catalog import catalog
from service.routes.context import caller


async def list_event_types(request: Request) -> JSONResponse:
    caller(request)  # a key is needed, as on every /v1 route
    return JSONResponse({"data": catalog()})


routes = [Route("/v1/event-types", list_event_types, methods=["GET"])]
