"""`/v1/tasks`: create (202, idempotent), read, list, cancel, and a task's events."""

from __future__ import annotations

import hashlib

import orjson
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.auth import Caller
from service.domain.clock import now_iso
from service.domain.ids import new_id
from service.domain.status import TaskStatus
from service.domain.submission import NoProviderFits, choose_provider
from service.domain.tasks import (
    AUTO,
    ProviderName,
    Task,
    TaskInput,
    TaskRequest,
    limit_violations,
)
from service.domain.transition import NotCancelable, cancel_update
from service.errors import ApiError, validation_error
from service.keys import idempotency_key
from service.providers import registry
from service.ratelimit import enforce
from service.routes.bodies import json_object, read_json
from service.routes.context import caller, runtime
from service.routes.params import enum_param, limit_param
from service.runtime import Runtime
from service.store import Change, IdempotencyClaim, IdempotencyConflict, TaskNotFound
from service.telemetry import TASKS_CREATED
from service.webhooks.ssrf import UnsafeWebhookURL, check_url_syntax

MAX_IDEMPOTENCY_KEY = 255


def provider_for(rt: Runtime, req: TaskRequest, task_input: TaskInput) -> tuple[ProviderName, dict[str, str]]:
    """The provider this request goes to, and the limits of it that the input breaks."""
    configured = rt.configured
    if req.provider != AUTO:
        provider: ProviderName = req.provider
        if provider not in configured:
            raise ApiError(
                422,
                "validation_error",
                f"{provider} is not configured",
                {"provider": f"{provider} is not configured on this server"},
            )
        return provider, limit_violations(task_input, provider, registry.get(provider).limits)
    if not configured:
        raise ApiError(503, "no_provider", "no provider is configured on this server")
    try:
        return choose_provider(task_input, default=rt.settings.default_provider, configured=configured), {}
    except NoProviderFits as exc:
        return configured[0], exc.fields


async def create_task(request: Request) -> JSONResponse:
    rt = runtime(request)
    who = caller(request)
    await enforce(rt, "task creation", who.key_id, rt.settings.task_create_rate_per_min)
    body = json_object(await read_json(request, rt.settings.max_body_bytes))
    try:
        req = TaskRequest.model_validate(body, context={"providers": registry.names()})
    except ValidationError as exc:
        raise validation_error(exc) from exc
    task_input = req.task_input()
    provider, problems = provider_for(rt, req, task_input)
    if req.webhook_url is not None:
        try:
            check_url_syntax(req.webhook_url, allow_private=rt.settings.allow_private_webhooks)
        except UnsafeWebhookURL as exc:
            problems["webhook_url"] = exc.reason
    if problems:
        raise ApiError(422, "validation_error", f"invalid request: {', '.join(problems)}", problems)

    claim = None
    idem = request.headers.get("idempotency-key")
    if idem is not None:
        if not idem or len(idem) > MAX_IDEMPOTENCY_KEY:
            raise ApiError(400, "invalid_idempotency_key", f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} characters")
        fingerprint = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
        claim = IdempotencyClaim(key=idempotency_key(who.key_id, idem), fingerprint=fingerprint)

    now = now_iso()
    task = Task(
        id=new_id("task"),
        owner=who.key_id,
        provider=provider,
        requested_provider=req.provider,
        input=task_input,
        created_at=now,
        updated_at=now,
        metadata=req.metadata,
        webhook_url=req.webhook_url,
    )

    def store() -> tuple[Task, bool]:
        return rt.store.create(
            task,
            idempotency=claim,
            idempotency_ttl_s=rt.settings.idempotency_ttl_s,
            # Looked at again after one lease: a worker that takes the job and dies is noticed.
            watchdog_s=rt.settings.submit_lease_s,
            after=lambda pipe, t: rt.jobs.submit(t.id, attempt=0, pipeline=pipe),
        )

    try:
        stored, created = await run_in_threadpool(store)
    except IdempotencyConflict as exc:
        raise ApiError(409, "idempotency_conflict", "this Idempotency-Key was used with a different body") from exc
    if created:
        TASKS_CREATED.labels(stored.provider).inc()
    headers = {} if created else {"Idempotent-Replayed": "true"}
    return JSONResponse(stored.model_dump(mode="json"), status_code=202, headers=headers)


def owned_task(rt: Runtime, who: Caller, task_id: str) -> Task | None:
    """The task, if it exists and this caller may see it (to anyone else it does not exist)."""
    task = rt.store.get(task_id)
    return task if task is not None and who.owns(task.owner) else None


async def get_task(request: Request) -> JSONResponse:
    rt, who = runtime(request), caller(request)
    task = await run_in_threadpool(owned_task, rt, who, request.path_params["task_id"])
    if task is None:
        raise ApiError(404, "not_found", "no such task")
    return JSONResponse(task.model_dump(mode="json"))


async def list_tasks(request: Request) -> JSONResponse:
    rt, who = runtime(request), caller(request)
    params = request.query_params
    status = enum_param(request, "status", TaskStatus)
    limit = limit_param(request)
    cursor = params.get("cursor") or None
    # Admins list everyone's tasks; any other key its own.
    owner = None if who.admin else who.key_id
    page = await run_in_threadpool(lambda: rt.store.page(status=status, cursor=cursor, limit=limit, owner=owner))
    return JSONResponse({"data": [t.model_dump(mode="json") for t in page.tasks], "next_cursor": page.next_cursor})


def cancel(rt: Runtime, who: Caller, task_id: str) -> Task:
    """Move an unfinished task to `canceled` (one `task.canceled` event, fanned out as any other);
    the API's cancel and the dashboard's button. Neither provider can cancel a task: we stop
    polling and ignore its news from then on."""

    def decide(task: Task) -> Change:
        if not who.owns(task.owner):
            raise TaskNotFound(task_id)
        try:
            return Change(task, cancel_update(task))
        except NotCancelable as exc:
            raise ApiError(
                409,
                "task_finished",
                f"task {task_id} has already finished as {exc.status.value}: "
                "only a queued, submitted or running task can be canceled",
            ) from exc

    try:
        _, written = rt.change(task_id, decide)
    except TaskNotFound as exc:
        raise ApiError(404, "not_found", "no such task") from exc
    # An unfinished task always moves to canceled: there is always a write.
    assert written is not None
    return written


async def cancel_task(request: Request) -> JSONResponse:
    task = await run_in_threadpool(cancel, runtime(request), caller(request), request.path_params["task_id"])
    return JSONResponse(task.model_dump(mode="json"))


async def task_events(request: Request) -> JSONResponse:
    rt, who = runtime(request), caller(request)
    task_id = request.path_params["task_id"]

    def load() -> list[dict[str, object]] | None:
        if owned_task(rt, who, task_id) is None:
            return None
        return [e.model_dump(mode="json") for e in rt.store.events(task_id)]

    events = await run_in_threadpool(load)
    if events is None:
        raise ApiError(404, "not_found", "no such task")
    return JSONResponse({"data": events})


routes = [
    Route("/v1/tasks", create_task, methods=["POST"]),
    Route("/v1/tasks", list_tasks, methods=["GET"]),
    Route("/v1/tasks/{task_id}", get_task, methods=["GET"]),
    Route("/v1/tasks/{task_id}/cancel", cancel_task, methods=["POST"]),
    Route("/v1/tasks/{task_id}/events", task_events, methods=["GET"]),
]
