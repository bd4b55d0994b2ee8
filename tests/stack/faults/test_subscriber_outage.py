"""A subscriber that is down (its port refuses connections) for the whole retry window: its
deliveries end `failed` while another subscriber's all arrive; once it is back, a replay
delivers every event to it, signed, once per event."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from service.redis_server import free_port
from tests.stack.conftest import ServedApp, Simulator, Stack, wait_for
from tests.stack.faults.ledger import (
    Record,
    Subscriber,
    add_subscribers,
    create_tasks,
    delivery_statuses,
    judge,
    reconcile,
    settle,
)
from tests.stack.receivers import Receiver, serve_receiver, subscribe
from tests.stack.stacks import owned_stack

# Beyond pytest's default 120 s: the books are read even after a bounded wait runs out.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

# Three attempts over 1.5 s is the whole (scaled) retry window; disabling stays days away.
OUTAGE_ENV = {
    "WEBHOOK_RETRY_SCHEDULE_S": "0,0.5,1",
    "WEBHOOK_TIMEOUT_S": "2",
    "WEBHOOK_LEASE_S": "3",
    "APIKLEY_CALLBACK_GRACE_S": "2",
}
TASKS = 10


@pytest.fixture
def outage_stack(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with owned_stack(tmp_path_factory.mktemp("subscriber-outage"), simulator, OUTAGE_ENV) as owned:
        yield owned.stack


def test_subscriber_down_for_the_whole_retry_window_gets_everything_by_replay(
    outage_stack: Stack, sim: Simulator, record: Record
) -> None:
    stack = outage_stack
    started = time.monotonic()
    since = datetime.now(UTC) - timedelta(seconds=5)
    down_port = free_port()
    with stack.client() as api, serve_receiver() as healthy:
        [control] = add_subscribers(api, healthy, ["control"])
        created = subscribe(api, f"http://127.0.0.1:{down_port}/hooks")
        task_ids = create_tasks(
            stack.url, [{"prompt": f"outage {n}", "provider": ("apikley", "novita")[n % 2]} for n in range(TASKS)]
        )
        settle(stack.url, api, task_ids, [control], timeout_s=60)
        events = sum(len(api.get(f"/v1/tasks/{t}/events").json()["data"]) for t in task_ids)

        # Every attempt of every delivery was refused: the whole retry schedule is spent.
        wait_for(
            lambda: delivery_statuses(api, created["id"])["failed"] == events,
            timeout_s=30,
            what="the down subscriber's deliveries to fail",
        )
        assert api.get(f"/v1/subscriptions/{created['id']}").json()["enabled"] is True

        back = Receiver()
        with ServedApp(back.app, port=down_port) as served:
            back.base_url = served.url
            back.answer("hooks")
            replay = api.post(f"/v1/subscriptions/{created['id']}/replay", json={"since": since.isoformat()})
            assert replay.status_code == 202, replay.text
            assert replay.json()["replayed"] == events
            returned = Subscriber(back, "hooks", created["id"], created["secret"])
            subscribers = [control, returned]
            tasks, task_events = settle(stack.url, api, task_ids, subscribers, timeout_s=60)
            figures = reconcile(
                "subscriber down for the whole retry window, then replay",
                "subscriber port closed through every scheduled attempt (0, 0.5, 1 s); brought back up,"
                " then POST /v1/subscriptions/{id}/replay",
                task_ids,
                tasks,
                task_events,
                subscribers,
                started,
            )
    judge(figures, record, stack)
