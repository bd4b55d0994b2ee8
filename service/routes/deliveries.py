"""`/v1/deliveries/{id}` (read, retry by hand) and the secret that signs tasks' own `webhook_url`s."""

from __future__ import annotations

import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.errors import ApiError
from service.routes.context import api_key, runtime
from service.routes.subscriptions import stores
from service.webhooks.models import Delivery
from service.webhooks.policy import DeliveryStatus


async def _existing(request: Request) -> Delivery:
    delivery = await run_in_threadpool(stores(request).deliveries.get, request.path_params["delivery_id"])
    if delivery is None:
        raise ApiError(404, "not_found", "no such delivery (delivery logs expire after WEBHOOK_LOG_TTL_S)")
    return delivery


async def get_delivery(request: Request) -> JSONResponse:
    api_key(request)
    return JSONResponse((await _existing(request)).public())


async def retry_delivery(request: Request) -> JSONResponse:
    """Send a delivery again now, with a fresh retry round, whatever its status."""
    rt = runtime(request)
    api_key(request)
    delivery = await _existing(request)
    webhooks = stores(request)

    def restart() -> Delivery:
        if delivery.status is DeliveryStatus.PENDING and webhooks.deliveries.in_flight(delivery):
            raise ApiError(409, "delivery_in_flight", "an attempt of this delivery is in flight; retry when it lands")
        if delivery.subscription_id is not None:
            sub = webhooks.subscriptions.get(delivery.subscription_id)
            if sub is None:
                raise ApiError(409, "subscription_deleted", "the subscription of this delivery was deleted")
            if not sub.enabled:
                raise ApiError(409, "subscription_disabled", "enable the subscription before retrying its deliveries")
        [restarted] = webhooks.deliveries.restart([delivery], now=time.time())
        rt.jobs.deliver([restarted.id])
        return restarted

    return JSONResponse((await run_in_threadpool(restart)).public(), status_code=202)


async def default_secret(request: Request) -> JSONResponse:
    """The `whsec_` secret that signs deliveries to a task's own `webhook_url` (Replicate's route)."""
    api_key(request)
    return JSONResponse({"secret": await run_in_threadpool(stores(request).subscriptions.default_secret)})


routes = [
    Route("/v1/deliveries/{delivery_id}", get_delivery, methods=["GET"]),
    Route("/v1/deliveries/{delivery_id}/retry", retry_delivery, methods=["POST"]),
    Route("/v1/webhooks/default/secret", default_secret, methods=["GET"]),
]
