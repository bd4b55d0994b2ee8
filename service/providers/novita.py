"""Novita: payload mapping (pure) and its client. Errors come as non-2xx HTTP statuses."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from service.domain.clock import isoformat
from service.domain.status import TaskStatus
from service.domain.tasks import (
    PromptLimits,
    ProviderName,
    Task,
    TaskError,
    TaskInput,
    TaskResult,
)
from service.domain.transition import ProviderUpdate
from service.providers.base import (
    Http,
    InvalidCallback,
    ProviderError,
    result_url_problem,
)
from service.providers.spec import CallbackDoc, ProviderSpec, UnknownState

log = logging.getLogger(__name__)

SUBMIT_PATH = "/v3/async/kling-v2.1-t2v-master"
RESULT_PATH = "/v3/async/task-result"

STATES: dict[str, TaskStatus] = {
    "TASK_STATUS_QUEUED": TaskStatus.SUBMITTED,
    "TASK_STATUS_PROCESSING": TaskStatus.RUNNING,
    "TASK_STATUS_SUCCEED": TaskStatus.SUCCEEDED,
    "TASK_STATUS_FAILED": TaskStatus.FAILED,
}

_HTTP_CODES: dict[int, str] = {
    400: "validation_error",
    401: "unauthorized",
    402: "insufficient_credits",
    403: "forbidden",
    404: "not_found",
    422: "validation_error",
    429: "rate_limited",
}


def submit_body(task_input: TaskInput, webhook_url: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": task_input.prompt,
        "duration": task_input.duration,
        "aspect_ratio": task_input.aspect_ratio,
    }
    if task_input.cfg_scale is not None:
        body["guidance_scale"] = task_input.cfg_scale
    if task_input.negative_prompt is not None:
        body["negative_prompt"] = task_input.negative_prompt
    if webhook_url is not None:
        # Novita POSTs the task result here when the task ends; for an attempt whose answer we
        # never read, that is how its task id reaches us. Polling stays the source of truth.
        body["extra"] = {"webhook": {"url": webhook_url}}
    return body


def error_for(http_status: int, body: Any) -> ProviderError:
    message = ""
    if isinstance(body, dict):
        message = str(body.get("message") or body.get("reason") or "")
    retryable = http_status == 429 or http_status >= 500
    code = _HTTP_CODES.get(http_status, "server_error" if http_status >= 500 else "provider_error")
    if http_status >= 500 and not isinstance(body, dict):
        code, message = "gateway_error", f"HTTP {http_status} without an API answer"
    return ProviderError(
        code,
        message or f"HTTP {http_status}",
        retryable=retryable,
        provider_code=str(http_status),
        provider_level=http_status >= 500 or http_status == 402,
    )


def parse_result(body: Any, *, unfinished_at: datetime) -> ProviderUpdate:
    """Map a task-result answer onto an update.

    Novita gives the video URL a lifetime (`video_url_ttl`) but not the moment it finished, so
    the expiry is dated from the last time we saw the task unfinished: never later than the truth.
    """
    task = body.get("task") if isinstance(body, dict) else None
    try:
        status = SPEC.status_of(task.get("status") if isinstance(task, dict) else None)
    except UnknownState as exc:
        raise ProviderError("bad_response", "task-result without a known task.status", retryable=True) from exc
    assert isinstance(task, dict)
    progress = task.get("progress_percent")
    progress_value = int(progress) if isinstance(progress, (int, float)) else None
    if status is TaskStatus.SUCCEEDED:
        videos = body.get("videos") or []
        video = videos[0] if videos and isinstance(videos[0], dict) else {}
        url = video.get("video_url")
        problem = result_url_problem(url if isinstance(url, str) else None)
        if problem is not None:
            return ProviderUpdate(status=TaskStatus.FAILED, error=problem)
        assert isinstance(url, str)
        return ProviderUpdate(status=status, result=TaskResult(video_url=url, expires_at=_expiry(video, unfinished_at)))
    if status is TaskStatus.FAILED:
        reason = str(task.get("reason") or "generation failed")
        return ProviderUpdate(status=status, error=TaskError(code="generation_failed", message=reason))
    eta = task.get("eta")
    eta_value = int(eta) if isinstance(eta, (int, float)) and eta > 0 else None
    return ProviderUpdate(status=status, progress=progress_value, eta_s=eta_value)


def _expiry(video: dict[str, Any], now: datetime) -> str | None:
    try:
        ttl = int(video.get("video_url_ttl"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return isoformat(now + timedelta(seconds=ttl))


def refuses_extra(http_status: int, body: Any) -> bool:
    """A validation refusal that names our `extra` field: the model does not take webhooks."""
    if http_status not in (400, 422) or not isinstance(body, dict):
        return False
    metadata = body.get("metadata")
    field = metadata.get("field") if isinstance(metadata, dict) else None
    return field == "extra" or "extra" in str(body.get("message") or "")


class NovitaClient:
    name: ProviderName = "novita"

    def __init__(self, http: Http, *, webhooks: bool = True) -> None:
        self._http = http
        self._webhooks = webhooks

    def submit(self, task: Task, callback_url: str) -> str:
        webhook = callback_url if self._webhooks else None
        status, body = self._http.send("POST", SUBMIT_PATH, json=submit_body(task.input, webhook))
        if webhook is not None and refuses_extra(status, body):
            # Refused by code, so nothing was created: send again without it, and from now on.
            log.warning("novita refused extra.webhook (%s); submitting without webhooks from now on", status)
            self._webhooks = False
            status, body = self._http.send("POST", SUBMIT_PATH, json=submit_body(task.input))
        if not 200 <= status < 300:
            raise error_for(status, body)
        task_id = body.get("task_id") if isinstance(body, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise ProviderError("bad_response", "answer has no task_id", retryable=True)
        return task_id

    def fetch(self, provider_task_id: str, *, unfinished_at: datetime) -> ProviderUpdate:
        status, body = self._http.send("GET", RESULT_PATH, params={"task_id": provider_task_id})
        if not 200 <= status < 300:
            raise error_for(status, body)
        return parse_result(body, unfinished_at=unfinished_at)


def webhook_task_id(body: Any) -> str:
    """The task id in a Novita webhook (`{"event_type": "ASYNC_TASK_RESULT", "payload": <task
    result>}`); InvalidCallback if it has none. Webhooks are unsigned, so nothing else in one is
    believed: a poll tells the rest."""
    payload = body.get("payload") if isinstance(body, dict) else None
    task = payload.get("task") if isinstance(payload, dict) else None
    task_id = task.get("task_id") if isinstance(task, dict) else None
    if not isinstance(task_id, str) or not task_id:
        raise InvalidCallback("webhook has no payload.task.task_id", "payload.task.task_id")
    return task_id


def webhook_state(body: Any) -> object:
    """The task status a webhook (with a task id) claims: only logged, since webhooks are unsigned."""
    return body["payload"]["task"].get("status")


CALLBACK = CallbackDoc(
    summary="Novita's result webhook: a hint (unsigned), confirmed by polling",
    schema_name="NovitaWebhook",
    schema={
        "type": "object",
        "description": "Novita's ASYNC_TASK_RESULT webhook: the task-result body under `payload`",
        "required": ["payload"],
        "properties": {
            "event_type": {"type": "string"},
            "payload": {
                "type": "object",
                "required": ["task"],
                "properties": {
                    "task": {
                        "type": "object",
                        "required": ["task_id"],
                        "properties": {"task_id": {"type": "string", "minLength": 1}},
                    }
                },
            },
        },
    },
)

SPEC = ProviderSpec(
    name="novita",
    title="Novita",
    # From Novita's documentation of the model's input.
    limits=PromptLimits(prompt=2500, negative_prompt=2500),
    mode="poll",
    settings_prefix="NOVITA",
    states=STATES,
    client=lambda settings, http: NovitaClient(http, webhooks=settings.novita_webhooks),
    callback=CALLBACK,
)
