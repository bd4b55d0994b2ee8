"""The task as stored and shown, and the request that creates one (validated per provider)."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from service.domain.status import TaskStatus

# The name of a registered provider (`service.providers.registry`); a request may also ask for "auto".
ProviderName = str
AUTO = "auto"
# Metadata is echoed back in every task and event: small, and shallow enough for every JSON
# encoder on the way (orjson stops at 255 levels; receivers' parsers often sooner).
MAX_METADATA_BYTES = 2048
MAX_METADATA_DEPTH = 16


def small_metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """`value` if it nests at most MAX_METADATA_DEPTH deep and encodes in MAX_METADATA_BYTES."""
    if value is None:
        return None
    # Depth first, iteratively: what is too deep to encode must not reach the encoder.
    level: list[Any] = [value]
    for _ in range(MAX_METADATA_DEPTH):
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item if isinstance(item, list) else ())
        ]
        if not level:
            break
    else:
        if any(isinstance(item, (dict, list)) for item in level):
            raise ValueError(f"must nest at most {MAX_METADATA_DEPTH} levels deep")
    if len(orjson.dumps(value)) > MAX_METADATA_BYTES:
        raise ValueError(f"must serialize to at most {MAX_METADATA_BYTES} bytes of JSON")
    return value


@dataclass(frozen=True)
class PromptLimits:
    """What one provider takes beyond what every request may hold (its `ProviderSpec.limits`)."""

    prompt: int
    negative_prompt: int


def not_one_of(choices: Collection[str]) -> PydanticCustomError:
    """The error for a value outside `choices`, as pydantic words it for a Literal."""
    quoted = [repr(choice) for choice in choices]
    expected = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
    return PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})


class TaskInput(BaseModel):
    """What we send to the provider, in our own names (cfg_scale becomes Novita's guidance_scale)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    negative_prompt: str | None = None
    duration: Literal["5", "10"] = "5"
    aspect_ratio: Literal["16:9", "9:16", "1:1"] = "16:9"
    cfg_scale: float | None = None


class TaskRequest(TaskInput):
    """The body of `POST /v1/tasks`."""

    # Validated against the names in the context: `model_validate(body, context={"providers": ...})`.
    provider: ProviderName = AUTO
    webhook_url: str | None = Field(default=None, max_length=2048)
    metadata: dict[str, Any] | None = None

    @field_validator("provider", mode="before")
    @classmethod
    def _known_provider(cls, value: object, info: ValidationInfo) -> object:
        context: dict[str, Collection[str]] = info.context or {}
        choices = (*context["providers"], AUTO)
        if not isinstance(value, str) or value not in choices:
            raise not_one_of(choices)
        return value

    @field_validator("duration", mode="before")
    @classmethod
    def _duration_as_string(cls, value: object) -> object:
        # Clients often send 5 rather than "5"; both providers want the string.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("cfg_scale", mode="before")
    @classmethod
    def _cfg_is_number(cls, value: object) -> object:
        # JSON true/false would otherwise be coerced to 1.0/0.0.
        if isinstance(value, bool):
            raise ValueError("must be a number")  # noqa: TRY004 (pydantic reports ValueError, not TypeError, as invalid input)
        return value

    @field_validator("cfg_scale")
    @classmethod
    def _cfg_step(cls, value: float | None) -> float | None:
        if value is None:
            return None
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ValueError("must be between 0 and 1")
        if abs(value * 10 - round(value * 10)) > 1e-9:
            raise ValueError("must be a multiple of 0.1")
        return round(value, 1)

    @field_validator("metadata")
    @classmethod
    def _metadata_small(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return small_metadata(value)

    def task_input(self) -> TaskInput:
        return TaskInput(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            duration=self.duration,
            aspect_ratio=self.aspect_ratio,
            cfg_scale=self.cfg_scale,
        )


def limit_violations(task_input: TaskInput, provider: ProviderName, limits: PromptLimits) -> dict[str, str]:
    """Field → message for every limit of `provider` that the input breaks."""
    problems: dict[str, str] = {}
    if len(task_input.prompt) > limits.prompt:
        problems["prompt"] = f"must be at most {limits.prompt} characters for {provider}"
    if task_input.negative_prompt is not None and len(task_input.negative_prompt) > limits.negative_prompt:
        problems["negative_prompt"] = f"must be at most {limits.negative_prompt} characters for {provider}"
    return problems


def is_web_url(url: str) -> bool:
    """An absolute http(s) URL with a host: the only kind of result URL we take from a provider
    (a `javascript:` or `file:` one would be handed to every subscriber and browser). Control
    characters anywhere are refused, where urlsplit would quietly drop some of them. (Spelled out
    rather than urlsplit, which costs more than the rest of reading a callback's result.)"""
    head = url[:8].lower()
    if head.startswith("https://"):
        host = url[8:9]
    elif head.startswith("http://"):
        host = url[7:8]
    else:
        return False
    return host not in ("", "/", "?", "#") and url.isprintable()


class StorageError(BaseModel):
    """Why our copy of the video was not kept, after the last try (the task still succeeded)."""

    code: str
    message: str
    attempts: int


class TaskResult(BaseModel):
    video_url: str
    expires_at: str | None = None
    # Our own copy (service/storage): where to fetch it (`GET /v1/tasks/{id}/video`), its digest,
    # size and type, and when the retention sweep deletes it. Unset until it is kept.
    stored_url: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    content_type: str | None = None
    stored_until: str | None = None
    storage_error: StorageError | None = None


# Failures we decide ourselves, for want of news: not proof that the provider failed, so a later
# verified success still wins (the one exception to "terminal is final").
SELF_DECIDED_FAILURES = frozenset({"timeout", "submit_unconfirmed"})


class TaskError(BaseModel):
    code: str
    message: str
    provider_code: str | None = None

    @property
    def self_decided(self) -> bool:
        return self.code in SELF_DECIDED_FAILURES


# sending: written before the request leaves, so a crash mid-call is never mistaken for "never
# sent". accepted: the provider answered with its task id. retrying / rejected: refused by code,
# or provably never delivered (connection refused), then tried again or not. unconfirmed: sent,
# answer never read (timeout, crash): a paid task may exist. adopted: an unconfirmed attempt
# whose provider task id reached us later, by its per-task callback.
AttemptOutcome = Literal["sending", "accepted", "retrying", "rejected", "unconfirmed", "adopted"]
# Attempts that created (or may have created) a paid provider task.
PAID_OUTCOMES = frozenset({"sending", "accepted", "unconfirmed", "adopted"})


class SubmitAttempt(BaseModel):
    """One try at handing the task to a provider: every one is kept, so cost is never silent."""

    # Absent on attempts recorded before attempts had ids.
    id: str | None = None
    provider: ProviderName
    at: str
    outcome: AttemptOutcome
    code: str | None = None
    message: str | None = None
    provider_task_id: str | None = None


class Task(BaseModel):
    id: str
    # The id of the API key that created it (a hash prefix, never the key); None before
    # ownership was recorded (such tasks are the admins').
    owner: str | None = None
    provider: ProviderName
    # What the client asked for: only `auto` tasks may fail over to the other provider.
    requested_provider: ProviderName = AUTO
    provider_task_id: str | None = None
    status: TaskStatus = TaskStatus.QUEUED
    input: TaskInput
    result: TaskResult | None = None
    error: TaskError | None = None
    progress: int | None = None
    created_at: str
    updated_at: str
    metadata: dict[str, Any] | None = None
    webhook_url: str | None = None
    sequence: int = 0
    attempts: list[SubmitAttempt] = Field(default_factory=list)

    def dumps(self) -> bytes:
        # pydantic's own JSON serializer: the same bytes as orjson over model_dump, in 60% the time.
        return self.__pydantic_serializer__.to_json(self)

    @classmethod
    def loads(cls, raw: bytes | str) -> Task:
        return cls.model_validate_json(raw)
