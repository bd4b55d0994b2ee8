"""Builds the Starlette application (`uvicorn --factory service.app:create_app`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import ASGIApp

from service.bodylimit import BodyLimitMiddleware
from service.errors import EXCEPTION_HANDLERS
from service.http_server import ON_SHUTDOWN
from service.live.hub import BLOCK_MS, Hub
from service.live.log import EventLog
from service.routes import (
    callbacks,
    catalog,
    dashboard,
    deliveries,
    docs,
    health,
    metrics,
    openapi,
    streams,
    subscriptions,
    tasks,
    video,
)
from service.runtime import Runtime
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)


class App(Starlette):
    """The service's Starlette app, with providers' callbacks taken ahead of its middleware and
    routing (`callbacks.CallbackLane`: the busiest route)."""

    def build_middleware_stack(self) -> ASGIApp:
        return callbacks.CallbackLane(super().build_middleware_stack())


@asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    hub: Hub = app.state.hub
    # The server calls this as soon as it starts shutting down: open streams end, so it need
    # not wait for them (service/http_server.py).
    yield {ON_SHUTDOWN: hub.close}
    await hub.aclose()


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()
    settings.require("redis_url", "callback_secret", "kling_relay_api_keys")
    app = App(
        routes=[
            # Taken ahead of the stack by `CallbackLane`; listed for their 405s and the OpenAPI document.
            *callbacks.routes,
            *health.routes,
            *tasks.routes,
            *streams.routes,
            *video.routes,
            *subscriptions.routes,
            *deliveries.routes,
            *catalog.routes,
            *openapi.routes,
            *docs.routes,
            *metrics.routes,
            *dashboard.routes,
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        # The outer bound for every route; routes that read a body also cap it at their own limit.
        middleware=[Middleware(BodyLimitMiddleware, max_bytes=max(settings.max_body_bytes, callbacks.MAX_CALLBACK_BYTES))],
        lifespan=_lifespan,
    )
    app.state.runtime = runtime = Runtime.from_settings(settings)
    aredis = runtime.store.aredis
    assert aredis is not None
    # The live reader's XREAD blocks its connection for up to BLOCK_MS: give it its own.
    reader = aredis.sibling(timeout_s=BLOCK_MS / 1000 + aredis.timeout_s)
    app.state.hub = Hub(EventLog(reader), EventLog(aredis))
    if runtime.callbacks_unreachable:
        log.warning(runtime.callbacks_unreachable)
    return app
