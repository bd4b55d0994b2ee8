"""The task status machine: statuses only move forward and terminal ones are final (the one
exception, a verified success after a failure we decided ourselves, is `transition.revives`).
`canceled` is the client's decision (`POST /v1/tasks/{id}/cancel`); no provider reports it."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    QUEUED = "queued"
    SUBMITTED = "submitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED)


_RANK = {
    TaskStatus.QUEUED: 0,
    TaskStatus.SUBMITTED: 1,
    TaskStatus.RUNNING: 2,
    TaskStatus.SUCCEEDED: 3,
    TaskStatus.FAILED: 3,
    TaskStatus.CANCELED: 3,
}


def can_move(current: TaskStatus, new: TaskStatus) -> bool:
    """True when `new` is strictly ahead of `current` and `current` is not final.

    Every path the design draws (queued→submitted→running→succeeded, and any non-terminal
    status→failed or →canceled) is a move to a higher rank, so rank order alone enforces "never backwards".
    """
    return not current.terminal and _RANK[new] > _RANK[current]
