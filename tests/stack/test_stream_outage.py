"""An open event stream across a Redis outage: the client keeps its connection and gets
heartbeats while Redis is down, and once it is back the web's reader picks up where it stopped:
events written after the outage reach the same stream, none lost or repeated."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.stack.conftest import API_KEY, Simulator, wait_for
from tests.stack.receivers import events_of, run_task
from tests.stack.sse import StreamReader
from tests.stack.stacks import OwnedStack, owned_stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def aof_stack(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnedStack]:
    simulator.reset()
    env = {"STREAM_HEARTBEAT_S": "0.3"}
    with owned_stack(tmp_path_factory.mktemp("stream-outage"), simulator, env, appendonly=True) as owned:
        yield owned


def _ids_of(reader: StreamReader, task_id: str) -> list[str]:
    return [m.id for m in reader.messages if m.json()["data"]["id"] == task_id]


def test_a_stream_keeps_its_connection_through_a_redis_outage_and_misses_nothing_after(aof_stack: OwnedStack) -> None:
    stack, redis_server = aof_stack.stack, aof_stack.redis_server
    reader = StreamReader(f"{stack.url}/v1/events/stream", API_KEY)
    try:
        wait_for(lambda: reader.connected, what="the stream to open")
        with stack.client() as api:
            before = run_task(api)["id"]
            wait_for(lambda: len(_ids_of(reader, before)) == len(events_of(api, before)), what="the first task's events")

            redis_server.stop()
            wait_for(lambda: api.get("/readyz").status_code == 503, what="the web to see Redis gone")
            pings = reader.pings
            wait_for(lambda: reader.pings >= pings + 5, what="heartbeats during the outage")
            assert not reader.ended and reader.error is None
            with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {API_KEY}"}) as other:
                assert other.get(f"/v1/tasks/{before}/stream").status_code == 503  # needs Redis to start

            redis_server.start()
            wait_for(lambda: api.get("/readyz").status_code == 200, what="the web to see Redis again")
            after = run_task(api)["id"]
            expected = [e["id"] for e in events_of(api, after)]
            wait_for(lambda: _ids_of(reader, after) == expected, what="the second task's events on the same stream")
        ids = [m.id for m in reader.messages]
        assert len(ids) == len(set(ids))
    finally:
        reader.close()
