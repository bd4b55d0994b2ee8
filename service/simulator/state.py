"""Pure model of the simulated providers: behaviour config, task timelines and what tasks report.

What a task reports is a function of its plan (config snapshot plus prompt directives) and the
seconds elapsed since creation; the HTTP layer (app.py) and the callback sender (callbacks.py)
only read the clock and serialise the results, so every documented provider case can be
reproduced and unit-tested without a network. `SimStore` is the plain in-memory container.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from http import HTTPStatus
from typing import Any, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    model_validator,
)

from service.simulator.mp4 import header

Outcome = Literal["success", "fail"]
CallbackMode = Literal["normal", "drop", "duplicate", "out_of_order"]
MessageKey = Literal["msg", "message"]
TaskIdKey = Literal["taskId", "task_id"]

NOVITA_TASK_TYPE = "KLING_V2.1_T2V_MASTER"
SLOW_FACTOR = 10
SLOW_DIRECTIVE = "[sim:slow]"
FAIL_DIRECTIVE = "[sim:fail]"
CALLBACK_DIRECTIVES: dict[str, CallbackMode] = {
    "[sim:drop-callback]": "drop",
    "[sim:duplicate-callback]": "duplicate",
    "[sim:out-of-order]": "out_of_order",
}


class ApikleyForcedResponse(BaseModel):
    """An Apikley answer returned instead of doing the real work (the code rides in the body).

    With `html` a gateway's HTML error page at `http_status` is sent instead of any JSON, so
    `code` and `msg` are only required without it.
    """

    model_config = ConfigDict(extra="forbid")
    code: int | None = None
    msg: str | None = None
    http_status: int = Field(default=200, ge=100, le=599)
    html: bool = False

    @model_validator(mode="after")
    def _body_fields_unless_html(self) -> Self:
        if not self.html and (self.code is None or self.msg is None):
            raise ValueError("code and msg are required unless html is true")
        return self


class NovitaForcedResponse(BaseModel):
    """A Novita error returned instead of doing the real work (the status is the HTTP status).

    With `html` a gateway's HTML error page is sent instead of the JSON error body.
    """

    model_config = ConfigDict(extra="forbid")
    http_status: int = Field(ge=100, le=599)
    reason: str | None = None
    message: str | None = None
    html: bool = False

    @model_validator(mode="after")
    def _body_fields_unless_html(self) -> Self:
        if not self.html and (self.reason is None or self.message is None):
            raise ValueError("reason and message are required unless html is true")
        return self


class SimConfig(BaseModel):
    """Global behaviour of the simulator; changed at runtime through the control API."""

    model_config = ConfigDict(extra="forbid")

    queue_s: NonNegativeFloat = 0.2
    generate_s: NonNegativeFloat = 0.5
    outcome: Outcome = "success"
    fail_code: str = "501"
    fail_msg: str = "content generation failed"
    callback_mode: CallbackMode = "normal"
    callback_delay_s: NonNegativeFloat = 0.0
    progress_callbacks: bool = False
    latency_s: NonNegativeFloat = 0.0
    video_url_ttl: PositiveInt = 3600
    eta_s: NonNegativeInt | None = None
    apikley_create_responses: list[ApikleyForcedResponse] = []
    apikley_record_responses: list[ApikleyForcedResponse] = []
    novita_submit_responses: list[NovitaForcedResponse] = []
    novita_result_responses: list[NovitaForcedResponse] = []
    # Unlike latency_s, waited after the task exists: a paid task whose answer comes too late.
    answer_delay_s: NonNegativeFloat = 0.0
    # The docs list non-200 codes (501, 422) for Get Task Details of a failed generation.
    apikley_record_fail_code: int = 501
    # Some kie.ai pages spell the error text `message`.
    apikley_message_key: MessageKey = "msg"
    # kie.ai's account-level webhookHmacKey: when set, Apikley callbacks are signed.
    webhook_hmac_key: str | None = None
    callback_task_id_key: TaskIdKey = "taskId"
    novita_accepts_extra: bool = True
    # Whether Novita's webhooks fire for this model is unconfirmed upstream.
    novita_webhooks: bool = True
    novita_webhook_retry_s: NonNegativeFloat = 1.0
    # The result URL reported for tasks created from now on, instead of the simulator's own video
    # (a hostile or broken provider: `javascript:...`, `file:///etc/passwd`).
    result_url: str | None = None
    # The simulator's own videos, as served when fetched (not snapshotted per task): their size
    # (stable bytes: `video_chunks`), content type, how long the body takes to trickle out, and
    # forced HTTP statuses answered to the next video requests in turn (404, 500, ...).
    video_bytes: PositiveInt = 4096
    video_content_type: str = "video/mp4"
    video_trickle_s: NonNegativeFloat = 0.0
    video_responses: list[int] = []

    def merged(self, patch: dict[str, Any]) -> SimConfig:
        """Return a new config with the top-level keys of `patch` replaced (lists replace whole)."""
        return SimConfig.model_validate({**self.model_dump(), **patch})


T = TypeVar("T")


def pop_first(queue: list[T]) -> T | None:
    """Consume the next forced answer of a FIFO queue, if any."""
    return queue.pop(0) if queue else None


@dataclass(frozen=True)
class TaskPlan:
    """The behaviour a task was created with: config snapshot plus its prompt directives.

    Snapshotting at creation keeps a running task's timeline stable when the config changes.
    """

    queue_s: float
    generate_s: float
    outcome: Outcome
    fail_code: str
    fail_msg: str
    callback_mode: CallbackMode
    callback_delay_s: float
    progress_callbacks: bool
    video_url_ttl: int
    eta_s: int | None
    webhook_retry_s: float
    result_url: str | None = None

    @property
    def done_after(self) -> float:
        """Seconds from creation to the terminal state."""
        return self.queue_s + self.generate_s


def plan_task(config: SimConfig, prompt: str) -> TaskPlan:
    """Combine the global config with the `[sim:...]` directives found in the prompt."""
    factor = SLOW_FACTOR if SLOW_DIRECTIVE in prompt else 1
    mode = next((m for d, m in CALLBACK_DIRECTIVES.items() if d in prompt), config.callback_mode)
    return TaskPlan(
        queue_s=config.queue_s * factor,
        generate_s=config.generate_s * factor,
        outcome="fail" if FAIL_DIRECTIVE in prompt else config.outcome,
        fail_code=config.fail_code,
        fail_msg=config.fail_msg,
        callback_mode=mode,
        callback_delay_s=config.callback_delay_s,
        progress_callbacks=config.progress_callbacks,
        video_url_ttl=config.video_url_ttl,
        eta_s=config.eta_s,
        webhook_retry_s=config.novita_webhook_retry_s,
        result_url=config.result_url,
    )


class Phase(StrEnum):
    """Task lifecycle, named in Apikley's vocabulary (Novita's is mapped from it)."""

    WAITING = "waiting"
    QUEUING = "queuing"
    GENERATING = "generating"
    SUCCESS = "success"
    FAIL = "fail"

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCESS, Phase.FAIL)


NOVITA_STATUS: dict[Phase, str] = {
    Phase.WAITING: "TASK_STATUS_QUEUED",
    Phase.QUEUING: "TASK_STATUS_QUEUED",
    Phase.GENERATING: "TASK_STATUS_PROCESSING",
    Phase.SUCCESS: "TASK_STATUS_SUCCEED",
    Phase.FAIL: "TASK_STATUS_FAILED",
}


def phase_at(plan: TaskPlan, elapsed: float) -> Phase:
    """Phase `elapsed` seconds after creation; queue time is split between waiting and queuing."""
    if elapsed < plan.queue_s / 2:
        return Phase.WAITING
    if elapsed < plan.queue_s:
        return Phase.QUEUING
    if elapsed < plan.done_after:
        return Phase.GENERATING
    return Phase.SUCCESS if plan.outcome == "success" else Phase.FAIL


def phase_started(plan: TaskPlan, phase: Phase) -> float:
    """Seconds after creation at which `phase` begins."""
    starts = {Phase.WAITING: 0.0, Phase.QUEUING: plan.queue_s / 2, Phase.GENERATING: plan.queue_s}
    return starts.get(phase, plan.done_after)


class Provider(StrEnum):
    APIKLEY = "apikley"
    NOVITA = "novita"


@dataclass
class SimTask:
    """One submitted generation task; `request` is the body exactly as the client sent it."""

    provider: Provider
    task_id: str
    request: dict[str, Any]
    plan: TaskPlan
    created_at: float
    callback_url: str | None = None
    # Status queries about this task (Get Task Details, task-result): who is still asking.
    queries: int = 0

    def phase(self, now: float) -> Phase:
        return phase_at(self.plan, now - self.created_at)

    def provider_state(self, now: float) -> str:
        """The state string this task's provider would report."""
        phase = self.phase(now)
        return phase.value if self.provider is Provider.APIKLEY else NOVITA_STATUS[phase]

    def video_expires_at(self) -> float:
        return self.created_at + self.plan.done_after + self.plan.video_url_ttl


def unix_ms(seconds: float) -> int:
    return round(seconds * 1000)


def compact_json(value: Any) -> str:
    """JSON as the provider embeds it inside string fields (`param`, `resultJson`)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def apikley_record(task: SimTask, elapsed: float, video_url: str) -> dict[str, Any]:
    """The `data` of Get Task Details (and of callbacks), `elapsed` seconds after creation."""
    phase = phase_at(task.plan, elapsed)
    failed = phase is Phase.FAIL
    return {
        "taskId": task.task_id,
        "model": task.request.get("model"),
        "state": phase.value,
        "param": compact_json(task.request),
        "resultJson": compact_json({"resultUrls": [video_url]}) if phase is Phase.SUCCESS else "",
        "failCode": task.plan.fail_code if failed else "",
        "failMsg": task.plan.fail_msg if failed else "",
        "costTime": unix_ms(task.plan.done_after) if phase.terminal else None,
        "completeTime": unix_ms(task.created_at + task.plan.done_after) if phase.terminal else None,
        "createTime": unix_ms(task.created_at),
        "updateTime": unix_ms(task.created_at + phase_started(task.plan, phase)),
    }


def apikley_envelope(
    code: int, text: str, data: Any, message_key: MessageKey = "msg"
) -> dict[str, Any]:
    """An Apikley answer body; `message_key` is how the provider spells its text field."""
    return {"code": code, message_key: text, "data": data}


def apikley_record_answer(
    task: SimTask,
    elapsed: float,
    video_url: str,
    fail_code: int = 501,
    message_key: MessageKey = "msg",
) -> dict[str, Any]:
    """Get Task Details' answer; a failed generation carries `fail_code` beside its record."""
    record = apikley_record(task, elapsed, video_url)
    if record["state"] == Phase.FAIL and fail_code != 200:
        return apikley_envelope(fail_code, task.plan.fail_msg, record, message_key)
    return apikley_envelope(200, "success", record, message_key)


def apikley_callback_body(
    task: SimTask,
    elapsed: float,
    video_url: str,
    message_key: MessageKey = "msg",
    task_id_key: TaskIdKey = "taskId",
) -> dict[str, Any]:
    """A callback body: the record `elapsed` seconds after creation; code 501 means failed.

    `task_id_key` names the task id inside `data`: market callbacks say `taskId`, kie.ai's
    sample `task_id`.
    """
    record = apikley_record(task, elapsed, video_url)
    if task_id_key != "taskId":
        record = {task_id_key if k == "taskId" else k: v for k, v in record.items()}
    if record["state"] == Phase.FAIL:
        return apikley_envelope(501, task.plan.fail_msg, record, message_key)
    msg = "success" if record["state"] == Phase.SUCCESS else record["state"]
    return apikley_envelope(200, msg, record, message_key)


def gateway_error_page(status: int) -> str:
    """The HTML error page an nginx gateway in front of a provider answers with."""
    try:
        title = f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        title = str(status)
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )


@dataclass(frozen=True)
class ScheduledCallback:
    """Send `send_after` seconds after creation a body describing the task at offset `as_of`.

    Offsets rather than absolute times: float rounding must not move `as_of` out of its phase.
    """

    send_after: float
    as_of: float


def callback_schedule(plan: TaskPlan) -> list[ScheduledCallback]:
    """The callbacks a task sends, in order, according to its callback mode."""
    if plan.callback_mode == "drop":
        return []
    delay = plan.callback_delay_s
    # Without a generating phase there is no non-terminal state to report.
    has_generating = plan.generate_s > 0
    terminal = ScheduledCallback(plan.done_after + delay, plan.done_after)
    schedule: list[ScheduledCallback] = []
    if plan.progress_callbacks and has_generating:
        schedule.append(ScheduledCallback(plan.queue_s + delay, plan.queue_s))
    schedule.append(terminal)
    if plan.callback_mode == "duplicate":
        schedule.append(terminal)
    if plan.callback_mode == "out_of_order" and has_generating:
        schedule.append(ScheduledCallback(terminal.send_after, plan.queue_s))
    return schedule


def novita_webhook_schedule(plan: TaskPlan) -> list[ScheduledCallback]:
    """Novita's webhooks: only the task's result (no progress), in the task's callback mode."""
    return callback_schedule(replace(plan, progress_callbacks=False))


def novita_result(task: SimTask, elapsed: float, video_url: str) -> dict[str, Any]:
    """The Task Result API answer, `elapsed` seconds after the task's creation."""
    plan = task.plan
    phase = phase_at(plan, elapsed)
    if phase.terminal:
        progress, eta = 100, 0
    else:
        progress = 0
        if phase is Phase.GENERATING:  # so generate_s > 0
            progress = min(99, int(100 * (elapsed - plan.queue_s) / plan.generate_s))
        eta = plan.eta_s if plan.eta_s is not None else math.ceil(plan.done_after - elapsed)
    videos = [
        {"video_url": video_url, "video_url_ttl": str(plan.video_url_ttl), "video_type": "mp4"}
    ]
    return {
        "task": {
            "task_id": task.task_id,
            "task_type": NOVITA_TASK_TYPE,
            "status": NOVITA_STATUS[phase],
            "reason": plan.fail_msg if phase is Phase.FAIL else "",
            "eta": eta,
            "progress_percent": progress,
        },
        "videos": videos if phase is Phase.SUCCESS else [],
        "images": [],
        "audios": [],
        "extra": {},
    }


def novita_webhook_body(task: SimTask, elapsed: float, video_url: str) -> dict[str, Any]:
    """Novita's webhook: the Task Result API answer `elapsed` seconds after creation, wrapped."""
    return {"event_type": "ASYNC_TASK_RESULT", "payload": novita_result(task, elapsed, video_url)}


@dataclass
class CallbackAttempt:
    """One callback or webhook POST as sent, with the receiver's status or the transport error.

    `task_id` is the id the provider gave the task; `headers` are those the simulator set.
    """

    task_id: str
    url: str
    body: dict[str, Any]
    sent_at: int
    status_code: int | None = None
    error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class SimStore:
    """All simulator state, in memory: config, tasks of both providers and the callback log."""

    config: SimConfig = field(default_factory=SimConfig)
    tasks: dict[str, SimTask] = field(default_factory=dict)
    callbacks: list[CallbackAttempt] = field(default_factory=list)
    # Task id → video requests received (however they ended).
    video_requests: dict[str, int] = field(default_factory=dict)
    # Survives reset so a task id is never reused, even across resets.
    _last_apikley_id: int = 0

    def add_task(
        self,
        provider: Provider,
        request: dict[str, Any],
        prompt: str,
        now: float,
        callback_url: str | None = None,
    ) -> SimTask:
        task = SimTask(
            provider=provider,
            task_id=self._new_id(provider, now),
            request=request,
            plan=plan_task(self.config, prompt),
            created_at=now,
            callback_url=callback_url,
        )
        self.tasks[task.task_id] = task
        return task

    def find(self, provider: Provider, task_id: str) -> SimTask | None:
        task = self.tasks.get(task_id)
        return task if task is not None and task.provider is provider else None

    def reset(self) -> None:
        self.config = SimConfig()
        self.tasks.clear()
        self.callbacks.clear()
        self.video_requests.clear()

    def _new_id(self, provider: Provider, now: float) -> str:
        if provider is Provider.NOVITA:
            return str(uuid.uuid4())
        # Millisecond-like digits as the real provider uses, bumped to stay unique.
        self._last_apikley_id = max(self._last_apikley_id + 1, unix_ms(now))
        return f"task_kling_{self._last_apikley_id}"


# The media data's padding: its period divides the chunk size, so every chunk is a slice of it.
_PATTERN = bytes(range(256)) * 256
VIDEO_CHUNK = len(_PATTERN)


def video_chunks(size: int) -> list[bytes] | Iterator[bytes]:
    """A simulated video of exactly `size` bytes, the same for every task and request: a real,
    playable MP4 (`service/simulator/mp4.py`) whose `mdat` is padded with filler to `size` (just
    its first bytes if `size` is smaller than the playable file)."""
    head = header(size)
    if size <= len(head):
        return [head]
    return _chunks(head, size - len(head))


def _chunks(head: bytes, filler: int) -> Iterator[bytes]:
    yield head
    while filler > 0:
        take = min(filler, VIDEO_CHUNK)
        yield _PATTERN[:take]
        filler -= take
