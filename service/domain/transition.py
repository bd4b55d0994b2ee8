"""The one transition function: callbacks, polls and our own submit outcomes all come through here.

Pure: given the stored task and a provider report, it says what the task becomes and which event
that emits, or that nothing changes (a duplicate, stale or out-of-order report).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from service.domain.events import Event, event_type_for, make_event
from service.domain.status import TaskStatus, can_move
from service.domain.storage import StorageOutcome, StoredCopy, needs_storing
from service.domain.tasks import Task, TaskError, TaskResult

# Progress events are throttled to steps of this many percentage points.
PROGRESS_STEP = 10


@dataclass(frozen=True)
class ProviderUpdate:
    """A provider's report about a task, already mapped onto our statuses."""

    status: TaskStatus
    provider_task_id: str | None = None
    result: TaskResult | None = None
    error: TaskError | None = None
    progress: int | None = None
    # The provider's own estimate of seconds left, if it gives one (Novita's `eta`).
    eta_s: int | None = None


@dataclass(frozen=True)
class Transition:
    task: Task
    event: Event
    previous_status: TaskStatus


# What the transition function takes: a provider's report, or what became of our copy of the video.
Update = ProviderUpdate | StorageOutcome


def apply_update(task: Task, update: Update, *, now: str, event_id: str) -> Transition | None:
    """The task after `update`, with its event; None when the update changes nothing."""
    if not isinstance(update, ProviderUpdate):
        return _apply_storage(task, update, now=now, event_id=event_id)
    if update.progress is not None and not 0 <= update.progress <= 100:
        # Providers' percentages are unconfirmed: one outside 0-100 would be published, then
        # move backwards when success sets 100.
        update = replace(update, progress=min(max(update.progress, 0), 100))
    if can_move(task.status, update.status) or revives(task, update):
        changes: dict[str, object] = {"status": update.status, "updated_at": now, "sequence": task.sequence + 1}
        if update.provider_task_id and not task.provider_task_id:
            changes["provider_task_id"] = update.provider_task_id
        if update.status is TaskStatus.SUCCEEDED:
            changes["result"] = update.result
            changes["progress"] = 100
            changes["error"] = None
        elif update.status is TaskStatus.FAILED:
            changes["error"] = update.error or TaskError(code="provider_failed", message="the provider failed the task")
        elif update.progress is not None:
            changes["progress"] = max(update.progress, task.progress or 0)
        new_task = task.model_copy(update=changes)
        event = make_event(new_task, event_type_for(update.status), event_id=event_id, created_at=now)
        return Transition(task=new_task, event=event, previous_status=task.status)

    if _is_progress(task, update):
        new_task = task.model_copy(update={"progress": update.progress, "updated_at": now, "sequence": task.sequence + 1})
        event = make_event(new_task, "task.progress", event_id=event_id, created_at=now)
        return Transition(task=new_task, event=event, previous_status=task.status)
    return None


def starts_storing(transition: Transition) -> bool:
    """Whether this transition makes its task due a copy of its video: it has just succeeded (a
    storage event on a succeeded task is no new success, and a result refused as not http(s)
    was a failure)."""
    return transition.previous_status is not TaskStatus.SUCCEEDED and needs_storing(transition.task)


class NotCancelable(Exception):
    """The task has finished: there is nothing left to cancel."""

    def __init__(self, status: TaskStatus) -> None:
        super().__init__(f"the task has already finished as {status.value}")
        self.status = status


def cancel_update(task: Task) -> ProviderUpdate:
    """The client's cancel, as the update the transition function applies: any unfinished task
    becomes `canceled`. Raises NotCancelable once the task has finished (canceled included)."""
    if task.status.terminal:
        raise NotCancelable(task.status)
    return ProviderUpdate(status=TaskStatus.CANCELED)


def revives(task: Task, update: ProviderUpdate) -> bool:
    """A verified success after a failure we decided ourselves (deadline, unconfirmed submit):
    the one move out of a terminal status. Our failure was a guess for want of news; the
    provider's result is the truth, and the user paid for it. Failures the provider reported stay
    final, and so does a cancel: that was the client's decision, not a guess. Callers pass only
    verified reports here (a poll, or a callback confirmed by one)."""
    return (
        task.status is TaskStatus.FAILED
        and update.status is TaskStatus.SUCCEEDED
        and task.error is not None
        and task.error.self_decided
    )


def _is_progress(task: Task, update: ProviderUpdate) -> bool:
    if update.progress is None or task.status.terminal or update.status is not task.status:
        return False
    if task.status is not TaskStatus.RUNNING:
        return False
    return update.progress >= (task.progress or 0) + PROGRESS_STEP and update.progress < 100


def _apply_storage(task: Task, outcome: StorageOutcome, *, now: str, event_id: str) -> Transition | None:
    """A succeeded task's copy kept (`task.stored`) or given up on (`task.storage_failed`): an
    event without a status change, once. A copy kept wins over an earlier give-up (a re-run)."""
    result = task.result
    if task.status is not TaskStatus.SUCCEEDED or result is None or result.sha256 is not None:
        return None
    if isinstance(outcome, StoredCopy):
        changes: dict[str, object] = {
            "stored_url": outcome.stored_url,
            "sha256": outcome.sha256,
            "bytes": outcome.bytes,
            "content_type": outcome.content_type,
            "stored_until": outcome.stored_until,
            "storage_error": None,
        }
        event_type = "task.stored"
    else:
        if result.storage_error is not None:
            return None
        changes, event_type = {"storage_error": outcome.error}, "task.storage_failed"
    new_task = task.model_copy(
        update={"result": result.model_copy(update=changes), "updated_at": now, "sequence": task.sequence + 1}
    )
    event = make_event(new_task, event_type, event_id=event_id, created_at=now)
    return Transition(task=new_task, event=event, previous_status=task.status)
