"""Provider answers read as they are (pure): Get Task Details for failed generations, gateway
pages, both spellings of the error text and the task id, Novita webhooks, kie.ai signatures, and
whether providers can call us back at all."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest

from service.domain.status import TaskStatus
from service.domain.tokens import (
    callback_token,
    kie_signature,
    kie_signature_problem,
    token_matches,
)
from service.providers import apikley, novita
from service.providers.base import InvalidCallback, ProviderError
from service.reachability import callbacks_unreachable
from service.settings import load_settings

FAILED_RECORD = {"taskId": "task_kling_1", "state": "fail", "failCode": "NSFW", "failMsg": "content refused", "resultJson": ""}


@pytest.mark.parametrize("code", [501, 422, 200])
def test_get_task_details_for_a_failed_generation_is_the_failure_whatever_its_code(code: int) -> None:
    update = apikley.parse_record(apikley.unwrap_record(200, {"code": code, "msg": "generation failed", "data": FAILED_RECORD}))
    assert update.status is TaskStatus.FAILED
    assert update.provider_task_id == "task_kling_1"
    assert update.error is not None
    assert (update.error.code, update.error.message, update.error.provider_code) == (
        "generation_failed",
        "content refused",
        "NSFW",
    )


def test_a_non_200_answer_without_a_record_is_still_an_error() -> None:
    with pytest.raises(ProviderError) as refused:
        apikley.unwrap_record(200, {"code": 404, "message": "task not found", "data": None})
    assert (refused.value.code, refused.value.message) == ("not_found", "task not found")


@pytest.mark.parametrize("key", ["msg", "message"])
def test_the_error_text_is_read_from_msg_or_message(key: str) -> None:
    with pytest.raises(ProviderError) as refused:
        apikley.unwrap(200, {"code": 402, key: "top up your credits"})
    assert refused.value.message == "top up your credits"


@pytest.mark.parametrize("key", ["taskId", "task_id"])
def test_a_callback_record_names_its_task_as_taskid_or_task_id(key: str) -> None:
    record = {key: "task_kling_7", "state": "generating"}
    assert apikley.record_task_id(record) == "task_kling_7"
    assert apikley.parse_record(record).provider_task_id == "task_kling_7"


HTML = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


@pytest.mark.parametrize("http_status", [502, 503, 504])
def test_a_gateway_page_is_a_provider_outage_that_auto_tasks_fail_over_from(http_status: int) -> None:
    for refusal in (_apikley_refusal(http_status), novita.error_for(http_status, None)):
        assert (refusal.code, refusal.retryable, refusal.provider_level, refusal.outcome_unknown) == (
            "gateway_error", True, True, False,
        )
        assert refusal.provider_code == str(http_status)


def _apikley_refusal(http_status: int) -> ProviderError:
    with pytest.raises(ProviderError) as refused:
        apikley.unwrap(http_status, None)  # what `send` makes of an HTML body
    return refused.value


def test_novita_submit_carries_a_result_webhook_when_asked() -> None:
    body = novita.submit_body(apikley.TaskInput(prompt="p"), "https://relay/callbacks/novita/t/x")
    assert body["extra"] == {"webhook": {"url": "https://relay/callbacks/novita/t/x"}}
    assert "extra" not in novita.submit_body(apikley.TaskInput(prompt="p"))


@pytest.mark.parametrize(
    ("http_status", "body", "refused"),
    [
        (
            400,
            {"code": 400, "reason": "INVALID_REQUEST_BODY", "message": "extra: unknown field", "metadata": {"field": "extra"}},
            True,
        ),
        (422, {"message": "unknown field extra"}, True),
        (400, {"message": "prompt: too long", "metadata": {"field": "prompt"}}, False),
        (500, {"message": "extra"}, False),
    ],
)
def test_novita_refusing_the_webhook_field_is_recognised(http_status: int, body: dict[str, Any], refused: bool) -> None:
    assert novita.refuses_extra(http_status, body) is refused


def test_a_novita_webhook_names_its_task_and_nothing_else_is_taken_from_it() -> None:
    body = {"event_type": "ASYNC_TASK_RESULT", "payload": {"task": {"task_id": "n-1", "status": "TASK_STATUS_SUCCEED"}}}
    assert novita.webhook_task_id(body) == "n-1"
    for broken in ({}, {"payload": {}}, {"payload": {"task": {"task_id": 7}}}, [], "x"):
        with pytest.raises(InvalidCallback) as invalid:
            novita.webhook_task_id(broken)
        assert invalid.value.field == "payload.task.task_id"


# --- callback credentials ------------------------------------------------------------------------


def test_tokens_are_per_task_and_per_provider() -> None:
    token = callback_token("s", "task_1")
    assert token_matches("s", "task_1", token)
    assert not token_matches("s", "task_2", token)
    assert not token_matches("s", "task_1", token, "novita")
    assert token_matches("s", "task_1", callback_token("s", "task_1", "novita"), "novita")


def test_the_kie_signature_is_base64_hmac_sha256_of_task_id_dot_timestamp() -> None:
    expected = base64.b64encode(hmac.new(b"k3y", b"task_kling_1.1700000000", hashlib.sha256).digest()).decode()
    assert kie_signature("k3y", "task_kling_1", "1700000000") == expected


SIGNATURES = {
    "valid": ("task_kling_1", "1700000000", "valid", 1700000100, None),
    "missing headers": ("task_kling_1", None, None, 1700000000, "required"),
    "stale by more than 5 minutes": ("task_kling_1", "1700000000", "valid", 1700000301, "more than 300 s"),
    "from the future": ("task_kling_1", "1700000400", "valid", 1700000000, "more than 300 s"),
    "not a number": ("task_kling_1", "yesterday", "valid", 1700000000, "unix seconds"),
    "for another task": ("task_kling_2", "1700000000", "valid", 1700000000, "does not match"),
    "forged": ("task_kling_1", "1700000000", "AAAA", 1700000000, "does not match"),
}


@pytest.mark.parametrize(("task_id", "timestamp", "signature", "now_s", "problem"), SIGNATURES.values(), ids=SIGNATURES.keys())
def test_a_kie_signature_must_be_fresh_and_match(
    task_id: str, timestamp: str | None, signature: str | None, now_s: float, problem: str | None
) -> None:
    if signature == "valid":
        signature = kie_signature("k3y", "task_kling_1", timestamp or "")
    found = kie_signature_problem("k3y", task_id, timestamp, signature, now_s=now_s)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


REACH = {
    "real Apikley, loopback base URL: unreachable": ({"apikley_api_key": "k", "public_base_url": "http://127.0.0.1:8000"}, True),
    "real Apikley, private base URL: unreachable": ({"apikley_api_key": "k", "public_base_url": "http://10.0.0.5"}, True),
    "real Apikley, internal name: unreachable": ({"apikley_api_key": "k", "public_base_url": "http://relay.internal"}, True),
    "real Apikley, public base URL: fine": ({"apikley_api_key": "k", "public_base_url": "https://relay.example.com"}, False),
    "simulator on loopback: fine": (
        {"apikley_api_key": "k", "apikley_base_url": "http://127.0.0.1:9000", "public_base_url": "http://127.0.0.1:8000"}, False,
    ),
    "no Apikley key: nothing to warn about": ({"novita_api_key": "k", "public_base_url": "http://127.0.0.1:8000"}, False),
}


@pytest.mark.parametrize(("overrides", "unreachable"), REACH.values(), ids=REACH.keys())
def test_callbacks_that_cannot_reach_us_are_named_at_start(overrides: dict[str, str], unreachable: bool) -> None:
    settings = load_settings(_env_file=None, **overrides)
    warning = callbacks_unreachable(settings)
    assert (warning is not None) is unreachable
    if warning:
        assert "PUBLIC_BASE_URL" in warning and "polling" in warning
