"""Pure domain rules: the status machine, the transition function, poll timing, failover."""

from __future__ import annotations

import random

import pytest

from service.domain.schedule import poll_delay
from service.domain.status import TaskStatus, can_move
from service.domain.submission import failover_target
from service.domain.tasks import SubmitAttempt, Task, TaskError, TaskInput, TaskResult
from service.domain.transition import (
    NotCancelable,
    ProviderUpdate,
    apply_update,
    cancel_update,
)

S = TaskStatus
NOW = "2026-01-01T00:00:00.000Z"


def make_task(status: TaskStatus = S.QUEUED, **fields: object) -> Task:
    base = {
        "id": "task_x",
        "provider": "apikley",
        "input": TaskInput(prompt="p"),
        "created_at": NOW,
        "updated_at": NOW,
        "status": status,
    }
    base.update(fields)
    return Task.model_validate(base)


@pytest.mark.parametrize(
    ("current", "new", "allowed"),
    [
        (S.QUEUED, S.SUBMITTED, True),
        (S.QUEUED, S.RUNNING, True),
        (S.QUEUED, S.FAILED, True),
        (S.SUBMITTED, S.RUNNING, True),
        (S.SUBMITTED, S.SUCCEEDED, True),
        (S.RUNNING, S.SUCCEEDED, True),
        (S.RUNNING, S.FAILED, True),
        (S.SUBMITTED, S.SUBMITTED, False),
        (S.RUNNING, S.SUBMITTED, False),
        (S.RUNNING, S.QUEUED, False),
        (S.SUCCEEDED, S.FAILED, False),
        (S.FAILED, S.SUCCEEDED, False),
        (S.SUCCEEDED, S.RUNNING, False),
        (S.QUEUED, S.CANCELED, True),
        (S.SUBMITTED, S.CANCELED, True),
        (S.RUNNING, S.CANCELED, True),
        (S.CANCELED, S.CANCELED, False),
        (S.CANCELED, S.QUEUED, False),
        (S.CANCELED, S.RUNNING, False),
        (S.CANCELED, S.SUCCEEDED, False),
        (S.CANCELED, S.FAILED, False),
        (S.SUCCEEDED, S.CANCELED, False),
        (S.FAILED, S.CANCELED, False),
    ],
)
def test_status_only_moves_forward_and_terminal_is_final(current: TaskStatus, new: TaskStatus, allowed: bool) -> None:
    assert can_move(current, new) is allowed


@pytest.mark.parametrize("status", [S.QUEUED, S.SUBMITTED, S.RUNNING])
def test_cancel_moves_any_unfinished_task_to_canceled_with_one_event(status: TaskStatus) -> None:
    task = make_task(status, sequence=1, progress=40 if status is S.RUNNING else None)
    transition = apply_update(task, cancel_update(task), now=NOW, event_id="evt_c")
    assert transition is not None
    assert (transition.task.status, transition.previous_status) == (S.CANCELED, status)
    assert (transition.event.type, transition.event.sequence) == ("task.canceled", 2)
    # What the task had is kept: a cancel is not a failure, and no result came.
    assert (transition.task.error, transition.task.result, transition.task.progress) == (None, None, task.progress)


@pytest.mark.parametrize("status", [S.SUCCEEDED, S.FAILED, S.CANCELED])
def test_a_finished_task_cannot_be_canceled(status: TaskStatus) -> None:
    with pytest.raises(NotCancelable) as refused:
        cancel_update(make_task(status))
    assert refused.value.status is status


def test_transition_emits_one_event_with_next_sequence_and_full_task() -> None:
    task = make_task(S.SUBMITTED, sequence=1, provider_task_id="p1")
    result = TaskResult(video_url="https://v/x.mp4")
    transition = apply_update(task, ProviderUpdate(status=S.SUCCEEDED, result=result), now=NOW, event_id="evt_1")
    assert transition is not None
    assert transition.event.type == "task.succeeded"
    assert transition.event.sequence == 2
    assert transition.event.data["result"]["video_url"] == "https://v/x.mp4"
    assert transition.task.progress == 100


def test_repeated_or_stale_update_changes_nothing() -> None:
    done = make_task(S.SUCCEEDED, sequence=2)
    assert apply_update(done, ProviderUpdate(status=S.SUCCEEDED), now=NOW, event_id="e") is None
    assert apply_update(done, ProviderUpdate(status=S.RUNNING), now=NOW, event_id="e") is None
    running = make_task(S.RUNNING, sequence=2)
    assert apply_update(running, ProviderUpdate(status=S.SUBMITTED), now=NOW, event_id="e") is None


def test_failure_without_error_gets_a_generic_one() -> None:
    transition = apply_update(make_task(S.SUBMITTED), ProviderUpdate(status=S.FAILED), now=NOW, event_id="e")
    assert transition is not None and transition.task.error is not None
    assert transition.task.error.code == "provider_failed"


def test_provider_task_id_is_set_once_and_never_replaced() -> None:
    task = make_task(S.QUEUED)
    first = apply_update(task, ProviderUpdate(status=S.SUBMITTED, provider_task_id="a"), now=NOW, event_id="e")
    assert first is not None and first.task.provider_task_id == "a"
    second = apply_update(first.task, ProviderUpdate(status=S.RUNNING, provider_task_id="b"), now=NOW, event_id="e")
    assert second is not None and second.task.provider_task_id == "a"


@pytest.mark.parametrize(
    ("before", "reported", "emits"),
    [(None, 5, False), (None, 10, True), (10, 15, False), (10, 20, True), (90, 100, False)],
)
def test_progress_events_are_throttled_to_ten_point_steps(before: int | None, reported: int, emits: bool) -> None:
    task = make_task(S.RUNNING, progress=before)
    transition = apply_update(task, ProviderUpdate(status=S.RUNNING, progress=reported), now=NOW, event_id="e")
    assert (transition is not None) is emits
    if transition:
        assert transition.event.type == "task.progress"


def test_poll_delay_grows_to_cap_and_honours_eta() -> None:
    rng = random.Random(1)
    delays = [poll_delay(n, initial_s=5, factor=1.5, max_s=60, rng=rng) for n in range(1, 12)]
    assert 4.5 <= delays[0] <= 5.5
    assert all(d <= 66 for d in delays)
    assert delays[-1] >= 54
    assert poll_delay(1, initial_s=5, factor=1.5, max_s=60, eta_s=30, rng=rng) >= 27
    assert poll_delay(1, initial_s=5, factor=1.5, max_s=60, eta_s=600, rng=rng) <= 66


def test_auto_task_fails_over_only_to_an_untried_configured_provider_it_fits() -> None:
    task = make_task(S.QUEUED, requested_provider="auto")
    assert failover_target(task, configured=["apikley", "novita"]) == "novita"
    assert failover_target(task, configured=["apikley"]) is None
    explicit = make_task(S.QUEUED, requested_provider="apikley")
    assert failover_target(explicit, configured=["apikley", "novita"]) is None
    too_long = make_task(S.QUEUED, requested_provider="auto", input=TaskInput(prompt="x" * 3000))
    assert failover_target(too_long, configured=["apikley", "novita"]) is None
    tried = make_task(
        S.QUEUED,
        provider="novita",
        requested_provider="auto",
        attempts=[SubmitAttempt(provider="apikley", at=NOW, outcome="rejected")],
    )
    assert failover_target(tried, configured=["apikley", "novita"]) is None


def test_task_error_round_trips_through_storage() -> None:
    task = make_task(S.FAILED, error=TaskError(code="timeout", message="m"))
    assert Task.loads(task.dumps()) == task
