"""Soak: 2,000 tasks across both providers, each event to 3 subscribers, with the simulator
duplicating, reordering and dropping callbacks and failing some generations at random.

Counts that must hold: tasks terminal = 2,000; deliveries = events × subscribers; one
`webhook-id` per (event, subscriber), each received with a valid signature.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.stack.conftest import Simulator, Stack
from tests.stack.faults.ledger import (
    Record,
    Subscriber,
    add_subscribers,
    create_tasks,
    judge,
    reconcile,
    settle,
)
from tests.stack.receivers import serve_receiver
from tests.stack.stacks import owned_stack, simulator_process

# Beyond pytest's default 120 s, with room for a machine three times slower than ours running the
# suite in parallel: the books are read even after the bounded wait runs out.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TASKS = 2000
SUBSCRIBERS = 3
WORKERS = 3
SEED = 2000

SOAK_ENV = {
    "TASK_CREATE_RATE_PER_MIN": "0",
    # Dropped callbacks are reconciled by polling after this long.
    "APIKLEY_CALLBACK_GRACE_S": "3",
    "POLL_INITIAL_S": "0.5",
    "POLL_MAX_S": "1",
    "TASK_DEADLINE_S": "600",
    # Generous leases and grace: under this load a slow job, or one waiting its turn in a long
    # queue, must not be mistaken for a lost one.
    "SUBMIT_LEASE_S": "10",
    "JOB_GRACE_S": "30",
    "WEBHOOK_TIMEOUT_S": "10",
    "WEBHOOK_LEASE_S": "30",
    "SWEEP_INTERVAL_S": "2",
}
# (weight, what the prompt carries): the simulator's per-task callback behaviour and outcome.
DIRECTIVES = [
    (40, ""),
    (20, "[sim:duplicate-callback]"),
    (20, "[sim:out-of-order]"),
    (10, "[sim:drop-callback]"),
    (10, "[sim:fail]"),
]
PROVIDERS = [(45, "apikley"), (35, "novita"), (20, "auto")]


def soak_bodies(seed: int = SEED) -> list[dict[str, str]]:
    rng = random.Random(seed)

    def pick(table: list[tuple[int, str]]) -> str:
        return rng.choices([v for _, v in table], weights=[w for w, _ in table])[0]

    return [{"prompt": f"soak {n} {pick(DIRECTIVES)}".strip(), "provider": pick(PROVIDERS)} for n in range(TASKS)]


@pytest.fixture(scope="module")
def soak_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    # Its own process: thousands of provider calls and callbacks must not share the test's GIL.
    with simulator_process(tmp_path_factory.mktemp("soak-sim")) as sim:
        yield sim


@pytest.fixture(scope="module")
def soak_stack(soak_sim: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with owned_stack(tmp_path_factory.mktemp("soak"), soak_sim, SOAK_ENV, workers=WORKERS) as owned:
        yield owned.stack


def test_soak_of_2000_tasks_to_3_subscribers_loses_and_duplicates_nothing(
    soak_stack: Stack, soak_sim: Simulator, record: Record
) -> None:
    stack = soak_stack
    started = time.monotonic()
    soak_sim.reset(queue_s=0.3, generate_s=0.6, progress_callbacks=True)
    with stack.client() as api, ExitStack() as receivers:
        subs: list[Subscriber] = []
        for n in range(SUBSCRIBERS):
            subs += add_subscribers(api, receivers.enter_context(serve_receiver()), [f"soak-{n}"])
        bodies = soak_bodies()
        task_ids = create_tasks(stack.url, bodies)
        tasks, events = settle(stack.url, api, task_ids, subs, timeout_s=600)
        figures = reconcile(
            "soak: 2,000 tasks × 3 subscribers",
            f"{TASKS} tasks (Apikley/Novita/auto 45/35/20), random per-task callbacks: duplicated 20%, "
            f"reordered 20%, dropped 10%, failed generation 10%; {WORKERS} workers",
            task_ids,
            tasks,
            events,
            subs,
            started,
        )
    judge(figures, record, stack)
    assert figures.tasks == TASKS
    assert figures.delivered == figures.events * SUBSCRIBERS
    # The random plan really exercised both outcomes and both providers.
    outcomes = {t["status"] for t in tasks.values() if t}
    assert outcomes == {"succeeded", "failed"}
    assert {t["provider"] for t in tasks.values() if t} == {"apikley", "novita"}
