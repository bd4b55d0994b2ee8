"""Log lines are one JSON object each, carry the ids that tie them to the API, and leak no secret:
the formatter and the redaction rules (the real processes' logs are `tests/stack/test_logs.py`)."""

from __future__ import annotations

import logging
import sys

import orjson
import pytest

from service.logs import JsonFormatter, WithoutCallbackAccess, redact
from service.settings import SettingsError, load_settings


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("workers.deliver", logging.INFO, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_ids_become_fields_from_extra_or_from_name_value_pairs() -> None:
    line = orjson.loads(
        JsonFormatter().format(record("fan-out event_id=%s sent=%d", "evt_1", 3, task_id="task_1", delivery_id="dlv_1"))
    )
    assert line["message"] == "fan-out event_id=evt_1 sent=3"
    assert (line["task_id"], line["event_id"], line["delivery_id"]) == ("task_1", "evt_1", "dlv_1")
    assert line["level"] == "info" and line["logger"] == "workers.deliver" and line["ts"].endswith("Z")


def _boom() -> None:
    raise ValueError("boom")


def test_an_exception_stays_inside_its_one_line() -> None:
    failed = record("job failed task_id=task_9")
    try:
        _boom()  # a traceback of more than one frame, so several lines to fold
    except ValueError:
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


def access(path: str) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                             ("127.0.0.1:5000", "POST", path, "1.1", 200), None)


def test_the_access_log_leaves_out_callbacks_which_log_their_own_line() -> None:
    quiet = WithoutCallbackAccess()
    assert not quiet.filter(access("/callbacks/apikley/task_1/token"))
    assert quiet.filter(access("/v1/tasks"))
    assert quiet.filter(access("/dashboard?next=/callbacks/"))
    assert quiet.filter(record("not an access line %s", "/callbacks/x"))


def test_the_log_level_is_a_setting_read_in_any_case() -> None:
    assert load_settings().log_level == "INFO"
    assert load_settings(log_level=" warning ").log_level == "WARNING"
    with pytest.raises(SettingsError, match="LOG_LEVEL"):
        load_settings(log_level="chatty")
