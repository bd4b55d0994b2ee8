"""Provider payload mapping (pure): what we send, and how answers map onto our statuses."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from service.domain.status import TaskStatus
from service.domain.tasks import TaskInput, is_web_url
from service.providers import apikley, novita
from service.providers.base import ProviderError

INPUT = TaskInput(prompt="p", negative_prompt="n", duration="10", aspect_ratio="9:16", cfg_scale=0.3)


def test_apikley_create_body_matches_the_documented_shape() -> None:
    body = apikley.create_body(INPUT, "https://relay/cb")
    assert body == {
        "model": "kling/v2-1-master-text-to-video",
        "callBackUrl": "https://relay/cb",
        "input": {"prompt": "p", "negative_prompt": "n", "duration": "10", "aspect_ratio": "9:16", "cfg_scale": 0.3},
    }


def test_novita_body_renames_cfg_scale_to_guidance_scale() -> None:
    assert novita.submit_body(INPUT) == {
        "prompt": "p", "negative_prompt": "n", "duration": "10", "aspect_ratio": "9:16", "guidance_scale": 0.3,
    }


@pytest.mark.parametrize(
    ("code", "our_code", "retryable"),
    [
        (401, "unauthorized", False),
        (402, "insufficient_credits", False),
        (404, "not_found", False),
        (422, "validation_error", False),
        (429, "rate_limited", True),
        (455, "maintenance", True),
        (500, "server_error", True),
        (501, "generation_failed", False),
        (505, "feature_disabled", False),
    ],
)
def test_apikley_error_code_in_an_http_200_body_is_the_outcome(code: int, our_code: str, retryable: bool) -> None:
    with pytest.raises(ProviderError) as caught:
        apikley.unwrap(200, {"code": code, "msg": "nope", "data": None})
    assert (caught.value.code, caught.value.retryable, caught.value.provider_code) == (our_code, retryable, str(code))


@pytest.mark.parametrize(
    ("state", "status"),
    [("waiting", TaskStatus.SUBMITTED), ("queuing", TaskStatus.SUBMITTED), ("generating", TaskStatus.RUNNING)],
)
def test_apikley_states_map_onto_ours(state: str, status: TaskStatus) -> None:
    assert apikley.parse_record({"taskId": "t", "state": state}).status is status


def test_apikley_success_reads_the_result_json_string() -> None:
    record = {"taskId": "t", "state": "success", "resultJson": orjson.dumps({"resultUrls": ["https://v/1.mp4"]}).decode()}
    update = apikley.parse_record(record)
    assert update.status is TaskStatus.SUCCEEDED and update.result is not None
    assert update.result.video_url == "https://v/1.mp4"


WEB_URLS = {
    "https://cdn.example/v.mp4": True,
    "http://cdn.example:8080/v.mp4?sig=1#t": True,
    "HTTPS://CDN.EXAMPLE/V.MP4": True,
    "https://user@cdn.example/v.mp4": True,
    "https://cdn.example": True,
    "https://": False,
    "https:///v.mp4": False,
    "https://?x": False,
    "https://#x": False,
    "https:/cdn.example/v.mp4": False,
    "//cdn.example/v.mp4": False,
    "ftp://cdn.example/v.mp4": False,
    "javascript://cdn.example/%0aalert(1)": False,
    "file:///etc/passwd": False,
    " https://cdn.example/v.mp4": False,
    "https://cdn.example/v.mp4\n": False,
    "https://cdn.exa\tmple/v.mp4": False,
    "": False,
}


@pytest.mark.parametrize(("url", "taken"), WEB_URLS.items(), ids=[repr(u) for u in WEB_URLS])
def test_only_absolute_http_urls_with_a_host_are_taken_as_results(url: str, taken: bool) -> None:
    assert is_web_url(url) is taken


def test_apikley_success_without_a_url_is_a_failure_not_a_crash() -> None:
    update = apikley.parse_record({"taskId": "t", "state": "success", "resultJson": "not json"})
    assert update.status is TaskStatus.FAILED and update.error is not None
    assert update.error.code == "no_result"


def test_apikley_fail_keeps_fail_code_and_message() -> None:
    update = apikley.parse_record({"taskId": "t", "state": "fail", "failCode": "501", "failMsg": "nsfw"})
    assert update.error is not None
    assert (update.error.code, update.error.message, update.error.provider_code) == ("generation_failed", "nsfw", "501")


def test_apikley_unknown_state_is_rejected() -> None:
    with pytest.raises(apikley.UnknownState):
        apikley.parse_record({"taskId": "t", "state": "exploded"})


def test_novita_success_records_when_the_video_url_expires() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    body = {
        "task": {"task_id": "n", "status": "TASK_STATUS_SUCCEED", "progress_percent": 100},
        "videos": [{"video_url": "https://v/n.mp4", "video_url_ttl": "3600", "video_type": "mp4"}],
    }
    update = novita.parse_result(body, unfinished_at=now)
    assert update.result is not None
    assert update.result.expires_at == "2026-01-01T01:00:00.000Z"


def test_novita_processing_reports_progress_and_eta() -> None:
    body = {"task": {"status": "TASK_STATUS_PROCESSING", "progress_percent": 40, "eta": 12}}
    update = novita.parse_result(body, unfinished_at=datetime.now(UTC))
    assert (update.status, update.progress, update.eta_s) == (TaskStatus.RUNNING, 40, 12)


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(400, False), (401, False), (403, False), (404, False), (422, False), (429, True), (500, True), (503, True)],
)
def test_novita_http_errors_split_into_retryable_and_terminal(status: int, retryable: bool) -> None:
    assert novita.error_for(status, {"code": status, "reason": "X", "message": "m"}).retryable is retryable


def test_novita_answer_without_status_is_a_retryable_bad_response() -> None:
    with pytest.raises(ProviderError) as caught:
        novita.parse_result({"videos": []}, unfinished_at=datetime.now(UTC))
    assert caught.value.retryable
