"""Builds the Starlette application (`uvicorn --factory service.app:create_app`)."""

from __future__ import annotations

from starlette.applications import Starlette

from service.errors import EXCEPTION_HANDLERS
from service.routes import callbacks, deliveries, health, subscriptions, tasks
from service.runtime import Runtime
from service.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()
    settings.require("redis_url", "callback_secret", "kling_relay_api_keys")
    app = Starlette(
        routes=[*health.routes, *tasks.routes, *callbacks.routes, *subscriptions.routes, *deliveries.routes],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
    )
    app.state.runtime = Runtime.from_settings(settings)
    return app
