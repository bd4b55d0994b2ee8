"""A lease on a piece of work, kept alive by a heartbeat while the work runs.

A fixed lease must outlast the slowest run, so a dead worker's work waits that long to be picked
up again. Here the lease is short and renewed every third of its life from a thread: a live
worker keeps it however long a provider takes to answer, a dead one lets it lapse within `ttl_s`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from types import TracebackType
from typing import Self

from redis import Redis
from redis.exceptions import RedisError

from service.scripts import load

log = logging.getLogger(__name__)


class RenewLease:
    """`lease_renew.lua`: give the lease `lease` a new TTL of `ttl_ms` while it holds `token`;
    False once it is no longer ours."""

    def __init__(self, redis: Redis) -> None:
        self._script = load(redis, "lease_renew")

    def __call__(self, *, lease: str, token: str, ttl_ms: int) -> bool:
        return bool(self._script(keys=[lease], args=[token, ttl_ms]))


class ReleaseLease:
    """`lease_release.lua`: delete the lease `lease` while it holds `token`; False once it is no
    longer ours."""

    def __init__(self, redis: Redis) -> None:
        self._script = load(redis, "lease_release")

    def __call__(self, *, lease: str, token: str) -> bool:
        return bool(self._script(keys=[lease], args=[token]))


class Lease:
    def __init__(self, redis: Redis, key: str, ttl_s: float) -> None:
        self.redis = redis
        self.key = key
        self.ttl_ms = max(int(ttl_s * 1000), 1)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renew = RenewLease(redis)
        self._release = ReleaseLease(redis)

    def acquire(self) -> bool:
        """Take the lease and start renewing it; False if another holder has it."""
        if not self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return False
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.key}", daemon=True)
        self._thread.start()
        return True

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self._release(lease=self.key, token=self.token)
        except RedisError as exc:  # it lapses on its own
            log.warning("lease %s not released: %s", self.key, type(exc).__name__)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                if not self._renew(lease=self.key, token=self.token, ttl_ms=self.ttl_ms):
                    return  # handed over in a write (a retry's), or lapsed: nothing left to renew
            except RedisError as exc:
                log.warning("lease %s not renewed: %s", self.key, type(exc).__name__)
