"""Deliver job: fan one task event out to its subscribers (the delivery engine lands with the
subscriptions work; until then an event's only subscriber is the task's own `webhook_url`)."""

from __future__ import annotations

import logging

from workers.context import get_runtime

log = logging.getLogger(__name__)


def fan_out(task_id: str, event_id: str) -> None:
    rt = get_runtime()
    event = rt.store.event(task_id, event_id)
    if event is None:
        return
    log.info("event task_id=%s event_id=%s type=%s", task_id, event_id, event.type)
