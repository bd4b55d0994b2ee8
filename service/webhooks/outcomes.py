"""What one webhook attempt came to, as the delivery engine hands it to the planner.

Two types, as in Svix's worker (`CompletedDispatch::Successful` / `Failed`): an attempt that
landed with a 2xx is `Successful`; anything else (another status, a timeout, a refused or unsafe
address, a crash of our own) is `Failed`, with its error spelled out for the attempt log.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.webhooks.models import Delivery
from service.webhooks.policy import Outcome, classify


@dataclass(frozen=True)
class AttemptResult:
    """What the HTTP edge (`service/webhooks/sender.py`) saw of one attempt."""

    status_code: int | None
    latency_ms: int
    error: str | None = None
    body: bytes = b""


@dataclass(frozen=True)
class Successful:
    delivery: Delivery
    url: str
    # Unix seconds when the attempt started (for the log).
    started_at: float
    status_code: int
    latency_ms: int
    body: bytes = b""

    @property
    def outcome(self) -> Outcome:
        return Outcome.DELIVERED


@dataclass(frozen=True)
class Failed:
    delivery: Delivery
    url: str
    started_at: float
    # None: no answer at all.
    status_code: int | None
    latency_ms: int
    error: str
    body: bytes = b""

    @property
    def outcome(self) -> Outcome:
        # A 410 says the endpoint is gone for good (it disables the subscription).
        return classify(self.status_code)


Dispatched = Successful | Failed


def dispatched(delivery: Delivery, url: str, started_at: float, result: AttemptResult) -> Dispatched:
    """The typed outcome of one attempt's HTTP result."""
    if result.status_code is not None and classify(result.status_code) is Outcome.DELIVERED:
        return Successful(delivery, url, started_at, result.status_code, result.latency_ms, result.body)
    error = result.error or f"http_status: {result.status_code}"
    return Failed(delivery, url, started_at, result.status_code, result.latency_ms, error, result.body)
