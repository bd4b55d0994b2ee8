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
from redis.commands.core import Script
from starlette.concurrency import run_in_threadpool

from service.errors import ApiError
from service.runtime import Runtime

WINDOW_S = 60

# KEYS[1]: the key's log; ARGV: limit, window (ms), a unique member for this request.
# Returns {0, ms until a slot frees} when over the limit, else {1, 0} with the request recorded.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(oldest[2]) + window - now}
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return {1, 0}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_s: int


def log_key(action: str, key_id: str) -> str:
    # By key id: the key itself must never be written anywhere, Redis included.
    return f"kr:ratelimit:{action}:{key_id}"


@lru_cache(maxsize=8)
def _script(redis: Redis) -> Script:
    return redis.register_script(_TAKE)


def take(redis: Redis, log: str, limit: int, window_s: int = WINDOW_S) -> Verdict:
    """Record one use in the log `log` if it holds fewer than `limit` within `window_s`."""
    allowed, wait_ms = _script(redis)(keys=[log], args=[limit, window_s * 1000, uuid.uuid4().hex])
    return Verdict(bool(allowed), 0 if allowed else max(math.ceil(int(wait_ms) / 1000), 1))


async def enforce(rt: Runtime, action: str, key_id: str, limit: int, window_s: int = WINDOW_S) -> None:
    """Raise a 429 with `Retry-After` when the key has used its `limit` of `action` for now (0: no limit)."""
    if limit <= 0:
        return
    verdict = await run_in_threadpool(take, rt.redis, log_key(action, key_id), limit, window_s)
    if not verdict.allowed:
        raise ApiError(
            429,
            "rate_limited",
            f"at most {limit} {action}s per {window_s} s per API key; retry in {verdict.retry_after_s} s",
            headers={"Retry-After": str(verdict.retry_after_s)},
        )
