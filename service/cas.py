"""Compare-and-set writes, the one way the stores change a record that others may change too.

Read a key, decide in Python (the pure domain), then send every resulting command to the `cas`
script (`service/scripts/cas.lua`), which runs them only if the key still holds what was read:
all of them or none, in one round trip. A writer that lost the race reads again and decides
again. Unlike WATCH/MULTI, nothing is held on a pooled connection between the read and the
write. (A task's transition, the callback receiver's hot path, has a script of its own with the
same guard and named arguments: `service/scripts/transition.lua`.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from redis import Redis
from redis.client import Pipeline

from service.redis_async import Arg
from service.scripts import load


class RecordingOnly(TypeError):
    """A recording pipeline was asked to execute its commands itself."""


def spelled(*commands: Sequence[Arg]) -> list[Arg]:
    """Commands written out (`("SET", key, value)`, ...) in the scripts' argument form
    (`run_spelled.lua`): per command, its argument count, then the command and its arguments."""
    flat: list[Arg] = []
    for command in commands:
        flat.append(len(command))
        flat.extend(command)
    return flat


class Recorder(Pipeline):
    """A pipeline that sends nothing: it records each command queued on it, for a script to run.

    Handed to code that writes through a pipeline (RQ's `enqueue(..., pipeline=...)`, an outbox
    push), it captures what that code would send. Every redis-py command method ends in
    `execute_command`, which records here instead of queueing. RQ, given a pipeline, calls
    `multi()` on it unless `explicit_transaction` is already set and leaves `execute()` to its
    caller; neither ever runs here, so it is set from the start (which also makes `watch`
    refuse) and `execute` refuses.
    """

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis.connection_pool, redis.response_callbacks, transaction=False, shard_hint=None)
        self.explicit_transaction = True
        self.recorded: list[tuple[Arg, ...]] = []

    def execute_command(self, *args: Any, **options: Any) -> Recorder:
        self.recorded.append(args)
        return self

    def multi(self) -> None:
        """Already in a transaction's queueing state: nothing to do."""

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        raise RecordingOnly("a recording pipeline sends nothing: run its commands with a script")


def recorded(redis: Redis, build: Callable[[Pipeline], None]) -> list[Arg]:
    """What `build` would send on a pipeline, spelled for a script: for writes that other code adds
    to through a pipeline (RQ's enqueue, an outbox push)."""
    recorder = Recorder(redis)
    build(recorder)
    return spelled(*recorder.recorded)


class CompareAndSet:
    """`cas.lua`: run `commands` (spelled) if `key` still holds `expected` (None: if it does not exist)."""

    def __init__(self, redis: Redis) -> None:
        self._script = load(redis, "cas")

    def __call__(self, key: str, expected: bytes | str | None, commands: list[Arg]) -> bool:
        return bool(self._script(keys=[key], args=[_expected(expected), *commands]))


def _expected(value: bytes | str | None) -> Arg:
    return value if value is not None else ""
