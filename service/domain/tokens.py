"""Callback credentials (pure): our per-task URL tokens, and kie.ai's callback signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac

# kie.ai's webhook verification: a timestamp further than this from our clock is refused.
SIGNATURE_TOLERANCE_S = 300


def callback_token(secret: str, task_id: str, provider: str = "apikley") -> str:
    """An HMAC of the task id (and provider), so a URL for one task is useless for another."""
    digest = hmac.new(secret.encode(), f"{provider}-callback:{task_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def token_matches(secret: str, task_id: str, token: str, provider: str = "apikley") -> bool:
    return hmac.compare_digest(callback_token(secret, task_id, provider).encode(), token.encode())


def kie_signature(key: str, provider_task_id: str, timestamp: str) -> str:
    """base64(HMAC-SHA256("{taskId}.{timestamp}", key)): what kie.ai puts in X-Webhook-Signature.
    Only the task id and time are signed, not the body: it proves origin, not content."""
    digest = hmac.new(key.encode(), f"{provider_task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def kie_signature_problem(
    key: str, provider_task_id: str, timestamp: str | None, signature: str | None, *, now_s: float
) -> str | None:
    """Why a callback's signature headers do not hold, or None when they do."""
    if not timestamp or not signature:
        return "X-Webhook-Timestamp and X-Webhook-Signature are required"
    try:
        sent_at = int(timestamp)
    except ValueError:
        return "X-Webhook-Timestamp is not unix seconds"
    if abs(now_s - sent_at) > SIGNATURE_TOLERANCE_S:
        return f"X-Webhook-Timestamp is more than {SIGNATURE_TOLERANCE_S} s from now"
    if not hmac.compare_digest(kie_signature(key, provider_task_id, timestamp).encode(), signature.strip().encode()):
        return "X-Webhook-Signature does not match"
    return None
