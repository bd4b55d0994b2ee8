"""Which provider an `auto` task moves to when its provider cannot serve it (pure)."""

from __future__ import annotations

from collections.abc import Collection

from service.domain.tasks import PROVIDERS, ProviderName, Task, limit_violations


def failover_target(task: Task, *, configured: Collection[ProviderName]) -> ProviderName | None:
    """The untried, configured provider whose limits the input fits; None if there is none.

    Only `auto` tasks fail over: a client who named a provider asked for that one.
    """
    if task.requested_provider != "auto":
        return None
    tried = {attempt.provider for attempt in task.attempts} | {task.provider}
    for candidate in PROVIDERS:
        if candidate not in tried and candidate in configured and not limit_violations(task.input, candidate):
            return candidate
    return None
