"""Apikley (Market jobs API): payload mapping (pure) and its client.

Apikley answers errors as HTTP 200 with an error `code` in the body, so the body's code is the
outcome; the HTTP status only matters when there is no readable body.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

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

if TYPE_CHECKING:
    from service.settings import Settings

MODEL = "kling/v2-1-master-text-to-video"
CREATE_PATH = "/api/v1/jobs/createTask"
RECORD_PATH = "/api/v1/jobs/recordInfo"


@dataclass(frozen=True)
class CodeMeaning:
    code: str
    retryable: bool
    provider_level: bool = False


# The documented body codes and what we do about each.
CODES: dict[int, CodeMeaning] = {
    401: CodeMeaning("unauthorized", retryable=False),
    402: CodeMeaning("insufficient_credits", retryable=False, provider_level=True),
    404: CodeMeaning("not_found", retryable=False),
    422: CodeMeaning("validation_error", retryable=False),
    429: CodeMeaning("rate_limited", retryable=True),
    455: CodeMeaning("maintenance", retryable=True, provider_level=True),
    500: CodeMeaning("server_error", retryable=True, provider_level=True),
    501: CodeMeaning("generation_failed", retryable=False),
    505: CodeMeaning("feature_disabled", retryable=False, provider_level=True),
}

STATES: dict[str, TaskStatus] = {
    "waiting": TaskStatus.SUBMITTED,
    "queuing": TaskStatus.SUBMITTED,
    "generating": TaskStatus.RUNNING,
    "success": TaskStatus.SUCCEEDED,
    "fail": TaskStatus.FAILED,
}


def create_body(task_input: TaskInput, callback_url: str) -> dict[str, Any]:
    fields = task_input.model_dump(exclude_none=True)
    return {"model": MODEL, "callBackUrl": callback_url, "input": fields}


def error_for(code: int, message: str) -> ProviderError:
    meaning = CODES.get(code) or CodeMeaning("provider_error", retryable=code >= 500)
    return ProviderError(
        meaning.code,
        message or meaning.code,
        retryable=meaning.retryable,
        provider_code=str(code),
        provider_level=meaning.provider_level,
    )


def _text(body: dict[str, Any]) -> str:
    # Most pages spell the error text `msg`; some spell it `message`.
    return str(body.get("msg") or body.get("message") or "")


def unwrap(http_status: int, body: Any) -> dict[str, Any]:
    """The `data` of a successful answer, or the ProviderError the answer means."""
    if not isinstance(body, dict) or not isinstance(body.get("code"), int):
        if http_status >= 500:
            # A gateway's own page (502/503/504, HTML): the provider is out, like body code 500.
            raise ProviderError(
                "gateway_error",
                f"HTTP {http_status} without an API answer",
                retryable=True,
                provider_code=str(http_status),
                provider_level=True,
            )
        code = http_status if http_status >= 400 else 500
        raise error_for(code, f"unreadable answer (HTTP {http_status})")
    if body["code"] != 200:
        raise error_for(body["code"], _text(body))
    data = body.get("data")
    if not isinstance(data, dict):
        raise error_for(500, "answer has no data object")
    return data


def unwrap_record(http_status: int, body: Any) -> dict[str, Any]:
    """The task record of a Get Task Details answer. A failed generation may be answered with a
    non-200 code (501, 422) and still carry its record: that record is the answer, not an error."""
    if isinstance(body, dict) and isinstance(body.get("code"), int):
        data = body.get("data")
        if isinstance(data, dict) and isinstance(data.get("state"), str):
            return data
    return unwrap(http_status, body)


def record_task_id(record: dict[str, Any]) -> str | None:
    """The provider's task id in a record: `taskId` in market callbacks, `task_id` in kie.ai's sample."""
    for key in ("taskId", "task_id"):
        value = record.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _json_field(value: Any) -> Any:
    """`param` and `resultJson` are JSON encoded as strings; tolerate an object too."""
    if isinstance(value, str) and value:
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
    return value if isinstance(value, dict) else None


def parse_record(record: dict[str, Any]) -> ProviderUpdate:
    """Map a Get Task Details record (or a callback's `data`, the same shape) onto an update;
    UnknownState for a state Apikley does not document."""
    status = SPEC.status_of(record.get("state"))
    provider_task_id = record_task_id(record)
    if status is TaskStatus.SUCCEEDED:
        result = _json_field(record.get("resultJson")) or {}
        urls = result.get("resultUrls") if isinstance(result, dict) else None
        url = urls[0] if isinstance(urls, list) and urls and isinstance(urls[0], str) else None
        problem = result_url_problem(url)
        if problem is not None:
            return ProviderUpdate(status=TaskStatus.FAILED, provider_task_id=provider_task_id, error=problem)
        assert url is not None
        return ProviderUpdate(status=status, provider_task_id=provider_task_id, result=TaskResult(video_url=url))
    if status is TaskStatus.FAILED:
        fail_code = record.get("failCode")
        return ProviderUpdate(
            status=status,
            provider_task_id=provider_task_id,
            error=TaskError(
                code="generation_failed",
                message=str(record.get("failMsg") or "generation failed"),
                provider_code=str(fail_code) if fail_code not in (None, "") else None,
            ),
        )
    return ProviderUpdate(status=status, provider_task_id=provider_task_id)


def callback_record(body: Any) -> tuple[dict[str, Any], str]:
    """A callback's record (its `data`) and the provider task id in it; InvalidCallback if either is missing."""
    data = body.get("data") if isinstance(body, dict) else None
    provider_task_id = record_task_id(data) if isinstance(data, dict) else None
    if not isinstance(data, dict) or provider_task_id is None:
        raise InvalidCallback("callback has no data.taskId", "data.taskId")
    return data, provider_task_id


class ApikleyClient:
    name: ProviderName = "apikley"

    def __init__(self, http: Http) -> None:
        self._http = http

    def submit(self, task: Task, callback_url: str) -> str:
        status, body = self._http.send("POST", CREATE_PATH, json=create_body(task.input, callback_url))
        task_id = unwrap(status, body).get("taskId")
        if not isinstance(task_id, str) or not task_id:
            raise error_for(500, "answer has no taskId")
        return task_id

    def fetch(self, provider_task_id: str, *, unfinished_at: datetime) -> ProviderUpdate:
        status, body = self._http.send("GET", RECORD_PATH, params={"taskId": provider_task_id})
        try:
            return parse_record(unwrap_record(status, body))
        except UnknownState as exc:
            raise ProviderError("bad_response", str(exc), retryable=True) from exc


def first_check_s(settings: Settings, callbacks_reachable: bool) -> float:
    # Its callback brings the news; we look ourselves only when none came within the grace.
    return settings.apikley_callback_grace_s if callbacks_reachable else settings.poll_initial_s


# kie.ai's webhook verification; required when APIKLEY_WEBHOOK_HMAC_KEY is set (else 401).
SIGNATURE_HEADERS = (
    {
        "name": "X-Webhook-Timestamp",
        "in": "header",
        "required": False,
        "description": "Unix seconds; within 5 minutes of now",
        "schema": {"type": "string"},
    },
    {
        "name": "X-Webhook-Signature",
        "in": "header",
        "required": False,
        "description": "base64(HMAC-SHA256(\"{taskId}.{timestamp}\", APIKLEY_WEBHOOK_HMAC_KEY))",
        "schema": {"type": "string"},
    },
)

CALLBACK = CallbackDoc(
    summary="Apikley's callback receiver (the per-task token is the credential)",
    schema_name="ApikleyCallback",
    schema={
        "type": "object",
        "description": "Apikley's callback: the shape of Get Task Details (the task id as `taskId` or `task_id`)",
        "required": ["data"],
        "properties": {
            "code": {"type": "integer"},
            "msg": {"type": "string"},
            "data": {
                "type": "object",
                "required": ["state"],
                "anyOf": [{"required": ["taskId"]}, {"required": ["task_id"]}],
                "properties": {
                    "taskId": {"type": "string", "minLength": 1},
                    "task_id": {"type": "string", "minLength": 1},
                    "state": {"type": "string", "enum": list(STATES)},
                },
            },
        },
    },
    headers=SIGNATURE_HEADERS,
)

SPEC = ProviderSpec(
    name="apikley",
    title="Apikley",
    # From Apikley's documentation of the model's input.
    limits=PromptLimits(prompt=5000, negative_prompt=500),
    mode="callback",
    settings_prefix="APIKLEY",
    states=STATES,
    client=lambda settings, http: ApikleyClient(http),
    first_check_s=first_check_s,
    callback=CALLBACK,
)
