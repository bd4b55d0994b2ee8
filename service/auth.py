"""Bearer-key authentication for `/v1/*` (constant-time comparison against every key)."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from service.errors import ApiError


def require_api_key(request: Request, keys: list[str]) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <api key>")
    matched = False
    for key in keys:
        # No early exit: the time taken must not reveal which key (or how much of one) matched.
        matched |= hmac.compare_digest(key.encode(), presented.strip().encode())
    if not matched:
        raise ApiError(401, "unauthorized", "unknown API key")
    return presented.strip()
