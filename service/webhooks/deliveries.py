"""The Redis store for deliveries and their attempt logs (key names: `service/keys.py`).

A fan-out's deliveries are stored once, when their first attempt is recorded: until then the
event's outbox entry, held in its dispatcher's in-flight list, is what answers for them.

A pending delivery has a deadline in `DELIVERIES_DUE` by which its next attempt must have been
recorded; the sweep re-sends whatever is overdue, so a worker killed mid-attempt or a scheduled
job lost with Redis loses nothing. An attempt is claimed with `delivery_lease_key(id, attempt)`,
keyed by attempt number and left to expire, never deleted, so no attempt is made twice.
`EVENT_INDEX` has every event fanned out, so a replay can reach events a subscription never had.

Why Lua: a fan-out writes hundreds of deliveries at once. As one script call per batch instead of
several pipelined commands per delivery, the client packs and parses one command, not hundreds
(redis-py's per-command cost was most of the engine's time), and sorted-set writes are batched
into one ZADD/ZREM per batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum

import orjson
from redis import Redis
from redis.client import Pipeline

from service.cas import recorded, spelled
from service.domain.clock import unix_to_iso
from service.domain.ids import id_floor
from service.jobs import Jobs
from service.keys import (
    DELIVERIES_DUE,
    EVENT_INDEX,
    deliveries_index_key,
    delivery_key,
    delivery_lease_key,
    events_key,
    failing_key,
    subscription_health_key,
)
from service.redis_async import Arg
from service.scripts import load
from service.webhooks.models import Delivery
from service.webhooks.planner import Health, Plan, Retry
from service.webhooks.policy import DeliveryStatus, delivery_id


class DeliveryNotFound(Exception):
    """No such delivery (never made, or its log expired)."""


class DeliveryInFlight(Exception):
    """An attempt of this delivery is under way."""


@dataclass(frozen=True)
class Target:
    """Who an event goes to: a subscription, or a task's own `webhook_url`; and whose the
    delivery is (the subscription's owner, or the task's)."""

    subscriber: str
    subscription_id: str | None = None
    webhook_url: str | None = None
    owner: str | None = None


@dataclass(frozen=True)
class IndexedEvent:
    event_id: str
    subject_id: str
    event_type: str
    # The owner of the task (or subscription) the event is about: replays stay within it.
    owner: str | None = None

    def member(self) -> str:
        return f"{self.event_id}|{self.subject_id}|{self.event_type}|{self.owner or ''}"

    @classmethod
    def parse(cls, member: str) -> IndexedEvent:
        # Entries from before ownership was recorded have three fields.
        event_id, subject_id, event_type, *owner = member.split("|", 3)
        return cls(event_id, subject_id, event_type, (owner[0] if owner else "") or None)


def new_deliveries(event: IndexedEvent, targets: list[Target], *, now: float, created_at: str) -> list[Delivery]:
    """The delivery of `event` to each target, due now; ids derive from (event, target), so
    building them twice yields the same deliveries."""
    return [
        Delivery(
            id=delivery_id(event.event_id, t.subscriber),
            event_id=event.event_id,
            event_type=event.event_type,
            subject_id=event.subject_id,
            subscription_id=t.subscription_id,
            owner=t.owner,
            webhook_url=t.webhook_url,
            next_attempt_at=now,
            created_at=created_at,
            updated_at=created_at,
        )
        for t in targets
    ]


def _schedule(jobs: Jobs, pipe: Pipeline, retries: list[Retry]) -> None:
    for retry in retries:
        jobs.retry(retry.delivery_id, attempt=retry.attempt, delay_s=retry.delay_s, pipeline=pipe)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _index_of(delivery: Delivery) -> str:
    """Its subscription's delivery index; "" for a task's own `webhook_url`."""
    return deliveries_index_key(delivery.subscription_id) if delivery.subscription_id else ""


def _health_commands(health: Mapping[str, Health], ttl_s: int) -> list[tuple[Arg, ...]]:
    """A few commands per subscription with attempts in the plan (not per attempt). They run even
    for a first attempt that another record of the same delivery beat (a re-sent fan-out batch),
    so in that rare case the streak counts an attempt twice: it is shown, never decided on."""
    commands: list[tuple[Arg, ...]] = []
    for sub_id, h in health.items():
        key = subscription_health_key(sub_id)
        if h.success_at is not None:
            commands.append(("HSET", key, "success_at", repr(h.success_at), "streak", h.failures))
        else:
            commands.append(("HINCRBY", key, "streak", h.failures))
        if h.failure_at is not None and h.failure is not None:
            commands.append(("HSET", key, "failure_at", repr(h.failure_at), "failure", h.failure))
        commands.append(("EXPIRE", key, ttl_s))
    return commands


class CreateDeliveries:
    """`create_deliveries.lua`: store each delivery unless it exists (expiring after `ttl_s`), due
    at `due_at`, in its subscription's index. Returns, in order, whether each was created."""

    def __init__(self, redis: Redis) -> None:
        self._script = load(redis, "create_deliveries")

    def __call__(self, *, deliveries: Sequence[Delivery], ttl_s: int, due_at: float) -> list[bool]:
        keys: list[str] = [DELIVERIES_DUE]
        args: list[Arg] = [ttl_s, due_at]
        for d in deliveries:
            keys += [delivery_key(d.id), _index_of(d)]
            args += [d.id, d.dumps()]
        return [bool(flag) for flag in self._script(keys=keys, args=args)]


class ClaimAttempts:
    """`claim_attempts.lua`: claim each delivery's next attempt for `ttl_s` seconds, moving the
    deadline of each one won to `due_at`. Returns, in order, whether each was won."""

    def __init__(self, redis: Redis) -> None:
        self._script = load(redis, "claim_attempts")

    def __call__(self, *, deliveries: Sequence[Delivery], ttl_s: int, due_at: float) -> list[bool]:
        keys = [DELIVERIES_DUE, *(delivery_lease_key(d.id, d.attempt_count) for d in deliveries)]
        won = self._script(keys=keys, args=[ttl_s, due_at, *(d.id for d in deliveries)])
        return [bool(flag) for flag in won]


@dataclass(frozen=True)
class Attempted:
    """A delivery to save with `SaveAttempts`: as it now stands, the deadline of its next attempt
    (None: it is final), and whether it is not stored yet (a fan-out's first attempt)."""

    delivery: Delivery
    due_at: float | None
    first: bool


class SaveAttempts:
    """`save_attempts.lua`: save each attempted delivery (expiring after `ttl_s`; a first one only
    if absent, joining its subscription's index), set or drop its deadline, and run `then`
    (commands as `spelled`) in the same atomic call. Returns how many deliveries it was given."""

    def __init__(self, redis: Redis) -> None:
        self._script = load(redis, "save_attempts")

    def __call__(self, *, attempted: Sequence[Attempted], ttl_s: int, then: Sequence[Arg] = ()) -> int:
        keys: list[str] = [DELIVERIES_DUE]
        args: list[Arg] = [ttl_s, len(attempted)]
        for item in attempted:
            d = item.delivery
            keys += [delivery_key(d.id), _index_of(d) if item.first else ""]
            args += [d.id, d.dumps(), "" if item.due_at is None else item.due_at, "1" if item.first else "0"]
        return int(self._script(keys=keys, args=[*args, *then]))


class Restarted(IntEnum):
    """What `RestartDelivery` did."""

    IN_FLIGHT = -1  # an attempt is under way: nothing written
    CHANGED = 0  # saved by someone else since it was read: nothing written
    RESTARTED = 1


class RestartDelivery:
    """`restart_delivery.lua`: replace the delivery, as `read`, with `restarted` (expiring after
    `ttl_s`, due at `due_at`) unless its next attempt is in flight or it changed since it was read."""

    def __init__(self, redis: Redis) -> None:
        self._script = load(redis, "restart_delivery")

    def __call__(self, *, read: bytes | str, restarted: Delivery, ttl_s: int, due_at: float) -> Restarted:
        # A restart keeps the attempt count: the lease of its next attempt is the one read.
        d = restarted
        keys = [delivery_key(d.id), DELIVERIES_DUE, delivery_lease_key(d.id, d.attempt_count)]
        return Restarted(int(self._script(keys=keys, args=[read, d.dumps(), ttl_s, due_at, d.id])))


class DeliveryStore:
    def __init__(self, redis: Redis, *, ttl_s: int, lease_s: float) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.lease_s = lease_s
        self._create = CreateDeliveries(redis)
        self._claim = ClaimAttempts(redis)
        self._save = SaveAttempts(redis)
        self._restart = RestartDelivery(redis)

    def create_many(self, event: IndexedEvent, targets: list[Target], *, now: float, created_at: str) -> list[Delivery]:
        """The delivery of `event` to each target, created pending and due if missing (SET NX on a
        derived id), so creating them twice yields the same deliveries, never twice as many."""
        fresh = new_deliveries(event, targets, now=now, created_at=created_at)
        flags = self._create(deliveries=fresh, ttl_s=self.ttl_s, due_at=now + self.lease_s)
        created = {d.id for d, flag in zip(fresh, flags, strict=True) if flag}
        if len(created) == len(fresh):
            return fresh
        current = {d.id: d for d in self.get_many([d.id for d in fresh if d.id not in created])}
        return [d if d.id in created else current[d.id] for d in fresh if d.id in created or d.id in current]

    def create_test(self, event: IndexedEvent, body: bytes, target: Target, *, now: float) -> Delivery:
        """Keep a test event's body under its own subject (a sample id, never a real task's) for
        as long as its delivery's log, and create its one delivery, pending and due. A test event
        has no outbox entry and no place in EVENT_INDEX: it reaches this target only, never a
        replay; the send job, retries and the sweep treat its delivery like any other."""
        with self.redis.pipeline() as pipe:
            pipe.rpush(events_key(event.subject_id), body)
            pipe.expire(events_key(event.subject_id), self.ttl_s)
            pipe.execute()
        [delivery] = self.create_many(event, [target], now=now, created_at=unix_to_iso(now))
        return delivery

    def stored(self, dlv_ids: list[str]) -> set[str]:
        """Which of these deliveries are stored (had an attempt recorded, or were replayed)."""
        if not dlv_ids:
            return set()
        found = self.redis.mget([delivery_key(i) for i in dlv_ids])
        return {i for i, raw in zip(dlv_ids, found, strict=True) if raw is not None}

    def get(self, dlv_id: str) -> Delivery | None:
        raw = self.redis.get(delivery_key(dlv_id))
        return Delivery.loads(raw) if raw is not None else None

    def get_many(self, dlv_ids: list[str]) -> list[Delivery]:
        if not dlv_ids:
            return []
        return [Delivery.loads(raw) for raw in self.redis.mget([delivery_key(i) for i in dlv_ids]) if raw is not None]

    def claim(self, deliveries: list[Delivery], *, now: float, lease_s: float) -> list[Delivery]:
        """The deliveries whose next attempt this caller now owns for `lease_s` seconds."""
        if not deliveries:
            return []
        ttl = max(math.ceil(lease_s), 1)
        # The due score lies past the lease key's expiry, so the sweep's re-send can claim it.
        won = self._claim(deliveries=deliveries, ttl_s=ttl, due_at=now + ttl + 1)
        return [d for d, ok in zip(deliveries, won, strict=True) if ok]

    def in_flight(self, delivery: Delivery) -> bool:
        return bool(self.redis.exists(delivery_lease_key(delivery.id, delivery.attempt_count)))

    def save_attempted(self, plan: Plan, *, jobs: Jobs) -> None:
        """Write a plan in one atomic script call: the attempted deliveries and their due times,
        the failure runs ended, the retry jobs (scheduled on `jobs`' queues) and the release of a
        fan-out batch's outbox entries."""
        attempted = [Attempted(save.delivery, save.due, save.first) for save in plan.saves]
        # An attempt's lease is left to expire: a job that loaded the delivery before this save
        # and claims that attempt number only now finds it taken, and sends nothing twice.
        commands: list[tuple[Arg, ...]] = []
        if plan.failure_runs_ended:
            commands.append(("DEL", *(failing_key(sub) for sub in plan.failure_runs_ended)))
        commands += _health_commands(plan.health, self.ttl_s)
        release = plan.release
        if release is not None:
            if release.events:
                commands.append(("ZADD", EVENT_INDEX, *(a for e in release.events for a in (0, e.member()))))
            commands += [("LREM", release.inflight, 1, entry) for entry in release.entries]
        then = spelled(*commands)
        if plan.retries:
            # RQ builds its jobs through a pipeline: its commands are recorded and run here.
            then += recorded(self.redis, lambda pipe: _schedule(jobs, pipe, plan.retries))
        self._save(attempted=attempted, ttl_s=self.ttl_s, then=then)

    def save_finished(self, deliveries: list[Delivery]) -> None:
        """Save deliveries that reached a final status without an attempt."""
        with self.redis.pipeline() as pipe:
            for d in deliveries:
                pipe.set(delivery_key(d.id), d.dumps(), ex=self.ttl_s)
                pipe.zrem(DELIVERIES_DUE, d.id)
            pipe.execute()

    def restart(self, dlv_id: str, *, now: float) -> tuple[Delivery, bool]:
        """Make a delivery pending again with a fresh retry round, due now (manual retry, replay),
        as a compare-and-set: a concurrent attempt's save is never overwritten with a stale copy.
        Returns it and whether it was restarted (False: it already waits to go now, so concurrent
        retries make one attempt). Raises DeliveryInFlight while an attempt is under way,
        DeliveryNotFound once it expired."""
        key = delivery_key(dlv_id)
        while True:
            raw = self.redis.get(key)
            if raw is None:
                raise DeliveryNotFound(dlv_id)
            d = Delivery.loads(raw)
            if d.due(now) and d.round_attempts == 0:
                if self.in_flight(d):
                    raise DeliveryInFlight(dlv_id)
                return d, False
            restarted = d.model_copy(
                update={
                    "status": DeliveryStatus.PENDING,
                    "round_attempts": 0,
                    "next_attempt_at": now,
                    "updated_at": unix_to_iso(now),
                }
            )
            done = self._restart(read=raw, restarted=restarted, ttl_s=self.ttl_s, due_at=now + self.lease_s)
            if done is Restarted.RESTARTED:
                return restarted, True
            if done is Restarted.IN_FLIGHT:
                raise DeliveryInFlight(dlv_id)

    def overdue(self, now: float, limit: int = 500) -> list[str]:
        return [_text(i) for i in self.redis.zrangebyscore(DELIVERIES_DUE, "-inf", now, start=0, num=limit)]

    def set_due(self, due: dict[str, float]) -> None:
        if due:
            self.redis.zadd(DELIVERIES_DUE, due)

    def forget_due(self, dlv_ids: list[str]) -> None:
        if dlv_ids:
            self.redis.zrem(DELIVERIES_DUE, *dlv_ids)

    def for_subscription(
        self, sub_id: str, *, status: DeliveryStatus | None, cursor: str | None, limit: int, scan_cap: int = 2000
    ) -> tuple[list[Delivery], str | None]:
        """Newest first; with a status filter, scans at most `scan_cap` ids per page."""
        found: list[Delivery] = []
        upper = f"({cursor}" if cursor else "+"
        scanned = 0
        while len(found) < limit and scanned < scan_cap:
            ids = [_text(i) for i in self.redis.zrevrangebylex(deliveries_index_key(sub_id), upper, "-", start=0, num=100)]
            if not ids:
                return found, None
            for d_id, d in zip(ids, self._aligned(ids), strict=True):
                scanned += 1
                upper = f"({d_id}"
                if d is not None and (status is None or d.status is status):
                    found.append(d)
                    if len(found) == limit:
                        break
        more = bool(self.redis.zrevrangebylex(deliveries_index_key(sub_id), upper, "-", start=0, num=1))
        return found, upper[1:] if more else None

    def _aligned(self, dlv_ids: list[str]) -> list[Delivery | None]:
        raws = self.redis.mget([delivery_key(i) for i in dlv_ids])
        return [Delivery.loads(raw) if raw is not None else None for raw in raws]

    def subscription_deliveries_between(self, sub_id: str, since_s: float, until_s: float | None) -> list[Delivery]:
        upper = f"({id_floor('dlv', until_s)}" if until_s is not None else "+"
        ids = [_text(i) for i in self.redis.zrangebylex(deliveries_index_key(sub_id), f"[{id_floor('dlv', since_s)}", upper)]
        return [d for d in self._aligned(ids) if d is not None]

    def events_between(self, since_s: float, until_s: float | None) -> list[IndexedEvent]:
        upper = f"({id_floor('evt', until_s)}" if until_s is not None else "+"
        members = self.redis.zrangebylex(EVENT_INDEX, f"[{id_floor('evt', since_s)}", upper)
        return [IndexedEvent.parse(_text(member)) for member in members]

    def event_body(self, subject_id: str, event_id: str) -> bytes | None:
        """The event exactly as stored: these bytes are signed and sent on every attempt."""
        return self.event_bodies([(subject_id, event_id)]).get(event_id)

    def event_bodies(self, events: list[tuple[str, str]]) -> dict[str, bytes]:
        """Event id → the event as stored, for these (subject id, event id) pairs; one round trip."""
        subjects = list(dict.fromkeys(subject for subject, _ in events))
        with self.redis.pipeline(transaction=False) as pipe:
            for subject in subjects:
                pipe.lrange(events_key(subject), 0, -1)
            stored = dict(zip(subjects, pipe.execute(), strict=True))
        wanted = {event_id for _, event_id in events}
        bodies: dict[str, bytes] = {}
        for raws in stored.values():
            for raw in raws:
                event_id = orjson.loads(raw).get("id")
                if event_id in wanted:
                    bodies[event_id] = raw if isinstance(raw, bytes) else str(raw).encode()
        return bodies

    def trim(self, now: float, subscription_ids: list[str]) -> None:
        """Drop index entries older than the log TTL (their deliveries have expired already)."""
        cutoff = now - self.ttl_s
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebylex(EVENT_INDEX, "-", f"({id_floor('evt', cutoff)}")
            for sub_id in subscription_ids:
                pipe.zremrangebylex(deliveries_index_key(sub_id), "-", f"({id_floor('dlv', cutoff)}")
            pipe.execute()
