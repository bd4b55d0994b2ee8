"""Logs are one JSON object per line, carry the ids that tie them to the API, and leak no secret."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import orjson
import pytest

from service.domain.tokens import callback_token
from service.logs import JsonFormatter, redact
from tests.conftest import API_KEY, CALLBACK_SECRET, Simulator, Stack, wait_for
from tests.receivers import Receiver, run_task, serve_receiver, subscribe
from tests.stacks import owned_stack


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("workers.deliver", logging.INFO, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_ids_become_fields_from_extra_or_from_name_value_pairs() -> None:
    line = orjson.loads(JsonFormatter().format(record("fan-out event_id=%s sent=%d", "evt_1", 3, task_id="task_1", delivery_id="dlv_1")))
    assert line["message"] == "fan-out event_id=evt_1 sent=3"
    assert (line["task_id"], line["event_id"], line["delivery_id"]) == ("task_1", "evt_1", "dlv_1")
    assert line["level"] == "info" and line["logger"] == "workers.deliver" and line["ts"].endswith("Z")


def test_an_exception_stays_inside_its_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = record("job failed task_id=task_9")
        failed.exc_info = sys.exc_info()
    text = JsonFormatter().format(failed)
    assert "\n" not in text
    assert "ValueError: boom" in orjson.loads(text)["exc"]


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ('"POST /callbacks/apikley/task_1/Zm9vYmFyYmF6 HTTP/1.1" 200', "Zm9vYmFyYmF6"),
        ("callBackUrl=https://relay.example/callbacks/apikley/task_1/c2VjcmV0dG9rZW4", "c2VjcmV0dG9rZW4"),
        ("new secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ("Authorization: Bearer dev_abcdef123", "dev_abcdef123"),
        ('"GET /dashboard?key=dev_abcdef123&status=failed HTTP/1.1" 303', "dev_abcdef123"),
        ("GET /x?api_key=k3y", "k3y"),
        ('"GET /dashboard?%6Bey=dev_abcdef123 HTTP/1.1" 303', "dev_abcdef123"),
        ('"GET /dashboard?status=failed&%6b%65%79=dev_abcdef123 HTTP/1.1" 303', "dev_abcdef123"),
        ("GET /dashboard?KEY=dev_abcdef123", "dev_abcdef123"),
        ("GET /x?api%5Fkey=k3y&a=1", "k3y"),
        ("GET /x?%256Bey=double-encoded", "double-encoded"),
        ("GET /x?a=1&Token=t0k3n", "t0k3n"),
        ("GET /x?access_token=t0k3n", "t0k3n"),
        ("fetch https://h.example/v?se%63ret=s3cr3t=tail failed", "s3cr3t"),
    ],
)
def test_secrets_are_masked_wherever_they_appear(text: str, secret: str) -> None:
    assert secret not in redact(text)
    assert secret not in JsonFormatter().format(record("%s", text, note=text))


def test_other_query_parameters_are_left_as_they_are() -> None:
    line = '"GET /dashboard?status=failed&monkey=1&keys=2 HTTP/1.1" 200'
    assert redact(line) == line


@pytest.fixture(scope="module")
def own(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    simulator.reset()  # to its defaults: an earlier module may have reconfigured it
    with owned_stack(tmp_path_factory.mktemp("logs"), simulator) as owned:
        yield owned.stack


def test_real_processes_log_only_json_lines_with_ids_and_no_secrets(own: Stack) -> None:
    with serve_receiver() as receiver, own.client() as api:
        assert isinstance(receiver, Receiver)
        sub = subscribe(api, receiver.answer("logs", then=503), ["task.succeeded"])
        task = run_task(api)
        receiver.wait_for_count("logs", 1)
        api.delete(f"/v1/subscriptions/{sub['id']}")
    secrets = [API_KEY, CALLBACK_SECRET, callback_token(CALLBACK_SECRET, task["id"]), sub["secret"].removeprefix("whsec_")]

    def lines() -> list[dict[str, object]] | None:
        parsed = []
        for path in own.log_dir.glob("*.log"):
            text = path.read_text()
            for secret in secrets:
                assert secret not in text, f"{path.name} leaks a secret"
            parsed += [orjson.loads(line) for line in text.splitlines() if line.strip()]  # each must be JSON
        about = [line for line in parsed if line.get("task_id") == task["id"]]
        return about if any("delivery_id" in line for line in about) else None

    about = wait_for(lines, timeout_s=10, what="the task's log lines")
    transitions = [line for line in about if str(line["message"]).startswith("task.")]
    assert [str(line["message"]).split()[0] for line in transitions] == ["task.submitted", "task.succeeded"]
    assert all(str(line["event_id"]).startswith("evt_") for line in transitions)
    [failed] = [line for line in about if "delivery_id" in line]
    assert failed["subscription_id"] == sub["id"] and "status=503" in str(failed["message"])


def test_a_key_sent_under_a_percent_encoded_parameter_name_is_masked_in_the_access_log(own: Stack) -> None:
    signed = httpx.get(f"{own.url}/dashboard?%6Bey={API_KEY}&status=failed")
    assert signed.status_code == 303 and signed.cookies.get("kr_dashboard"), "the server took it as the key"

    def access_line() -> str | None:
        for path in own.log_dir.glob("web-*.log"):
            for line in path.read_text().splitlines():
                if "/dashboard?%6Bey=" in line:
                    return line
        return None

    line = wait_for(access_line, timeout_s=10, what="the access log line")
    assert API_KEY not in line
    assert "/dashboard?%6Bey=[redacted]&status=failed" in orjson.loads(line)["message"]
