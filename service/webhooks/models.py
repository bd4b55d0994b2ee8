"""Subscriptions and deliveries as stored and shown, and the request bodies that change them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.domain.catalog import DEFAULT_TEST_EVENT
from service.domain.clock import unix_to_iso
from service.domain.events import BY_NAME
from service.domain.subscriptions import SubscriptionView
from service.domain.tasks import not_one_of, small_metadata
from service.webhooks.policy import (
    WILDCARD,
    Decision,
    DeliveryStatus,
    SigningSecret,
    filter_problem,
    normalise_filter,
    secrets_in_force,
)

# One round of the default schedule makes 8 attempts; keep several rounds of manual retries.
MAX_ATTEMPTS_KEPT = 50
# The subscriber key of a task's own `webhook_url` in delivery ids.
TASK_WEBHOOK = "task-webhook"


def _valid_filter(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    problem = filter_problem(value)
    if problem:
        raise ValueError(problem)
    return normalise_filter(value)


class SubscriptionCreate(BaseModel):
    """The body of `POST /v1/subscriptions`."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048)
    event_types: list[str] = Field(default_factory=lambda: [WILDCARD])
    description: str | None = Field(default=None, max_length=500)
    metadata: dict[str, Any] | None = None
    enabled: bool = True

    check_filter = field_validator("event_types")(_valid_filter)
    check_metadata = field_validator("metadata")(small_metadata)


class SubscriptionUpdate(BaseModel):
    """The body of `PATCH /v1/subscriptions/{id}`: only the fields sent change."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, max_length=2048)
    event_types: list[str] | None = None
    description: str | None = Field(default=None, max_length=500)
    metadata: dict[str, Any] | None = None
    enabled: bool | None = None

    check_filter = field_validator("event_types")(_valid_filter)
    check_metadata = field_validator("metadata")(small_metadata)


class ReplayRequest(BaseModel):
    """The body of `POST /v1/subscriptions/{id}/replay`."""

    model_config = ConfigDict(extra="forbid")

    since: datetime
    until: datetime | None = None
    # True: only deliveries that ended `failed` (Svix's "recover"); False: every matching event.
    failed_only: bool = False

    @field_validator("since", "until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class SendTestEvent(BaseModel):
    """The body of `POST /v1/subscriptions/{id}/test` (optional: without it, a task.succeeded sample)."""

    model_config = ConfigDict(extra="forbid")

    event_type: str = DEFAULT_TEST_EVENT

    @field_validator("event_type")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in BY_NAME:
            raise not_one_of(list(BY_NAME))
        return value


# As stored: the view plus its signing secrets. (A comment, not a docstring: pydantic would publish
# a docstring as the schema's description.)
class Subscription(SubscriptionView):
    # Newest first; never shown after creation or rotation.
    secrets: list[SigningSecret] = Field(default_factory=list)

    def signing_secrets(self, now: float) -> list[str]:
        return [s.secret for s in secrets_in_force(self.secrets, now)]

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"secrets"})

    def dumps(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def loads(cls, raw: bytes | str) -> Subscription:
        return cls.model_validate_json(raw)


class SubscriptionHealth(BaseModel):
    """How the subscription's deliveries have been going, as recorded with its attempts. Times are
    ISO 8601; null when nothing is recorded (within WEBHOOK_LOG_TTL_S of its last attempt)."""

    # Every field is always sent (null when unknown): required in the published schema.
    model_config = ConfigDict(frozen=True, json_schema_serialization_defaults_required=True)

    success_at: str | None = None
    # Failed attempts since the last success.
    streak: int = 0
    failure_at: str | None = None
    # The last failed attempt's answer (an HTTP status or a transport error).
    failure: str | None = None
    # When the current run of failures began (it disables the subscription after
    # WEBHOOK_DISABLE_AFTER_S); null while it is not failing.
    failing_since: str | None = None


class SubscriptionWithHealth(SubscriptionView):
    """A subscription as the API's reads show it (no secrets) and the dashboard lists it, with
    its health."""

    model_config = ConfigDict(title="SubscriptionWithHealth")

    health: SubscriptionHealth

    @classmethod
    def of(cls, sub: Subscription, health: SubscriptionHealth) -> SubscriptionWithHealth:
        return cls.model_validate({**sub.model_dump(exclude={"secrets"}), "health": health})


class Attempt(BaseModel):
    """One HTTP try, as kept in the delivery log."""

    number: int
    at: str
    url: str
    status_code: int | None = None
    latency_ms: int
    error: str | None = None
    response_body: str | None = None


class Delivery(BaseModel):
    """One event on its way to one subscriber: its status and every attempt made."""

    id: str
    event_id: str
    event_type: str
    # What the event is about: a task id, or a subscription id for `subscription.disabled`.
    subject_id: str
    subscription_id: str | None = None
    # Whose it is: the subscription's owner, or for a task's own webhook the task's.
    owner: str | None = None
    # Only for a task's one-off webhook; a subscription's deliveries follow its current URL.
    webhook_url: str | None = None
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempt_count: int = 0
    # Attempts in the current round: a manual retry or replay starts the schedule again.
    round_attempts: int = 0
    # Unix seconds when the next attempt is due (pending only).
    next_attempt_at: float | None = None
    created_at: str
    updated_at: str
    last_error: str | None = None
    attempts: list[Attempt] = Field(default_factory=list)

    def due(self, now: float, *, slack_s: float = 0.0) -> bool:
        return self.status is DeliveryStatus.PENDING and (self.next_attempt_at or 0) <= now + slack_s

    def after_attempt(self, attempt: Attempt, decision: Decision, now: float) -> Delivery:
        """This delivery once `attempt` is made and `decision` taken on it (pure)."""
        retrying = decision.status is DeliveryStatus.PENDING and decision.retry_in_s is not None
        return self.model_copy(
            update={
                "status": decision.status,
                "attempt_count": self.attempt_count + 1,
                "round_attempts": self.round_attempts + 1,
                "next_attempt_at": now + (decision.retry_in_s or 0.0) if retrying else None,
                "updated_at": unix_to_iso(now),
                "last_error": None if decision.status is DeliveryStatus.DELIVERED else attempt.error,
                "attempts": [*self.attempts, attempt][-MAX_ATTEMPTS_KEPT:],
            }
        )

    def abandoned(self, reason: str, now: float) -> Delivery:
        """Failed without an attempt: its subscription was deleted or disabled, or the event expired."""
        return self.model_copy(
            update={
                "status": DeliveryStatus.FAILED,
                "next_attempt_at": None,
                "updated_at": unix_to_iso(now),
                "last_error": reason,
            }
        )

    def public(self) -> dict[str, Any]:
        body = self.model_dump(mode="json", exclude={"round_attempts"})
        body["next_attempt_at"] = unix_to_iso(self.next_attempt_at) if self.next_attempt_at is not None else None
        body["attempts"] = body["attempts"][::-1]  # newest first, as logs are read
        return body

    def dumps(self) -> bytes:
        # pydantic's own serializer writes the same JSON as orjson over model_dump, in a third
        # of the time: a fan-out writes hundreds of these.
        return self.__pydantic_serializer__.to_json(self)

    @classmethod
    def loads(cls, raw: bytes | str) -> Delivery:
        return cls.model_validate_json(raw)
