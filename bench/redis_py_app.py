"""The web app with the callback receiver on redis-py's asyncio client instead of the pipelined
connection (service/redis_async.py), for `python bench/ingest.py --app redis_py_app:create_app`.

Only the benchmark builds it: it swaps the store's async client after the app is built, with
the options the service gives redis-py (service/redis_client.py CLIENT_OPTIONS).
"""

from __future__ import annotations

import redis.asyncio
from starlette.applications import Starlette

from service import scripts
from service.app import create_app as create_service_app
from service.redis_client import CLIENT_OPTIONS
from service.settings import get_settings


def create_app() -> Starlette:
    app = create_service_app()
    store = app.state.runtime.store
    client = redis.asyncio.Redis.from_url(get_settings().redis_url or "", **CLIENT_OPTIONS)
    # redis-py's async script object is called like the pipelined one's: (keys, args).
    store.aredis = client
    store._transition._ascript = client.register_script(scripts.source("transition"))
    return app
