"""What both schemathesis modules share."""

from __future__ import annotations

from typing import Any

# Message framing belongs to the HTTP client. A generated `Content-Length: "';` is refused by the
# server's HTTP parser with its own plain-text 400 before any route runs: right, but not the API
# under test, and not something the document can describe per operation.
FRAMING = frozenset({"content-length", "transfer-encoding", "host", "connection"})


def without_framing_headers(context: Any, headers: dict[str, Any] | None) -> dict[str, Any] | None:
    """schemathesis' `map_headers` hook: generated headers, less the framing ones."""
    if not headers:
        return headers
    return {name: value for name, value in headers.items() if name.lower() not in FRAMING}
