"""Submitting a paid task (pure): which provider, what a job does with the task it holds, what a
refusal or a lost answer means, and how a late callback's provider task id is adopted."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from service.domain.status import TaskStatus
from service.domain.submission import (
    Abandoned,
    AwaitProvider,
    Fail,
    Failover,
    NoProviderFits,
    Retry,
    Send,
    Skip,
    SubmitPolicy,
    WorkerLost,
    accept,
    adopt,
    choose_provider,
    close_attempt,
    closing_outcome,
    decide_submit_error,
    open_attempt,
    paid_attempts,
    plan_submit,
    start_attempt,
)
from service.domain.tasks import SubmitAttempt, Task, TaskError, TaskInput

S = TaskStatus
NOW = "2026-01-01T00:00:00.000Z"
POLICY = SubmitPolicy(retry_delays_s=(1.0, 2.0, 4.0), configured=("apikley", "novita"))


@dataclass(frozen=True)
class Refused:
    code: str = "server_error"
    message: str = "busy"
    retryable: bool = True
    provider_level: bool = False
    provider_code: str | None = "500"
    outcome_unknown: bool = False


def make_task(status: TaskStatus = S.QUEUED, *, attempts: list[SubmitAttempt] | None = None, **fields: object) -> Task:
    base: dict[str, object] = {
        "id": "task_x",
        "provider": "apikley",
        "input": TaskInput(prompt="p"),
        "created_at": NOW,
        "updated_at": NOW,
        "status": status,
    }
    base.update(fields)
    base["attempts"] = attempts or []
    return Task.model_validate(base)


def attempt(outcome: str, *, id: str = "att_1", provider: str = "apikley", **fields: object) -> SubmitAttempt:
    return SubmitAttempt.model_validate({"id": id, "provider": provider, "at": NOW, "outcome": outcome, **fields})


# --- which provider ------------------------------------------------------------------------------

FITS = {
    # input, default, configured → chosen
    "short prompt goes to the default": (TaskInput(prompt="p"), "novita", ("apikley", "novita"), "novita"),
    "3,000-char prompt skips Novita (2,500) for Apikley (5,000)": (
        TaskInput(prompt="x" * 3000),
        "novita",
        ("apikley", "novita"),
        "apikley",
    ),
    "600-char negative prompt skips Apikley (500) for Novita (2,500)": (
        TaskInput(prompt="p", negative_prompt="n" * 600),
        "apikley",
        ("apikley", "novita"),
        "novita",
    ),
    "an unconfigured default is passed over": (TaskInput(prompt="p"), "apikley", ("novita",), "novita"),
}


@pytest.mark.parametrize(("task_input", "default", "configured", "chosen"), FITS.values(), ids=FITS.keys())
def test_auto_takes_the_first_configured_provider_whose_limits_fit(
    task_input: TaskInput, default: str, configured: tuple[str, ...], chosen: str
) -> None:
    assert choose_provider(task_input, default=default, configured=configured) == chosen  # type: ignore[arg-type]


def test_auto_refuses_only_when_no_provider_fits_naming_each_limit() -> None:
    with pytest.raises(NoProviderFits) as refused:
        choose_provider(TaskInput(prompt="x" * 5001), default="apikley", configured=("apikley", "novita"))
    assert refused.value.fields == {
        "prompt": "must be at most 5000 characters for apikley; must be at most 2500 characters for novita"
    }


# --- what a submit job does ----------------------------------------------------------------------

PLANS = {
    "a fresh queued task is sent": (make_task(), Send),
    "after a refusal it is sent again": (make_task(attempts=[attempt("retrying")]), Send),
    "an attempt left sending by a dead worker is abandoned, not resent": (make_task(attempts=[attempt("sending")]), Abandoned),
    "a submitted task is left alone": (make_task(S.SUBMITTED, provider_task_id="p1"), Skip),
    "an unconfirmed submit is left alone": (make_task(S.SUBMITTED, attempts=[attempt("unconfirmed")]), Skip),
    "a queued task whose id was adopted is left alone": (make_task(provider_task_id="p1", attempts=[attempt("adopted")]), Skip),
    "a finished task is left alone": (make_task(S.FAILED), Skip),
    "a canceled task is never sent": (make_task(S.CANCELED), Skip),
    "a task canceled after a refusal is not sent again": (make_task(S.CANCELED, attempts=[attempt("retrying")]), Skip),
}


@pytest.mark.parametrize(("task", "kind"), PLANS.values(), ids=PLANS.keys())
def test_a_submit_job_sends_only_when_nothing_is_unsettled(task: Task, kind: type) -> None:
    step = plan_submit(task, attempt_id="att_new", now=NOW)
    assert isinstance(step, kind)
    if isinstance(step, Send):
        assert (step.attempt.id, step.attempt.outcome, step.attempt.provider) == ("att_new", "sending", "apikley")


def test_an_attempt_is_started_once_even_when_two_jobs_race() -> None:
    first = start_attempt(make_task(), attempt("sending", id="att_a"))
    assert first is not None and [a.id for a in first.attempts] == ["att_a"]
    assert start_attempt(first, attempt("sending", id="att_b")) is None


# --- what a failed call means --------------------------------------------------------------------

DECISIONS = {
    # attempts before the one that failed, the refusal → decision
    "rate limited: retry on the schedule": ([], Refused("rate_limited", retryable=True), Retry(1.0)),
    "second refusal waits the second delay": ([attempt("retrying")], Refused("rate_limited"), Retry(2.0)),
    "retries used up: fail with the provider's code": (
        [attempt("retrying", id=f"a{i}") for i in range(3)],
        Refused("rate_limited"),
        Fail,
    ),
    "validation refused: fail at once": ([], Refused("validation_error", retryable=False, provider_code="422"), Fail),
    "credits out: fail over at once": (
        [],
        Refused("insufficient_credits", retryable=False, provider_level=True),
        Failover("novita"),
    ),
    "maintenance: fail over at once": ([], Refused("maintenance", retryable=True, provider_level=True), Failover("novita")),
    "first 5xx: retry once": ([], Refused("server_error", provider_level=True), Retry(1.0)),
    "repeated 5xx: fail over": ([attempt("retrying")], Refused("server_error", provider_level=True), Failover("novita")),
    "gateway page repeated: fail over": (
        [attempt("retrying")],
        Refused("gateway_error", provider_level=True),
        Failover("novita"),
    ),
    "timeout after sending: wait for the provider, never resend": ([], Refused("timeout", outcome_unknown=True), AwaitProvider()),
    "worker died mid-call: wait for the provider": ([], WorkerLost(), AwaitProvider()),
}


@pytest.mark.parametrize(("before", "refusal", "expected"), DECISIONS.values(), ids=DECISIONS.keys())
def test_a_failed_submit_is_retried_only_when_nothing_can_have_been_created(
    before: list[SubmitAttempt], refusal: Refused, expected: object
) -> None:
    task = make_task(requested_provider="auto", attempts=[*before, attempt("sending", id="att_now")])
    decision = decide_submit_error(task, refusal, POLICY)
    if isinstance(expected, type):
        assert isinstance(decision, expected)
        assert isinstance(decision, Fail) and decision.error.code == refusal.code
        assert decision.error.provider_code == refusal.provider_code
    else:
        assert decision == expected


def test_a_named_provider_never_fails_over() -> None:
    task = make_task(requested_provider="apikley", attempts=[attempt("sending")])
    decision = decide_submit_error(task, Refused("insufficient_credits", retryable=False, provider_level=True), POLICY)
    assert isinstance(decision, Fail)


def test_the_operator_override_resubmits_after_an_unknown_outcome_within_the_retry_budget() -> None:
    override = SubmitPolicy(retry_delays_s=(1.0,), configured=("apikley",), resubmit_unconfirmed=True)
    lost = Refused("timeout", outcome_unknown=True)
    assert decide_submit_error(make_task(attempts=[attempt("sending")]), lost, override) == Retry(1.0)
    used_up = make_task(attempts=[attempt("unconfirmed", id="a0"), attempt("sending")])
    assert decide_submit_error(used_up, lost, override) == AwaitProvider()


@pytest.mark.parametrize(
    ("decision", "refusal", "outcome"),
    [
        (Retry(1.0), Refused(), "retrying"),
        (Fail(TaskError(code="validation_error", message="no")), Refused(), "rejected"),
        (Failover("novita"), Refused(), "rejected"),
        (AwaitProvider(), Refused(outcome_unknown=True), "unconfirmed"),
        (Retry(1.0), Refused(outcome_unknown=True), "unconfirmed"),
        # Canceled while the call was under way: nothing follows, but a lost answer may have cost.
        (None, Refused(), "rejected"),
        (None, Refused(outcome_unknown=True), "unconfirmed"),
    ],
)
def test_every_attempt_is_closed_with_what_it_may_have_cost(decision: object, refusal: Refused, outcome: str) -> None:
    assert closing_outcome(decision, refusal) == outcome  # type: ignore[arg-type]


# --- answers and adoption ------------------------------------------------------------------------


def test_an_answer_closes_its_attempt_and_keeps_the_provider_task_id() -> None:
    task = make_task(attempts=[attempt("sending", id="att_a")])
    accepted = accept(task, "att_a", "p1")
    assert accepted.provider_task_id == "p1"
    assert [(a.outcome, a.provider_task_id) for a in accepted.attempts] == [("accepted", "p1")]
    assert open_attempt(accepted, "att_a") is None


def test_a_late_answer_still_settles_an_attempt_recovery_marked_unconfirmed() -> None:
    task = make_task(S.SUBMITTED, attempts=[attempt("unconfirmed", id="att_a")])
    assert open_attempt(task, "att_a") is not None
    assert accept(task, "att_a", "p1").provider_task_id == "p1"


@pytest.mark.parametrize("outcome", ["sending", "unconfirmed"])
def test_a_callback_adopts_the_id_of_the_attempt_whose_answer_was_lost(outcome: str) -> None:
    task = make_task(S.SUBMITTED, attempts=[attempt("retrying", id="a0"), attempt(outcome, id="a1")])
    adopted = adopt(task, "p1")
    assert adopted.provider_task_id == "p1"
    assert [(a.id, a.outcome, a.provider_task_id) for a in adopted.attempts] == [
        ("a0", "retrying", None),
        ("a1", "adopted", "p1"),
    ]


def test_adoption_never_replaces_a_provider_task_id_we_have() -> None:
    task = make_task(S.SUBMITTED, provider_task_id="p1", attempts=[attempt("accepted", provider_task_id="p1")])
    assert adopt(task, "p2") is task


def test_paid_attempts_count_everything_that_may_have_created_a_provider_task() -> None:
    task = make_task(
        attempts=[
            attempt("rejected", id="a"), attempt("retrying", id="b"), attempt("unconfirmed", id="c"),
            attempt("adopted", id="d"), attempt("accepted", id="e"),
        ]
    )
    assert paid_attempts(task) == 3
    assert paid_attempts(close_attempt(task, "c", "rejected")) == 2
