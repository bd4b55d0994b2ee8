"""The Redis store for subscriptions (key names: `service/keys.py`).

A subscription's operational events (`subscription.disabled`) are kept under `events_key`, laid out
like a task's events, so the one fan-out delivers both.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from redis import Redis
from redis.client import Pipeline

from service import outbox
from service.cas import CompareAndSet, recorded, spelled
from service.domain.clock import now_iso, unix_to_iso
from service.domain.events import SUBSCRIPTION_DISABLED, Event
from service.domain.ids import new_id
from service.keys import (
    SUBSCRIPTIONS,
    SUBSCRIPTIONS_VERSION,
    default_secret_key,
    deliveries_index_key,
    events_key,
    failing_key,
    owner_subscriptions_key,
    subscription_health_key,
    subscription_key,
)
from service.live import log as live_log
from service.live.log import DEFAULT_LIMITS, LogLimits
from service.redis_async import Arg
from service.webhooks.models import (
    Subscription,
    SubscriptionHealth,
    SubscriptionWithHealth,
)
from service.webhooks.policy import DisableReason
from service.webhooks.signing import generate_secret


@dataclass(frozen=True)
class SubscriptionPage:
    subscriptions: list[Subscription]
    next_cursor: str | None


def _new_version() -> str:
    # Random rather than a counter: a Redis that lost its last writes cannot repeat an old value.
    return secrets.token_hex(8)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _iso(unix: str | None) -> str | None:
    return unix_to_iso(float(unix)) if unix else None


class SubscriptionStore:
    def __init__(self, redis: Redis, *, event_ttl_s: int, limits: LogLimits = DEFAULT_LIMITS) -> None:
        self.redis = redis
        self.event_ttl_s = event_ttl_s
        self.limits = limits
        self._enabled: tuple[object, list[Subscription]] | None = None
        self._cas = CompareAndSet(redis)

    def create(self, sub: Subscription) -> None:
        with self.redis.pipeline() as pipe:
            pipe.set(subscription_key(sub.id), sub.dumps())
            pipe.zadd(SUBSCRIPTIONS, {sub.id: 0})
            if sub.owner:
                pipe.zadd(owner_subscriptions_key(sub.owner), {sub.id: 0})
            pipe.set(SUBSCRIPTIONS_VERSION, _new_version())
            pipe.execute()

    def get(self, sub_id: str) -> Subscription | None:
        raw = self.redis.get(subscription_key(sub_id))
        return Subscription.loads(raw) if raw is not None else None

    def get_many(self, sub_ids: list[str]) -> dict[str, Subscription]:
        if not sub_ids:
            return {}
        raws = self.redis.mget([subscription_key(i) for i in sub_ids])
        subs = [Subscription.loads(raw) for raw in raws if raw is not None]
        return {s.id: s for s in subs}

    def with_health(self, subs: Sequence[Subscription]) -> list[SubscriptionWithHealth]:
        """These subscriptions as shown, each with its health (one round trip for them all)."""
        health = self.health([s.id for s in subs])
        return [SubscriptionWithHealth.of(s, health[s.id]) for s in subs]

    def enabled(self) -> list[Subscription]:
        """Every enabled subscription; one GET when nothing changed since the last call."""
        version = self.redis.get(SUBSCRIPTIONS_VERSION)
        if self._enabled is not None and self._enabled[0] == version:
            return self._enabled[1]
        # Read after the version: a change racing this load bumps it, so the next call reloads.
        found = [s for s in self.get_many(self.ids()).values() if s.enabled]
        self._enabled = (version, found)
        return found

    def ids(self, owner: str | None = None) -> list[str]:
        """Every subscription id, or one owner's."""
        return [_text(i) for i in self.redis.zrange(owner_subscriptions_key(owner) if owner else SUBSCRIPTIONS, 0, -1)]

    def list(self, *, cursor: str | None, limit: int, owner: str | None = None) -> SubscriptionPage:
        """Newest first (one owner's, or everyone's with None), with the same cursor scheme as tasks."""
        upper = f"({cursor}" if cursor else "+"
        index = owner_subscriptions_key(owner) if owner else SUBSCRIPTIONS
        ids = [_text(i) for i in self.redis.zrevrangebylex(index, upper, "-", start=0, num=limit + 1)]
        more = len(ids) > limit
        ids = ids[:limit]
        found = self.get_many(ids)
        subs = [found[i] for i in ids if i in found]
        return SubscriptionPage(subs, ids[-1] if more and ids else None)

    def update(self, sub_id: str, change: Callable[[Subscription], Subscription]) -> Subscription | None:
        """Apply `change` as a compare-and-set, so a concurrent rotation or disable is never
        overwritten. Re-enabling a subscription also forgets its failure run, so it gets a
        fresh 5 days."""
        key = subscription_key(sub_id)
        while True:
            raw = self.redis.get(key)
            if raw is None:
                return None
            before = Subscription.loads(raw)
            after = change(before)
            commands: list[tuple[Arg, ...]] = [("SET", key, after.dumps()), ("SET", SUBSCRIPTIONS_VERSION, _new_version())]
            if after.enabled and not before.enabled:
                commands.append(("DEL", failing_key(sub_id)))
            if self._cas(key, raw, spelled(*commands)):
                return after

    def delete(self, sub: Subscription) -> bool:
        """Remove a subscription and what only it uses; its deliveries stay readable by id
        until their log TTL (they expire; so does its index, if a delivery in flight re-adds it)."""
        with self.redis.pipeline() as pipe:
            pipe.delete(subscription_key(sub.id))
            pipe.zrem(SUBSCRIPTIONS, sub.id)
            if sub.owner:
                pipe.zrem(owner_subscriptions_key(sub.owner), sub.id)
            pipe.set(SUBSCRIPTIONS_VERSION, _new_version())
            pipe.delete(failing_key(sub.id), deliveries_index_key(sub.id), subscription_health_key(sub.id))
            deleted, *_ = pipe.execute()
        return bool(deleted)

    def disable(self, sub_id: str, reason: DisableReason) -> Event | None:
        """Disable an enabled subscription and record a `subscription.disabled` event, with its
        outbox entry and live log entries, in the same compare-and-set. None if already disabled."""
        key = subscription_key(sub_id)
        while True:
            raw = self.redis.get(key)
            if raw is None or not (sub := Subscription.loads(raw)).enabled:
                return None
            now = now_iso()
            disabled = sub.model_copy(
                update={"enabled": False, "disabled_reason": reason.value, "disabled_at": now, "updated_at": now}
            )
            # Only a disable appends here, and disables of one subscription are serialised by the
            # compare-and-set on its key, so this count cannot go stale before the write.
            sequence = int(self.redis.llen(events_key(sub_id))) + 1
            event = Event(id=new_id("evt"), type=SUBSCRIPTION_DISABLED, created_at=now, sequence=sequence, data=disabled.public())
            # Bound here, not closed over: each try records the writes of its own read.
            build = partial(self._write_disabled, disabled=disabled, event=event)
            if self._cas(key, raw, recorded(self.redis, build)):
                return event

    def _write_disabled(self, pipe: Pipeline, *, disabled: Subscription, event: Event) -> None:
        """The writes of `disable`: the subscription, its event with its log entries, its outbox
        entry; its failure run ends."""
        sub_id = disabled.id
        pipe.set(subscription_key(sub_id), disabled.dumps())
        pipe.set(SUBSCRIPTIONS_VERSION, _new_version())
        pipe.rpush(events_key(sub_id), event.dumps())
        live_log.append(pipe, self.limits, disabled.owner, sub_id, event)
        pipe.expire(events_key(sub_id), self.event_ttl_s)
        pipe.delete(failing_key(sub_id))
        outbox.push(pipe, sub_id, event.id)

    def failing_for(self, sub_ids: set[str], now: float, *, run_ttl_s: int) -> dict[str, float]:
        """How long each of these subscriptions has failed without a success, starting the run
        now for any that was not failing. (A success ends a run: callers delete `failing_key`.)
        A run's key expires after `run_ttl_s`, longer than any run lasts before it disables the
        subscription, so one left behind by a deleted subscription goes too."""
        ordered = sorted(sub_ids)
        if not ordered:
            return {}
        with self.redis.pipeline(transaction=False) as pipe:
            for sub_id in ordered:
                pipe.set(failing_key(sub_id), repr(now), nx=True, ex=run_ttl_s)
                pipe.get(failing_key(sub_id))
            started = pipe.execute()[1::2]
        return {sub_id: max(now - float(since or now), 0.0) for sub_id, since in zip(ordered, started, strict=True)}

    def health(self, sub_ids: Sequence[str]) -> dict[str, SubscriptionHealth]:
        """Each subscription's health as its attempts' records left it; one round trip."""
        if not sub_ids:
            return {}
        with self.redis.pipeline(transaction=False) as pipe:
            for sub_id in sub_ids:
                pipe.hgetall(subscription_health_key(sub_id))
                pipe.get(failing_key(sub_id))
            found = pipe.execute()
        health: dict[str, SubscriptionHealth] = {}
        for sub_id, fields, since in zip(sub_ids, found[::2], found[1::2], strict=True):
            got = {_text(k): _text(v) for k, v in fields.items()}
            health[sub_id] = SubscriptionHealth(
                success_at=_iso(got.get("success_at")),
                streak=int(got.get("streak", 0)),
                failure_at=_iso(got.get("failure_at")),
                failure=got.get("failure"),
                failing_since=_iso(_text(since) if since is not None else None),
            )
        return health

    def default_secret(self, owner: str | None) -> str:
        """The secret for the `webhook_url`s of this key's tasks (by key id), made on first use
        and then stable. Per key: one client must not be able to sign deliveries to another's."""
        key = default_secret_key(owner)
        self.redis.set(key, generate_secret(), nx=True)
        return _text(self.redis.get(key) or b"")

