"""`/v1/deliveries/{id}` (read, retry by hand) and the secret that signs tasks' own `webhook_url`s."""

from __future__ import annotations

import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.auth import Caller
from service.errors import ApiError
from service.routes.context import caller, runtime
from service.runtime import Runtime
from service.webhooks.deliveries import DeliveryInFlight, DeliveryNotFound
from service.webhooks.models import Delivery

GONE = "no such delivery (delivery logs expire after WEBHOOK_LOG_TTL_S)"


def owned_delivery(rt: Runtime, who: Caller, delivery_id: str) -> Delivery:
    """The delivery, if it exists and this caller may see it (to anyone else it does not exist)."""
    delivery = rt.deliveries.get(delivery_id)
    if delivery is None or not who.owns(delivery.owner):
        raise ApiError(404, "not_found", GONE)
    return delivery


async def get_delivery(request: Request) -> JSONResponse:
    delivery = await run_in_threadpool(owned_delivery, runtime(request), caller(request), request.path_params["delivery_id"])
    return JSONResponse(delivery.public())


def retry(rt: Runtime, who: Caller, delivery_id: str) -> Delivery:
    """Send a delivery again now, with a fresh retry round, whatever its status (the API's retry
    and the dashboard's "Retry now"). Concurrent retries of one delivery make one attempt: each is
    a compare-and-set, refused while an attempt is in flight, and an attempt is claimed by its
    number."""
    delivery = owned_delivery(rt, who, delivery_id)
    if delivery.subscription_id is not None:
        sub = rt.subscriptions.get(delivery.subscription_id)
        if sub is None:
            raise ApiError(409, "subscription_deleted", "the subscription of this delivery was deleted")
        if not sub.enabled:
            raise ApiError(409, "subscription_disabled", "enable the subscription before retrying its deliveries")
    try:
        restarted, fresh = rt.deliveries.restart(delivery.id, now=time.time())
    except DeliveryInFlight as exc:
        raise ApiError(409, "delivery_in_flight", "an attempt of this delivery is in flight; retry when it lands") from exc
    except DeliveryNotFound as exc:
        raise ApiError(404, "not_found", GONE) from exc
    if fresh:  # else a retry is already on its way: this one joins it
        rt.jobs.deliver([restarted.id])
    return restarted


async def retry_delivery(request: Request) -> JSONResponse:
    restarted = await run_in_threadpool(retry, runtime(request), caller(request), request.path_params["delivery_id"])
    return JSONResponse(restarted.public(), status_code=202)


async def default_secret(request: Request) -> JSONResponse:
    """The `whsec_` secret that signs deliveries to the `webhook_url` of this key's tasks
    (Replicate's route): each key has its own, so no client can sign for another's receivers."""
    who = caller(request)
    return JSONResponse({"secret": await run_in_threadpool(runtime(request).subscriptions.default_secret, who.key_id)})


routes = [
    Route("/v1/deliveries/{delivery_id}", get_delivery, methods=["GET"]),
    Route("/v1/deliveries/{delivery_id}/retry", retry_delivery, methods=["POST"]),
    Route("/v1/webhooks/default/secret", default_secret, methods=["GET"]),
]
