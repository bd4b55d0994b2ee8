"""The Redis store for tasks and their events: the only module that knows the key layout.

Writes that must happen together (a task, its indexes, its event and the job that acts on it)
go in one MULTI/EXEC under WATCH of the task key, so a crash can never leave half of them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError

from service.domain.events import Event
from service.domain.ids import new_id
from service.domain.status import TaskStatus
from service.domain.tasks import Task, isoformat, utcnow
from service.domain.transition import ProviderUpdate, Transition, apply_update

PREFIX = "kr"
WATCHDOG = f"{PREFIX}:watchdog"

# Called inside the MULTI of a write, so whatever it queues commits (or not) with the write.
AfterWrite = Callable[[Pipeline, Task], None]
AfterTransition = Callable[[Pipeline, Transition], None]


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


def task_key(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}"


def events_key(task_id: str) -> str:
    return f"{PREFIX}:events:{task_id}"


def index_key(status: TaskStatus | None) -> str:
    return f"{PREFIX}:idx:{status.value if status else 'all'}"


def idempotency_key(api_key: str, key: str) -> str:
    owner = hashlib.sha256(api_key.encode()).hexdigest()[:16]
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{PREFIX}:idem:{owner}:{digest}"


class TaskStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

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
        idem_key = idempotency.key if idempotency else None
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    if idem_key and idempotency:
                        pipe.watch(idem_key)
                        existing = pipe.get(idem_key)
                        if existing is not None:
                            claim = orjson.loads(existing)
                            if claim["fingerprint"] != idempotency.fingerprint:
                                raise IdempotencyConflict(idempotency.key)
                            pipe.reset()
                            found = self.get(claim["task_id"])
                            if found is not None:
                                return found, False
                            # The claimed task expired: treat the key as fresh.
                            pipe.watch(idem_key)
                    pipe.multi()
                    if idem_key and idempotency:
                        claim_body = orjson.dumps({"task_id": task.id, "fingerprint": idempotency.fingerprint})
                        pipe.set(idem_key, claim_body, ex=idempotency_ttl_s)
                    pipe.set(task_key(task.id), task.dumps())
                    pipe.zadd(index_key(None), {task.id: 0})
                    pipe.zadd(index_key(task.status), {task.id: 0})
                    pipe.zadd(WATCHDOG, {task.id: time.time() + watchdog_s})
                    after(pipe, task)
                    pipe.execute()
                    return task, True
                except WatchError:
                    continue

    def get(self, task_id: str) -> Task | None:
        raw = self.redis.get(task_key(task_id))
        return Task.loads(raw) if raw is not None else None

    def page(self, *, status: TaskStatus | None, cursor: str | None, limit: int) -> Page:
        """Newest first. Ids sort by creation time, so the index is a lexicographic sorted set."""
        upper = f"({cursor}" if cursor else "+"
        ids = self.redis.zrevrangebylex(index_key(status), upper, "-", start=0, num=limit + 1)
        ids = [i.decode() if isinstance(i, bytes) else i for i in ids]
        more = len(ids) > limit
        ids = ids[:limit]
        raws = self.redis.mget([task_key(i) for i in ids]) if ids else []
        tasks = [Task.loads(raw) for raw in raws if raw is not None]
        return Page(tasks=tasks, next_cursor=ids[-1] if more and ids else None)

    def events(self, task_id: str) -> list[Event]:
        return [Event.loads(raw) for raw in self.redis.lrange(events_key(task_id), 0, -1)]

    def event(self, task_id: str, event_id: str) -> Event | None:
        for event in self.events(task_id):
            if event.id == event_id:
                return event
        return None

    def apply(self, task_id: str, update: ProviderUpdate, *, after: AfterTransition) -> Transition | None:
        """Apply a provider report atomically; exactly one event per real transition.

        Optimistic concurrency: if anyone else writes the task between our read and our
        EXEC, Redis aborts the EXEC and we re-read and re-decide, so two racing reports
        (a callback and a poll, two workers) can never both move the task.
        """
        return self._mutate(task_id, lambda task, now: apply_update(task, update, now=now, event_id=new_id("evt")), after)

    def _mutate(
        self,
        task_id: str,
        decide: Callable[[Task, str], Transition | None],
        after: AfterTransition,
    ) -> Transition | None:
        key = task_key(task_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        return None
                    transition = decide(Task.loads(raw), isoformat(utcnow()))
                    if transition is None:
                        pipe.reset()
                        return None
                    pipe.multi()
                    self._write_transition(pipe, transition)
                    after(pipe, transition)
                    pipe.execute()
                    return transition
                except WatchError:
                    continue

    @staticmethod
    def _write_transition(pipe: Pipeline, transition: Transition) -> None:
        task = transition.task
        pipe.set(task_key(task.id), task.dumps())
        pipe.rpush(events_key(task.id), transition.event.dumps())
        if task.status is not transition.previous_status:
            pipe.zrem(index_key(transition.previous_status), task.id)
            pipe.zadd(index_key(task.status), {task.id: 0})
        if task.status.terminal:
            pipe.zrem(WATCHDOG, task.id)

    def record(self, task_id: str, change: Callable[[Task], Task | None]) -> Task | None:
        """Save a bookkeeping change (no status move, no event), e.g. a submit attempt."""
        key = task_key(task_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        return None
                    changed = change(Task.loads(raw))
                    if changed is None:
                        pipe.reset()
                        return None
                    pipe.multi()
                    pipe.set(key, changed.dumps())
                    pipe.execute()
                    return changed
                except WatchError:
                    continue

    def set_watchdog(self, task_id: str, due_in_s: float, pipeline: Pipeline | None = None) -> None:
        """When the sweep should look at this task again if nothing else has moved it on."""
        (pipeline or self.redis).zadd(WATCHDOG, {task_id: time.time() + due_in_s})

    def due_tasks(self, limit: int = 500) -> list[str]:
        ids = self.redis.zrangebyscore(WATCHDOG, "-inf", time.time(), start=0, num=limit)
        return [i.decode() if isinstance(i, bytes) else i for i in ids]
