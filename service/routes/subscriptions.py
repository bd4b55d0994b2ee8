"""`/v1/subscriptions`: REST-hooks style subscriber endpoints, their secrets, delivery log and replay."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.domain.clock import now_iso, unix_to_iso
from service.domain.ids import new_id
from service.errors import ApiError, validation_error
from service.routes.bodies import json_object, read_json
from service.routes.context import api_key, runtime
from service.routes.params import enum_param, limit_param
from service.runtime import Runtime
from service.webhooks.deliveries import DeliveryStore, Target
from service.webhooks.models import (
    ReplayRequest,
    Subscription,
    SubscriptionCreate,
    SubscriptionUpdate,
)
from service.webhooks.policy import DeliveryStatus, SigningSecret, matches, rotate
from service.webhooks.signing import generate_secret
from service.webhooks.ssrf import UnsafeWebhookURL, check_url_syntax
from service.webhooks.store import SubscriptionStore

# A replay is prepared inside the request, so bound the work one request can ask for.
MAX_REPLAY = 10_000
SEND_BATCH = 200
Body = TypeVar("Body", bound=BaseModel)


@dataclass(frozen=True)
class WebhookStores:
    subscriptions: SubscriptionStore
    deliveries: DeliveryStore


def stores(request: Request) -> WebhookStores:
    """The webhook stores over the runtime's Redis, built once per app."""
    found: WebhookStores | None = getattr(request.app.state, "webhook_stores", None)
    if found is None:
        rt = runtime(request)
        ttl = rt.settings.webhook_log_ttl_s
        found = WebhookStores(
            SubscriptionStore(rt.redis, event_ttl_s=ttl),
            DeliveryStore(rt.redis, ttl_s=ttl, lease_s=rt.settings.webhook_lease_s),
        )
        request.app.state.webhook_stores = found
    return found


async def _body(request: Request, model: type[Body]) -> Body:
    raw = await read_json(request, runtime(request).settings.max_body_bytes)
    try:
        return model.model_validate(json_object(raw))
    except ValidationError as exc:
        raise validation_error(exc) from exc


def _check_url(rt: Runtime, url: str) -> None:
    try:
        check_url_syntax(url, allow_private=rt.settings.allow_private_webhooks)
    except UnsafeWebhookURL as exc:
        raise ApiError(422, "validation_error", "invalid request: url", {"url": exc.reason}) from exc


async def _existing(request: Request) -> Subscription:
    sub = await run_in_threadpool(stores(request).subscriptions.get, request.path_params["sub_id"])
    if sub is None:
        raise ApiError(404, "not_found", "no such subscription")
    return sub


async def create_subscription(request: Request) -> JSONResponse:
    rt = runtime(request)
    api_key(request)
    req = await _body(request, SubscriptionCreate)
    _check_url(rt, req.url)
    now = now_iso()
    secret = generate_secret()
    sub = Subscription(
        id=new_id("sub"),
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
    await run_in_threadpool(stores(request).subscriptions.create, sub)
    # The secret is shown here and on rotation only, as Svix and Stripe do.
    return JSONResponse({**sub.public(), "secret": secret}, status_code=201, headers={"location": f"/v1/subscriptions/{sub.id}"})


async def list_subscriptions(request: Request) -> JSONResponse:
    api_key(request)
    limit = limit_param(request)
    cursor = request.query_params.get("cursor") or None
    page = await run_in_threadpool(lambda: stores(request).subscriptions.list(cursor=cursor, limit=limit))
    return JSONResponse({"data": [s.public() for s in page.subscriptions], "next_cursor": page.next_cursor})


async def get_subscription(request: Request) -> JSONResponse:
    api_key(request)
    return JSONResponse((await _existing(request)).public())


def _apply_update(sub: Subscription, req: SubscriptionUpdate) -> Subscription:
    now = now_iso()
    changes: dict[str, Any] = {name: getattr(req, name) for name in req.model_fields_set if name != "enabled"}
    if req.enabled is True and not sub.enabled:
        changes.update(enabled=True, disabled_reason=None, disabled_at=None)
    elif req.enabled is False and sub.enabled:
        changes.update(enabled=False, disabled_reason="manual", disabled_at=now)
    changes["updated_at"] = now
    return sub.model_copy(update=changes)


async def update_subscription(request: Request) -> JSONResponse:
    rt = runtime(request)
    api_key(request)
    req = await _body(request, SubscriptionUpdate)
    if "url" in req.model_fields_set:
        if req.url is None:
            raise ApiError(422, "validation_error", "invalid request: url", {"url": "must not be null"})
        _check_url(rt, req.url)
    if "event_types" in req.model_fields_set and req.event_types is None:
        raise ApiError(422, "validation_error", "invalid request: event_types", {"event_types": "must not be null"})
    sub_id = request.path_params["sub_id"]
    updated = await run_in_threadpool(stores(request).subscriptions.update, sub_id, lambda s: _apply_update(s, req))
    if updated is None:
        raise ApiError(404, "not_found", "no such subscription")
    return JSONResponse(updated.public())


async def delete_subscription(request: Request) -> Response:
    api_key(request)
    if not await run_in_threadpool(stores(request).subscriptions.delete, request.path_params["sub_id"]):
        raise ApiError(404, "not_found", "no such subscription")
    return Response(status_code=204)


async def rotate_secret(request: Request) -> JSONResponse:
    rt = runtime(request)
    api_key(request)
    grace = rt.settings.webhook_secret_grace_s
    secret = generate_secret()
    now = time.time()

    def change(sub: Subscription) -> Subscription:
        return sub.model_copy(update={"secrets": rotate(sub.secrets, secret, now=now, grace_s=grace), "updated_at": unix_to_iso(now)})

    updated = await run_in_threadpool(stores(request).subscriptions.update, request.path_params["sub_id"], change)
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
    api_key(request)
    sub = await _existing(request)
    params = request.query_params
    status = enum_param(request, "status", DeliveryStatus)
    limit = limit_param(request)
    cursor = params.get("cursor") or None
    found, next_cursor = await run_in_threadpool(
        lambda: stores(request).deliveries.for_subscription(sub.id, status=status, cursor=cursor, limit=limit)
    )
    return JSONResponse({"data": [d.public() for d in found], "next_cursor": next_cursor})


def prepare_replay(rt: Runtime, webhooks: WebhookStores, sub: Subscription, req: ReplayRequest) -> list[str]:
    """Make the replayed deliveries pending again (creating any the subscription never had, when
    replaying all events), and return their ids for sending."""
    now = time.time()
    since = req.since.timestamp()
    until = req.until.timestamp() if req.until else None
    existing = webhooks.deliveries.subscription_deliveries_between(sub.id, since, until)
    if req.failed_only:
        chosen = [d for d in existing if d.status is DeliveryStatus.FAILED]
    else:
        # Pending deliveries are already on their way; everything else goes again.
        chosen = [d for d in existing if d.status is not DeliveryStatus.PENDING]
    ids = [d.id for d in webhooks.deliveries.restart(chosen[:MAX_REPLAY], now=now)]
    if not req.failed_only:
        had = {d.event_id for d in existing}
        target = [Target(sub.id, subscription_id=sub.id)]
        for event in webhooks.deliveries.events_between(since, until):
            if len(ids) >= MAX_REPLAY:
                break
            if event.event_id in had or event.subject_id == sub.id or not matches(sub.event_types, event.event_type):
                continue
            made = webhooks.deliveries.create_many(event, target, now=now, created_at=unix_to_iso(now))
            ids.extend(d.id for d in made if d.status is DeliveryStatus.PENDING)
    for start in range(0, len(ids), SEND_BATCH):
        rt.jobs.deliver(ids[start : start + SEND_BATCH])
    return ids


async def replay(request: Request) -> JSONResponse:
    rt = runtime(request)
    api_key(request)
    req = await _body(request, ReplayRequest)
    if req.until is not None and req.until <= req.since:
        raise ApiError(422, "validation_error", "invalid request: until", {"until": "must be later than since"})
    sub = await _existing(request)
    if not sub.enabled:
        raise ApiError(409, "subscription_disabled", "enable the subscription before replaying to it")
    ids = await run_in_threadpool(prepare_replay, rt, stores(request), sub, req)
    return JSONResponse({"replayed": len(ids), "truncated": len(ids) >= MAX_REPLAY}, status_code=202)


routes = [
    Route("/v1/subscriptions", create_subscription, methods=["POST"]),
    Route("/v1/subscriptions", list_subscriptions, methods=["GET"]),
    Route("/v1/subscriptions/{sub_id}", get_subscription, methods=["GET"]),
    Route("/v1/subscriptions/{sub_id}", update_subscription, methods=["PATCH"]),
    Route("/v1/subscriptions/{sub_id}", delete_subscription, methods=["DELETE"]),
    Route("/v1/subscriptions/{sub_id}/rotate-secret", rotate_secret, methods=["POST"]),
    Route("/v1/subscriptions/{sub_id}/deliveries", list_deliveries, methods=["GET"]),
    Route("/v1/subscriptions/{sub_id}/replay", replay, methods=["POST"]),
]
