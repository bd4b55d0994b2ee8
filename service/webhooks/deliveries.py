"""The Redis store for deliveries and their attempt logs: the only module that knows their keys.

Keys (prefix `kr:`):
  kr:dlv:{id}                 a delivery with its attempt log (JSON); expires `webhook_log_ttl_s`
                              after its last change
  kr:sub:{sub}:dlvs           a subscription's delivery ids (lexicographic: ids sort by event time)
  kr:dlvdue                   pending delivery id → unix time by which its next attempt must have
                              been recorded; the sweep re-sends whatever is overdue, so a worker
                              killed mid-attempt or a scheduled job lost with Redis loses nothing
  kr:dlvlease:{id}:{attempt}  held while one attempt is in flight, so two jobs never send it twice
                              at once; keyed by attempt number so it never needs deleting
  kr:evidx                    every event fanned out ("{event id}|{subject id}|{type}", lexicographic
                              by time) so a replay can reach events a subscription never had
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from redis import Redis
from redis.client import Pipeline

from service.domain.ids import id_floor
from service.store import PREFIX, events_key
from service.webhooks.models import Delivery, unix_to_iso
from service.webhooks.policy import DeliveryStatus, delivery_id
from service.webhooks.store import deliveries_index_key

DUE = f"{PREFIX}:dlvdue"
EVENT_INDEX = f"{PREFIX}:evidx"

ScriptArg = bytes | str | int | float
# Called inside the MULTI that saves an attempt, so a retry is scheduled iff the attempt is saved.
ScheduleRetry = Callable[[Pipeline, Delivery, float], None]

# Why Lua: a fan-out touches every one of its deliveries twice (create, save). As one script call
# per batch instead of several pipelined commands per delivery, the client packs and parses one
# command, not hundreds (redis-py's per-command cost was most of the engine's time), and sorted-set
# writes are batched into one ZADD/ZREM per batch. `unpack` is chunked: Lua's stack is finite.

# KEYS: DUE, EVENT_INDEX, then (delivery key, its first lease key, subscription index or "") each.
# ARGV: ttl, due score, event index member, lease ttl (0: no lease), then (delivery id, JSON) each.
# With a lease, a delivery created here is claimed for its first attempt by the caller (a fan-out).
_CREATE = """
redis.call('ZADD', KEYS[2], 0, ARGV[3])
local created, due = {}, {}
for i = 1, (#KEYS - 2) / 3 do
  local k, id = 3 * i, ARGV[3 + 2 * i]
  if redis.call('SET', KEYS[k], ARGV[4 + 2 * i], 'NX', 'EX', ARGV[1]) then
    created[i] = 1
    if ARGV[4] ~= '0' then redis.call('SET', KEYS[k + 1], '1', 'EX', ARGV[4]) end
    due[#due + 1] = ARGV[2]
    due[#due + 1] = id
  else
    created[i] = 0
  end
  if KEYS[k + 2] ~= '' then redis.call('ZADD', KEYS[k + 2], 0, id) end
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

# KEYS: DUE, then n delivery keys, then keys to delete (failure runs that a success ended).
# ARGV: ttl, n, then (delivery id, delivery JSON, due score or "" when final) per delivery.
_SAVE = """
local n, done, due = tonumber(ARGV[2]), {}, {}
for i = 1, n do
  local j = 3 * i
  redis.call('SET', KEYS[1 + i], ARGV[j + 1], 'EX', ARGV[1])
  if ARGV[j + 2] == '' then
    done[#done + 1] = ARGV[j]
  else
    due[#due + 1] = ARGV[j + 2]
    due[#due + 1] = ARGV[j]
  end
end
for j = 1, #done, 1000 do redis.call('ZREM', KEYS[1], unpack(done, j, math.min(j + 999, #done))) end
for j = 1, #due, 2000 do redis.call('ZADD', KEYS[1], unpack(due, j, math.min(j + 1999, #due))) end
for i = n + 2, #KEYS do redis.call('DEL', KEYS[i]) end
return n
"""


def delivery_key(dlv_id: str) -> str:
    return f"{PREFIX}:dlv:{dlv_id}"


def lease_key(dlv_id: str, attempt: int) -> str:
    return f"{PREFIX}:dlvlease:{dlv_id}:{attempt}"


@dataclass(frozen=True)
class Target:
    """Who an event goes to: a subscription, or a task's own `webhook_url`."""

    subscriber: str
    subscription_id: str | None = None
    webhook_url: str | None = None


@dataclass(frozen=True)
class IndexedEvent:
    event_id: str
    subject_id: str
    event_type: str


@dataclass(frozen=True)
class Finished:
    """An attempted delivery's new state, and the wait before its next attempt if it retries."""

    delivery: Delivery
    retry_in_s: float | None = None


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

    def create_many(
        self, event: IndexedEvent, targets: list[Target], *, now: float, created_at: str, lease_s: float | None
    ) -> tuple[list[Delivery], set[str]]:
        """The delivery of `event` to each target, created if missing (SET NX on a derived id),
        so running a fan-out twice yields the same deliveries, never twice as many. Returns them
        with the ids this call created; with `lease_s`, the caller holds their first attempt."""
        fresh = [
            Delivery(
                id=delivery_id(event.event_id, t.subscriber),
                event_id=event.event_id,
                event_type=event.event_type,
                subject_id=event.subject_id,
                subscription_id=t.subscription_id,
                webhook_url=t.webhook_url,
                next_attempt_at=now,
                created_at=created_at,
                updated_at=created_at,
            )
            for t in targets
        ]
        ttl = max(math.ceil(lease_s if lease_s is not None else self.lease_s), 1)
        keys: list[str] = [DUE, EVENT_INDEX]
        member = f"{event.event_id}|{event.subject_id}|{event.event_type}"
        args: list[ScriptArg] = [self.ttl_s, now + ttl + 1, member, ttl if lease_s is not None else 0]
        for d in fresh:
            keys += [delivery_key(d.id), lease_key(d.id, 0), deliveries_index_key(d.subscription_id) if d.subscription_id else ""]
            args += [d.id, d.dumps()]
        flags = self._create(keys=keys, args=args)
        created = {d.id for d, flag in zip(fresh, flags) if flag}
        if len(created) == len(fresh):
            return fresh, created
        current = {d.id: d for d in self.get_many([d.id for d in fresh if d.id not in created])}
        return [d if d.id in created else current[d.id] for d in fresh if d.id in created or d.id in current], created

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

    def save_attempted(
        self, finished: list[Finished], *, now: float, schedule_retry: ScheduleRetry, clear: list[str] | None = None
    ) -> None:
        """Save attempted deliveries, their due times and retry jobs in one transaction, and
        delete the `clear` keys (failure runs ended by a success) with them."""
        keys: list[str] = [DUE]
        args: list[ScriptArg] = [self.ttl_s, len(finished)]
        for item in finished:
            d = item.delivery
            keys.append(delivery_key(d.id))
            due = "" if item.retry_in_s is None else now + item.retry_in_s + self.lease_s
            args += [d.id, d.dumps(), due]
        keys += clear or []
        with self.redis.pipeline() as pipe:
            self._save(keys=keys, args=args, client=pipe)
            # The attempts are over, so their leases go now rather than linger until they expire.
            if finished:
                pipe.delete(*(lease_key(item.delivery.id, item.delivery.attempt_count - 1) for item in finished))
            for item in finished:
                if item.retry_in_s is not None:
                    schedule_retry(pipe, item.delivery, item.retry_in_s)
            pipe.execute()

    def save_finished(self, deliveries: list[Delivery]) -> None:
        """Save deliveries that reached a final status without an attempt."""
        with self.redis.pipeline() as pipe:
            for d in deliveries:
                pipe.set(delivery_key(d.id), d.dumps(), ex=self.ttl_s)
                pipe.zrem(DUE, d.id)
            pipe.execute()

    def restart(self, deliveries: list[Delivery], *, now: float) -> list[Delivery]:
        """Make deliveries pending again with a fresh retry round, due now (manual retry, replay)."""
        stamp = unix_to_iso(now)
        restarted = [
            d.model_copy(
                update={"status": DeliveryStatus.PENDING, "round_attempts": 0, "next_attempt_at": now, "updated_at": stamp}
            )
            for d in deliveries
        ]
        with self.redis.pipeline() as pipe:
            for d in restarted:
                pipe.set(delivery_key(d.id), d.dumps(), ex=self.ttl_s)
                pipe.zadd(DUE, {d.id: now + self.lease_s})
            pipe.execute()
        return restarted

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
        events = []
        for member in members:
            event_id, subject_id, event_type = _text(member).split("|", 2)
            events.append(IndexedEvent(event_id, subject_id, event_type))
        return events

    def event_body(self, subject_id: str, event_id: str) -> bytes | None:
        """The event exactly as stored: these bytes are signed and sent on every attempt."""
        for raw in self.redis.lrange(events_key(subject_id), 0, -1):
            if orjson.loads(raw).get("id") == event_id:
                return raw if isinstance(raw, bytes) else str(raw).encode()
        return None

    def trim(self, now: float, subscription_ids: list[str]) -> None:
        """Drop index entries older than the log TTL (their deliveries have expired already)."""
        cutoff = now - self.ttl_s
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebylex(EVENT_INDEX, "-", f"({id_floor('evt', cutoff)}")
            for sub_id in subscription_ids:
                pipe.zremrangebylex(deliveries_index_key(sub_id), "-", f"({id_floor('dlv', cutoff)}")
            pipe.execute()
