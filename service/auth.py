"""API keys and who the caller is (the Bearer header itself is read by `service.routes.context`).

A caller is known by its key id, a prefix of the key's SHA-256: what tasks, subscriptions and
deliveries record as their owner (keys themselves are never stored). Each key sees only its own
data; admin keys (KLING_RELAY_ADMIN_KEYS) see and manage everything, including data from before
ownership was recorded (owner None).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass


def key_id(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Caller:
    key_id: str
    admin: bool

    def owns(self, owner: str | None) -> bool:
        """May this caller see and manage something owned by `owner`?"""
        return self.admin or owner == self.key_id


class Keys:
    """The accepted keys, with their ids worked out once."""

    def __init__(self, api_keys: list[str], admin_keys: list[str]) -> None:
        self._keys = [(key.encode(), key_id(key)) for key in dict.fromkeys([*api_keys, *admin_keys])]
        self.ids = frozenset(kid for _, kid in self._keys)
        self.admin_ids = frozenset(key_id(key) for key in admin_keys)

    def caller(self, presented: str) -> Caller | None:
        """The caller holding `presented`, or None. Every key is compared, in constant time: the
        time taken must not reveal which key (or how much of one) matched."""
        found: str | None = None
        given = presented.encode()
        for key, kid in self._keys:
            if hmac.compare_digest(key, given):
                found = kid
        return Caller(found, found in self.admin_ids) if found is not None else None
