"""`GET /metrics`: this web process's counters, plus the shared gauges read from Redis (Prometheus
text format or OpenMetrics, as the scraper asks; see `service.telemetry` for what is counted and
`service.metrics_http` for the gauges and how to aggregate across processes)."""

from __future__ import annotations

from prometheus_client.exposition import choose_encoder
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.routes.context import runtime


async def metrics(request: Request) -> Response:
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    body = await run_in_threadpool(encode, runtime(request).metrics_registry)
    return Response(body, headers={"Content-Type": content_type})


routes = [Route("/metrics", metrics, methods=["GET"])]
