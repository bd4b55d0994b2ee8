"""HTTP face of the provider simulator: Apikley and Novita APIs, fake videos and the control API.

Serve `create_simulator_app()` with uvicorn and point the relay's provider base URLs at it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from service.simulator.callbacks import CallbackSender
from service.simulator.schemas import (
    ApikleyCreateTask,
    InvalidBody,
    NovitaSubmit,
    decode_object,
    validate,
)
from service.simulator.state import (
    ApikleyForcedResponse,
    MessageKey,
    NovitaForcedResponse,
    Phase,
    Provider,
    SimStore,
    SimTask,
    apikley_envelope,
    apikley_record_answer,
    gateway_error_page,
    novita_result,
    pop_first,
    unix_ms,
    video_chunks,
)


def apikley_answer(
    code: int, msg: str, http_status: int = 200, message_key: MessageKey = "msg"
) -> JSONResponse:
    """Apikley reports errors in the body's `code`, normally on an HTTP 200."""
    body = apikley_envelope(code, msg, None, message_key)
    return JSONResponse(body, status_code=http_status)


def novita_error(
    status: int, reason: str, message: str, metadata: dict[str, Any] | None = None
) -> JSONResponse:
    """Novita reports errors as the HTTP status, repeated in the body's `code`."""
    body = {"code": status, "reason": reason, "message": message, "metadata": metadata or {}}
    return JSONResponse(body, status_code=status)


def gateway_error(status: int) -> Response:
    """A gateway's HTML error page, as an nginx in front of a provider sends when it is down."""
    # The header given explicitly so Starlette does not append a charset nginx would not send.
    headers = {"Content-Type": "text/html"}
    return Response(gateway_error_page(status), status_code=status, headers=headers)


def apikley_forced(forced: ApikleyForcedResponse, message_key: MessageKey) -> Response:
    # Validation guarantees code and msg whenever html is false.
    if forced.html or forced.code is None or forced.msg is None:
        return gateway_error(forced.http_status)
    return apikley_answer(forced.code, forced.msg, forced.http_status, message_key)


def novita_forced(forced: NovitaForcedResponse) -> Response:
    # Validation guarantees reason and message whenever html is false.
    if forced.html or forced.reason is None or forced.message is None:
        return gateway_error(forced.http_status)
    return novita_error(forced.http_status, forced.reason, forced.message)


def novita_submit_body(raw: bytes, *, accepts_extra: bool) -> tuple[dict[str, Any], NovitaSubmit]:
    """A Novita submit's body, as sent and validated; `extra` refused if so configured."""
    data = decode_object(raw)
    if "extra" in data and not accepts_extra:
        raise InvalidBody("extra", "unknown field")
    return data, validate(NovitaSubmit, data)


class Simulator:
    """The route handlers, sharing one in-memory store and one callback sender."""

    def __init__(self, api_key: str | None) -> None:
        self.api_key = api_key
        self.store = SimStore()
        self.sender = CallbackSender(self.store)

    def authorized(self, request: Request) -> bool:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return False
        return self.api_key is None or key == self.api_key

    async def provider_latency(self) -> None:
        if self.store.config.latency_s > 0:
            await asyncio.sleep(self.store.config.latency_s)

    async def answer_delay(self) -> None:
        """Hold back the answer to a request whose task already exists."""
        if self.store.config.answer_delay_s > 0:
            await asyncio.sleep(self.store.config.answer_delay_s)

    def apikley_answer(self, code: int, msg: str) -> JSONResponse:
        return apikley_answer(code, msg, message_key=self.store.config.apikley_message_key)

    @staticmethod
    def video_url(request: Request, task: SimTask) -> str:
        return task.plan.result_url or str(request.url_for("sim_video", task_id=task.task_id))

    async def apikley_create(self, request: Request) -> Response:
        await self.provider_latency()
        config = self.store.config
        if not self.authorized(request):
            return self.apikley_answer(401, "Unauthorized: missing or invalid API key")
        if forced := pop_first(config.apikley_create_responses):
            return apikley_forced(forced, config.apikley_message_key)
        try:
            data = decode_object(await request.body())
            body = validate(ApikleyCreateTask, data)
        except InvalidBody as exc:
            return self.apikley_answer(422, str(exc))
        task = self.store.add_task(
            Provider.APIKLEY, data, body.input.prompt, time.time(), body.callBackUrl
        )
        if body.callBackUrl:
            self.sender.schedule(task, body.callBackUrl, self.video_url(request, task))
        await self.answer_delay()
        data = {"taskId": task.task_id}
        return JSONResponse(apikley_envelope(200, "success", data, config.apikley_message_key))

    async def apikley_record_info(self, request: Request) -> Response:
        await self.provider_latency()
        config = self.store.config
        if not self.authorized(request):
            return self.apikley_answer(401, "Unauthorized: missing or invalid API key")
        if forced := pop_first(config.apikley_record_responses):
            return apikley_forced(forced, config.apikley_message_key)
        task_id = request.query_params.get("taskId", "")
        if not task_id:
            return self.apikley_answer(422, "taskId: is required")
        task = self.store.find(Provider.APIKLEY, task_id)
        if task is None:
            return self.apikley_answer(404, f"task not found: {task_id}")
        task.queries += 1
        answer = apikley_record_answer(
            task,
            time.time() - task.created_at,
            self.video_url(request, task),
            config.apikley_record_fail_code,
            config.apikley_message_key,
        )
        return JSONResponse(answer)

    async def novita_submit(self, request: Request) -> Response:
        await self.provider_latency()
        config = self.store.config
        if not self.authorized(request):
            return novita_error(401, "INVALID_API_KEY", "missing or invalid API key")
        if forced := pop_first(config.novita_submit_responses):
            return novita_forced(forced)
        try:
            data, body = novita_submit_body(await request.body(), accepts_extra=config.novita_accepts_extra)
        except InvalidBody as exc:
            return novita_error(400, "INVALID_REQUEST_BODY", str(exc), {"field": exc.field})
        webhook_url = body.webhook_url
        task = self.store.add_task(Provider.NOVITA, data, body.prompt, time.time(), webhook_url)
        if webhook_url and config.novita_webhooks:
            self.sender.schedule_novita(task, webhook_url, self.video_url(request, task))
        await self.answer_delay()
        return JSONResponse({"task_id": task.task_id})

    async def novita_task_result(self, request: Request) -> Response:
        await self.provider_latency()
        if not self.authorized(request):
            return novita_error(401, "INVALID_API_KEY", "missing or invalid API key")
        if forced := pop_first(self.store.config.novita_result_responses):
            return novita_forced(forced)
        task_id = request.query_params.get("task_id", "")
        if not task_id:
            return novita_error(400, "INVALID_REQUEST_PARAMS", "task_id: is required")
        task = self.store.find(Provider.NOVITA, task_id)
        if task is None:
            return novita_error(404, "TASK_NOT_FOUND", f"task not found: {task_id}")
        task.queries += 1
        elapsed = time.time() - task.created_at
        return JSONResponse(novita_result(task, elapsed, self.video_url(request, task)))

    async def video(self, request: Request) -> Response:
        """Serve a finished task's video until its URL's TTL runs out (then 403, like S3)."""
        task_id = request.path_params["task_id"]
        task = self.store.tasks.get(task_id)
        now = time.time()
        config = self.store.config
        self.store.video_requests[task_id] = self.store.video_requests.get(task_id, 0) + 1
        if forced := pop_first(config.video_responses):
            return Response(f"forced {forced}", status_code=forced, media_type="text/plain")
        if task is None or task.phase(now) is not Phase.SUCCESS:
            return Response("not found", status_code=404, media_type="text/plain")
        if now >= task.video_expires_at():
            return Response("URL expired", status_code=403, media_type="text/plain")
        headers = {"Content-Length": str(config.video_bytes), "Content-Type": config.video_content_type}
        return StreamingResponse(self.trickled(config.video_bytes, config.video_trickle_s), headers=headers)

    @staticmethod
    async def trickled(size: int, over_s: float) -> AsyncIterator[bytes]:
        """The video's bytes, spread over `over_s` seconds (a slow CDN)."""
        chunks = list(video_chunks(size)) if over_s > 0 else video_chunks(size)
        pause = over_s / max(len(chunks), 1) if isinstance(chunks, list) else 0.0
        for chunk in chunks:
            if pause:
                await asyncio.sleep(pause)
            yield chunk

    async def get_config(self, request: Request) -> Response:
        return JSONResponse(self.store.config.model_dump(mode="json"))

    async def patch_config(self, request: Request) -> Response:
        try:
            patch = decode_object(await request.body())
            self.store.config = self.store.config.merged(patch)
        except InvalidBody as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            return JSONResponse({"error": "invalid config", "details": errors}, status_code=422)
        return await self.get_config(request)

    async def reset(self, request: Request) -> Response:
        await self.sender.cancel_all()
        self.store.reset()
        return await self.get_config(request)

    async def list_tasks(self, request: Request) -> Response:
        now = time.time()
        views = [self.task_view(request, task, now) for task in self.store.tasks.values()]
        return JSONResponse({"tasks": views})

    async def list_callbacks(self, request: Request) -> Response:
        return JSONResponse({"callbacks": [asdict(c) for c in self.store.callbacks]})

    def task_view(self, request: Request, task: SimTask, now: float) -> dict[str, Any]:
        return {
            "provider": task.provider.value,
            "task_id": task.task_id,
            "state": task.provider_state(now),
            "created_at": unix_ms(task.created_at),
            "request": task.request,
            "plan": asdict(task.plan),
            "callback_url": task.callback_url,
            "queries": task.queries,
            "video_url": self.video_url(request, task),
            "callbacks": [asdict(c) for c in self.store.callbacks if c.task_id == task.task_id],
            "video_requests": self.store.video_requests.get(task.task_id, 0),
        }


def create_simulator_app(api_key: str | None = "sandbox") -> Starlette:
    """Build the simulator; `api_key=None` accepts any non-empty bearer key."""
    sim = Simulator(api_key)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sim.sender.start()
        try:
            yield
        finally:
            await sim.sender.stop()

    routes = [
        Route("/api/v1/jobs/createTask", sim.apikley_create, methods=["POST"]),
        Route("/api/v1/jobs/recordInfo", sim.apikley_record_info, methods=["GET"]),
        Route("/v3/async/kling-v2.1-t2v-master", sim.novita_submit, methods=["POST"]),
        Route("/v3/async/task-result", sim.novita_task_result, methods=["GET"]),
        Route("/sim/videos/{task_id}.mp4", sim.video, methods=["GET"], name="sim_video"),
        Route("/_sim/config", sim.get_config, methods=["GET"]),
        Route("/_sim/config", sim.patch_config, methods=["PATCH"]),
        Route("/_sim/reset", sim.reset, methods=["POST"]),
        Route("/_sim/tasks", sim.list_tasks, methods=["GET"]),
        Route("/_sim/callbacks", sim.list_callbacks, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
