"""Webhook delivery decisions as pure functions: which subscriptions an event goes to, which
secrets sign it, what an attempt's outcome means and when the next attempt is due.

No Redis, no network, no clock: callers pass `now` in, so every rule is tested directly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

from service.domain.events import CATALOG

# Events about the webhook system itself: a bare `*` does not match them (see `EventType`).
OPERATIONAL_EVENT_TYPES = tuple(t.name for t in CATALOG if t.operational)
ALL_EVENT_TYPES = tuple(t.name for t in CATALOG)
WILDCARD = "*"
MAX_FILTER_ENTRIES = 50
# Signatures kept per subscription: the current one plus recently rotated ones in their grace.
MAX_SECRETS = 5
RESPONSE_BODY_KEPT = 1024


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Outcome(StrEnum):
    DELIVERED = "delivered"  # any 2xx
    GONE = "gone"  # 410: the receiver says the endpoint is gone for good
    FAILED = "failed"  # anything else: other status, timeout, refused, unsafe address


class DisableReason(StrEnum):
    GONE = "gone"
    FAILING = "failing"


def filter_problem(patterns: list[str]) -> str | None:
    """Why `patterns` is not a valid event-type filter, or None. Unknown names are refused so a
    typo (`task.succeded`) fails at create time instead of silently never matching."""
    if not patterns:
        return "must list at least one event type (use \"*\" for all task events)"
    if len(patterns) > MAX_FILTER_ENTRIES:
        return f"must list at most {MAX_FILTER_ENTRIES} entries"
    prefixes = {name.split(".")[0] for name in ALL_EVENT_TYPES}
    for pattern in patterns:
        if pattern == WILDCARD or pattern in ALL_EVENT_TYPES:
            continue
        if pattern.endswith(".*") and pattern[:-2] in prefixes:
            continue
        known = ", ".join(ALL_EVENT_TYPES)
        return f"unknown event type {pattern!r}; use \"*\", a prefix like \"task.*\", or one of {known}"
    return None


def matches(patterns: list[str], event_type: str) -> bool:
    """True when a subscription with this filter should receive `event_type`."""
    for pattern in patterns:
        if pattern == WILDCARD:
            if event_type not in OPERATIONAL_EVENT_TYPES:
                return True
        elif pattern.endswith(".*"):
            if event_type.startswith(pattern[:-1]):
                return True
        elif pattern == event_type:
            return True
    return False


def receives(subscription_owner: str | None, event_owner: str | None, admin_ids: frozenset[str]) -> bool:
    """Whether a subscription gets events about this owner's tasks: each key its own; an admin
    key's subscriptions, and those from before ownership was recorded, everyone's."""
    return subscription_owner is None or subscription_owner in admin_ids or subscription_owner == event_owner


def normalise_filter(patterns: list[str]) -> list[str]:
    """Drop duplicates, keeping the caller's order."""
    return list(dict.fromkeys(patterns))


@dataclass(frozen=True)
class SigningSecret:
    secret: str
    # Unix seconds after which this secret no longer signs; None for the current secret.
    expires_at: float | None = None


def secrets_in_force(secrets: list[SigningSecret], now: float) -> list[SigningSecret]:
    """The secrets that still sign, newest first (the current one, then rotated ones in grace)."""
    return [s for s in secrets if s.expires_at is None or s.expires_at > now]


def rotate(secrets: list[SigningSecret], new_secret: str, *, now: float, grace_s: float) -> list[SigningSecret]:
    """The secret list after a rotation: `new_secret` becomes current and every secret still in
    force keeps signing for `grace_s` more (never longer than it already had)."""
    until = now + grace_s
    kept = [
        SigningSecret(s.secret, until if s.expires_at is None else min(s.expires_at, until))
        for s in secrets_in_force(secrets, now)
    ]
    kept = [s for s in kept if s.expires_at is not None and s.expires_at > now]
    return [SigningSecret(new_secret), *kept][:MAX_SECRETS]


def classify(status_code: int | None) -> Outcome:
    """What an HTTP answer means for the delivery; None means no answer (timeout, refused...)."""
    if status_code is not None and 200 <= status_code < 300:
        return Outcome.DELIVERED
    if status_code == 410:
        return Outcome.GONE
    return Outcome.FAILED


def retry_delay(schedule_s: list[float], attempts_made: int) -> float | None:
    """Seconds from now until the next attempt, or None when the schedule is used up.

    `schedule_s[i]` is the wait before attempt i+1 (Svix: 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
    10 h), so its length is the number of attempts one round of delivery makes.
    """
    if attempts_made < len(schedule_s):
        return max(schedule_s[attempts_made], 0.0)
    return None


@dataclass(frozen=True)
class Decision:
    status: DeliveryStatus
    retry_in_s: float | None = None
    disable: DisableReason | None = None


def decide(
    outcome: Outcome,
    *,
    round_attempts: int,
    schedule_s: list[float],
    failing_for_s: float | None,
    disable_after_s: float,
) -> Decision:
    """The delivery state machine: pending → delivered | pending (retry) | failed.

    `round_attempts` counts attempts in this round including the one just made (a manual retry
    or replay starts a new round). `failing_for_s` is how long the subscription has failed
    without a single success; None when there is no subscription to disable (a task's one-off
    `webhook_url`).
    """
    if outcome is Outcome.DELIVERED:
        return Decision(DeliveryStatus.DELIVERED)
    if failing_for_s is None:
        disable = None
    elif outcome is Outcome.GONE:
        disable = DisableReason.GONE
    elif failing_for_s >= disable_after_s:
        disable = DisableReason.FAILING
    else:
        disable = None
    delay = retry_delay(schedule_s, round_attempts)
    if outcome is Outcome.GONE or delay is None or disable is not None:
        return Decision(DeliveryStatus.FAILED, disable=disable)
    return Decision(DeliveryStatus.PENDING, retry_in_s=delay)


def delivery_id(event_id: str, subscriber: str) -> str:
    """The one delivery of `event_id` to `subscriber` (a subscription id, or `task-webhook`).

    Derived, not random, so a re-run fan-out finds the delivery it made before instead of making
    a second one. The event id's time part leads, so delivery ids sort by event time too.
    """
    digest = hashlib.sha256(f"{event_id}|{subscriber}".encode()).hexdigest()[:20]
    time_part = event_id.split("_", 1)[-1][:9]
    return f"dlv_{time_part}{digest}"


def truncate_body(body: bytes) -> str:
    """The first 1 KB of a response, as text, for the attempt log."""
    return body[:RESPONSE_BODY_KEPT].decode("utf-8", errors="replace")
