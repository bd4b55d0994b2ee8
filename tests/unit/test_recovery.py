"""Deadlines, late results and the sweep's decisions (pure)."""

from __future__ import annotations

import pytest

from service.domain.clock import iso_to_unix, unix_to_iso
from service.domain.recovery import (
    Deadlines,
    FailUnconfirmed,
    Forget,
    Repoll,
    Resubmit,
    WaitUntil,
    after_poll,
    deadline_update,
    decide_recovery,
    looking_late,
    next_poll_in,
    past_deadline,
    revivable,
    worth_polling,
)
from service.domain.status import TaskStatus
from service.domain.tasks import SubmitAttempt, Task, TaskError, TaskInput, TaskResult
from service.domain.transition import ProviderUpdate, apply_update, revives

S = TaskStatus
T0 = "2026-01-01T00:00:00.000Z"
START = iso_to_unix(T0)
DEADLINES = Deadlines(task_s=3600, unconfirmed_s=1800, late_window_s=86400, late_poll_s=300)
TIMEOUT = TaskError(code="timeout", message="no result within 3600 s")
UNCONFIRMED = TaskError(code="submit_unconfirmed", message="never heard back")
PROVIDER_FAIL = TaskError(code="generation_failed", message="nsfw", provider_code="501")
RESULT = TaskResult(video_url="https://cdn/v.mp4")


def make_task(status: TaskStatus, **fields: object) -> Task:
    base: dict[str, object] = {
        "id": "task_x",
        "provider": "apikley",
        "input": TaskInput(prompt="p"),
        "created_at": T0,
        "updated_at": T0,
        "status": status,
    }
    base.update(fields)
    return Task.model_validate(base)


def unconfirmed_attempt(at_s: float) -> SubmitAttempt:
    return SubmitAttempt(id="att_1", provider="apikley", at=unix_to_iso(at_s), outcome="unconfirmed")


# --- the one exception to "terminal is final" ----------------------------------------------------

REVIVALS = {
    "success after our deadline failure wins": (make_task(S.FAILED, error=TIMEOUT, provider_task_id="p1"), True),
    "success after our unconfirmed failure wins": (make_task(S.FAILED, error=UNCONFIRMED), True),
    "a failure the provider reported stays final": (make_task(S.FAILED, error=PROVIDER_FAIL, provider_task_id="p1"), False),
    "a success stays as it is": (make_task(S.SUCCEEDED, result=RESULT, provider_task_id="p1"), False),
    "a cancel is the client's decision and stays final": (make_task(S.CANCELED, provider_task_id="p1"), False),
}


@pytest.mark.parametrize(("task", "revived"), REVIVALS.values(), ids=REVIVALS.keys())
def test_a_verified_success_overturns_only_a_failure_we_decided_ourselves(task: Task, revived: bool) -> None:
    update = ProviderUpdate(status=S.SUCCEEDED, result=RESULT)
    assert revives(task, update) is revived
    transition = apply_update(task.model_copy(update={"sequence": 2}), update, now=T0, event_id="evt_9")
    if not revived:
        assert transition is None
        return
    assert transition is not None
    assert (transition.task.status, transition.task.result, transition.task.error) == (S.SUCCEEDED, RESULT, None)
    assert (transition.event.type, transition.event.sequence) == ("task.succeeded", 3)


def test_a_late_failure_report_does_not_reopen_a_failure_we_decided() -> None:
    task = make_task(S.FAILED, error=TIMEOUT, provider_task_id="p1")
    assert apply_update(task, ProviderUpdate(status=S.FAILED, error=PROVIDER_FAIL), now=T0, event_id="e") is None
    assert apply_update(task, ProviderUpdate(status=S.RUNNING), now=T0, event_id="e") is None


# --- deadlines and late polling ------------------------------------------------------------------


def test_the_deadline_counts_from_creation_and_spares_finished_tasks() -> None:
    running = make_task(S.RUNNING, provider_task_id="p1")
    assert not past_deadline(running, START + 3600, DEADLINES)
    assert past_deadline(running, START + 3601, DEADLINES)
    assert not past_deadline(make_task(S.SUCCEEDED), START + 9999, DEADLINES)


def test_a_task_we_failed_is_asked_about_within_the_late_window_only() -> None:
    failed = make_task(S.FAILED, error=TIMEOUT, provider_task_id="p1")
    assert revivable(failed)
    assert looking_late(failed, START + 86399, DEADLINES)
    assert not looking_late(failed, START + 86400, DEADLINES)
    assert not revivable(make_task(S.FAILED, error=UNCONFIRMED))  # no provider task id to ask about
    assert not revivable(make_task(S.FAILED, error=PROVIDER_FAIL, provider_task_id="p1"))


NEXT_POLLS = {
    "unfinished: the regular schedule": (make_task(S.RUNNING, provider_task_id="p1"), START + 10, 7.5),
    "finished: the chain ends": (make_task(S.SUCCEEDED, provider_task_id="p1"), START + 10, None),
    "failed by the provider: the chain ends": (make_task(S.FAILED, error=PROVIDER_FAIL, provider_task_id="p1"), START + 10, None),
    "failed by our deadline: late polls": (make_task(S.FAILED, error=TIMEOUT, provider_task_id="p1"), START + 10, 300),
    "late window over: the chain ends": (make_task(S.FAILED, error=TIMEOUT, provider_task_id="p1"), START + 90000, None),
    "canceled: the chain ends": (make_task(S.CANCELED, provider_task_id="p1"), START + 10, None),
}


@pytest.mark.parametrize(("task", "now_s", "delay"), NEXT_POLLS.values(), ids=NEXT_POLLS.keys())
def test_the_poll_chain_goes_on_while_a_result_may_still_come(task: Task, now_s: float, delay: float | None) -> None:
    assert next_poll_in(task, regular_s=7.5, now_s=now_s, deadlines=DEADLINES) == delay


# --- the poll job ----------------------------------------------------------------------------------

LATE = make_task(S.FAILED, error=TIMEOUT, provider_task_id="p1")
POLL_OR_NOT = {
    "unfinished: yes": (make_task(S.RUNNING, provider_task_id="p1"), START, False, True),
    "succeeded: no": (make_task(S.SUCCEEDED, provider_task_id="p1"), START, True, False),
    "failed by the provider, even with a callback: no": (
        make_task(S.FAILED, error=PROVIDER_FAIL, provider_task_id="p1"),
        START,
        True,
        False,
    ),
    "failed by our deadline, in the late window: yes": (LATE, START + 60, False, True),
    "failed by our deadline, window over: no": (LATE, START + 90000, False, False),
    "failed by our deadline, window over, a callback has news: yes": (LATE, START + 90000, True, True),
    "canceled: no": (make_task(S.CANCELED, provider_task_id="p1"), START, False, False),
    "canceled, even with a callback: no": (make_task(S.CANCELED, provider_task_id="p1"), START, True, False),
}


@pytest.mark.parametrize(("task", "now_s", "confirming", "asks"), POLL_OR_NOT.values(), ids=POLL_OR_NOT.keys())
def test_a_poll_asks_the_provider_while_a_result_may_still_come(task: Task, now_s: float, confirming: bool, asks: bool) -> None:
    assert worth_polling(task, now_s=now_s, deadlines=DEADLINES, confirming=confirming) is asks


DEADLINE_CASES = {
    "within the deadline: nothing": (make_task(S.RUNNING, provider_task_id="p1"), START + 3600, None),
    "past it: fail with timeout": (make_task(S.RUNNING, provider_task_id="p1"), START + 3601, TIMEOUT),
    "finished: nothing": (make_task(S.SUCCEEDED, provider_task_id="p1"), START + 9999, None),
}


@pytest.mark.parametrize(("task", "now_s", "error"), DEADLINE_CASES.values(), ids=DEADLINE_CASES.keys())
def test_our_deadline_fails_an_unfinished_task_with_timeout(task: Task, now_s: float, error: TaskError | None) -> None:
    update = deadline_update(task, now_s=now_s, deadlines=DEADLINES)
    if error is None:
        assert update is None
    else:
        assert update == ProviderUpdate(status=S.FAILED, error=error)


RUNNING = ProviderUpdate(status=S.RUNNING)
SUCCEEDED = ProviderUpdate(status=S.SUCCEEDED, result=RESULT)
AFTER_POLLS = {
    "still running: the regular schedule": (
        make_task(S.RUNNING, provider_task_id="p1"),
        RUNNING,
        make_task(S.RUNNING, provider_task_id="p1"),
        START,
        7.5,
    ),
    "no answer: the regular schedule": (
        make_task(S.RUNNING, provider_task_id="p1"),
        None,
        make_task(S.RUNNING, provider_task_id="p1"),
        START,
        7.5,
    ),
    "gone meanwhile: the chain ends": (make_task(S.RUNNING, provider_task_id="p1"), RUNNING, None, START, None),
    "succeeded: the chain ends": (
        make_task(S.RUNNING, provider_task_id="p1"),
        SUCCEEDED,
        make_task(S.SUCCEEDED, provider_task_id="p1"),
        START,
        None,
    ),
    "timed out now: late polls": (make_task(S.RUNNING, provider_task_id="p1"), RUNNING, LATE, START + 3700, 300),
    "a late poll found the provider's end: the chain ends": (
        LATE,
        SUCCEEDED,
        make_task(S.SUCCEEDED, provider_task_id="p1"),
        START + 4000,
        None,
    ),
    "a late poll found the provider failed it: the chain ends, our failure stands": (
        LATE,
        ProviderUpdate(status=S.FAILED, error=PROVIDER_FAIL),
        LATE,
        START + 4000,
        None,
    ),
    "a late poll found it still running: late polls": (LATE, RUNNING, LATE, START + 4000, 300),
    "canceled while we asked: the chain ends": (
        make_task(S.RUNNING, provider_task_id="p1"),
        SUCCEEDED,
        make_task(S.CANCELED, provider_task_id="p1"),
        START,
        None,
    ),
}


@pytest.mark.parametrize(("asked", "answer", "current", "now_s", "delay"), AFTER_POLLS.values(), ids=AFTER_POLLS.keys())
def test_after_a_poll_the_chain_goes_on_or_ends(
    asked: Task, answer: ProviderUpdate | None, current: Task | None, now_s: float, delay: float | None
) -> None:
    assert after_poll(asked, answer, current, regular_s=7.5, now_s=now_s, deadlines=DEADLINES) == delay


# --- the sweep -----------------------------------------------------------------------------------

SWEEPS = {
    "gone": (None, START, Forget()),
    "queued: its submit may be lost": (make_task(S.QUEUED), START, Resubmit()),
    "submitted with a provider id: its polls may be lost": (make_task(S.SUBMITTED, provider_task_id="p1"), START, Repoll()),
    "running: its polls may be lost": (make_task(S.RUNNING, provider_task_id="p1"), START, Repoll()),
    "unconfirmed within its limit: wait": (
        make_task(S.SUBMITTED, attempts=[unconfirmed_attempt(START + 10)]),
        START + 100,
        WaitUntil(START + 1810),
    ),
    "unconfirmed past its limit: fail": (
        make_task(S.SUBMITTED, attempts=[unconfirmed_attempt(START + 10)]),
        START + 1810,
        FailUnconfirmed(),
    ),
    "failed by our deadline, in the late window: poll": (
        make_task(S.FAILED, error=TIMEOUT, provider_task_id="p1"),
        START + 60,
        Repoll(),
    ),
    "failed by the provider: forget": (make_task(S.FAILED, error=PROVIDER_FAIL, provider_task_id="p1"), START, Forget()),
    "succeeded: forget": (make_task(S.SUCCEEDED, provider_task_id="p1"), START, Forget()),
    "canceled while queued: forget, never submit": (make_task(S.CANCELED), START, Forget()),
    "canceled while running: forget, never poll": (make_task(S.CANCELED, provider_task_id="p1"), START, Forget()),
    "canceled with an unconfirmed submit: forget, never fail it": (
        make_task(S.CANCELED, attempts=[unconfirmed_attempt(START + 10)]),
        START + 1810,
        Forget(),
    ),
}


@pytest.mark.parametrize(("task", "now_s", "action"), SWEEPS.values(), ids=SWEEPS.keys())
def test_the_sweep_gives_each_task_the_work_it_may_have_lost(task: Task | None, now_s: float, action: object) -> None:
    assert decide_recovery(task, now_s=now_s, deadlines=DEADLINES) == action
