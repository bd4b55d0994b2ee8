"""Recording landed webhook attempts: read what the planner needs, plan, write the plan.

Runs on the delivery engine's recorder thread (and, for a fan-out batch with nothing to send, on
the dispatcher's). Each record is one atomic write (`DeliveryStore.save_attempted`): the
attempts' deliveries, due times and retry jobs, the failure runs a success ended and, with a
fan-out batch's last first attempts, the release of its outbox entries. Subscriptions the plan
disables are disabled after it, each with its `subscription.disabled` event.
"""

from __future__ import annotations

import logging
import time

from service.jobs import Jobs
from service.webhooks.deliveries import DeliveryStore
from service.webhooks.outcomes import Dispatched
from service.webhooks.planner import (
    Plan,
    Release,
    Rules,
    failure_runs_to_read,
    plan_attempts,
)
from service.webhooks.store import SubscriptionStore
from workers.fanout import FanOutBatch

log = logging.getLogger(__name__)


class Recorder:
    def __init__(self, subscriptions: SubscriptionStore, deliveries: DeliveryStore, jobs: Jobs, rules: Rules) -> None:
        self.subscriptions = subscriptions
        self.deliveries = deliveries
        self.jobs = jobs
        self.rules = rules

    def first_attempts(self, batch: FanOutBatch, landed: list[Dispatched]) -> None:
        """Record some of a fan-out batch's first attempts; the batch releases its entries with the
        last of them, or is handed back if any record failed."""
        release = batch.landed(len(landed))
        try:
            self.record(landed, first=True, release=release)
        except Exception as exc:
            batch.recorded(exc)
            raise
        batch.recorded()

    def record(self, landed: list[Dispatched], *, first: bool = False, release: Release | None = None) -> None:
        """Record landed attempts (`first`: a fan-out's, not stored yet), with `release` if given."""
        plan = self.plan(landed, first=first, release=release) if landed else Plan(release=release)
        self.deliveries.save_attempted(plan, jobs=self.jobs)
        for sub_id, reason in plan.disable.items():
            if self.subscriptions.disable(sub_id, reason) is not None:
                log.warning("subscription disabled subscription_id=%s reason=%s", sub_id, reason.value)

    def plan(self, landed: list[Dispatched], *, first: bool, release: Release | None) -> Plan:
        now = time.time()
        # A run's key outlives any run that has not disabled its subscription yet.
        run_ttl = int(2 * self.rules.disable_after_s)
        failing = self.subscriptions.failing_for(failure_runs_to_read(landed), now, run_ttl_s=run_ttl)
        return plan_attempts(landed, first=first, failing_for=failing, rules=self.rules, now=now, release=release)
