"""Dashboard sessions: the signed session cookie, who a request is signed in as, and CSRF checks.

The cookie is `v1.<key id>.<issued>.<nonce>.<signature>`: the key id is the key's owner id
(`service.auth.key_id`, never the key), `issued` is the Unix time of the sign-in, the
random nonce makes every sign-in's cookie (and so its CSRF token) new, and the signature is
base64url(HMAC-SHA256(server secret, everything before it)). The server secret is
HMAC(CALLBACK_SECRET, "kling-relay dashboard session"), so changing CALLBACK_SECRET signs everyone
out. Nothing is stored: the server accepts a cookie while it is younger than DASHBOARD_SESSION_S
and its key is still one of KLING_RELAY_API_KEYS or KLING_RELAY_ADMIN_KEYS.

A state-changing dashboard request must come from a page of this origin (`Sec-Fetch-Site` and
`Origin`, each checked when sent, one of them required) and carry the session's CSRF token,
HMAC(server secret, cookie), which pages carry in a hidden form field and a `csrf-token` meta tag.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Collection, Mapping
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from service.auth import Caller
from service.errors import ApiError
from service.routes.context import runtime
from service.settings import Settings

COOKIE = "kr_dashboard"
COOKIE_PATH = "/dashboard"
CSRF_FIELD = "csrf_token"
_VERSION = "v1"
# Our web processes' clocks may differ a little; a cookie issued further ahead than this is forged
# or from a broken clock, and is refused.
_CLOCK_SKEW_S = 300


def server_secret(callback_secret: str) -> bytes:
    return hmac.new(callback_secret.encode(), b"kling-relay dashboard session", hashlib.sha256).digest()


def _sign(secret: bytes, text: str) -> str:
    return base64.urlsafe_b64encode(hmac.new(secret, text.encode(), hashlib.sha256).digest()).decode().rstrip("=")


def issue(secret: bytes, signed_in_key_id: str, now: float) -> str:
    """A new session cookie value for `signed_in_key_id`, issued at `now`."""
    body = f"{_VERSION}.{signed_in_key_id}.{int(now)}.{secrets.token_urlsafe(12)}"
    return f"{body}.{_sign(secret, body)}"


def verify(secret: bytes, cookie: str, *, now: float, lifetime_s: float, key_ids: Collection[str]) -> str | None:
    """The cookie's key id if its signature is ours, it has not expired and its key is still
    accepted; otherwise None."""
    body, _, signature = cookie.rpartition(".")
    if not hmac.compare_digest(_sign(secret, body).encode(), signature.encode()):
        return None
    version, signed_in_key_id, issued, _nonce = body.split(".")
    if version != _VERSION or not issued.isdigit():
        return None
    if not int(issued) - _CLOCK_SKEW_S <= now < int(issued) + lifetime_s:
        return None
    return signed_in_key_id if signed_in_key_id in key_ids else None


def csrf_token(secret: bytes, cookie: str) -> str:
    return _sign(secret, f"csrf\x00{cookie}")


def _secret(settings: Settings) -> bytes:
    if not settings.callback_secret:
        raise RuntimeError("CALLBACK_SECRET is required to sign dashboard sessions")
    return server_secret(settings.callback_secret)


def _bearer(request: Request) -> Caller | None:
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    presented = presented.strip()
    if scheme.lower() == "bearer" and presented:
        return runtime(request).keys.caller(presented)
    return None


def session_caller(request: Request) -> Caller | None:
    """Who the request is signed in as, from an `Authorization: Bearer` key or else the session
    cookie; None when it is not signed in."""
    bearer = _bearer(request)
    if bearer is not None:
        return bearer
    cookie = request.cookies.get(COOKIE)
    if cookie is None:
        return None
    rt = runtime(request)
    settings = rt.settings
    found = verify(_secret(settings), cookie, now=time.time(), lifetime_s=settings.dashboard_session_s, key_ids=rt.keys.ids)
    return Caller(found, found in rt.keys.admin_ids) if found is not None else None


def start_session(request: Request, response: Response, who: Caller) -> None:
    """Sign the browser in as `who` (a caller whose key was just presented), with a new cookie."""
    settings = runtime(request).settings
    response.set_cookie(
        COOKIE,
        issue(_secret(settings), who.key_id, time.time()),
        max_age=settings.dashboard_session_s,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def end_session(request: Request, response: Response) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=request.url.scheme == "https")


def page_csrf_token(request: Request) -> str | None:
    """The CSRF token for pages to embed; None for Bearer requests, which need none."""
    cookie = request.cookies.get(COOKIE)
    if cookie is None or _bearer(request) is not None:
        return None
    return csrf_token(_secret(runtime(request).settings), cookie)


def same_origin(request: Request) -> bool:
    """Whether the browser says a page of this origin made the request. Origins: the one the
    request was addressed to, and PUBLIC_BASE_URL's (a proxy may rewrite the Host header)."""
    site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    if site is None and origin is None:
        return False  # every current browser sends at least one of them on a POST
    public = urlsplit(runtime(request).settings.public_base_url)
    own = {f"{request.url.scheme}://{request.url.netloc}", f"{public.scheme}://{public.netloc}"}
    return site in (None, "same-origin") and (origin is None or origin in own)


def require_csrf(request: Request, form: Mapping[str, str]) -> None:
    """Refuse (403) a state-changing dashboard request that a page of another site could have
    made. Call it after checking `session_caller`. A Bearer key passes: browsers never attach one
    on their own."""
    if _bearer(request) is not None:
        return
    expected = page_csrf_token(request)
    presented = form.get(CSRF_FIELD, "")
    if not same_origin(request) or expected is None or not hmac.compare_digest(expected.encode(), presented.encode()):
        raise ApiError(403, "forbidden", "cross-site request refused: reload the dashboard and try again")
