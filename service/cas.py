"""Compare-and-set writes, the one way the stores change a record that others may change too.

Read a key, decide in Python (the pure domain), then send every resulting command to
`CAS_SCRIPT`, which runs them only if the key still holds what was read: all of them or none,
in one round trip. A writer that lost the race reads again and decides again. Unlike
WATCH/MULTI, nothing is held on a pooled connection between the read and the write, and the
same script serves the sync stores and the web's async hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from redis import Redis
from redis.client import Pipeline

from service.redis_async import PipelinedRedis

Arg = bytes | str | int | float

# Lua that runs the commands spelled (see `spelled`) in ARGV from index `i` to the end.
RUN_SPELLED = """
while i <= #ARGV do
  local argc = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + argc))
  i = i + argc + 1
end
"""

# KEYS[1]: the guarded key; ARGV[1]: the value it must still hold ('' = must not exist);
# then commands as <argc> <arg>... . Returns 1 if it ran them, 0 if the key had changed.
CAS_SCRIPT = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
local i = 2
""" + RUN_SPELLED + """
return 1
"""


def spelled(*commands: Sequence[Arg]) -> list[Arg]:
    """Commands written out (`("SET", key, value)`, ...) in CAS_SCRIPT's argument form."""
    flat: list[Arg] = []
    for command in commands:
        flat.append(len(command))
        flat.extend(command)
    return flat


def recorded(redis: Redis, build: Callable[[Pipeline], None]) -> list[Arg]:
    """What `build` would send on a pipeline, in CAS_SCRIPT's argument form: for writes that
    other code adds to through a pipeline (RQ's enqueue, an outbox push)."""
    pipe = redis.pipeline(transaction=False)
    pipe.multi()  # so RQ, handed this pipeline, does not try to open a transaction of its own
    build(pipe)
    flat = spelled(*(args for args, _options in pipe.command_stack))
    pipe.reset()
    return flat


class CompareAndSet:
    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(CAS_SCRIPT)

    def __call__(self, key: str, expected: bytes | str | None, commands: list[Arg]) -> bool:
        """Run `commands` if `key` still holds `expected` (None: if it does not exist)."""
        return bool(self._script(keys=[key], args=[_expected(expected), *commands]))


class AsyncCompareAndSet:
    """The same, on the web process's pipelined connection (the callback hot path)."""

    def __init__(self, redis: PipelinedRedis) -> None:
        self._script = redis.register_script(CAS_SCRIPT)

    async def __call__(self, key: str, expected: bytes | str | None, commands: list[Arg]) -> bool:
        return bool(await self._script(keys=[key], args=[_expected(expected), *commands]))


def _expected(value: bytes | str | None) -> Arg:
    return value if value is not None else ""
