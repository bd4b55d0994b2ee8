"""The books a fault scenario is judged by: what was accepted, what the API shows happened, and
what every subscriber actually received, reconciled into the report's figures.

- lost: a task accepted (202) that is not terminal or has no terminal event, plus every
  (event, subscriber) pair the subscriber never received;
- duplicated: a transition that emitted more than one event (two `task.succeeded`, a repeated or
  skipped sequence number), plus anything a subscriber received that is not one of the task's
  events or whose body disagrees with its `webhook-id`;
- resent: extra copies of a `webhook-id` a subscriber already had (at-least-once delivery after
  a crash or a timed-out attempt): consumers drop these by `webhook-id`, so they are not duplicates.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from redis import Redis

from tests.stack.conftest import API_KEY, Stack, wait_for
from tests.stack.keys_audit import orphans
from tests.stack.receivers import Receiver, subscribe, verify_both

TERMINAL = ("succeeded", "failed")
UNFINISHED = ("queued", "submitted", "running")


@dataclass(frozen=True)
class Subscriber:
    receiver: Receiver
    path: str
    id: str
    secret: str


@dataclass
class Figures:
    scenario: str
    injection: str
    tasks: int
    terminal: int
    events: int
    subscribers: int
    deliveries_expected: int
    delivered: int
    resent: int
    lost: int
    duplicated: int
    seconds: float
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def add_subscribers(api: httpx.Client, receiver: Receiver, names: Iterable[str], **answer: Any) -> list[Subscriber]:
    subs = []
    for name in names:
        created = subscribe(api, receiver.answer(name, **answer))
        subs.append(Subscriber(receiver, name, created["id"], created["secret"]))
    return subs


def create_tasks(base_url: str, bodies: list[dict[str, Any]], threads: int = 8) -> list[str]:
    """POST every body (concurrently); each must be accepted. Returns the task ids in order."""

    def post(chunk: list[dict[str, Any]]) -> list[str]:
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as client:
            ids = []
            for body in chunk:
                response = client.post("/v1/tasks", json=body)
                assert response.status_code == 202, response.text
                ids.append(response.json()["id"])
            return ids

    chunks = [bodies[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(post, chunks))
    by_position: dict[int, str] = {}
    for offset, ids in enumerate(results):
        for n, task_id in enumerate(ids):
            by_position[offset + n * threads] = task_id
    return [by_position[i] for i in range(len(bodies))]


def ids_with_status(api: httpx.Client, statuses: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for status in statuses:
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"status": status, "limit": 100, **({"cursor": cursor} if cursor else {})}
            response = api.get("/v1/tasks", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            found.update(t["id"] for t in page["data"])
            cursor = page["next_cursor"]
            if not cursor:
                break
    return found


def wait_terminal(api: httpx.Client, task_ids: list[str], timeout_s: float) -> None:
    ours = set(task_ids)
    wait_for(
        lambda: not (ours & ids_with_status(api, UNFINISHED)),
        timeout_s=timeout_s,
        interval_s=0.5,
        what=f"{len(ours)} tasks to reach a terminal status",
    )


def fetch(
    base_url: str, task_ids: list[str], threads: int = 8
) -> tuple[dict[str, dict[str, Any] | None], dict[str, list[dict[str, Any]]]]:
    """Every task as the API shows it (None if it is gone) and its events."""

    def one(task_id: str, client: httpx.Client) -> tuple[str, dict[str, Any] | None, list[dict[str, Any]]]:
        task = client.get(f"/v1/tasks/{task_id}")
        if task.status_code == 404:
            return task_id, None, []
        assert task.status_code == 200, task.text
        events = client.get(f"/v1/tasks/{task_id}/events")
        assert events.status_code == 200, events.text
        return task_id, task.json(), events.json()["data"]

    def chunk(ids: list[str]) -> list[tuple[str, dict[str, Any] | None, list[dict[str, Any]]]]:
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as client:
            return [one(task_id, client) for task_id in ids]

    with ThreadPoolExecutor(threads) as pool:
        rows = [row for part in pool.map(chunk, [task_ids[i::threads] for i in range(threads)]) for row in part]
    return {r[0]: r[1] for r in rows}, {r[0]: r[2] for r in rows}


def wait_delivered(subscribers: list[Subscriber], event_ids: set[str], timeout_s: float) -> None:
    """Until every subscriber has received every event at least once."""

    def missing() -> int:
        return sum(len(event_ids - {r.webhook_id for r in s.receiver.received(s.path)}) for s in subscribers)

    wait_for(
        lambda: missing() == 0,
        timeout_s=timeout_s,
        interval_s=0.5,
        what=f"{len(event_ids)} events at {len(subscribers)} subscribers",
    )


def delivery_statuses(api: httpx.Client, sub_id: str) -> Counter[str]:
    """How many of a subscription's deliveries are in each status, from its delivery log."""
    counts: Counter[str] = Counter()
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        response = api.get(f"/v1/subscriptions/{sub_id}/deliveries", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        counts.update(d["status"] for d in page["data"])
        cursor = page["next_cursor"]
        if not cursor:
            return counts


def wait_recorded(api: httpx.Client, subscribers: list[Subscriber], events: int, timeout_s: float) -> None:
    """Until every subscription's delivery log shows each event delivered (so any at-least-once
    re-send of an attempt a crash left unrecorded has happened too)."""

    def done() -> bool:
        return all(delivery_statuses(api, s.id)["delivered"] >= events for s in subscribers)

    wait_for(done, timeout_s=timeout_s, interval_s=0.5, what="every delivery to be recorded delivered")


def settle(
    base_url: str, api: httpx.Client, task_ids: list[str], subscribers: list[Subscriber], *, timeout_s: float
) -> tuple[dict[str, dict[str, Any] | None], dict[str, list[dict[str, Any]]]]:
    """Wait for every task to finish and every event to reach every subscriber; then read the books.

    Waiting is bounded: on a timeout the books are read anyway, so what is missing is counted
    (and reported) rather than hidden behind a timeout error.
    """
    with contextlib.suppress(AssertionError):
        wait_terminal(api, task_ids, timeout_s)
    tasks, events = fetch(base_url, task_ids)
    event_ids = {e["id"] for evs in events.values() for e in evs}
    try:
        wait_delivered(subscribers, event_ids, timeout_s)
        wait_recorded(api, subscribers, len(event_ids), timeout_s)
    except AssertionError:
        pass
    return tasks, events


def reconcile(
    scenario: str,
    injection: str,
    task_ids: list[str],
    tasks: dict[str, dict[str, Any] | None],
    events: dict[str, list[dict[str, Any]]],
    subscribers: list[Subscriber],
    started: float,
) -> Figures:
    problems: list[str] = []
    lost = duplicated = terminal = 0
    for task_id in task_ids:
        task, evs = tasks.get(task_id), events.get(task_id, [])
        if task is None:
            lost += 1
            problems.append(f"{task_id}: accepted but gone")
            continue
        if task["status"] in TERMINAL and evs and evs[-1]["type"] == f"task.{task['status']}":
            terminal += 1
        else:
            lost += 1
            problems.append(f"{task_id}: status {task['status']}, last event {evs[-1]['type'] if evs else None}")
        kinds = Counter(e["type"] for e in evs if e["type"] != "task.progress")
        extra = sum(n - 1 for n in kinds.values())
        sequences = [e["sequence"] for e in evs]
        if sequences != list(range(1, len(evs) + 1)):
            extra = max(extra, 1)
            problems.append(f"{task_id}: sequences {sequences}")
        if extra:
            duplicated += extra
            problems.append(f"{task_id}: events {[e['type'] for e in evs]}")
    all_events = {e["id"]: e for evs in events.values() for e in evs}
    delivered = resent = 0
    for sub in subscribers:
        got = sub.receiver.received(sub.path)
        copies = Counter(r.webhook_id for r in got)
        for request in got:
            payload = verify_both(sub.secret, request)
            if payload["id"] != request.webhook_id:
                duplicated += 1
                problems.append(f"{sub.path}: body id {payload['id']} under webhook-id {request.webhook_id}")
        unexpected = set(copies) - set(all_events)
        if unexpected:
            duplicated += len(unexpected)
            problems.append(f"{sub.path}: {len(unexpected)} webhook-ids that are no task's event")
        wanted = set(all_events)
        delivered += len(wanted & set(copies))
        resent += sum(n - 1 for wid, n in copies.items() if wid in wanted)
        missing = wanted - set(copies)
        if missing:
            lost += len(missing)
            problems.append(f"{sub.path}: {len(missing)} events never received")
    return Figures(
        scenario=scenario,
        injection=injection,
        tasks=len(task_ids),
        terminal=terminal,
        events=len(all_events),
        subscribers=len(subscribers),
        deliveries_expected=len(all_events) * len(subscribers),
        delivered=delivered,
        resent=resent,
        lost=lost,
        duplicated=duplicated,
        seconds=round(time.monotonic() - started, 1),
        problems=problems[:50],
    )


Record = Callable[[Figures], None]


def judge(figures: Figures, record: Record, stack: Stack) -> None:
    """Record the figures for the report, then hold the scenario to 0 lost and 0 duplicated,
    and to no key left in Redis without a live owner or a TTL."""
    record(figures)
    assert figures.lost == 0 and figures.duplicated == 0, figures.problems
    assert figures.terminal == figures.tasks
    assert figures.delivered == figures.deliveries_expected
    assert_no_orphans(stack.redis())


def assert_no_orphans(redis: Redis) -> None:
    # A dead dispatcher's in-flight list is returned by the next sweep: give it that long.
    try:
        wait_for(lambda: not orphans(redis), timeout_s=15, interval_s=0.5, what="no orphan keys")
    except AssertionError:
        raise AssertionError(f"keys with no owner and no TTL: {orphans(redis)[:20]}") from None
