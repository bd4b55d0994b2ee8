"""Properties of the one transition function, over any sequence of provider reports (duplicated,
stale, reordered, contradictory): a task never moves backwards, never leaves a terminal status,
emits exactly one event per transition, and numbers its events 1, 2, 3, ... A client's cancel,
at any point of any sequence, is final: no report after it (a success included) changes the
task again.

`tests/stack/test_status_machine_properties.py` checks the last property again on the real Redis
store, with reports racing from threads.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from service.domain.status import TaskStatus
from service.domain.tasks import Task, TaskError, TaskInput, TaskResult
from service.domain.transition import (
    NotCancelable,
    ProviderUpdate,
    Transition,
    apply_update,
    cancel_update,
)

RANK = {
    TaskStatus.QUEUED: 0,
    TaskStatus.SUBMITTED: 1,
    TaskStatus.RUNNING: 2,
    TaskStatus.SUCCEEDED: 3,
    TaskStatus.FAILED: 3,
    TaskStatus.CANCELED: 3,
}
NOW = "2026-01-01T00:00:00.000Z"

# `canceled` is drawn too: the client's cancel comes through the same function, at any point.
updates = st.builds(
    ProviderUpdate,
    status=st.sampled_from(list(TaskStatus)),
    provider_task_id=st.none() | st.sampled_from(["p1", "p2"]),
    result=st.none() | st.just(TaskResult(video_url="https://cdn.example.com/v.mp4")),
    error=st.none() | st.just(TaskError(code="generation_failed", message="no")),
    progress=st.none() | st.integers(min_value=-5, max_value=120),
    eta_s=st.none() | st.integers(min_value=0, max_value=600),
)
# Duplicates and stale reports are the common case in the wild: draw from a small pool.
report_sequences = st.lists(updates, min_size=1, max_size=8).flatmap(
    lambda pool: st.lists(st.sampled_from(pool), min_size=1, max_size=40)
)


def new_task() -> Task:
    return Task(id="task_1", provider="apikley", input=TaskInput(prompt="a fox"), created_at=NOW, updated_at=NOW)


def run(reports: list[ProviderUpdate]) -> tuple[list[Task], list[Transition]]:
    task = new_task()
    states, transitions = [task], []
    for n, report in enumerate(reports):
        transition = apply_update(task, report, now=NOW, event_id=f"evt_{n}")
        if transition is not None:
            transitions.append(transition)
            task = transition.task
        states.append(task)
    return states, transitions


@settings(max_examples=400, database=None)
@given(report_sequences)
# Found by this test: a provider's 101% was kept, then success "lowered" it to 100.
@example([ProviderUpdate(status=TaskStatus.SUBMITTED, progress=101), ProviderUpdate(status=TaskStatus.SUCCEEDED)])
def test_no_sequence_of_reports_moves_a_task_backwards_or_out_of_a_terminal_status(reports: list[ProviderUpdate]) -> None:
    states, _ = run(reports)
    for before, after in itertools.pairwise(states):
        assert RANK[after.status] >= RANK[before.status]
        if before.status.terminal:
            assert after == before
        assert (after.progress or 0) >= (before.progress or 0)
        assert after.progress is None or 0 <= after.progress <= 100
        if before.provider_task_id is not None:
            assert after.provider_task_id == before.provider_task_id


@settings(max_examples=400, database=None)
@given(report_sequences)
def test_each_transition_emits_exactly_one_event_numbered_one_more_than_the_last(reports: list[ProviderUpdate]) -> None:
    states, transitions = run(reports)
    assert [t.event.sequence for t in transitions] == list(range(1, len(transitions) + 1))
    assert [t.task.sequence for t in transitions] == [t.event.sequence for t in transitions]
    status_events = Counter(t.event.type for t in transitions if t.event.type != "task.progress")
    assert all(n == 1 for n in status_events.values()), status_events
    # One status event per status the task passed through after `queued`.
    visited = {s.status for s in states} - {TaskStatus.QUEUED}
    assert set(status_events) == {f"task.{s.value}" for s in visited}
    for t in transitions:
        assert t.event.data == t.task.model_dump(mode="json")


@settings(max_examples=400, database=None)
@given(report_sequences)
def test_the_task_ends_at_the_furthest_status_reported_and_a_repeat_changes_nothing(reports: list[ProviderUpdate]) -> None:
    states, _ = run(reports)
    final = states[-1]
    assert RANK[final.status] == max(RANK[r.status] for r in reports)
    if final.status.terminal:
        assert all(apply_update(final, report, now=NOW, event_id="evt_again") is None for report in reports)
    for n, report in enumerate(reports):
        once = apply_update(states[n], report, now=NOW, event_id="a")
        if once is not None:
            assert apply_update(once.task, report, now=NOW, event_id="b") is None


# Reports that come after a cancel: anything a provider may say, always including a success (the
# one report that may overturn a terminal status: a failure we decided ourselves).
LATE_SUCCESS = ProviderUpdate(status=TaskStatus.SUCCEEDED, result=TaskResult(video_url="https://cdn.example.com/late.mp4"))
late_news = st.lists(updates, max_size=20).map(lambda reports: [*reports, LATE_SUCCESS])


@settings(max_examples=400, database=None)
@given(report_sequences, st.integers(min_value=0, max_value=40), late_news)
def test_a_cancel_at_any_point_is_final_and_emits_exactly_one_canceled_event(
    reports: list[ProviderUpdate], at: int, after: list[ProviderUpdate]
) -> None:
    states, transitions = run(reports[: min(at, len(reports))])
    task = states[-1]
    if task.status.terminal:
        with pytest.raises(NotCancelable):
            cancel_update(task)
        return
    canceled = apply_update(task, cancel_update(task), now=NOW, event_id="evt_cancel")
    assert canceled is not None and canceled.task.status is TaskStatus.CANCELED
    assert canceled.event.type == "task.canceled" and canceled.event.sequence == task.sequence + 1
    with pytest.raises(NotCancelable):
        cancel_update(canceled.task)
    for n, report in enumerate(after):
        assert apply_update(canceled.task, report, now=NOW, event_id=f"evt_late_{n}") is None
    events = [t.event.type for t in transitions] + [canceled.event.type]
    assert events.count("task.canceled") == 1
