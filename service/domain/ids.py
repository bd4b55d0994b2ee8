"""Identifiers: a type prefix plus a time-ordered random part, so ids sort by creation."""

from __future__ import annotations

import secrets
import time
from functools import lru_cache

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
# Two digits per division: ids are made on the callback hot path.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]


def _base36(number: int, width: int) -> str:
    """`number` in `width` base-36 digits (most significant first), `width` even."""
    pairs = []
    for _ in range(width // 2):
        number, rem = divmod(number, 1296)
        pairs.append(_PAIRS[rem])
    return "".join(reversed(pairs))


@lru_cache(maxsize=4)
def _time_part(millis: int) -> str:
    # 9 digits: the leading zero pair of a 10-digit rendering dropped (36**9 ms is 3,200 years).
    return _base36(millis, 10)[1:]


def new_id(prefix: str) -> str:
    """`{prefix}_{ms timestamp, 9 base36 chars}{16 random base36 chars}`: lexicographic = time order."""
    return f"{prefix}_{_time_part(time.time_ns() // 1_000_000)}{_base36(secrets.randbits(82), 16)}"


def id_floor(prefix: str, unix_s: float) -> str:
    """The lowest id `new_id(prefix)` can return at `unix_s` or later: a lexicographic bound for
    "created since" range queries over sets of ids."""
    return f"{prefix}_{_time_part(max(int(unix_s * 1000), 0))}"


def id_millis(value: str) -> int | None:
    """The creation time (ms since the epoch) `new_id` wrote into an id; None if it is not one."""
    _, sep, rest = value.partition("_")
    if not sep or len(rest) != 25 or not rest.isalnum() or rest != rest.lower():
        return None
    try:
        return int(rest[:9], 36)
    except ValueError:
        return None
