"""Builds the Starlette application (`uvicorn --factory service.app:create_app`)."""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.middleware import Middleware

from service.bodylimit import BodyLimitMiddleware
from service.errors import EXCEPTION_HANDLERS
from service.routes import (
    callbacks,
    catalog,
    dashboard,
    deliveries,
    docs,
    health,
    metrics,
    openapi,
    subscriptions,
    tasks,
    video,
)
from service.runtime import Runtime
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()
    settings.require("redis_url", "callback_secret", "kling_relay_api_keys")
    app = Starlette(
        routes=[
            # First: the busiest route (providers' callbacks), so it is matched first.
            *callbacks.routes,
            *health.routes,
            *tasks.routes,
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
    )
    app.state.runtime = runtime = Runtime.from_settings(settings)
    if runtime.callbacks_unreachable:
        log.warning(runtime.callbacks_unreachable)
    return app
