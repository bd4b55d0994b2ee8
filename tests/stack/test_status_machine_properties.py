"""The status machine's event numbering on the real Redis store, with provider reports racing
from threads: exactly one event per transition, numbered 1, 2, 3, ... (the pure properties are in
`tests/unit/test_status_machine_properties.py`)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from service.domain.ids import new_id
from service.domain.transition import ProviderUpdate
from service.redis_server import RedisServer
from service.store import TaskStore
from tests.unit.test_status_machine_properties import RANK, new_task, report_sequences


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TaskStore]:
    with RedisServer(Path(tmp_path_factory.mktemp("redis-properties")), appendonly=False) as server:
        redis = Redis.from_url(server.url)
        yield TaskStore(redis)
        redis.close()


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reports=report_sequences, threads=st.integers(min_value=2, max_value=6))
def test_reports_racing_on_the_real_store_still_emit_one_event_per_transition(
    store: TaskStore, reports: list[ProviderUpdate], threads: int
) -> None:
    task = new_task().model_copy(update={"id": new_id("task")})
    store.create(task, idempotency=None, idempotency_ttl_s=60, watchdog_s=60, after=lambda pipe, t: None)
    barrier = threading.Barrier(threads)

    def report_all(offset: int) -> None:
        barrier.wait()
        for report in reports[offset::threads]:
            store.apply(task.id, report)

    workers = [threading.Thread(target=report_all, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    events = store.events(task.id)
    final = store.get(task.id)
    assert final is not None
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert final.sequence == len(events)
    status_events = Counter(e.type for e in events if e.type != "task.progress")
    assert all(n == 1 for n in status_events.values()), status_events
    assert RANK[final.status] == max(RANK[r.status] for r in reports)
