"""`GET /openapi.json`: the API described in OpenAPI 3.1, generated from the models that validate
requests and shape responses, so the document cannot drift from what the service accepts.

Bodies and resources come from pydantic (`TaskRequest`, `Task`, `Event`, the webhook models);
this module only adds what pydantic cannot know: the operations, their parameters and status
codes, and the public views that differ from the stored models (no secrets, ISO times). The
`webhooks` section has every event type of the catalog (`service.domain.catalog`), with the
schema `GET /v1/event-types` gives.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.domain.catalog import data_name, payload_schema
from service.domain.events import BY_NAME, CATALOG, Event
from service.domain.status import TaskStatus
from service.domain.tasks import AUTO, Task, TaskRequest
from service.providers import registry
from service.webhooks.models import (
    Delivery,
    ReplayRequest,
    SendTestEvent,
    Subscription,
    SubscriptionCreate,
    SubscriptionUpdate,
    SubscriptionWithHealth,
)
from service.webhooks.policy import ALL_EVENT_TYPES, DeliveryStatus

REF = "#/components/schemas/{model}"
Schema = dict[str, Any]

ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "fields": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        }
    },
}

ERROR_MEANING = {
    400: "Malformed request (invalid JSON, bad query parameter or header)",
    401: "Missing or unknown API key (or, for the receiver, a wrong callback token)",
    404: "No such resource",
    409: "Conflict with the resource's current state",
    413: "Request body too large",
    415: "Body is not application/json",
    422: "The body is valid JSON but not a valid request; `fields` names what is wrong",
    410: "Gone: the stored copy was deleted after its retention period",
    416: "The Range asks for nothing inside the object",
    429: "Too many requests for this API key; retry after `Retry-After` seconds",
    503: "Storage temporarily unavailable; retry after `Retry-After` seconds",
}
# Statuses whose answers always carry Retry-After.
RETRY_AFTER = {429, 503}

NULLABLE_STRING: Schema = {"anyOf": [{"type": "string"}, {"type": "null"}]}
LIMIT = {
    "name": "limit",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
}
CURSOR = {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "The same key with the same body returns the same task; with another body, 409",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}

def _video_operation(task: Schema) -> Schema:
    """The stored video: bytes (whole or one range), not modified, or a redirect to S3."""
    operation = _operation("Our stored copy of the task's video (docs/storage.md)", {}, [404, 410, 416], parameters=[task])
    video = {"video/*": {"schema": {"type": "string", "format": "binary"}}}
    operation["responses"] |= {
        "200": {"description": "The video; `ETag` is its sha256", "content": video},
        "206": {"description": "One range of it (`Content-Range`)", "content": video},
        "304": {"description": "Not modified (`If-None-Match` matched the ETag)"},
        "307": {"description": "The copy is in S3: a short-lived presigned URL in `Location`"},
    }
    operation["parameters"].append({"name": "Range", "in": "header", "required": False, "schema": {"type": "string"}})
    return operation


# Standard Webhooks headers: what every delivery carries.
WEBHOOK_HEADERS = [
    {
        "name": "webhook-id",
        "in": "header",
        "required": True,
        "description": "The event id: the same on every attempt, so a receiver can drop duplicates",
        "schema": {"type": "string"},
    },
    {
        "name": "webhook-timestamp",
        "in": "header",
        "required": True,
        "description": "Unix seconds when this attempt was signed",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    {
        "name": "webhook-signature",
        "in": "header",
        "required": True,
        "description": 'v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}"> under the subscription\'s'
        " secret; several, space-separated, while a rotated secret still signs",
        "schema": {"type": "string"},
    },
]


def _ref(name: str) -> Schema:
    return {"$ref": REF.format(model=name)}


def _page(item: str) -> Schema:
    return {
        "type": "object",
        "required": ["data", "next_cursor"],
        "properties": {"data": {"type": "array", "items": _ref(item)}, "next_cursor": NULLABLE_STRING},
    }


def _path(name: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _status_filter(values: list[str]) -> Schema:
    return {"name": "status", "in": "query", "required": False, "schema": {"type": "string", "enum": values}}


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _operation(
    summary: str,
    ok: dict[int, Schema | None],
    errors: list[int],
    *,
    body: str | None = None,
    parameters: list[Schema] | None = None,
    secured: bool = True,
    body_required: bool = True,
) -> Schema:
    responses: dict[str, Schema] = {}
    for status, schema in ok.items():
        responses[str(status)] = {"description": "Success"} | ({"content": _json(schema)} if schema is not None else {})
    for status in sorted({*errors, 503} | ({401} if secured else set()) - set(ok)):
        response: Schema = {"description": ERROR_MEANING[status], "content": _json(_ref("Error"))}
        if status in RETRY_AFTER:
            response["headers"] = {"Retry-After": {"required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
        responses[str(status)] = response
    operation: Schema = {"summary": summary, "responses": responses}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {"required": body_required, "content": _json(_ref(body))}
    operation["security"] = [{"bearer": []}] if secured else []
    return operation


def _components() -> dict[str, Schema]:
    _, top = models_json_schema(
        [
            (TaskRequest, "validation"),
            (SubscriptionCreate, "validation"),
            (SubscriptionUpdate, "validation"),
            (ReplayRequest, "validation"),
            (SendTestEvent, "validation"),
            (Task, "serialization"),
            (Event, "serialization"),
            (Subscription, "serialization"),
            (SubscriptionWithHealth, "serialization"),
            (Delivery, "serialization"),
        ],
        ref_template=REF,
    )
    schemas: dict[str, Schema] = top["$defs"]
    # Provider names are whatever the registry holds: a choice pydantic cannot see in the models.
    names = list(registry.names())
    for model, name, choices in (
        ("TaskRequest", "provider", [*names, AUTO]),
        ("Task", "provider", names),
        ("Task", "requested_provider", [*names, AUTO]),
        ("SubmitAttempt", "provider", names),
    ):
        schemas[model]["properties"][name]["enum"] = choices
    schemas["SendTestEvent"]["properties"]["event_type"]["enum"] = list(BY_NAME)
    # Clients may send the duration as a number; it is stored as the string providers want.
    duration = schemas["TaskRequest"]["properties"]["duration"]
    schemas["TaskRequest"]["properties"]["duration"] = {
        "anyOf": [{"type": "string", "enum": ["5", "10"]}, {"type": "integer", "enum": [5, 10]}],
        "default": duration.get("default", "5"),
    }
    # What the API shows: a subscription without its secrets, a delivery without bookkeeping.
    subscription = copy.deepcopy(schemas.pop("Subscription"))
    subscription["properties"].pop("secrets")
    schemas.pop("SigningSecret", None)
    schemas["Subscription"] = subscription
    created = copy.deepcopy(subscription)
    created["properties"]["secret"] = {"type": "string", "pattern": "^whsec_", "description": "Shown once, at creation"}
    created["required"] = [*created["required"], "secret"]
    created["title"] = "CreatedSubscription"
    schemas["CreatedSubscription"] = created
    delivery = schemas["Delivery"]
    delivery["properties"].pop("round_attempts")
    delivery["properties"]["next_attempt_at"] = {**NULLABLE_STRING, "description": "When the next attempt is due (pending only)"}
    # Every type an event may carry (the models keep it a plain string).
    schemas["Event"]["properties"]["type"]["enum"] = list(ALL_EVENT_TYPES)
    schemas["Error"] = ERROR
    return schemas


def _webhooks() -> dict[str, Schema]:
    """Each event type as OpenAPI 3.1 describes a webhook: the POST we make, its body's schema
    (the catalog's, with `data` pointing at the components) and what each answer means."""
    hooks: dict[str, Schema] = {}
    for event_type in CATALOG:
        body = payload_schema(event_type, REF.format(model=data_name(event_type)))
        hooks[event_type.name] = {
            "post": {
                "summary": event_type.name,
                "description": event_type.description,
                "parameters": copy.deepcopy(WEBHOOK_HEADERS),
                "requestBody": {"required": True, "content": _json(body)},
                "responses": {
                    "2XX": {"description": "Delivered (any 2xx within WEBHOOK_TIMEOUT_S)"},
                    "410": {"description": "Gone: the subscription is disabled and the delivery fails"},
                    "default": {"description": "Anything else, or no answer in time: retried on the backoff schedule"},
                },
            }
        }
    return hooks


def _cancel_operation(task: Schema) -> Schema:
    operation = _operation("Cancel a task", {200: _ref("Task")}, [404, 409], parameters=[task])
    operation["description"] = (
        "Moves a queued, submitted or running task to `canceled` and emits `task.canceled`. Neither "
        "provider can cancel a task: we stop asking about it and ignore its later news, but the "
        "provider may still finish the video and charge for it."
    )
    operation["responses"]["409"]["description"] = "The task has already finished (`task_finished`), canceled included"
    return operation


def build_spec() -> Schema:
    task_statuses = [s.value for s in TaskStatus]
    delivery_statuses = [s.value for s in DeliveryStatus]
    task, sub, dlv = _path("task_id"), _path("sub_id"), _path("delivery_id")
    status_only: Schema = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}
    callback_answer: Schema = {
        "type": "object",
        "required": ["accepted", "changed"],
        "properties": {"accepted": {"type": "boolean"}, "changed": {"type": "boolean"}, "confirming": {"type": "boolean"}},
    }
    paths: dict[str, dict[str, Schema]] = {
        "/healthz": {"get": _operation("Process is up", {200: status_only}, [], secured=False)},
        "/readyz": {"get": _operation("Redis is reachable", {200: status_only, 503: status_only}, [], secured=False)},
        "/openapi.json": {"get": _operation("This document", {200: {"type": "object"}}, [], secured=False)},
        "/v1/tasks": {
            "post": _operation(
                "Create a task",
                {202: _ref("Task")},
                [400, 409, 413, 415, 422, 429],
                body="TaskRequest",
                parameters=[IDEMPOTENCY_KEY],
            ),
            "get": _operation(
                "List tasks, newest first", {200: _page("Task")}, [400], parameters=[_status_filter(task_statuses), LIMIT, CURSOR]
            ),
        },
        "/v1/tasks/{task_id}": {"get": _operation("Get a task", {200: _ref("Task")}, [404], parameters=[task])},
        "/v1/tasks/{task_id}/cancel": {"post": _cancel_operation(task)},
        "/v1/tasks/{task_id}/events": {
            "get": _operation(
                "A task's events, oldest first",
                {
                    200: {
                        "type": "object",
                        "required": ["data"],
                        "properties": {"data": {"type": "array", "items": _ref("Event")}},
                    }
                },
                [404],
                parameters=[task],
            )
        },
        "/v1/tasks/{task_id}/video": {"get": _video_operation(task)},
        "/v1/subscriptions": {
            "post": _operation(
                "Create a subscription", {201: _ref("CreatedSubscription")}, [400, 413, 415, 422], body="SubscriptionCreate"
            ),
            "get": _operation(
                "List subscriptions, newest first, each with its health",
                {200: _page("SubscriptionWithHealth")},
                [400],
                parameters=[LIMIT, CURSOR],
            ),
        },
        "/v1/subscriptions/{sub_id}": {
            "get": _operation(
                "Get a subscription with its health", {200: _ref("SubscriptionWithHealth")}, [404], parameters=[sub]
            ),
            "patch": _operation(
                "Change a subscription",
                {200: _ref("Subscription")},
                [400, 404, 413, 415, 422],
                body="SubscriptionUpdate",
                parameters=[sub],
            ),
            "delete": _operation("Delete a subscription", {204: None}, [404], parameters=[sub]),
        },
        "/v1/subscriptions/{sub_id}/rotate-secret": {
            "post": _operation(
                "Rotate the signing secret",
                {
                    200: {
                        "type": "object",
                        "required": ["secret", "previous_secret_expires_at"],
                        "properties": {
                            "secret": {"type": "string", "pattern": "^whsec_"},
                            "previous_secret_expires_at": NULLABLE_STRING,
                        },
                    }
                },
                [404],
                parameters=[sub],
            )
        },
        "/v1/subscriptions/{sub_id}/deliveries": {
            "get": _operation(
                "A subscription's deliveries, newest first",
                {200: _page("Delivery")},
                [400, 404],
                parameters=[sub, _status_filter(delivery_statuses), LIMIT, CURSOR],
            )
        },
        "/v1/subscriptions/{sub_id}/replay": {
            "post": _operation(
                "Send events since a time again",
                {
                    202: {
                        "type": "object",
                        "required": ["replayed", "truncated"],
                        "properties": {"replayed": {"type": "integer"}, "truncated": {"type": "boolean"}},
                    }
                },
                [400, 404, 409, 413, 415, 422],
                body="ReplayRequest",
                parameters=[sub],
            )
        },
        "/v1/subscriptions/{sub_id}/test": {
            "post": _operation(
                "Send a signed sample event, marked test, to this subscription",
                {202: _ref("Delivery")},
                [400, 404, 409, 413, 415, 422, 429],
                body="SendTestEvent",
                parameters=[sub],
                body_required=False,
            )
        },
        "/v1/event-types": {
            "get": _operation(
                "Every event type, with the JSON Schema of its payload",
                {
                    200: {
                        "type": "object",
                        "required": ["data"],
                        "properties": {
                            "data": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["type", "description", "operational", "schema"],
                                    "properties": {
                                        "type": {"type": "string", "enum": list(BY_NAME)},
                                        "description": {"type": "string"},
                                        "operational": {"type": "boolean"},
                                        "schema": {"type": "object"},
                                    },
                                },
                            }
                        },
                    }
                },
                [],
            )
        },
        "/v1/deliveries/{delivery_id}": {"get": _operation("Get a delivery", {200: _ref("Delivery")}, [404], parameters=[dlv])},
        "/v1/deliveries/{delivery_id}/retry": {
            "post": _operation("Send a delivery again now", {202: _ref("Delivery")}, [404, 409], parameters=[dlv])
        },
        "/v1/webhooks/default/secret": {
            "get": _operation(
                "The secret signing deliveries to tasks' own webhook_url",
                {
                    200: {
                        "type": "object",
                        "required": ["secret"],
                        "properties": {"secret": {"type": "string", "pattern": "^whsec_"}},
                    }
                },
                [],
            )
        },
    }
    last_event_id: Schema = {
        "name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string", "pattern": "^evt_[0-9a-z]{25}$"},
        "description": "Resume after this event (EventSource sends it when it reconnects)",
    }
    for path, summary, parameters in (
        (
            "/v1/tasks/{task_id}/stream",
            "A task's events as Server-Sent Events, from its first (or after Last-Event-ID); ends after its terminal event",
            [task],
        ),
        ("/v1/events/stream", "Your events (an admin key: everyone's) as Server-Sent Events, live (or after Last-Event-ID)", []),
    ):
        operation = _operation(
            summary, {200: None}, [400, *([404] if parameters else [])], parameters=[*parameters, last_event_id]
        )
        operation["responses"]["200"] = {
            "description": (
                "`id:` the event id, `event:` its type, `data:` the event JSON (an Event); `: ping` comments when idle"
            ),
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
        paths[path] = {"get": operation}
    components = _components()
    for provider in registry.all():
        if provider.callback is None:
            continue
        doc = provider.callback
        paths[f"/callbacks/{provider.name}/{{task_id}}/{{token}}"] = {
            "post": _operation(
                doc.summary,
                {200: callback_answer, 202: callback_answer},
                [400, 401, 404, 409, 413, 415, 422],
                body=doc.schema_name,
                parameters=[task, _path("token"), *copy.deepcopy(list(doc.headers))],
                secured=False,
            )
        }
        components[doc.schema_name] = copy.deepcopy(doc.schema)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kling-relay",
            "version": "1",
            "description": (
                f"Webhook-driven relay for Kling V2.1 Master text-to-video ({', '.join(p.title for p in registry.all())})."
            ),
        },
        "paths": paths,
        "webhooks": _webhooks(),
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "A key from KLING_RELAY_API_KEYS"}},
        },
    }


@lru_cache(maxsize=1)
def spec() -> Schema:
    return build_spec()


async def openapi_json(request: Request) -> JSONResponse:
    return JSONResponse(spec())


routes = [Route("/openapi.json", openapi_json, methods=["GET"])]
