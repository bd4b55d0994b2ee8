"""Delivery: fan events out to their subscribers (from the dispatcher thread), attempt
deliveries (RQ `send` jobs: retries, manual retries, replays), and the sweep that re-sends
deliveries whose worker died mid-attempt.

At-least-once, in two stages. A fan-out's first attempts are sent before anything is written:
the event's outbox entry stays in its dispatcher's in-flight list until every one of them is
recorded, and a killed dispatcher's list goes back to the outbox, whose re-run sends only what was
never recorded. A recorded delivery that is still pending carries a deadline in `DELIVERIES_DUE`, and
each retry holds a lease: a killed worker's retries pass their deadline and the sweep sends them
again. The same `webhook-id` (the event id) lets receivers drop the rare duplicate.
"""

from __future__ import annotations

import atexit
import logging
import math
import time
from dataclasses import dataclass
from functools import lru_cache

import orjson

from service import outbox
from service.keys import DELIVERY_SWEEP_LOCK
from service.runtime import Runtime
from service.webhooks.deliveries import (
    DeliveryStore,
    IndexedEvent,
    Target,
    new_deliveries,
)
from service.webhooks.models import TASK_WEBHOOK, Delivery, Subscription
from service.webhooks.planner import Rules
from service.webhooks.policy import DeliveryStatus, matches, receives
from service.webhooks.sender import WebhookSender
from service.webhooks.store import SubscriptionStore
from workers.context import get_runtime
from workers.delivery_engine import DeliveryEngine, Outgoing
from workers.fanout import FanOutBatch
from workers.recorder import Recorder

log = logging.getLogger(__name__)

# RQ's scheduler keeps times in whole seconds, so a scheduled retry may start up to 1 s early.
SCHEDULER_SLACK_S = 1.0
SWEEP_BATCH = 200


@dataclass(frozen=True)
class DeliveryContext:
    rt: Runtime
    subscriptions: SubscriptionStore
    deliveries: DeliveryStore
    recorder: Recorder
    engine: DeliveryEngine


def build_context(rt: Runtime) -> DeliveryContext:
    s = rt.settings
    sender = WebhookSender(
        timeout_s=s.webhook_timeout_s, concurrency=s.webhook_concurrency, allow_private=s.allow_private_webhooks
    )
    rules = Rules(schedule_s=s.webhook_retry_schedule_s, disable_after_s=s.webhook_disable_after_s, lease_s=s.webhook_lease_s)
    recorder = Recorder(rt.subscriptions, rt.deliveries, rt.jobs, rules)
    return DeliveryContext(
        rt=rt,
        subscriptions=rt.subscriptions,
        deliveries=rt.deliveries,
        recorder=recorder,
        engine=DeliveryEngine(sender, recorder, capacity=s.webhook_concurrency),
    )


@lru_cache(maxsize=1)
def get_context() -> DeliveryContext:
    """The worker process's stores and its one pooled delivery engine (closed at exit, after
    the attempts in flight have landed and been recorded, as far as one attempt timeout allows)."""
    ctx = build_context(get_runtime())
    atexit.register(ctx.engine.close, drain_s=ctx.rt.settings.webhook_timeout_s + 1)
    return ctx


def fan_out(batch: FanOutBatch) -> None:
    """Start the first attempt of each outbox entry's event to every matching subscription (and
    the task's own `webhook_url`; the subject is a task, or a subscription for
    `subscription.disabled`) and return (on the dispatcher thread). The write recording the
    batch's last first attempt also releases its entries; if recording fails, the batch goes back
    to its dispatcher. Safe to re-run: deliveries already recorded are left to their own retries,
    the rest are sent again."""
    ctx = get_context()
    enabled = ctx.subscriptions.enabled()
    admin_ids = ctx.rt.keys.admin_ids
    pairs = [outbox.parse(e) for e in batch.entries]
    bodies = ctx.deliveries.event_bodies(pairs)
    now = time.time()
    subs: dict[str, Subscription] = {}
    events: list[IndexedEvent] = []
    planned: list[Delivery] = []
    for subject_id, event_id in pairs:
        body = bodies.get(event_id)
        if body is None:
            log.warning("fan-out of a missing event subject=%s event_id=%s", subject_id, event_id)
            continue
        event = orjson.loads(body)
        owner = event["data"].get("owner")
        matching = {
            s.id: s for s in enabled if matches(s.event_types, event["type"]) and receives(s.owner, owner, admin_ids)
        }
        targets = [Target(sub_id, subscription_id=sub_id, owner=sub.owner) for sub_id, sub in matching.items()]
        webhook_url = event["data"].get("webhook_url") if event["type"].startswith("task.") else None
        if webhook_url:
            targets.append(Target(TASK_WEBHOOK, webhook_url=webhook_url, owner=owner))
        indexed = IndexedEvent(event_id, subject_id, event["type"], owner)
        events.append(indexed)
        planned += new_deliveries(indexed, targets, now=now, created_at=event["created_at"])
        subs.update(matching)
    stored = ctx.deliveries.stored([d.id for d in planned])
    unsent = [d for d in planned if d.id not in stored]
    outgoing, abandoned = _prepare(ctx, unsent, bodies, subs, now)
    if abandoned:
        ctx.deliveries.save_finished(abandoned)
    batch.sending(events, len(outgoing))
    if outgoing:
        ctx.engine.submit(outgoing, batch)
    else:
        ctx.recorder.first_attempts(batch, [])
    log.info("fan-out events=%d deliveries=%d started=%d", len(events), len(planned), len(outgoing))


def send(delivery_ids: list[str], replay: list[str] | None = None) -> None:
    """Attempt these deliveries if they are still due (a retry, manual retry, replay or sweep);
    `replay`: [subscription id, replay id] of the replay this batch belongs to."""
    ctx = get_context()
    attempt(ctx, ctx.deliveries.get_many(delivery_ids))
    if replay:
        ctx.rt.replays.batch_done(*replay)


def lease_for(ctx: DeliveryContext, count: int) -> float:
    """How long `count` attempts started now may take: behind the engine's outstanding attempts,
    and a batch larger than the pool waits for free slots, so the lease covers those waits too."""
    s = ctx.rt.settings
    ahead = count + ctx.engine.outstanding
    return s.webhook_lease_s + s.webhook_timeout_s * (math.ceil(ahead / max(s.webhook_concurrency, 1)) - 1)


def attempt(ctx: DeliveryContext, deliveries: list[Delivery]) -> int:
    """Claim the due deliveries among these stored ones and start sending them concurrently;
    every outcome is recorded as it lands. Returns how many were started."""
    now = time.time()
    due = [d for d in deliveries if d.due(now, slack_s=SCHEDULER_SLACK_S)]
    mine = ctx.deliveries.claim(due, now=now, lease_s=lease_for(ctx, len(due)))
    subs = ctx.subscriptions.get_many(sorted({d.subscription_id for d in mine if d.subscription_id}))
    outgoing, abandoned = _prepare(ctx, mine, {}, subs, now)
    if abandoned:
        ctx.deliveries.save_finished(abandoned)
    ctx.engine.submit(outgoing)
    return len(outgoing)


def _prepare(
    ctx: DeliveryContext, claimed: list[Delivery], bodies: dict[str, bytes], subs: dict[str, Subscription], now: float
) -> tuple[list[Outgoing], list[Delivery]]:
    # A task's own webhook_url is signed with its owner's default secret (one read per owner).
    default_secrets = {d.owner: "" for d in claimed if d.subscription_id is None}
    for owner in default_secrets:
        default_secrets[owner] = ctx.subscriptions.default_secret(owner)
    outgoing: list[Outgoing] = []
    abandoned: list[Delivery] = []
    for d in claimed:
        if d.event_id not in bodies:
            body = ctx.deliveries.event_body(d.subject_id, d.event_id)
            if body is None:
                abandoned.append(d.abandoned("event_expired: the event is no longer stored", now))
                continue
            bodies[d.event_id] = body
        if d.subscription_id is None:
            outgoing.append(Outgoing(d, d.webhook_url or "", bodies[d.event_id], [default_secrets[d.owner]]))
            continue
        sub = subs.get(d.subscription_id)
        if sub is None:
            abandoned.append(d.abandoned("subscription_deleted", now))
        elif not sub.enabled:
            abandoned.append(d.abandoned(f"subscription_disabled: {sub.disabled_reason or 'by request'}", now))
        else:
            outgoing.append(Outgoing(d, sub.url, bodies[d.event_id], sub.signing_secrets(now)))
    return outgoing, abandoned


def sweep_deliveries(rt: Runtime) -> int:
    """Re-send deliveries past their deadline (their worker died, or their retry job was lost);
    returns how many. Also trims the delivery indexes to the log TTL."""
    if not rt.redis.set(DELIVERY_SWEEP_LOCK, "1", nx=True, ex=max(int(rt.settings.sweep_interval_s), 1)):
        return 0
    ctx = get_context()
    now = time.time()
    overdue = ctx.deliveries.overdue(now)
    found = {d.id: d for d in ctx.deliveries.get_many(overdue)}
    ctx.deliveries.forget_due([i for i in overdue if i not in found or found[i].status is not DeliveryStatus.PENDING])
    pending = [d for d in found.values() if d.status is DeliveryStatus.PENDING]
    resend = [d.id for d in pending if d.due(now, slack_s=SCHEDULER_SLACK_S)]
    # Waiting for its deadline again means the next sweep only looks if this re-send is lost too.
    ctx.deliveries.set_due({d.id: max(d.next_attempt_at or now, now) + rt.settings.webhook_lease_s for d in pending})
    for start in range(0, len(resend), SWEEP_BATCH):
        rt.jobs.deliver(resend[start : start + SWEEP_BATCH])
    if resend:
        log.warning("delivery sweep re-sent %d overdue deliveries", len(resend))
    ctx.deliveries.trim(now, ctx.subscriptions.ids())
    return len(resend)
