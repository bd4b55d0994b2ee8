"""`/v1/subscriptions`: REST-hooks style subscriber endpoints, their secrets, delivery log and replay."""

from __future__ import annotations

import time
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.auth import Caller
from service.domain.catalog import sample_event
from service.domain.clock import now_iso, unix_to_iso
from service.domain.events import event_type
from service.domain.ids import new_id
from service.errors import ApiError, validation_error
from service.ratelimit import enforce
from service.routes.bodies import json_object, read_json
from service.routes.context import caller, runtime
from service.routes.params import enum_param, limit_param
from service.runtime import Runtime
from service.webhooks.deliveries import (
    DeliveryInFlight,
    DeliveryNotFound,
    IndexedEvent,
    Target,
)
from service.webhooks.models import (
    Delivery,
    ReplayRequest,
    SendTestEvent,
    Subscription,
    SubscriptionCreate,
    SubscriptionUpdate,
    SubscriptionWithHealth,
)
from service.webhooks.policy import (
    DeliveryStatus,
    SigningSecret,
    matches,
    receives,
    rotate,
)
from service.webhooks.signing import generate_secret
from service.webhooks.ssrf import UnsafeWebhookURL, check_url_syntax

# A replay is prepared inside the request, so bound the work one request can ask for.
MAX_REPLAY = 10_000
SEND_BATCH = 200
Body = TypeVar("Body", bound=BaseModel)


async def _body(request: Request, model: type[Body], *, optional: bool = False) -> Body:
    raw = await read_json(request, runtime(request).settings.max_body_bytes, empty={} if optional else None)
    try:
        return model.model_validate(json_object(raw))
    except ValidationError as exc:
        raise validation_error(exc) from exc


def _check_url(rt: Runtime, url: str) -> None:
    try:
        check_url_syntax(url, allow_private=rt.settings.allow_private_webhooks)
    except UnsafeWebhookURL as exc:
        raise ApiError(422, "validation_error", "invalid request: url", {"url": exc.reason}) from exc


def owned_subscription(rt: Runtime, who: Caller, sub_id: str) -> Subscription:
    """The subscription, if it exists and this caller may see it (to anyone else it does not exist)."""
    sub = rt.subscriptions.get(sub_id)
    if sub is None or not who.owns(sub.owner):
        raise ApiError(404, "not_found", "no such subscription")
    return sub


async def _existing(request: Request, who: Caller) -> Subscription:
    return await run_in_threadpool(owned_subscription, runtime(request), who, request.path_params["sub_id"])


async def create_subscription(request: Request) -> JSONResponse:
    rt, who = runtime(request), caller(request)
    req = await _body(request, SubscriptionCreate)
    _check_url(rt, req.url)
    now = now_iso()
    secret = generate_secret()
    sub = Subscription(
        id=new_id("sub"),
        owner=who.key_id,
        url=req.url,
        event_types=req.event_types,
        description=req.description,
        metadata=req.metadata,
        enabled=req.enabled,
        disabled_reason=None if req.enabled else "manual",
        disabled_at=None if req.enabled else now,
        created_at=now,
        updated_at=now,
        secrets=[SigningSecret(secret)],
    )
    await run_in_threadpool(runtime(request).subscriptions.create, sub)
    # The secret is shown here and on rotation only, as Svix and Stripe do.
    return JSONResponse({**sub.public(), "secret": secret}, status_code=201, headers={"location": f"/v1/subscriptions/{sub.id}"})


async def list_subscriptions(request: Request) -> JSONResponse:
    who = caller(request)
    limit = limit_param(request)
    cursor = request.query_params.get("cursor") or None
    owner = None if who.admin else who.key_id
    store = runtime(request).subscriptions

    def load() -> tuple[list[SubscriptionWithHealth], str | None]:
        page = store.list(cursor=cursor, limit=limit, owner=owner)
        return store.with_health(page.subscriptions), page.next_cursor

    shown, next_cursor = await run_in_threadpool(load)
    return JSONResponse({"data": [s.model_dump(mode="json") for s in shown], "next_cursor": next_cursor})


async def get_subscription(request: Request) -> JSONResponse:
    rt, who, sub_id = runtime(request), caller(request), request.path_params["sub_id"]

    def load() -> SubscriptionWithHealth:
        [shown] = rt.subscriptions.with_health([owned_subscription(rt, who, sub_id)])
        return shown

    return JSONResponse((await run_in_threadpool(load)).model_dump(mode="json"))


def _apply_update(sub: Subscription, req: SubscriptionUpdate) -> Subscription:
    now = now_iso()
    changes: dict[str, Any] = {name: getattr(req, name) for name in req.model_fields_set if name != "enabled"}
    if req.enabled is True and not sub.enabled:
        changes.update(enabled=True, disabled_reason=None, disabled_at=None)
    elif req.enabled is False and sub.enabled:
        changes.update(enabled=False, disabled_reason="manual", disabled_at=now)
    changes["updated_at"] = now
    return sub.model_copy(update=changes)


def change_subscription(rt: Runtime, sub: Subscription, req: SubscriptionUpdate) -> Subscription:
    """Apply an update to a subscription the caller owns (the API's PATCH and the dashboard's
    enable and disable buttons)."""
    if "url" in req.model_fields_set:
        if req.url is None:
            raise ApiError(422, "validation_error", "invalid request: url", {"url": "must not be null"})
        _check_url(rt, req.url)
    if "event_types" in req.model_fields_set and req.event_types is None:
        raise ApiError(422, "validation_error", "invalid request: event_types", {"event_types": "must not be null"})
    updated = rt.subscriptions.update(sub.id, lambda s: _apply_update(s, req))
    if updated is None:
        raise ApiError(404, "not_found", "no such subscription")
    return updated


async def update_subscription(request: Request) -> JSONResponse:
    sub = await _existing(request, caller(request))
    req = await _body(request, SubscriptionUpdate)
    return JSONResponse((await run_in_threadpool(change_subscription, runtime(request), sub, req)).public())


async def delete_subscription(request: Request) -> Response:
    sub = await _existing(request, caller(request))
    if not await run_in_threadpool(runtime(request).subscriptions.delete, sub):
        raise ApiError(404, "not_found", "no such subscription")
    return Response(status_code=204)


async def rotate_secret(request: Request) -> JSONResponse:
    rt = runtime(request)
    sub = await _existing(request, caller(request))
    grace = rt.settings.webhook_secret_grace_s
    secret = generate_secret()
    now = time.time()

    def change(sub: Subscription) -> Subscription:
        return sub.model_copy(
            update={"secrets": rotate(sub.secrets, secret, now=now, grace_s=grace), "updated_at": unix_to_iso(now)}
        )

    updated = await run_in_threadpool(runtime(request).subscriptions.update, sub.id, change)
    if updated is None:
        raise ApiError(404, "not_found", "no such subscription")
    previous = [s.expires_at for s in updated.secrets[1:] if s.expires_at is not None]
    return JSONResponse(
        {
            "secret": secret,
            # Until then every delivery carries both signatures, so receivers can switch at leisure.
            "previous_secret_expires_at": unix_to_iso(max(previous)) if previous else None,
        }
    )


async def list_deliveries(request: Request) -> JSONResponse:
    sub = await _existing(request, caller(request))
    params = request.query_params
    status = enum_param(request, "status", DeliveryStatus)
    limit = limit_param(request)
    cursor = params.get("cursor") or None
    found, next_cursor = await run_in_threadpool(
        lambda: runtime(request).deliveries.for_subscription(sub.id, status=status, cursor=cursor, limit=limit)
    )
    return JSONResponse({"data": [d.public() for d in found], "next_cursor": next_cursor})


def prepare_replay(rt: Runtime, sub: Subscription, req: ReplayRequest) -> list[str]:
    """Make the replayed deliveries pending again (creating any the subscription never had, when
    replaying all events about its owner's tasks), and return their ids for sending."""
    now = time.time()
    since = req.since.timestamp()
    until = req.until.timestamp() if req.until else None
    existing = rt.deliveries.subscription_deliveries_between(sub.id, since, until)
    if req.failed_only:
        chosen = [d for d in existing if d.status is DeliveryStatus.FAILED]
    else:
        # Pending deliveries are already on their way; everything else goes again.
        chosen = [d for d in existing if d.status is not DeliveryStatus.PENDING]
    ids: list[str] = []
    for d in chosen[:MAX_REPLAY]:
        try:
            restarted, fresh = rt.deliveries.restart(d.id, now=now)
        except (DeliveryInFlight, DeliveryNotFound):
            continue  # an attempt is under way, or its log just expired: nothing to replay
        if fresh:
            ids.append(restarted.id)
    if not req.failed_only:
        had = {d.event_id for d in existing}
        target = [Target(sub.id, subscription_id=sub.id, owner=sub.owner)]
        admin_ids = rt.keys.admin_ids
        for event in rt.deliveries.events_between(since, until):
            if len(ids) >= MAX_REPLAY:
                break
            if event.event_id in had or event.subject_id == sub.id or not matches(sub.event_types, event.event_type):
                continue
            if not receives(sub.owner, event.owner, admin_ids):
                continue  # another key's task: never this subscription's
            made = rt.deliveries.create_many(event, target, now=now, created_at=unix_to_iso(now))
            ids.extend(d.id for d in made if d.status is DeliveryStatus.PENDING)
    return ids


async def replay(request: Request) -> JSONResponse:
    """Send a subscription's events again. One replay at a time per subscription (409 while one
    is being sent) and REPLAY_RATE_PER_HOUR per API key (429): a receiver cannot be flooded by
    repeating the call."""
    rt, who = runtime(request), caller(request)
    req = await _body(request, ReplayRequest)
    if req.until is not None and req.until <= req.since:
        raise ApiError(422, "validation_error", "invalid request: until", {"until": "must be later than since"})
    sub = await _existing(request, who)
    if not sub.enabled:
        raise ApiError(409, "subscription_disabled", "enable the subscription before replaying to it")
    replay_id = new_id("rpl")
    pending = rt.replays
    if not await run_in_threadpool(pending.begin, sub.id, replay_id):
        raise ApiError(409, "replay_in_progress", "a replay of this subscription is still being sent; try again when it is done")
    try:
        await enforce(rt, "replay", who.key_id, rt.settings.replay_rate_per_hour, window_s=3600)
        ids = await run_in_threadpool(prepare_replay, rt, sub, req)
    except BaseException:
        await run_in_threadpool(pending.end, sub.id, replay_id)
        raise

    def send() -> None:
        batches = [ids[start : start + SEND_BATCH] for start in range(0, len(ids), SEND_BATCH)]
        pending.sending(sub.id, replay_id, len(batches))
        for batch in batches:
            rt.jobs.deliver(batch, replay=(sub.id, replay_id))

    await run_in_threadpool(send)
    return JSONResponse({"replayed": len(ids), "truncated": len(ids) >= MAX_REPLAY}, status_code=202)


async def send_test_event(request: Request) -> JSONResponse:
    """Send a signed sample event of the asked type (default task.succeeded) to this subscription
    only, marked `"test": true`, through the normal delivery path: retried, logged, `webhook-id`
    its event id. Like a retry or replay, refused (409) while the subscription is disabled: its
    deliveries would be abandoned unsent. Sent whatever the subscription's filter: it was asked for."""
    rt, who = runtime(request), caller(request)
    req = await _body(request, SendTestEvent, optional=True)
    sub = await _existing(request, who)
    if not sub.enabled:
        raise ApiError(409, "subscription_disabled", "enable the subscription before sending it a test event")
    await enforce(rt, "test", who.key_id, rt.settings.test_event_rate_per_min, window_s=60)

    def send() -> Delivery:
        now = time.time()
        kind = event_type(req.event_type)
        event_id = new_id("evt")
        subject_id, body = sample_event(kind, event_id=event_id, owner=sub.owner, url=sub.url, now=now)
        target = Target(sub.id, subscription_id=sub.id, owner=sub.owner)
        delivery = rt.deliveries.create_test(IndexedEvent(event_id, subject_id, kind.name, sub.owner), body, target, now=now)
        rt.jobs.deliver([delivery.id])
        return delivery

    return JSONResponse((await run_in_threadpool(send)).public(), status_code=202)


routes = [
    Route("/v1/subscriptions", create_subscription, methods=["POST"]),
    Route("/v1/subscriptions", list_subscriptions, methods=["GET"]),
    Route("/v1/subscriptions/{sub_id}", get_subscription, methods=["GET"]),
    Route("/v1/subscriptions/{sub_id}", update_subscription, methods=["PATCH"]),
    Route("/v1/subscriptions/{sub_id}", delete_subscription, methods=["DELETE"]),
    Route("/v1/subscriptions/{sub_id}/rotate-secret", rotate_secret, methods=["POST"]),
    Route("/v1/subscriptions/{sub_id}/deliveries", list_deliveries, methods=["GET"]),
    Route("/v1/subscriptions/{sub_id}/replay", replay, methods=["POST"]),
    Route("/v1/subscriptions/{sub_id}/test", send_test_event, methods=["POST"]),
]
