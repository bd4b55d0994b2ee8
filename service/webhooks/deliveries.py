"""The Redis store for deliveries and their attempt logs: the only module that knows their keys.

A fan-out's deliveries are stored once, when their first attempt is recorded: until then the
event's outbox entry, held in its dispatcher's in-flight list, is what answers for them.

Keys (prefix `kr:`):
  kr:dlv:{id}                 a delivery with its attempt log (JSON); expires `webhook_log_ttl_s`
                              after its last change
  kr:sub:{sub}:dlvs           a subscription's delivery ids (lexicographic: ids sort by event time);
                              expires with its newest delivery
  kr:dlvdue                   pending delivery id → unix time by which its next attempt must have
                              been recorded; the sweep re-sends whatever is overdue, so a worker
                              killed mid-attempt or a scheduled job lost with Redis loses nothing
  kr:dlvlease:{id}:{attempt}  taken by the job making that attempt, so no attempt is made twice;
                              keyed by attempt number and left to expire, never deleted
  kr:evidx                    every event fanned out ("{event id}|{subject id}|{type}", lexicographic
                              by time) so a replay can reach events a subscription never had
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson
from redis import Redis
from redis.client import Pipeline

from service.cas import RUN_SPELLED, Arg, recorded, spelled
from service.domain.clock import unix_to_iso
from service.domain.ids import id_floor
from service.jobs import Jobs
from service.store import PREFIX, events_key
from service.webhooks.models import Delivery
from service.webhooks.planner import Plan, Retry
from service.webhooks.policy import DeliveryStatus, delivery_id
from service.webhooks.store import deliveries_index_key, failing_key

DUE = f"{PREFIX}:dlvdue"
EVENT_INDEX = f"{PREFIX}:evidx"

# Why Lua: a fan-out writes hundreds of deliveries at once. As one script call per batch instead
# of several pipelined commands per delivery, the client packs and parses one command, not
# hundreds (redis-py's per-command cost was most of the engine's time), and sorted-set writes are
# batched into one ZADD/ZREM per batch. `unpack` is chunked: Lua's stack is finite.

# KEYS: DUE, then (delivery key, subscription index or "") each. ARGV: ttl, due score, then
# (delivery id, JSON) each. Returns 1 for each delivery created, 0 for each found.
_CREATE = """
local created, due = {}, {}
for i = 1, (#KEYS - 1) / 2 do
  local k, id = 2 * i, ARGV[1 + 2 * i]
  if redis.call('SET', KEYS[k], ARGV[2 + 2 * i], 'NX', 'EX', ARGV[1]) then
    created[i] = 1
    due[#due + 1] = ARGV[2]
    due[#due + 1] = id
  else
    created[i] = 0
  end
  if KEYS[k + 1] ~= '' then
    redis.call('ZADD', KEYS[k + 1], 0, id)
    redis.call('EXPIRE', KEYS[k + 1], ARGV[1])
  end
end
for j = 1, #due, 2000 do redis.call('ZADD', KEYS[1], unpack(due, j, math.min(j + 1999, #due))) end
return created
"""

# KEYS: DUE, then one lease key per delivery. ARGV: lease ttl, due score, then the delivery ids.
_CLAIM = """
local won, due = {}, {}
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[1]) then
    won[i - 1] = 1
    due[#due + 1] = ARGV[2]
    due[#due + 1] = ARGV[i + 1]
  else
    won[i - 1] = 0
  end
end
for j = 1, #due, 2000 do redis.call('ZADD', KEYS[1], unpack(due, j, math.min(j + 1999, #due))) end
return won
"""

# KEYS: the delivery, DUE, the lease of its next attempt. ARGV: the delivery as read, as restarted,
# ttl, due score, id. -1: an attempt is in flight; 0: it changed since it was read; 1: restarted.
_RESTART = """
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
return 1
"""

# KEYS: DUE, then (delivery key, subscription index or "") per delivery. ARGV: ttl, n, then
# (delivery id, JSON, due score or "" when final, "1" if not stored yet) per delivery, then further
# commands spelled as in service.cas (lease and failure-run deletes, retry jobs, outbox releases),
# so that all of it is one atomic call. A delivery not stored yet (a fan-out's first attempt) is
# written only if no other attempt was recorded first, and joins its subscription's index.
_SAVE = """
local n, done, due = tonumber(ARGV[2]), {}, {}
for i = 1, n do
  local a, k = 4 * i - 1, 2 * i
  local wrote = true
  if ARGV[a + 3] == '1' then
    wrote = redis.call('SET', KEYS[k], ARGV[a + 1], 'NX', 'EX', ARGV[1])
    if wrote and KEYS[k + 1] ~= '' then
      redis.call('ZADD', KEYS[k + 1], 0, ARGV[a])
      redis.call('EXPIRE', KEYS[k + 1], ARGV[1])
    end
  else
    redis.call('SET', KEYS[k], ARGV[a + 1], 'EX', ARGV[1])
    if ARGV[a + 2] == '' then done[#done + 1] = ARGV[a] end
  end
  if wrote and ARGV[a + 2] ~= '' then
    due[#due + 1] = ARGV[a + 2]
    due[#due + 1] = ARGV[a]
  end
end
for j = 1, #done, 1000 do redis.call('ZREM', KEYS[1], unpack(done, j, math.min(j + 999, #done))) end
for j = 1, #due, 2000 do redis.call('ZADD', KEYS[1], unpack(due, j, math.min(j + 1999, #due))) end
local i = 4 * n + 3
""" + RUN_SPELLED + """
return n
"""


def delivery_key(dlv_id: str) -> str:
    return f"{PREFIX}:dlv:{dlv_id}"


def lease_key(dlv_id: str, attempt: int) -> str:
    return f"{PREFIX}:dlvlease:{dlv_id}:{attempt}"


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


class DeliveryStore:
    def __init__(self, redis: Redis, *, ttl_s: int, lease_s: float) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.lease_s = lease_s
        self._create = redis.register_script(_CREATE)
        self._claim = redis.register_script(_CLAIM)
        self._save = redis.register_script(_SAVE)
        self._restart = redis.register_script(_RESTART)

    def create_many(self, event: IndexedEvent, targets: list[Target], *, now: float, created_at: str) -> list[Delivery]:
        """The delivery of `event` to each target, created pending and due if missing (SET NX on a
        derived id), so creating them twice yields the same deliveries, never twice as many."""
        fresh = new_deliveries(event, targets, now=now, created_at=created_at)
        keys: list[str] = [DUE]
        args: list[Arg] = [self.ttl_s, now + self.lease_s]
        for d in fresh:
            keys += [delivery_key(d.id), deliveries_index_key(d.subscription_id) if d.subscription_id else ""]
            args += [d.id, d.dumps()]
        flags = self._create(keys=keys, args=args)
        created = {d.id for d, flag in zip(fresh, flags) if flag}
        if len(created) == len(fresh):
            return fresh
        current = {d.id: d for d in self.get_many([d.id for d in fresh if d.id not in created])}
        return [d if d.id in created else current[d.id] for d in fresh if d.id in created or d.id in current]

    def stored(self, dlv_ids: list[str]) -> set[str]:
        """Which of these deliveries are stored (had an attempt recorded, or were replayed)."""
        if not dlv_ids:
            return set()
        found = self.redis.mget([delivery_key(i) for i in dlv_ids])
        return {i for i, raw in zip(dlv_ids, found) if raw is not None}

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
        keys = [DUE, *(lease_key(d.id, d.attempt_count) for d in deliveries)]
        # The due score lies past the lease key's expiry, so the sweep's re-send can claim it.
        won = self._claim(keys=keys, args=[ttl, now + ttl + 1, *(d.id for d in deliveries)])
        return [d for d, ok in zip(deliveries, won) if ok]

    def in_flight(self, delivery: Delivery) -> bool:
        return bool(self.redis.exists(lease_key(delivery.id, delivery.attempt_count)))

    def save_attempted(self, plan: Plan, *, jobs: Jobs) -> None:
        """Write a plan in one atomic script call: the attempted deliveries and their due times,
        the failure runs ended, the retry jobs (scheduled on `jobs`' queues) and the release of a
        fan-out batch's outbox entries."""
        keys: list[str] = [DUE]
        args: list[Arg] = [self.ttl_s, len(plan.saves)]
        for save in plan.saves:
            d = save.delivery
            index = deliveries_index_key(d.subscription_id) if save.first and d.subscription_id else ""
            keys += [delivery_key(d.id), index]
            args += [d.id, d.dumps(), "" if save.due is None else save.due, "1" if save.first else "0"]
        # An attempt's lease is left to expire: a job that loaded the delivery before this save
        # and claims that attempt number only now finds it taken, and sends nothing twice.
        commands: list[tuple[Arg, ...]] = []
        if plan.failure_runs_ended:
            commands.append(("DEL", *(failing_key(sub) for sub in plan.failure_runs_ended)))
        release = plan.release
        if release is not None:
            if release.events:
                commands.append(("ZADD", EVENT_INDEX, *(a for e in release.events for a in (0, e.member()))))
            commands += [("LREM", release.inflight, 1, entry) for entry in release.entries]
        args += spelled(*commands)
        if plan.retries:
            # RQ builds its jobs through a pipeline: its commands are recorded and run here.
            args += recorded(self.redis, lambda pipe: _schedule(jobs, pipe, plan.retries))
        self._save(keys=keys, args=args)

    def save_finished(self, deliveries: list[Delivery]) -> None:
        """Save deliveries that reached a final status without an attempt."""
        with self.redis.pipeline() as pipe:
            for d in deliveries:
                pipe.set(delivery_key(d.id), d.dumps(), ex=self.ttl_s)
                pipe.zrem(DUE, d.id)
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
                update={"status": DeliveryStatus.PENDING, "round_attempts": 0, "next_attempt_at": now, "updated_at": unix_to_iso(now)}
            )
            keys = [key, DUE, lease_key(d.id, d.attempt_count)]
            done = self._restart(keys=keys, args=[raw, restarted.dumps(), self.ttl_s, now + self.lease_s, d.id])
            if done == 1:
                return restarted, True
            if done == -1:
                raise DeliveryInFlight(dlv_id)

    def overdue(self, now: float, limit: int = 500) -> list[str]:
        return [_text(i) for i in self.redis.zrangebyscore(DUE, "-inf", now, start=0, num=limit)]

    def set_due(self, due: dict[str, float]) -> None:
        if due:
            self.redis.zadd(DUE, due)

    def forget_due(self, dlv_ids: list[str]) -> None:
        if dlv_ids:
            self.redis.zrem(DUE, *dlv_ids)

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
            for d_id, d in zip(ids, self._aligned(ids)):
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
            stored = dict(zip(subjects, pipe.execute()))
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
