"""Standard Webhooks signing: secrets, signature headers and a small verifier.

Spec: https://www.standardwebhooks.com/ (the scheme Svix uses). Pure functions, stdlib only.
"""

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets
from collections.abc import Mapping, Sequence
from functools import lru_cache

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
SECRET_BYTES = 24

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"


class InvalidSecret(ValueError):
    """The secret is not of the form ``whsec_<base64>``."""


class SignatureError(Exception):
    """Verification failed: bad or missing headers, clock skew or no matching signature."""


def generate_secret() -> str:
    """Return a new signing secret: ``whsec_`` + base64 of 24 random bytes, as Svix issues."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def _secret_key(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidSecret(f"secret must start with {SECRET_PREFIX!r}")
    encoded = secret[len(SECRET_PREFIX) :]
    # Other Standard Webhooks libraries accept unpadded base64, so we do too.
    padded = encoded + "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(padded, validate=True)
    except binascii.Error as exc:
        raise InvalidSecret(f"secret after {SECRET_PREFIX!r} must be standard base64") from exc
    if not key:
        raise InvalidSecret("secret key must not be empty")
    return key


@lru_cache(maxsize=4096)
def _keyed(secret: str) -> "hmac.HMAC":
    # Decoding the secret and keying HMAC once per secret, then copying, halves the cost of
    # signing a fan-out's hundreds of attempts. Invalid secrets raise and are not cached.
    return hmac.new(_secret_key(secret), digestmod=hashlib.sha256)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return ``v1,<base64 HMAC-SHA256>`` of ``"{msg_id}.{timestamp}."`` + the body bytes."""
    mac = _keyed(secret).copy()
    mac.update(f"{msg_id}.{timestamp}.".encode())
    mac.update(body)
    return f"{SIGNATURE_VERSION},{base64.b64encode(mac.digest()).decode('ascii')}"


def signature_header(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """Sign with every still-valid secret (newest first) so receivers mid-rotation accept either."""
    if not secrets:
        raise InvalidSecret("at least one secret is required to sign")
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets)


def webhook_headers(
    secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """Return the headers for one delivery attempt; send ``body`` byte-for-byte as signed."""
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: signature_header(secrets, msg_id, timestamp, body),
        "content-type": "application/json",
    }


def _required_header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name, "")
    if not value:
        raise SignatureError(f"missing {name} header")
    return value


def _parse_timestamp(value: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise SignatureError(f"{HEADER_TIMESTAMP} must be integer unix seconds")
    return int(value)


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: int, tolerance_s: int = 300
) -> None:
    """Raise SignatureError unless ``headers`` carry a valid signature of ``body`` by ``secret``."""
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = _required_header(lowered, HEADER_ID)
    timestamp = _parse_timestamp(_required_header(lowered, HEADER_TIMESTAMP))
    signatures = _required_header(lowered, HEADER_SIGNATURE)
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(f"{HEADER_TIMESTAMP} is more than {tolerance_s}s away from now")
    expected = sign(secret, msg_id, timestamp, body).encode()
    candidates = signatures.split()
    if not any(hmac.compare_digest(expected, candidate.encode()) for candidate in candidates):
        raise SignatureError("no matching signature")
