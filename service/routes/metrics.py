"""`GET /metrics`: this web process's counters, plus the shared gauges read from Redis (Prometheus
text format or OpenMetrics, as the scraper asks; see `service.metrics` for what each means and
how to aggregate across processes)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.metrics import web_registry
from service.routes.context import runtime


def _registry(request: Request) -> CollectorRegistry:
    found: CollectorRegistry | None = getattr(request.app.state, "metrics_registry", None)
    if found is None:
        found = request.app.state.metrics_registry = web_registry(runtime(request).redis)
    return found


async def metrics(request: Request) -> Response:
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    registry = _registry(request)
    body = await run_in_threadpool(encode, registry)
    return Response(body, headers={"Content-Type": content_type})


routes = [Route("/metrics", metrics, methods=["GET"])]
