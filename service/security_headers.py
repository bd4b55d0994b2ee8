"""Security headers for what this service serves to browsers (the dashboard, the API docs).

The Content-Security-Policy lets a page run only this origin's files and the inline scripts and
styles whose sha256 it lists, so markup that slipped into a page cannot run script. The other
headers forbid framing (clickjacking), MIME sniffing, sending our URLs to other sites as a
Referer, and other sites' windows holding a handle on ours.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def inline_source(text: str) -> str:
    """The CSP source allowing an inline `<script>` or `<style>` whose body is exactly `text`."""
    digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
    return f"'sha256-{digest}'"


def content_security_policy(directives: Mapping[str, str]) -> str:
    return "; ".join(f"{name} {value}" for name, value in directives.items())


def browser_headers(csp: str, *, cache_control: str | None = None) -> dict[str, str]:
    headers = {
        "Content-Security-Policy": csp,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        # Not `no-referrer`: under it browsers send `Origin: null` on a same-origin form POST,
        # which would defeat the dashboard's Origin check.
        "Referrer-Policy": "same-origin",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
    }
    if cache_control is not None:
        headers["Cache-Control"] = cache_control
    return headers


class SecurityHeaders:
    """ASGI middleware: adds `headers` to every response, except those a response sets itself."""

    def __init__(self, app: ASGIApp, headers: Mapping[str, str]) -> None:
        self.app = app
        self.headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                own = list(message.get("headers", []))
                present = {bytes(name).lower() for name, _ in own}
                message["headers"] = own + [(name, value) for name, value in self.headers if name not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)
