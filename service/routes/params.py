"""Query parameters shared by the listing routes, each rejected with a 400 naming it."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from starlette.requests import Request

from service.errors import ApiError

E = TypeVar("E", bound=StrEnum)


def limit_param(request: Request, default: int = 20, maximum: int = 100) -> int:
    try:
        limit = int(request.query_params.get("limit", str(default)))
    except ValueError:
        limit = 0
    if not 1 <= limit <= maximum:
        raise ApiError(400, "validation_error", "bad limit", {"limit": f"must be an integer from 1 to {maximum}"})
    return limit


def enum_param(request: Request, name: str, kind: type[E], *, blank_is_none: bool = False) -> E | None:
    """The parameter as a member of `kind`; None when absent (or empty, with `blank_is_none`: an
    HTML form's "any" choice)."""
    raw = request.query_params.get(name)
    if raw is None or (blank_is_none and not raw):
        return None
    try:
        return kind(raw)
    except ValueError as exc:
        allowed = ", ".join(member.value for member in kind)
        raise ApiError(400, "validation_error", f"unknown {name}", {name: f"must be one of {allowed}"}) from exc
