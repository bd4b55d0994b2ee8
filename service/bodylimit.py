"""A request body cap on every route, whether or not its handler reads the body.

Handlers that parse a body also cap it themselves (`routes/bodies.py`, at their own limit);
this is the outer bound for all routes, new ones included: a declared `Content-Length` over
the cap is answered 413 before routing, and a streamed (chunked) body is cut off with a 413
as soon as the handler has read more than the cap.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ApiError, render


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"body exceeds {max_bytes} bytes")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            # (The server has already refused a malformed Content-Length.)
            if name == b"content-length" and value.isdigit():
                if int(value) > self.max_bytes:
                    error = _too_large(self.max_bytes)
                    await render(error.status, error.code, error.message)(scope, receive, send)
                    return
                # The server's HTTP parser reads exactly the declared length: nothing to count.
                await self.app(scope, receive, send)
                return
        received = 0

        async def capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the handler's read, so the app's error handlers answer 413.
                    raise _too_large(self.max_bytes)
            return message

        await self.app(scope, capped, send)
