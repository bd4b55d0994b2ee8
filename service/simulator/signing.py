"""kie.ai's callback signature ("Webhook verification"): only the task id and time are signed."""

from __future__ import annotations

import base64
import hashlib
import hmac

TIMESTAMP_HEADER = "X-Webhook-Timestamp"
SIGNATURE_HEADER = "X-Webhook-Signature"


def webhook_signature(key: str, task_id: str, timestamp: int) -> str:
    """base64(HMAC-SHA256 over `{task_id}.{timestamp}` with the UTF-8 bytes of `key`)."""
    message = f"{task_id}.{timestamp}".encode()
    digest = hmac.new(key.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def signature_headers(key: str, task_id: str, timestamp: int) -> dict[str, str]:
    """The headers a signed callback carries; `timestamp` is in unix seconds."""
    return {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: webhook_signature(key, task_id, timestamp),
    }
