"""The Redis store for tasks and their events (key names: `service/keys.py`).

Every write is a compare-and-set: we read a key, decide in Python (the pure domain), and send
the resulting writes (the task, its indexes, its event, its outbox entry or the job that acts on
it) to one Lua script that makes them only if the key still holds what we read: a transition to
`service/scripts/transition.lua` (`WriteTransition`), anything else as spelled commands to
`service/cas.py`'s. So a crash never leaves half a write, two racing writers cannot both win, and
a transition costs two round trips (read, write) from sync workers and the async callback
receiver alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import cast

import orjson
from redis import Redis
from redis.client import Pipeline

from service import outbox
from service.cas import CompareAndSet, recorded, spelled
from service.domain.clock import now_iso
from service.domain.events import Event
from service.domain.ids import id_floor, new_id
from service.domain.status import TaskStatus
from service.domain.tasks import Task
from service.domain.transition import ProviderUpdate, Transition, Update, apply_update, starts_storing
from service.keys import (
    EVENT_LOG,
    OUTBOX,
    OWNERS,
    STORAGE_DUE,
    WATCHDOG,
    event_log_key,
    events_key,
    index_key,
    task_key,
)
from service.live.log import DEFAULT_LIMITS, LogLimits
from service.redis_async import Arg, PipelinedRedis
from service.scripts import load, source

# Called while a write is built, so whatever it queues commits (or not) with the write.
AfterWrite = Callable[[Pipeline, Task], None]


# Sees the stored task before an update is decided; raises to refuse it.
Check = Callable[[Task], None]

@dataclass(frozen=True)
class Change:
    """What a writer wants done to a task, decided from the task as stored.

    `task` is the stored task after bookkeeping (or the stored task itself); `update`, a provider
    report (or a storage outcome) for the transition function; `after`, writes that commit with
    it (a job, a watchdog).
    """

    task: Task
    update: Update | None = None
    after: AfterWrite | None = None


# Decides the change from the stored task; None for no change. May raise to refuse.
Decide = Callable[[Task], Change | None]


class TaskNotFound(Exception):
    """No task with that id (never created, or expired)."""


class IdempotencyConflict(Exception):
    """The Idempotency-Key was already used with a different request body."""


@dataclass(frozen=True)
class IdempotencyClaim:
    key: str
    fingerprint: str


@dataclass(frozen=True)
class Page:
    tasks: list[Task]
    next_cursor: str | None


def _scopes(task: Task) -> tuple[str | None, ...]:
    """The indexes a task is listed in: everyone's, and its owner's."""
    return (None, task.owner) if task.owner else (None,)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _call_after(after: AfterWrite, task: Task, pipe: Pipeline) -> None:
    after(pipe, task)


class WriteTransition:
    """`service/scripts/transition.lua`: a transition's writes (and `after`, spelled commands
    that commit with it), its live log entries included, made only if the task still holds
    `read`. True if they were made.

    Named arguments instead of every command spelled out for the generic compare-and-set: a
    third of the arguments to pack and send, on the callback receiver's hot path.

    With `stores_videos`, a task that has just succeeded is made due a storage try in the same
    write (`kr:storage:due`, scored now): the worker's storage sweep starts the try, so a success
    is never committed without the promise of its copy."""

    def __init__(
        self,
        redis: Redis,
        aredis: PipelinedRedis | None,
        retention_s: int,
        limits: LogLimits = DEFAULT_LIMITS,
        *,
        stores_videos: bool = False,
    ) -> None:
        self._script = load(redis, "transition")
        self._ascript = aredis.register_script(source("transition")) if aredis is not None else None
        self.retention_s = retention_s
        self.limits = limits
        self.stores_videos = stores_videos

    def __call__(self, read: bytes | str, transition: Transition, after: list[Arg]) -> bool:
        keys, args = self._arguments(read, transition, after)
        return bool(self._script(keys=keys, args=args))

    async def on_async(self, read: bytes | str, transition: Transition, after: list[Arg]) -> bool:
        assert self._ascript is not None
        keys, args = self._arguments(read, transition, after)
        return bool(await self._ascript(keys, args))

    def _arguments(self, read: bytes | str, transition: Transition, after: list[Arg]) -> tuple[list[str], list[Arg]]:
        task, event, limits = transition.task, transition.event, self.limits
        owner_log = event_log_key(task.owner) if task.owner else EVENT_LOG
        keys = [task_key(task.id), events_key(task.id), OUTBOX, WATCHDOG, EVENT_LOG, owner_log, STORAGE_DUE]
        if task.status is not transition.previous_status:
            for owner in _scopes(task):
                keys += [index_key(transition.previous_status, owner), index_key(task.status, owner)]
        # A finished task and its events live on for the retention period, then go.
        retention: Arg = self.retention_s if task.status.terminal else ""
        storage_due: Arg = time.time() if self.stores_videos and starts_storing(transition) else ""
        return keys, [
            read, task.dumps(), event.dumps(), task.id, outbox.entry(task.id, event.id), retention,
            task.owner or "", event.id, limits.global_events, limits.owner_events, limits.owner_ttl_s, storage_due, *after,
        ]


class TaskStore:
    def __init__(
        self,
        redis: Redis,
        aredis: PipelinedRedis | None = None,
        *,
        retention_s: int = 7 * 24 * 3600,
        limits: LogLimits = DEFAULT_LIMITS,
        stores_videos: bool = False,
    ) -> None:
        self.redis = redis
        self.aredis = aredis
        self.retention_s = retention_s
        self._cas = CompareAndSet(redis)
        self._transition = WriteTransition(redis, aredis, retention_s, limits, stores_videos=stores_videos)

    def create(
        self,
        task: Task,
        *,
        idempotency: IdempotencyClaim | None,
        idempotency_ttl_s: int,
        watchdog_s: float,
        after: AfterWrite,
    ) -> tuple[Task, bool]:
        """Store a new task; (task, created). A repeated Idempotency-Key returns the first task."""

        def build(pipe: Pipeline) -> None:
            if idempotency:
                claim = orjson.dumps({"task_id": task.id, "fingerprint": idempotency.fingerprint})
                pipe.set(idempotency.key, claim, ex=idempotency_ttl_s)
            pipe.set(task_key(task.id), task.dumps())
            for owner in _scopes(task):
                pipe.zadd(index_key(None, owner), {task.id: 0})
                pipe.zadd(index_key(task.status, owner), {task.id: 0})
            if task.owner:
                pipe.sadd(OWNERS, task.owner)
            pipe.zadd(WATCHDOG, {task.id: time.time() + watchdog_s})
            after(pipe, task)

        commands = recorded(self.redis, build)
        guard = idempotency.key if idempotency else task_key(task.id)
        while True:
            if self._cas(guard, None, commands):
                return task, True
            if idempotency is None:
                raise RuntimeError(f"task id collision: {task.id}")
            existing = self.redis.get(idempotency.key)
            if existing is None:
                continue  # the claim expired between our CAS and this read: try again
            claim = orjson.loads(existing)
            if claim["fingerprint"] != idempotency.fingerprint:
                raise IdempotencyConflict(idempotency.key)
            found = self.get(claim["task_id"])
            if found is not None:
                return found, False
            self.redis.delete(idempotency.key)  # its task expired: the key is fresh again

    def get(self, task_id: str) -> Task | None:
        raw = self.redis.get(task_key(task_id))
        return Task.loads(raw) if raw is not None else None

    def page(self, *, status: TaskStatus | None, cursor: str | None, limit: int, owner: str | None = None) -> Page:
        """Newest first (of one owner's tasks, or everyone's with None). Ids sort by creation
        time, so the index is a lexicographic sorted set."""
        upper = f"({cursor}" if cursor else "+"
        ids = [_text(i) for i in self.redis.zrevrangebylex(index_key(status, owner), upper, "-", start=0, num=limit + 1)]
        more = len(ids) > limit
        ids = ids[:limit]
        raws = self.redis.mget([task_key(i) for i in ids]) if ids else []
        tasks = [Task.loads(raw) for raw in raws if raw is not None]
        return Page(tasks=tasks, next_cursor=ids[-1] if more and ids else None)

    def events(self, task_id: str) -> list[Event]:
        return [Event.loads(raw) for raw in self.redis.lrange(events_key(task_id), 0, -1)]

    def change(self, task_id: str, decide: Decide) -> tuple[Transition | None, Task | None]:
        """Read, decide, compare-and-set; if someone else wrote in between, re-read and re-decide.

        Returns the transition (None when no status or progress moved) and the task as written
        (None when nothing was). Exactly one event per real transition.
        """
        key = task_key(task_id)
        while True:
            raw = self.redis.get(key)
            if raw is None:
                raise TaskNotFound(task_id)
            stored = Task.loads(raw)
            wanted = decide(stored)
            if wanted is None:
                return None, None
            planned = self._plan(stored, wanted.task, wanted.update)
            if planned is None:
                return None, None
            transition, written = planned
            after = recorded(self.redis, partial(_call_after, wanted.after, written)) if wanted.after is not None else []
            if self._write(raw, transition, written, after):
                return transition, written

    def apply(self, task_id: str, update: Update) -> Transition | None:
        """Apply a provider report atomically (polls, our own decisions)."""
        return self.change(task_id, lambda task: Change(task, update))[0]

    async def aapply(self, task_id: str, update: ProviderUpdate, *, check: Check | None = None) -> Transition | None:
        """`apply` for the async web process (the callback receiver's hot path)."""
        assert self.aredis is not None
        key = task_key(task_id)
        while True:
            raw = await self.aredis.get(key)
            if raw is None:
                raise TaskNotFound(task_id)
            stored = Task.loads(raw)
            if check is not None:
                check(stored)
            planned = self._plan(stored, stored, update)
            if planned is None:
                return None
            transition, _ = planned
            if transition is None or await self._transition.on_async(raw, transition, []):
                return transition

    def _write(self, read: bytes | str, transition: Transition | None, written: Task, after: list[Arg]) -> bool:
        if transition is not None:
            return self._transition(read, transition, after)
        # Bookkeeping alone: no event; KEEPTTL, so a finished task still expires on time.
        key = task_key(written.id)
        return self._cas(key, read, [*spelled(("SET", key, written.dumps(), "KEEPTTL")), *after])

    def _plan(self, stored: Task, amended: Task, update: Update | None) -> tuple[Transition | None, Task] | None:
        """The transition `update` makes (None: none) and the task to write; None if nothing is."""
        transition = apply_update(amended, update, now=now_iso(), event_id=new_id("evt")) if update is not None else None
        if transition is not None:
            return transition, transition.task
        if amended is stored:
            return None
        return None, amended

    def record(self, task_id: str, amend: Callable[[Task], Task | None]) -> Task | None:
        """Save a bookkeeping change (no status move, no event); `amend` returns None to make none."""

        def decide(task: Task) -> Change | None:
            amended = amend(task)
            return Change(amended) if amended is not None else None

        try:
            return self.change(task_id, decide)[1]
        except TaskNotFound:
            return None

    def trim_indexes(self, now: float) -> None:
        """Drop index entries of tasks older than the retention period (their keys have expired).

        Ids sort by creation time, so everything below the id floor of `now - retention` goes.
        """
        floor = id_floor("task", now - self.retention_s)
        owners = [None, *(_text(o) for o in self.redis.smembers(OWNERS))]
        with self.redis.pipeline(transaction=False) as pipe:
            for owner in owners:
                for status in (None, *TaskStatus):
                    pipe.zremrangebylex(index_key(status, owner), "-", f"({floor}")
            pipe.execute()

    def set_watchdog(self, task_id: str, due_in_s: float, pipeline: Pipeline | Redis | None = None) -> None:
        """When the sweep should look at this task again if nothing else has moved it on."""
        (pipeline or self.redis).zadd(WATCHDOG, {task_id: time.time() + due_in_s})

    def forget_watchdog(self, task_id: str) -> None:
        self.redis.zrem(WATCHDOG, task_id)

    def due_tasks(self, limit: int = 500) -> list[str]:
        ids = cast(list[bytes], self.redis.zrangebyscore(WATCHDOG, "-inf", time.time(), start=0, num=limit))
        return [_text(i) for i in ids]

