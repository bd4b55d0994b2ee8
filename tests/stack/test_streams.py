"""Live event streams from outside: real web, worker and simulator, read over HTTP as raw SSE.
A task's stream shows its events in order and ends; `Last-Event-ID` resumes after an event;
`/v1/events/stream` shows a key its own events only (an admin everyone's); many streams get the
same events; idle streams get heartbeats past the HTTP read timeout; closed ones are let go."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.auth import key_id
from tests.stack.conftest import API_KEY, Stack, wait_for
from tests.stack.receivers import events_of, run_task
from tests.stack.sse import StreamReader

OTHER = "test-key-other-0123"
ADMIN = "test-key-admin-0123"
STACK_ENV = {
    "KLING_RELAY_API_KEYS": f"{API_KEY},{OTHER}",
    "KLING_RELAY_ADMIN_KEYS": ADMIN,
    "STREAM_HEARTBEAT_S": "0.3",
    # Streams outlive the read deadline many times over (it is for request heads and bodies).
    "HTTP_READ_TIMEOUT_S": "1",
}


@pytest.fixture
def readers() -> Iterator[list[StreamReader]]:
    opened: list[StreamReader] = []
    yield opened
    for reader in opened:
        reader.close()


def _open(stack: Stack, readers: list[StreamReader], path: str, key: str = API_KEY, last: str | None = None) -> StreamReader:
    reader = StreamReader(stack.url + path, key, last)
    readers.append(reader)
    wait_for(lambda: reader.connected or reader.error or (reader.status not in (None, 200)), what=f"{path} to open")
    return reader


def _submit(client: httpx.Client, prompt: str = "a lighthouse in a storm") -> str:
    response = client.post("/v1/tasks", json={"prompt": prompt, "provider": "apikley"})
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    return task_id


def _events_for(reader: StreamReader, task_id: str, until: str = "task.succeeded") -> list[Any]:
    def done() -> list[Any] | None:
        mine = [m for m in reader.messages if m.json()["data"].get("id") == task_id]
        return mine if any(m.event == until for m in mine) else None

    found: list[Any] = wait_for(done, timeout_s=30, what=f"{until} of {task_id} on the stream")
    return found


def test_a_task_stream_shows_its_events_in_order_exactly_as_stored_and_ends(
    stack: Stack, api: httpx.Client, readers: list[StreamReader]
) -> None:
    task_id = _submit(api)
    reader = _open(stack, readers, f"/v1/tasks/{task_id}/stream")
    reader.join()
    assert reader.ended and reader.status == 200
    got = reader.messages
    assert got[0].event == "task.submitted" and got[-1].event == "task.succeeded"
    stored = stack.redis().lrange(f"kr:events:{task_id}", 0, -1)
    assert [m.data for m in got] == stored  # byte for byte
    assert [m.id for m in got] == [e["id"] for e in events_of(api, task_id)]


def test_a_finished_tasks_stream_sends_its_history_and_ends_and_resumes_after_an_id(
    stack: Stack, api: httpx.Client, readers: list[StreamReader]
) -> None:
    task = run_task(api)
    ids = [e["id"] for e in events_of(api, task["id"])]
    whole = _open(stack, readers, f"/v1/tasks/{task['id']}/stream")
    whole.join()
    assert [m.id for m in whole.messages] == ids
    for position, last in enumerate(ids):
        resumed = _open(stack, readers, f"/v1/tasks/{task['id']}/stream", last=last)
        resumed.join()
        assert resumed.ended and [m.id for m in resumed.messages] == ids[position + 1 :]


def test_the_events_stream_shows_a_key_its_own_events_only_and_an_admin_everyones(
    stack: Stack, readers: list[StreamReader]
) -> None:
    mine = _open(stack, readers, "/v1/events/stream")
    theirs = _open(stack, readers, "/v1/events/stream", key=OTHER)
    everyone = _open(stack, readers, "/v1/events/stream", key=ADMIN)
    with stack.client() as me, stack.client(OTHER) as other:
        my_task, their_task = _submit(me), _submit(other)
        _events_for(mine, my_task), _events_for(theirs, their_task)
        _events_for(everyone, my_task), _events_for(everyone, their_task)
        # Both tasks are done: anything either stream was to get, it has; all of it its own.
        assert {m.json()["data"]["owner"] for m in mine.messages} == {key_id(API_KEY)}
        assert {m.json()["data"]["owner"] for m in theirs.messages} == {key_id(OTHER)}
        assert their_task not in {m.json()["data"]["id"] for m in mine.messages}
        assert [m.id for m in _events_for(mine, my_task)] == [e["id"] for e in events_of(me, my_task)]


def test_an_events_stream_resumed_with_last_event_id_gets_only_later_events(
    stack: Stack, api: httpx.Client, readers: list[StreamReader]
) -> None:
    first = _open(stack, readers, "/v1/events/stream")
    before = _submit(api)
    seen = _events_for(first, before)
    first.close()
    after = run_task(api)["id"]  # while no stream is open
    resumed = _open(stack, readers, "/v1/events/stream", last=seen[-1].id)
    got = _events_for(resumed, after)
    assert [m.id for m in got] == [e["id"] for e in events_of(api, after)]
    assert not {m.id for m in resumed.messages} & {m.id for m in seen}  # none repeated
    # Resuming from the middle of a task's events picks up at the next one.
    middle = _open(stack, readers, "/v1/events/stream", last=seen[0].id)
    assert [m.id for m in _events_for(middle, after)] == [e["id"] for e in events_of(api, after)]
    assert [m.id for m in middle.messages if m.json()["data"]["id"] == before] == [m.id for m in seen[1:]]


def test_fifty_streams_all_get_the_same_events(stack: Stack, api: httpx.Client, readers: list[StreamReader]) -> None:
    streams = [_open(stack, readers, "/v1/events/stream") for _ in range(50)]
    task_ids = [_submit(api, f"a fox number {n}") for n in range(3)]
    expected = None
    for reader in streams:
        for task_id in task_ids:
            _events_for(reader, task_id)
        got = [m.id for m in reader.messages if m.json()["data"]["id"] in task_ids]
        expected = expected or got
        assert got == expected
    # Every stream got the same events in the same order: all of the three tasks' events.
    assert expected is not None and sorted(expected) == sorted(e["id"] for task_id in task_ids for e in events_of(api, task_id))


def test_an_idle_stream_gets_heartbeats_past_the_read_timeout_and_a_closed_one_is_let_go(
    stack: Stack, readers: list[StreamReader]
) -> None:
    def open_streams() -> float:
        text = httpx.get(f"{stack.url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
        match = re.search(r"^kling_relay_live_streams (\S+)$", text, re.MULTILINE)
        assert match, "no live streams gauge"
        return float(match[1])

    wait_for(lambda: open_streams() == 0, what="earlier streams to be let go")
    idle = [_open(stack, readers, "/v1/events/stream") for _ in range(5)]
    assert open_streams() == 5
    # HTTP_READ_TIMEOUT_S is 1 and pings come every 0.3 s: ten pings is three read timeouts.
    wait_for(lambda: all(reader.pings >= 10 for reader in idle), what="ten heartbeats each")
    assert not any(reader.ended or reader.error for reader in idle)
    for reader in idle:
        reader.close()
    wait_for(lambda: open_streams() == 0, what="closed streams to be let go")


@pytest.mark.parametrize(
    ("path", "key", "headers", "status"),
    [
        ("/v1/tasks/task_unknown/stream", API_KEY, {}, 404),
        ("/v1/events/stream", None, {}, 401),
        ("/v1/events/stream", API_KEY, {"Last-Event-ID": "not-an-id"}, 400),
    ],
)
def test_refusals_come_before_any_stream(stack: Stack, path: str, key: str | None, headers: dict[str, str], status: int) -> None:
    with stack.client(key) as client:
        response = client.get(path, headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")


def test_another_keys_task_stream_does_not_exist(stack: Stack, api: httpx.Client) -> None:
    task_id = _submit(api)
    with stack.client(OTHER) as other, stack.client(ADMIN) as admin:
        assert other.get(f"/v1/tasks/{task_id}/stream").status_code == 404
        with admin.stream("GET", f"/v1/tasks/{task_id}/stream") as response:
            assert response.status_code == 200


def test_head_answers_with_the_headers_only(stack: Stack, api: httpx.Client) -> None:
    response = api.head("/v1/events/stream")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
