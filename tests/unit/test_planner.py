"""What recording landed webhook attempts writes (pure): new states, deadlines, retries, failure
runs ended, subscriptions disabled, and a fan-out batch's release."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from service.domain.clock import unix_to_iso
from service.webhooks.deliveries import IndexedEvent
from service.webhooks.models import Delivery
from service.webhooks.outcomes import (
    AttemptResult,
    Dispatched,
    Failed,
    Successful,
    dispatched,
)
from service.webhooks.planner import (
    Health,
    Release,
    Retry,
    Rules,
    failure_runs_to_read,
    health_of,
    plan_attempts,
)
from service.webhooks.policy import DeliveryStatus, DisableReason

NOW = 1_800_000_000.0
STARTED = NOW - 1
DAY = 24 * 3600.0
RULES = Rules(schedule_s=[0, 5, 300], disable_after_s=5 * DAY, lease_s=60)


def delivery(sub: str | None = "sub_a", *, attempts: int = 0, round_attempts: int | None = None, dlv: str = "dlv_1") -> Delivery:
    return Delivery(
        id=dlv,
        event_id="evt_1",
        event_type="task.succeeded",
        subject_id="task_1",
        subscription_id=sub,
        webhook_url=None if sub else "https://example.com/hook",
        attempt_count=attempts,
        round_attempts=attempts if round_attempts is None else round_attempts,
        next_attempt_at=NOW,
        created_at=unix_to_iso(NOW - 10),
        updated_at=unix_to_iso(NOW - 10),
    )


def ok(d: Delivery) -> Dispatched:
    return dispatched(d, "https://example.com/hook", STARTED, AttemptResult(204, 12, None, b""))


def answered(d: Delivery, status: int, body: bytes = b"busy") -> Dispatched:
    return dispatched(d, "https://example.com/hook", STARTED, AttemptResult(status, 30, None, body))


def timed_out(d: Delivery) -> Dispatched:
    return dispatched(d, "https://example.com/hook", STARTED, AttemptResult(None, 15000, "timeout: no answer within 15 s"))


def test_outcomes_are_typed_by_their_answer() -> None:
    assert isinstance(ok(delivery()), Successful)
    failed = answered(delivery(), 503)
    assert isinstance(failed, Failed) and failed.error == "http_status: 503"
    assert isinstance(timed_out(delivery()), Failed)


@dataclass(frozen=True)
class Case:
    landed: Dispatched
    failing_for: float
    status: DeliveryStatus
    due: float | None
    retry: Retry | None
    disable: DisableReason | None
    error: str | None


CASES = {
    "a 2xx delivers it": Case(ok(delivery()), 0, DeliveryStatus.DELIVERED, None, None, None, None),
    "a 5xx retries on the schedule, due by its delay plus the lease": Case(
        answered(delivery(), 500), 0, DeliveryStatus.PENDING, NOW + 5 + 60, Retry("dlv_1", 1, 5), None, "http_status: 500"
    ),
    "a timeout retries too, named in the log": Case(
        timed_out(delivery(attempts=1)), 0, DeliveryStatus.PENDING, NOW + 300 + 60, Retry("dlv_1", 2, 300), None,
        "timeout: no answer within 15 s",
    ),
    "the schedule used up fails it": Case(
        answered(delivery(attempts=3), 500), 0, DeliveryStatus.FAILED, None, None, None, "http_status: 500"
    ),
    "a manual retry's new round follows the schedule again": Case(
        answered(delivery(attempts=3, round_attempts=0), 500), 0, DeliveryStatus.PENDING, NOW + 5 + 60, Retry("dlv_1", 4, 5),
        None, "http_status: 500",
    ),
    "a 410 fails it and disables the subscription": Case(
        answered(delivery(), 410), 0, DeliveryStatus.FAILED, None, None, DisableReason.GONE, "http_status: 410"
    ),
    "failing for the whole window disables the subscription": Case(
        answered(delivery(), 500), 5 * DAY, DeliveryStatus.FAILED, None, None, DisableReason.FAILING, "http_status: 500"
    ),
    "a task's own webhook_url is never disabled": Case(
        answered(delivery(None), 410), 0, DeliveryStatus.FAILED, None, None, None, "http_status: 410"
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_each_landed_attempt_plans_its_delivery_state_retry_and_disabling(case: Case) -> None:
    sub = case.landed.delivery.subscription_id
    plan = plan_attempts([case.landed], first=False, failing_for={sub: case.failing_for} if sub else {}, rules=RULES, now=NOW)
    [save] = plan.saves
    assert (save.delivery.status, save.due, save.first) == (case.status, case.due, False)
    assert save.delivery.attempt_count == case.landed.delivery.attempt_count + 1
    assert save.delivery.last_error == case.error
    assert save.delivery.next_attempt_at == (NOW + case.retry.delay_s if case.retry else None)
    assert plan.retries == ([case.retry] if case.retry else [])
    assert plan.disable == ({sub: case.disable} if case.disable and sub else {})
    assert plan.release is None


def test_the_attempt_log_keeps_what_the_receiver_answered() -> None:
    plan = plan_attempts([answered(delivery(), 500, b"x" * 5000)], first=True, failing_for={}, rules=RULES, now=NOW)
    [entry] = plan.saves[0].delivery.attempts
    assert (entry.number, entry.at, entry.status_code, entry.latency_ms) == (1, unix_to_iso(STARTED), 500, 30)
    assert entry.response_body == "x" * 1024
    [silent] = plan_attempts([timed_out(delivery())], first=True, failing_for={}, rules=RULES, now=NOW).saves[0].delivery.attempts
    assert silent.response_body is None and silent.status_code is None


def test_a_success_ends_its_subscription_failure_run_and_only_runs_without_one_are_read() -> None:
    landed = [
        answered(delivery("sub_a", dlv="dlv_1"), 500),
        ok(delivery("sub_a", dlv="dlv_2")),
        answered(delivery("sub_b", dlv="dlv_3"), 500),
        answered(delivery(None, dlv="dlv_4"), 500),
    ]
    assert failure_runs_to_read(landed) == {"sub_b"}
    plan = plan_attempts(landed, first=True, failing_for={"sub_b": 5 * DAY}, rules=RULES, now=NOW)
    assert plan.failure_runs_ended == ["sub_a"]
    # sub_a's failure in the same batch as its success does not count its old run against it.
    assert plan.disable == {"sub_b": DisableReason.FAILING}
    assert [s.first for s in plan.saves] == [True] * 4
    assert [r.delivery_id for r in plan.retries] == ["dlv_1", "dlv_4"]


def test_a_fan_out_batch_release_goes_with_the_plan_that_records_its_last_attempts() -> None:
    release = Release("kr:outbox:inflight:w1", ["task_1 evt_1"], [IndexedEvent("evt_1", "task_1", "task.succeeded")])
    plan = plan_attempts([ok(delivery())], first=True, failing_for={}, rules=RULES, now=NOW, release=release)
    assert plan.release is release


def test_health_per_subscription_is_its_newest_success_and_the_failures_after_it() -> None:
    def at(d: Delivery, t: float, status: int | None) -> Dispatched:
        result = AttemptResult(status, 10, None if status else "timeout: no answer within 15 s")
        return dispatched(d, "https://example.com/hook", t, result)

    a, b, own = delivery("sub_a"), delivery("sub_b", dlv="dlv_2"), delivery(None, dlv="dlv_3")
    # Landed out of order: the health follows when each attempt started.
    landed = [at(a, 3, 500), at(a, 1, 500), at(a, 2, 204), at(a, 4, None), at(b, 1, 503), at(b, 2, 502), at(own, 5, 500)]
    assert health_of(landed) == {
        "sub_a": Health(success_at=2, failures=2, failure_at=4, failure="timeout: no answer within 15 s"),
        "sub_b": Health(success_at=None, failures=2, failure_at=2, failure="http_status: 502"),
    }
    assert health_of([at(a, 1, 500), at(a, 2, 200)]) == {
        "sub_a": Health(success_at=2, failures=0, failure_at=1, failure="http_status: 500")
    }
    assert plan_attempts(landed, first=False, failing_for={}, rules=RULES, now=NOW).health == health_of(landed)
