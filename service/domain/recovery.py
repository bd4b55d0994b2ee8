"""Deadlines and the safety net, as pure decisions: when we stop waiting for a provider, when we
keep looking for a result after giving up, and what the sweep does with a task whose work may
have been lost (a killed worker, a Redis restart without the job).

No Redis, no clock: callers pass `now_s` (unix seconds) in.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.domain.clock import iso_to_unix
from service.domain.status import TaskStatus
from service.domain.tasks import Task, TaskError
from service.domain.transition import ProviderUpdate


@dataclass(frozen=True)
class Deadlines:
    # No result this long after creation: the task fails with `timeout`.
    task_s: float
    # A submit whose answer we never read, with no callback this long after it: `submit_unconfirmed`.
    unconfirmed_s: float
    # After a failure we decided ourselves, the provider is still asked every `late_poll_s` for
    # this long, so a result that comes late is not lost.
    late_window_s: float
    late_poll_s: float


def past_deadline(task: Task, now_s: float, deadlines: Deadlines) -> bool:
    return not task.status.terminal and now_s - iso_to_unix(task.created_at) > deadlines.task_s


def unconfirmed_since(task: Task) -> float:
    """When the submit that left this task without a provider task id was sent."""
    for attempt in reversed(task.attempts):
        if attempt.outcome in ("unconfirmed", "sending"):
            return iso_to_unix(attempt.at)
    return iso_to_unix(task.updated_at)


def revivable(task: Task) -> bool:
    """A task we failed for want of news, with a provider task to ask about: the provider may
    still finish it, and its result would win (`transition.revives`)."""
    return (
        task.status is TaskStatus.FAILED
        and task.error is not None
        and task.error.self_decided
        and task.provider_task_id is not None
    )


def looking_late(task: Task, now_s: float, deadlines: Deadlines) -> bool:
    """A revivable task still within the late window: we keep asking on our own."""
    return revivable(task) and now_s - iso_to_unix(task.updated_at) < deadlines.late_window_s


@dataclass(frozen=True)
class Resubmit:
    """A queued task: give it a submit job unless one is waiting or running."""


@dataclass(frozen=True)
class Repoll:
    """A task with a provider task id whose poll chain may be lost: start a new one."""


@dataclass(frozen=True)
class FailUnconfirmed:
    """An unconfirmed submit past its limit: fail the task with `submit_unconfirmed`."""


@dataclass(frozen=True)
class WaitUntil:
    """Nothing to do before `at_s`."""

    at_s: float


@dataclass(frozen=True)
class Forget:
    """Nothing more will happen to this task on our side."""


Recovery = Resubmit | Repoll | FailUnconfirmed | WaitUntil | Forget


def decide_recovery(task: Task | None, *, now_s: float, deadlines: Deadlines) -> Recovery:
    """What the sweep does with a task whose watchdog time has come."""
    if task is None:
        return Forget()
    if task.status.terminal:
        return Repoll() if looking_late(task, now_s, deadlines) else Forget()
    if task.status is TaskStatus.QUEUED and task.provider_task_id is None:
        return Resubmit()
    if task.provider_task_id is None:
        # Sent, answer never read: only the provider's callback can tell us its task id.
        due = unconfirmed_since(task) + deadlines.unconfirmed_s
        return FailUnconfirmed() if now_s >= due else WaitUntil(due)
    return Repoll()


def worth_polling(task: Task, *, now_s: float, deadlines: Deadlines, confirming: bool) -> bool:
    """Whether a poll job asks the provider at all. A finished task is asked about only when it
    failed by our decision: on our own within the late window, and whenever a callback (the
    provider's own news, `confirming`) asks for it."""
    if task.status.terminal:
        return looking_late(task, now_s, deadlines) or (confirming and revivable(task))
    return True


def deadline_update(task: Task, *, now_s: float, deadlines: Deadlines) -> ProviderUpdate | None:
    """The failure our own deadline decides for an unfinished task, once it has passed."""
    if not past_deadline(task, now_s, deadlines):
        return None
    return ProviderUpdate(
        status=TaskStatus.FAILED, error=TaskError(code="timeout", message=f"no result within {deadlines.task_s:.0f} s")
    )


def next_poll_in(task: Task, *, regular_s: float, now_s: float, deadlines: Deadlines) -> float | None:
    """Seconds until the poll after this one (`regular_s` from the poll schedule), or None when
    the chain ends: the task is finished, or it failed by our decision and the late window is over."""
    if not task.status.terminal:
        return regular_s
    if looking_late(task, now_s, deadlines):
        return deadlines.late_poll_s
    return None


def after_poll(
    asked: Task, answer: ProviderUpdate | None, current: Task | None, *, regular_s: float, now_s: float, deadlines: Deadlines
) -> float | None:
    """Seconds until the next poll of the chain, or None to end it. `asked` is the task as it was
    when the provider was asked, `answer` what it said (None: no answer), `current` the task once
    the answer (and any deadline) was applied. A late poll that found the provider's end ends the
    chain, whatever that end did to the task."""
    if current is None:
        return None
    if asked.status.terminal and answer is not None and answer.status.terminal:
        return None
    return next_poll_in(current, regular_s=regular_s, now_s=now_s, deadlines=deadlines)
