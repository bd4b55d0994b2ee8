"""Connecting to Redis: a plain URL, or the current master as told by Redis Sentinel.

`connect_redis(settings)` is the one place the service's Redis clients are made, so the web
processes, the workers and RQ all follow a Sentinel failover the same way: redis-py's
`SentinelConnectionPool` (and the web's `PipelinedRedis`) asks the sentinels for the master
whenever it (re)connects, and a connection to a demoted master fails over to the new one.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote, urlsplit

from redis import Redis
from redis.sentinel import Sentinel

from service.redis_async import PipelinedRedis
from service.settings import Settings

# Keep idle connections honest across NATs and load balancers; find dead ones before using them.
# Explicit timeouts: an unreachable or hung Redis fails a command in seconds (503 on the API,
# a retry in the worker) instead of holding a thread forever. RQ raises the read timeout of its
# own client to outlast its blocking dequeue (workers/main.py gives RQ a client of its own).
CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 5.0
CLIENT_OPTIONS: dict[str, Any] = {
    "health_check_interval": 30,
    "socket_keepalive": True,
    "socket_connect_timeout": CONNECT_TIMEOUT_S,
    "socket_timeout": SOCKET_TIMEOUT_S,
}


def sentinel_addresses(settings: Settings) -> list[tuple[str, int]]:
    addresses = []
    for address in settings.redis_sentinels:
        host, _, port = address.rpartition(":")
        addresses.append((host.strip("[]"), int(port)))
    return addresses


def master_options(redis_url: str | None) -> dict[str, Any]:
    """Database, credentials and TLS for the master, from REDIS_URL (its host is ignored)."""
    if not redis_url:
        return {}
    parts = urlsplit(redis_url)
    options: dict[str, Any] = {}
    path = parts.path.lstrip("/")
    if path.isdigit():
        options["db"] = int(path)
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password:
        options["password"] = unquote(parts.password)
    if parts.scheme == "rediss":
        options["ssl"] = True
    return options


def connect_redis(settings: Settings) -> tuple[Redis, PipelinedRedis]:
    """The sync client (workers, RQ, stores) and the async one (the web's callback hot path; it
    connects lazily, on the web process's event loop). Needs REDIS_URL or REDIS_SENTINELS."""
    if settings.redis_sentinels:
        options = {**CLIENT_OPTIONS, **master_options(settings.redis_url)}
        # Sentinels themselves take no database, and usually no password of the master's.
        sentinel_options = {"socket_timeout": CONNECT_TIMEOUT_S, "socket_connect_timeout": CONNECT_TIMEOUT_S}
        addresses = sentinel_addresses(settings)
        name = settings.redis_sentinel_master
        sentinel = Sentinel(addresses, sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
        redis: Redis = sentinel.master_for(name, redis_class=Redis, **options)  # type: ignore[no-untyped-call]

        async def current_master() -> tuple[str, int]:
            # Asked on every (re)connect, so a dropped connection to a demoted master fails over.
            # In a thread, with the sync client: reconnects are rare, and it is bound to no loop.
            host, port = await asyncio.to_thread(sentinel.discover_master, name)
            return str(host), int(port)

        return redis, PipelinedRedis(
            current_master, timeout_s=SOCKET_TIMEOUT_S, connect_timeout_s=CONNECT_TIMEOUT_S, **master_options(settings.redis_url)
        )
    settings.require("redis_url")
    url = settings.redis_url or ""
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 6379)

    async def fixed() -> tuple[str, int]:
        return address

    aredis = PipelinedRedis(fixed, timeout_s=SOCKET_TIMEOUT_S, connect_timeout_s=CONNECT_TIMEOUT_S, **master_options(url))
    return Redis.from_url(url, **CLIENT_OPTIONS), aredis
