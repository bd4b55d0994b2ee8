"""The Apikley callback receiver: nothing that fails a check touches state.

Checks, cheapest first: the per-task token (constant time), the body size, JSON shape, the
task exists and is Apikley's, and the body's taskId is the one we stored. A terminal state is
then confirmed with Get Task Details (a poll job) before it is believed, when so configured.
This is the hot path: async Redis, one read and one compare-and-set per callback.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.domain.tasks import Task
from service.domain.tokens import token_matches
from service.errors import ApiError
from service.metrics import observe_transition
from service.providers.apikley import UnknownState, parse_record
from service.routes.bodies import read_json
from service.routes.context import runtime
from service.runtime import Runtime
from service.store import TaskNotFound

log = logging.getLogger(__name__)

MAX_CALLBACK_BYTES = 1024 * 1024
# The answer to an accepted callback, by whether it changed the task: encoded once, not per call.
_ACCEPTED = {changed: orjson.dumps({"accepted": True, "changed": changed}) for changed in (True, False)}


class ConfirmFirst(Exception):
    """A terminal report that must be confirmed with the provider before it is believed."""

    def __init__(self, task: Task) -> None:
        super().__init__(task.id)
        self.task = task


def _record(body: Any) -> dict[str, Any]:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("taskId"), str) or not data["taskId"]:
        raise ApiError(422, "invalid_callback", "callback has no data.taskId", {"data.taskId": "required string"})
    return data


def _confirm(rt: Runtime, task: Task, provider_task_id: str) -> None:
    # A token-bearing callback for a task whose submit crashed before we stored the provider
    # id can only be about our own task: adopt the id rather than submit (and pay) again.
    if task.provider_task_id is None:
        rt.store.record(
            task.id,
            lambda t: t.model_copy(update={"provider_task_id": provider_task_id}) if t.provider_task_id is None else None,
        )
    rt.jobs.poll(task.id)


async def apikley_callback(request: Request) -> Response:
    rt = runtime(request)
    task_id: str = request.path_params["task_id"]
    if not token_matches(rt.settings.callback_secret or "", task_id, request.path_params["token"]):
        raise ApiError(401, "invalid_token", "callback token does not match")
    record = _record(await read_json(request, MAX_CALLBACK_BYTES))
    try:
        update = parse_record(record)
    except UnknownState as exc:
        raise ApiError(422, "invalid_callback", str(exc), {"data.state": "unknown state"}) from exc
    confirm = update.status.terminal and rt.settings.apikley_confirm_callbacks

    def check(task: Task) -> None:
        if task.provider != "apikley":
            raise ApiError(404, "not_found", "no such Apikley task")
        if task.provider_task_id is not None and task.provider_task_id != record["taskId"]:
            raise ApiError(409, "task_mismatch", "callback taskId does not match this task", {"data.taskId": "does not match"})
        if confirm and not task.status.terminal:
            raise ConfirmFirst(task)

    try:
        transition = await rt.store.aapply(task_id, update, check=check)
    except TaskNotFound as exc:
        raise ApiError(404, "not_found", "no such Apikley task") from exc
    except ConfirmFirst as pending:
        await run_in_threadpool(_confirm, rt, pending.task, record["taskId"])
        log.info("apikley callback task_id=%s state=%s confirming", task_id, record.get("state"))
        return JSONResponse({"accepted": True, "changed": False, "confirming": True}, status_code=202)
    observe_transition(transition)  # logs the transition itself; this line only adds detail
    log.debug("apikley callback task_id=%s state=%s changed=%s", task_id, record.get("state"), transition is not None)
    return Response(_ACCEPTED[transition is not None], media_type="application/json")


routes = [Route("/callbacks/apikley/{task_id}/{token}", apikley_callback, methods=["POST"])]
