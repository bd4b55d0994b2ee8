"""Identifiers: a type prefix plus a time-ordered random part, so ids sort by creation."""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rem = divmod(number, 36)
        digits.append(_ALPHABET[rem])
    return "".join(reversed(digits))


def new_id(prefix: str) -> str:
    """`{prefix}_{ms timestamp, 9 base36 chars}{16 random base36 chars}`: lexicographic = time order."""
    millis = time.time_ns() // 1_000_000
    return f"{prefix}_{_base36(millis, 9)}{_base36(secrets.randbits(82), 16)}"


def id_floor(prefix: str, unix_s: float) -> str:
    """The lowest id `new_id(prefix)` can return at `unix_s` or later: a lexicographic bound for
    "created since" range queries over sets of ids."""
    return f"{prefix}_{_base36(max(int(unix_s * 1000), 0), 9)}"
