"""The provider callback receivers: nothing that fails a check touches state.

Apikley's checks, cheapest first: the per-task token (constant time), the body size, JSON shape,
kie.ai's signature headers when APIKLEY_WEBHOOK_HMAC_KEY is set, the task exists and is
Apikley's, and the body's task id is the one we stored. A terminal state is then confirmed with
Get Task Details (a poll job) before it is believed, when so configured, and always when it would
overturn a failure we decided ourselves. This is the hot path: async Redis, one read and one
compare-and-set per callback.

Novita's result webhooks are unsigned, so they are only a hint: after the token, the task id is
adopted if we never read it, and a poll tells the rest.

A callback for a task that has no provider task id yet (its submit's answer was never read) can
only be about that submit, since only the provider knows the per-task URL: its id is adopted.

A callback for a task the client canceled is answered 2xx (so the provider stops retrying),
logged and counted as unchanged, and changes nothing: not even a success revives it.

Each receiver says what the callback came to as a `CallbackOutcome`; `Receiver` counts it
(`kling_relay_callbacks`) and answers it. Every callback leaves one log line, naming its task and
what it came to: its transition, "changed nothing", "confirming", "refused" (with the status and
code), or the error's own line. `CallbackLane` takes callbacks ahead of the app's
middleware and routing (the busiest route, and the one a burst of provider retries hits).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Scope, Send
from starlette.types import Receive as ASGIReceive

from service.domain.status import TaskStatus
from service.domain.submission import adopt
from service.domain.tasks import ProviderName, Task
from service.domain.tokens import kie_signature_problem, token_matches
from service.domain.transition import ProviderUpdate, revives
from service.errors import ApiError, error_response
from service.providers import apikley, novita
from service.providers.base import InvalidCallback
from service.providers.spec import UnknownState
from service.routes.bodies import read_json
from service.routes.context import runtime
from service.runtime import Runtime
from service.store import Change, TaskNotFound
from service.telemetry import (
    observe_callback,
    observe_submit_attempt,
    observe_transition,
)

log = logging.getLogger(__name__)

MAX_CALLBACK_BYTES = 1024 * 1024


class Accepted(Enum):
    """A callback that passed every check, by what it did (the metric's reason label)."""

    CHANGED = "changed"
    UNCHANGED = "unchanged"
    CONFIRMING = "confirming"  # a poll will tell where the task stands

    def response(self) -> Response:
        return _ANSWERS[self]


# Each answer built once, not per callback (a response holds no per-request state).
_ANSWERS = {
    Accepted.CHANGED: JSONResponse({"accepted": True, "changed": True}),
    Accepted.UNCHANGED: JSONResponse({"accepted": True, "changed": False}),
    Accepted.CONFIRMING: JSONResponse({"accepted": True, "changed": False, "confirming": True}, status_code=202),
}


@dataclass(frozen=True)
class Rejected:
    """A callback that failed a check: nothing was touched."""

    error: ApiError


CallbackOutcome = Accepted | Rejected
Receive = Callable[[Request], Awaitable[Accepted]]


class Receiver:
    """The endpoint for one provider's callbacks: `receive` accepts the callback (or refuses it
    with an ApiError); what it came to is counted, then answered. Errors are answered by the
    app's own handlers (`error_response`), rendered as on every route: a receiver runs ahead of
    the app's exception middleware (`CallbackLane`)."""

    def __init__(self, provider: ProviderName, receive: Receive) -> None:
        self.provider = provider
        self.receive = receive

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: Send) -> None:
        request = Request(scope, receive)
        outcome: CallbackOutcome
        try:
            outcome = await self.receive(request)
        except ApiError as exc:
            outcome = Rejected(exc)
        except Exception as exc:  # Redis down (503), a client gone mid-body, ...: counted, then answered
            observe_callback(self.provider, "error", type(exc).__name__)
            response = await error_response(request, exc)
            if response is None:
                raise  # the server logs it and answers 500, as for every route
            await response(scope, receive, send)
            return
        if isinstance(outcome, Rejected):
            error = outcome.error
            observe_callback(self.provider, "rejected", error.code)
            # A callback's one log line (uvicorn's access log leaves callbacks out: service/logs.py).
            log.info(
                "callback refused task_id=%s provider=%s status=%d code=%s",
                scope["path_params"].get("task_id"), self.provider, error.status, error.code,
            )
            response = await error_response(request, error)
            assert response is not None  # ApiError has its handler
        else:
            observe_callback(self.provider, "accepted", outcome.value)
            response = outcome.response()
        await response(scope, receive, send)


class ConfirmFirst(Exception):
    """A terminal report that must be confirmed with the provider before it is believed."""


class Canceled(Exception):
    """The client canceled the task: the provider's news is ignored."""


def _invalid(exc: InvalidCallback) -> ApiError:
    return ApiError(422, "invalid_callback", str(exc), {exc.field: "required string"})


def _check_ours(task: Task, provider: ProviderName, provider_task_id: str) -> None:
    """Refuse a callback that is not about this task's provider task."""
    if task.provider != provider and not any(a.provider == provider for a in task.attempts):
        raise ApiError(404, "not_found", f"no such {provider} task")
    if task.provider != provider or task.provider_task_id not in (None, provider_task_id):
        # Only the provider knows this URL: another of its tasks calling it means a second paid
        # task exists for ours (an answer lost to a gateway, or an operator's resubmit).
        log.warning(
            "callback for another provider task task_id=%s provider=%s provider_task_id=%s ours=%s",
            task.id, provider, provider_task_id, task.provider_task_id,
            extra={"task_id": task.id},
        )
        raise ApiError(409, "task_mismatch", "callback task id does not match this task", {"data.taskId": "does not match"})


def _confirm(rt: Runtime, task_id: str, provider_task_id: str) -> None:
    """Adopt the provider task id if we never read it (a queued task is then submitted), and
    ask the provider where the task stands."""

    def decide(task: Task) -> Change | None:
        adopted = adopt(task, provider_task_id)
        return (
            Change(adopted, ProviderUpdate(TaskStatus.SUBMITTED, provider_task_id=provider_task_id))
            if adopted is not task
            else None
        )

    _, written = rt.change(task_id, decide)
    if written is not None:
        observe_submit_attempt(written.provider, "adopted")
        log.info("adopted provider task task_id=%s provider_task_id=%s", task_id, provider_task_id, extra={"task_id": task_id})
    rt.request_confirmation(task_id)


def _after_cancel(task_id: str, provider: str, provider_task_id: str, state: object) -> Accepted:
    # Neither provider can cancel: the task may still run (and be charged) on their side.
    log.info(
        "callback after cancel ignored task_id=%s provider=%s provider_task_id=%s state=%s",
        task_id, provider, provider_task_id, state,
        extra={"task_id": task_id},
    )
    return Accepted.UNCHANGED


def _unchanged(task_id: str, provider: str, provider_task_id: str, state: object) -> None:
    # Duplicates, stale states, news about a finished task: never dropped silently.
    log.info(
        "callback changed nothing task_id=%s provider=%s provider_task_id=%s state=%s",
        task_id, provider, provider_task_id, state,
        extra={"task_id": task_id},
    )


async def apikley_callback(request: Request) -> Accepted:
    rt = runtime(request)
    task_id: str = request.path_params["task_id"]
    if not token_matches(rt.settings.callback_secret or "", task_id, request.path_params["token"]):
        raise ApiError(401, "invalid_token", "callback token does not match")
    try:
        record, provider_task_id = apikley.callback_record(await read_json(request, MAX_CALLBACK_BYTES))
    except InvalidCallback as exc:
        raise _invalid(exc) from exc
    hmac_key = rt.settings.apikley_webhook_hmac_key
    if hmac_key:
        headers = request.headers
        problem = kie_signature_problem(
            hmac_key, provider_task_id, headers.get("x-webhook-timestamp"), headers.get("x-webhook-signature"), now_s=time.time()
        )
        if problem is not None:
            raise ApiError(401, "invalid_signature", problem)
    try:
        update = apikley.parse_record(record)
    except UnknownState as exc:
        raise ApiError(422, "invalid_callback", str(exc), {"data.state": "unknown state"}) from exc
    confirm = update.status.terminal and rt.settings.apikley_confirm_callbacks

    def check(task: Task) -> None:
        _check_ours(task, "apikley", provider_task_id)
        if task.status is TaskStatus.CANCELED:
            raise Canceled
        if task.provider_task_id is None:
            raise ConfirmFirst  # adopt the id, then let a poll say where the task stands
        # Overturning a failure we decided ourselves always takes the provider's own word.
        if (confirm and not task.status.terminal) or revives(task, update):
            raise ConfirmFirst

    try:
        transition = await rt.store.aapply(task_id, update, check=check)
    except TaskNotFound as exc:
        raise ApiError(404, "not_found", "no such Apikley task") from exc
    except Canceled:
        return _after_cancel(task_id, "apikley", provider_task_id, record.get("state"))
    except ConfirmFirst:
        await run_in_threadpool(_confirm, rt, task_id, provider_task_id)
        log.info("apikley callback task_id=%s state=%s confirming", task_id, record.get("state"))
        return Accepted.CONFIRMING
    observe_transition(transition)  # logs the transition itself
    if transition is None:
        _unchanged(task_id, "apikley", provider_task_id, record.get("state"))
        return Accepted.UNCHANGED
    return Accepted.CHANGED


async def novita_callback(request: Request) -> Accepted:
    rt = runtime(request)
    task_id: str = request.path_params["task_id"]
    if not token_matches(rt.settings.callback_secret or "", task_id, request.path_params["token"], "novita"):
        raise ApiError(401, "invalid_token", "callback token does not match")
    body = await read_json(request, MAX_CALLBACK_BYTES)
    try:
        provider_task_id = novita.webhook_task_id(body)
    except InvalidCallback as exc:
        raise _invalid(exc) from exc

    def take() -> TaskStatus | None:
        """None when a poll will tell; else the finished task's status (nothing to ask)."""
        task = rt.store.get(task_id)
        if task is None:
            raise ApiError(404, "not_found", "no such Novita task")
        _check_ours(task, "novita", provider_task_id)
        if task.status.terminal and not (task.error is not None and task.error.self_decided):
            return task.status
        _confirm(rt, task_id, provider_task_id)
        return None

    finished = await run_in_threadpool(take)
    if finished is None:
        return Accepted.CONFIRMING
    if finished is TaskStatus.CANCELED:
        return _after_cancel(task_id, "novita", provider_task_id, novita.webhook_state(body))
    _unchanged(task_id, "novita", provider_task_id, novita.webhook_state(body))
    return Accepted.UNCHANGED


routes = [
    Route(
        "/callbacks/apikley/{task_id}/{token}", Receiver("apikley", apikley_callback), methods=["POST"], name="apikley_callback"
    ),
    Route("/callbacks/novita/{task_id}/{token}", Receiver("novita", novita_callback), methods=["POST"], name="novita_callback"),
]
PREFIX = "/callbacks/"


class CallbackLane:
    """Takes each provider callback straight to its receiver, ahead of the app's middleware and
    routing; every other request goes on to `app` (as does a callback path asked with another
    method, for the app's 405).

    The app's stack (error middleware, body limit, exception middleware, router, route) cost
    ~7 µs of CPU per callback, 5% of the web's (bench/ingest.py: 0.33 → 0.37). What it would do
    for a callback, the receiver does itself: it caps the body it reads (MAX_CALLBACK_BYTES) and
    answers errors with the app's handlers. The routes stay in the app too, for its 405s and
    the OpenAPI document."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith(PREFIX):
            for route in routes:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child)
                    await route.app(scope, receive, send)
                    return
        await self.app(scope, receive, send)
