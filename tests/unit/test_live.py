"""Live streams, the pure parts: SSE framing and parsing, where a resumed stream picks up, when
a task's stream ends, and `kling-relay listen`'s filters and target checks."""

from __future__ import annotations

import time

import orjson
import pytest

from service.cli_client import CliError
from service.cli_listen import _check_target, _patterns
from service.domain.events import EVENT_TYPES
from service.domain.ids import id_millis, new_id
from service.domain.live import (
    CLOCK_SKEW_MS,
    TERMINAL_EVENT_TYPES,
    BadEventId,
    LiveEvent,
    after,
    resume_floor_ms,
)
from service.sse_client import PING, Message, parse
from service.webhooks.policy import matches


def _event(event_id: str, event_type: str = "task.running") -> LiveEvent:
    data = orjson.dumps({"id": event_id, "type": event_type, "data": {"prompt": "a: b\\nc"}})
    return LiveEvent(id=event_id, type=event_type, subject="task_1", owner="k", data=data)


def test_a_message_carries_the_id_the_type_and_the_stored_json_byte_for_byte() -> None:
    event = _event("evt_1", "task.succeeded")
    assert event.frame == b"id: evt_1\nevent: task.succeeded\ndata: " + event.data + b"\n\n"


def test_what_the_server_frames_the_client_parses_back_with_heartbeats_between() -> None:
    events = [_event("evt_1", "task.submitted"), _event("evt_2", "task.succeeded")]
    wire = (b"retry: 2000\n\n" + events[0].frame + b": ping\n\n" + events[1].frame).decode()
    parsed = [m for m in parse(wire.split("\n")) if m is not PING]
    assert parsed == [Message(e.id, e.type, e.data.decode()) for e in events]
    assert PING in list(parse(wire.split("\n")))


def test_multi_line_data_and_no_space_after_the_colon_are_read_as_browsers_read_them() -> None:
    assert list(parse(["id:7", "data: a", "data:b", ""])) == [Message("7", "message", "a\nb")]


def test_only_terminal_events_end_a_task_stream() -> None:
    assert set(EVENT_TYPES) | {"task.canceled"} >= TERMINAL_EVENT_TYPES
    assert _event("e", "task.failed").ends_task and _event("e", "task.succeeded").ends_task
    assert not _event("e", "task.running").ends_task and not _event("e", "task.progress").ends_task


def test_a_resume_starts_just_after_the_last_event_seen() -> None:
    ids = ["evt_a", "evt_b", "evt_c"]
    assert after(ids, None) == 0
    assert after(ids, "evt_a") == 1
    assert after(ids, "evt_c") == 3


def test_a_resume_after_an_event_no_longer_kept_starts_at_the_first_newer_one() -> None:
    assert after(["evt_b", "evt_d"], "evt_c") == 1
    assert after(["evt_b", "evt_d"], "evt_e") == 2


def test_a_resume_looks_back_a_clock_skew_before_the_ids_time() -> None:
    event_id = new_id("evt")
    millis = id_millis(event_id)
    assert millis is not None and abs(millis - time.time() * 1000) < 5000
    assert resume_floor_ms(event_id) == millis - CLOCK_SKEW_MS


@pytest.mark.parametrize("bad", ["", "42", "evt_", "evt_short", "task_" + "0" * 25, "evt_" + "Z" * 25, "evt_" + "-" * 25])
def test_a_last_event_id_no_event_could_have_is_refused(bad: str) -> None:
    with pytest.raises(BadEventId):
        resume_floor_ms(bad)


def test_listen_filters_like_subscriptions() -> None:
    assert _patterns(None) == ["*"] and _patterns("task.*, task.failed") == ["task.*", "task.failed"]
    assert matches(_patterns("task.*"), "task.succeeded") and not matches(_patterns("task.failed"), "task.succeeded")
    assert not matches(_patterns(None), "subscription.disabled")  # the wildcard skips operational events
    assert matches(_patterns("subscription.disabled"), "subscription.disabled")


@pytest.mark.parametrize("url", ["localhost:3000", "ftp://localhost/x", "http://", "/hooks"])
def test_listen_refuses_a_target_that_is_not_an_http_url(url: str) -> None:
    with pytest.raises(CliError) as refused:
        _check_target(url)
    assert refused.value.exit_code == 2


def test_listen_forwards_to_any_http_url() -> None:
    for url in ("http://localhost:3000/webhooks", "http://127.0.0.1:9/x", "https://hooks.example.com/in"):
        assert _check_target(url) == url
