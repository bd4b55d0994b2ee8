"""Request bodies the simulated providers accept, validated as their published docs say."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, Field, ValidationError

Duration = Literal["5", "10"]
AspectRatio = Literal["16:9", "9:16", "1:1"]


class InvalidBody(Exception):
    """A request body the provider rejects; the message names the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def _tenth_step(value: float) -> float:
    if abs(value * 10 - round(value * 10)) > 1e-9:
        raise ValueError("must be a multiple of 0.1")
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an absolute http(s) URL")
    return value


# strict=True: the docs say "number" and "string", so "0.5" or 5 are not silently coerced.
Scale = Annotated[float, Field(strict=True, ge=0, le=1), AfterValidator(_tenth_step)]
CallbackUrl = Annotated[str, Field(strict=True), AfterValidator(_http_url)]
ApikleyPrompt = Annotated[str, Field(strict=True, max_length=5000)]
ApikleyNegativePrompt = Annotated[str, Field(strict=True, max_length=500)]
NovitaText = Annotated[str, Field(strict=True, max_length=2500)]


class ApikleyInput(BaseModel):
    prompt: ApikleyPrompt
    duration: Duration = "5"
    aspect_ratio: AspectRatio = "16:9"
    negative_prompt: ApikleyNegativePrompt = ""
    cfg_scale: Scale = 0.5


class ApikleyCreateTask(BaseModel):
    model: Literal["kling/v2-1-master-text-to-video"]
    callBackUrl: CallbackUrl | None = None
    input: ApikleyInput


class NovitaWebhook(BaseModel):
    url: CallbackUrl


class NovitaExtra(BaseModel):
    """Novita's common `extra` object; keys other than `webhook` are accepted and ignored."""

    webhook: NovitaWebhook | None = None


class NovitaSubmit(BaseModel):
    prompt: NovitaText
    duration: Duration = "5"
    aspect_ratio: AspectRatio = "16:9"
    guidance_scale: Scale | None = None
    negative_prompt: NovitaText = ""
    extra: NovitaExtra | None = None

    @property
    def webhook_url(self) -> str | None:
        webhook = self.extra.webhook if self.extra is not None else None
        return webhook.url if webhook is not None else None


M = TypeVar("M", bound=BaseModel)


def decode_object(raw: bytes) -> dict[str, Any]:
    """Parse a JSON object body, keeping it verbatim for the task's `param`."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidBody("body", "is not valid JSON") from exc
    if not isinstance(data, dict):
        raise InvalidBody("body", "must be a JSON object")
    return data


def validate(model: type[M], data: dict[str, Any]) -> M:
    """Validate `data`, reporting the first error with its dotted field path."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise InvalidBody(".".join(str(part) for part in error["loc"]), error["msg"]) from exc
