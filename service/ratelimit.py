"""Per-API-key rate limits (task creation, replays): a sliding-window log in Redis.

Each (action, key) has a sorted set of the times of its recent uses. One Lua script trims entries
older than the window, counts what is left and, under the limit, records this request, so
concurrent web processes cannot both take the last slot. Time comes from Redis (`TIME`), so web
processes with skewed clocks share one window. A sliding log rather than a fixed per-minute
counter: a client can never get twice the limit by straddling a minute boundary, and the
`Retry-After` it is told is exact (when its oldest creation leaves the window).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from functools import lru_cache

from redis import Redis
from starlette.concurrency import run_in_threadpool

from service.errors import ApiError
from service.keys import ratelimit_key
from service.runtime import Runtime
from service.scripts import load

WINDOW_S = 60


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_s: int


class TakeSlot:
    """`ratelimit_take.lua`: record one use, `member`, in `log` if it holds fewer than `limit`
    uses within the last `window_ms`; returns (taken, ms until a slot frees when not)."""

    def __init__(self, redis: Redis) -> None:
        self._script = load(redis, "ratelimit_take")

    def __call__(self, *, log: str, limit: int, window_ms: int, member: str) -> tuple[bool, int]:
        taken, wait_ms = self._script(keys=[log], args=[limit, window_ms, member])
        return bool(taken), int(wait_ms)


@lru_cache(maxsize=8)
def _take_slot(redis: Redis) -> TakeSlot:
    return TakeSlot(redis)


def take(redis: Redis, log: str, limit: int, window_s: int = WINDOW_S) -> Verdict:
    """Record one use in the log `log` if it holds fewer than `limit` within `window_s`."""
    allowed, wait_ms = _take_slot(redis)(log=log, limit=limit, window_ms=window_s * 1000, member=uuid.uuid4().hex)
    return Verdict(allowed, 0 if allowed else max(math.ceil(wait_ms / 1000), 1))


async def enforce(rt: Runtime, action: str, key_id: str, limit: int, window_s: int = WINDOW_S) -> None:
    """Raise a 429 with `Retry-After` when the key has used its `limit` of `action` for now (0: no limit)."""
    if limit <= 0:
        return
    verdict = await run_in_threadpool(take, rt.redis, ratelimit_key(action, key_id), limit, window_s)
    if not verdict.allowed:
        raise ApiError(
            429,
            "rate_limited",
            f"at most {limit} {action}s per {window_s} s per API key; retry in {verdict.retry_after_s} s",
            headers={"Retry-After": str(verdict.retry_after_s)},
        )
