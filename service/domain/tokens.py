"""Per-task callback tokens: an HMAC of the task id, so a URL for one task is useless for another."""

from __future__ import annotations

import base64
import hashlib
import hmac


def callback_token(secret: str, task_id: str) -> str:
    digest = hmac.new(secret.encode(), f"apikley-callback:{task_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def token_matches(secret: str, task_id: str, token: str) -> bool:
    return hmac.compare_digest(callback_token(secret, task_id).encode(), token.encode())
