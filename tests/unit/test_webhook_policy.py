"""The pure webhook rules: filters, secret rotation, outcome classes and the delivery state machine."""

from __future__ import annotations

import pytest

from service.webhooks.models import Attempt, Delivery, SubscriptionCreate
from service.webhooks.policy import (
    Decision,
    DeliveryStatus,
    DisableReason,
    Outcome,
    SigningSecret,
    classify,
    decide,
    delivery_id,
    filter_problem,
    matches,
    retry_delay,
    rotate,
    secrets_in_force,
    truncate_body,
)

SVIX = [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
FIVE_DAYS = 5 * 24 * 3600.0


@pytest.mark.parametrize(
    ("patterns", "event_type", "expected"),
    [
        (["*"], "task.succeeded", True),
        (["*"], "task.progress", True),
        (["*"], "subscription.disabled", False),
        (["task.*"], "task.failed", True),
        (["task.*"], "subscription.disabled", False),
        (["subscription.*"], "subscription.disabled", True),
        (["subscription.disabled"], "subscription.disabled", True),
        (["task.succeeded", "task.failed"], "task.failed", True),
        (["task.succeeded", "task.failed"], "task.running", False),
        (["task.succeeded"], "task.succeeded.extra", False),
    ],
)
def test_filter_matching(patterns: list[str], event_type: str, expected: bool) -> None:
    assert matches(patterns, event_type) is expected


@pytest.mark.parametrize(
    ("patterns", "problem"),
    [
        ([], "at least one"),
        (["task.succeded"], "unknown event type 'task.succeded'"),
        (["tasks.*"], "unknown event type"),
        (["**"], "unknown event type"),
        (["x"] * 51, "at most 50"),
    ],
)
def test_bad_filters_are_refused_with_a_reason(patterns: list[str], problem: str) -> None:
    assert problem in (filter_problem(patterns) or "")


@pytest.mark.parametrize("patterns", [["*"], ["task.*"], ["task.succeeded", "subscription.disabled"], ["subscription.*"]])
def test_good_filters_pass(patterns: list[str]) -> None:
    assert filter_problem(patterns) is None


def test_filter_duplicates_are_dropped_in_order() -> None:
    body = SubscriptionCreate.model_validate({"url": "https://example.com/h", "event_types": ["task.failed", "*", "task.failed"]})
    assert body.event_types == ["task.failed", "*"]


def test_rotation_keeps_the_old_secret_signing_for_the_grace_period() -> None:
    secrets = [SigningSecret("whsec_old")]
    rotated = rotate(secrets, "whsec_new", now=1000.0, grace_s=60.0)
    assert rotated == [SigningSecret("whsec_new"), SigningSecret("whsec_old", 1060.0)]
    assert [s.secret for s in secrets_in_force(rotated, 1059.0)] == ["whsec_new", "whsec_old"]
    assert [s.secret for s in secrets_in_force(rotated, 1060.0)] == ["whsec_new"]


def test_a_second_rotation_never_extends_an_older_secrets_grace() -> None:
    once = rotate([SigningSecret("whsec_a")], "whsec_b", now=0.0, grace_s=100.0)
    twice = rotate(once, "whsec_c", now=90.0, grace_s=100.0)
    assert twice == [SigningSecret("whsec_c"), SigningSecret("whsec_b", 190.0), SigningSecret("whsec_a", 100.0)]


def test_rotation_with_no_grace_drops_the_old_secret_at_once() -> None:
    assert rotate([SigningSecret("whsec_a")], "whsec_b", now=5.0, grace_s=0.0) == [SigningSecret("whsec_b")]


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, Outcome.DELIVERED), (204, Outcome.DELIVERED), (299, Outcome.DELIVERED), (410, Outcome.GONE),
     (301, Outcome.FAILED), (404, Outcome.FAILED), (429, Outcome.FAILED), (500, Outcome.FAILED), (None, Outcome.FAILED)],
)
def test_http_answers_are_classified(status: int | None, outcome: Outcome) -> None:
    assert classify(status) is outcome


def test_the_retry_schedule_is_the_wait_before_each_attempt() -> None:
    assert [retry_delay(SVIX, n) for n in range(1, 9)] == [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0, None]


def _decide(outcome: Outcome, attempts: int, failing_for_s: float | None = 0.0) -> Decision:
    return decide(outcome, round_attempts=attempts, schedule_s=SVIX, failing_for_s=failing_for_s, disable_after_s=FIVE_DAYS)


@pytest.mark.parametrize(
    ("outcome", "attempts", "failing_for_s", "expected"),
    [
        (Outcome.DELIVERED, 1, 0.0, Decision(DeliveryStatus.DELIVERED)),
        (Outcome.DELIVERED, 8, FIVE_DAYS * 2, Decision(DeliveryStatus.DELIVERED)),
        (Outcome.FAILED, 1, 0.0, Decision(DeliveryStatus.PENDING, retry_in_s=5.0)),
        (Outcome.FAILED, 7, 3600.0, Decision(DeliveryStatus.PENDING, retry_in_s=36000.0)),
        (Outcome.FAILED, 8, 3600.0, Decision(DeliveryStatus.FAILED)),
        (Outcome.FAILED, 2, FIVE_DAYS, Decision(DeliveryStatus.FAILED, disable=DisableReason.FAILING)),
        (Outcome.GONE, 1, 0.0, Decision(DeliveryStatus.FAILED, disable=DisableReason.GONE)),
        # A task's own webhook_url has no subscription to disable, whatever happens.
        (Outcome.GONE, 1, None, Decision(DeliveryStatus.FAILED)),
        (Outcome.FAILED, 1, None, Decision(DeliveryStatus.PENDING, retry_in_s=5.0)),
        (Outcome.FAILED, 8, None, Decision(DeliveryStatus.FAILED)),
    ],
)
def test_delivery_state_machine(outcome: Outcome, attempts: int, failing_for_s: float | None, expected: Decision) -> None:
    assert _decide(outcome, attempts, failing_for_s) == expected


def _delivery() -> Delivery:
    return Delivery(id="dlv_1", event_id="evt_1", event_type="task.succeeded", subject_id="task_1",
                    subscription_id="sub_1", next_attempt_at=0.0, created_at="t", updated_at="t")


def _attempt(n: int, status: int | None) -> Attempt:
    return Attempt(
        number=n, at="t", url="https://example.com", status_code=status, latency_ms=3, error=None if status == 200 else "boom"
    )


def test_a_failed_attempt_keeps_the_delivery_pending_until_its_retry_is_due() -> None:
    after = _delivery().after_attempt(_attempt(1, 500), _decide(Outcome.FAILED, 1), now=100.0)
    assert (after.status, after.attempt_count, after.round_attempts, after.next_attempt_at) == (
        DeliveryStatus.PENDING,
        1,
        1,
        105.0,
    )
    assert not after.due(104.0) and after.due(105.0)
    assert after.last_error == "boom"


def test_a_delivered_attempt_ends_the_delivery_and_clears_its_error() -> None:
    failed_once = _delivery().after_attempt(_attempt(1, 500), _decide(Outcome.FAILED, 1), now=100.0)
    done = failed_once.after_attempt(_attempt(2, 200), _decide(Outcome.DELIVERED, 2), now=106.0)
    assert (done.status, done.attempt_count, done.next_attempt_at, done.last_error) == (DeliveryStatus.DELIVERED, 2, None, None)
    assert not done.due(10**10)
    assert [a["number"] for a in done.public()["attempts"]] == [2, 1]  # newest first


def test_delivery_ids_are_derived_so_a_rerun_finds_the_same_delivery() -> None:
    first = delivery_id("evt_0mwunu3nj6eq5lprfdl8unrb2", "sub_a")
    assert first == delivery_id("evt_0mwunu3nj6eq5lprfdl8unrb2", "sub_a")
    assert first != delivery_id("evt_0mwunu3nj6eq5lprfdl8unrb2", "sub_b")
    assert first.startswith("dlv_0mwunu3nj")  # sorts by event time


def test_only_the_first_kilobyte_of_a_response_is_kept() -> None:
    assert len(truncate_body(b"x" * 5000)) == 1024
    assert truncate_body(b"\xff ok") == "\ufffd ok"
