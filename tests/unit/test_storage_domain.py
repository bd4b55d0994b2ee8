"""Stored videos, the pure half: the storage events through the transition function, retries
until the URL expires, what a download must look like, Range headers, the simulator's bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from service.domain.clock import iso_to_unix
from service.domain.status import TaskStatus
from service.domain.storage import (
    DownloadProblem,
    RetryRules,
    StorageFailed,
    StoredCopy,
    Unsatisfiable,
    byte_range,
    check_complete,
    check_length,
    check_received,
    kept_type,
    needs_storing,
    retry_in,
    url_expiry_s,
)
from service.domain.tasks import StorageError, Task, TaskInput, TaskResult
from service.domain.transition import ProviderUpdate, apply_update, starts_storing
from service.simulator.mp4 import FTYP, playable
from service.simulator.state import video_chunks
from service.storage import check_storage_url
from service.storage.local import LocalStorage

NOW = "2026-01-01T00:00:00.000Z"
LATER = "2026-01-01T00:01:00.000Z"
COPY = StoredCopy(
    stored_url="http://relay/v1/tasks/task_x/video", sha256="ab" * 32, bytes=10, content_type="video/mp4", stored_until=LATER
)
FAILED = StorageFailed(StorageError(code="too_large", message="too big", attempts=1))
RULES = RetryRules(initial_s=10, factor=2, max_s=60, default_url_ttl_s=3600)


def succeeded(**result: object) -> Task:
    return Task(
        id="task_x",
        provider="novita",
        status=TaskStatus.SUCCEEDED,
        input=TaskInput(prompt="p"),
        result=TaskResult.model_validate({"video_url": "https://cdn/v.mp4", **result}),
        created_at=NOW,
        updated_at=NOW,
        sequence=3,
    )


def test_a_kept_copy_is_one_stored_event_without_a_status_change() -> None:
    task = succeeded()
    transition = apply_update(task, COPY, now=LATER, event_id="evt_s")
    assert transition is not None
    assert transition.event.type == "task.stored"
    assert transition.task.status is TaskStatus.SUCCEEDED and transition.previous_status is TaskStatus.SUCCEEDED
    assert transition.event.sequence == 4
    result = transition.event.data["result"]
    assert (result["stored_url"], result["sha256"], result["bytes"]) == (COPY.stored_url, COPY.sha256, 10)
    assert result["video_url"] == "https://cdn/v.mp4"
    # A second kept copy (a re-run after a crash) changes nothing: exactly one task.stored.
    assert apply_update(transition.task, COPY, now=LATER, event_id="evt_t") is None
    assert not needs_storing(transition.task)


def test_a_give_up_is_one_storage_failed_event_and_a_later_copy_still_wins() -> None:
    failed = apply_update(succeeded(), FAILED, now=LATER, event_id="evt_f")
    assert failed is not None and failed.event.type == "task.storage_failed"
    assert failed.task.status is TaskStatus.SUCCEEDED
    assert failed.event.data["result"]["storage_error"] == {"code": "too_large", "message": "too big", "attempts": 1}
    assert apply_update(failed.task, FAILED, now=LATER, event_id="evt_g") is None
    kept = apply_update(failed.task, COPY, now=LATER, event_id="evt_h")
    assert kept is not None and kept.task.result is not None and kept.task.result.storage_error is None


@pytest.mark.parametrize("status", [TaskStatus.RUNNING, TaskStatus.FAILED])
def test_only_a_succeeded_task_gets_a_copy(status: TaskStatus) -> None:
    task = succeeded().model_copy(update={"status": status})
    assert apply_update(task, COPY, now=LATER, event_id="e") is None
    assert not needs_storing(task)


def test_a_new_success_result_needs_storing_again() -> None:
    task = succeeded().model_copy(update={"status": TaskStatus.RUNNING, "result": None})
    transition = apply_update(
        task, ProviderUpdate(TaskStatus.SUCCEEDED, result=TaskResult(video_url="https://cdn/v.mp4")), now=NOW, event_id="e"
    )
    assert transition is not None and needs_storing(transition.task)


def test_only_the_success_itself_starts_storing() -> None:
    running = succeeded().model_copy(update={"status": TaskStatus.RUNNING, "result": None})
    success = apply_update(
        running, ProviderUpdate(TaskStatus.SUCCEEDED, result=TaskResult(video_url="https://cdn/v.mp4")), now=NOW, event_id="e"
    )
    failure = apply_update(running, ProviderUpdate(TaskStatus.FAILED), now=NOW, event_id="f")
    kept = apply_update(succeeded(), COPY, now=LATER, event_id="g")
    gave_up = apply_update(succeeded(), FAILED, now=LATER, event_id="h")
    assert success is not None and starts_storing(success)
    # A failure has no video; the storage events on a succeeded task are no new success.
    assert failure is not None and not starts_storing(failure)
    assert kept is not None and not starts_storing(kept)
    assert gave_up is not None and not starts_storing(gave_up)


def test_retries_back_off_and_stop_before_the_url_expires() -> None:
    problem = DownloadProblem("http_error", "503", retryable=True)
    now = 1000.0
    delays = [retry_in(problem, tries=n, now_s=now, expires_s=now + 1000, rules=RULES) for n in range(1, 6)]
    assert delays == [10, 20, 40, 60, 60]
    assert retry_in(problem, tries=1, now_s=now, expires_s=now + 10, rules=RULES) is None
    final = DownloadProblem("too_large", "big", retryable=False)
    assert retry_in(final, tries=1, now_s=now, expires_s=now + 1000, rules=RULES) is None


def test_the_url_expiry_is_the_providers_or_a_default_after_success() -> None:
    assert url_expiry_s(succeeded(expires_at=LATER), RULES) == iso_to_unix(LATER)
    assert url_expiry_s(succeeded(), RULES) == iso_to_unix(NOW) + 3600


@pytest.mark.parametrize(
    ("header", "head", "kept"),
    [
        ("video/mp4", b"", "video/mp4"),
        ("Video/WebM; codecs=vp9", b"", "video/webm"),
        ("application/octet-stream", FTYP, "video/mp4"),
        ("binary/octet-stream", FTYP, "video/mp4"),
        (None, FTYP, "video/mp4"),
    ],
)
def test_videos_are_kept_under_their_type(header: str | None, head: bytes, kept: str) -> None:
    assert kept_type(header, head) == kept


@pytest.mark.parametrize(
    ("header", "head"),
    [("text/html", FTYP), ("application/octet-stream", b"<html><body>"), ("application/json", b"{}"), ("video/", FTYP)],
)
def test_anything_else_is_refused_for_good(header: str, head: bytes) -> None:
    with pytest.raises(DownloadProblem) as refused:
        kept_type(header, head)
    assert refused.value.code == "wrong_content_type" and not refused.value.retryable


def test_lengths_are_capped_and_checked() -> None:
    with pytest.raises(DownloadProblem, match="over the 10-byte limit") as declared:
        check_length(11, max_bytes=10)
    assert not declared.value.retryable
    check_length(None, max_bytes=10)
    with pytest.raises(DownloadProblem) as counted:
        check_received(11, max_bytes=10)
    assert counted.value.code == "too_large"
    with pytest.raises(DownloadProblem) as short:
        check_complete(5, 10)
    assert short.value.code == "truncated" and short.value.retryable
    with pytest.raises(DownloadProblem) as empty:
        check_complete(0, None)
    assert empty.value.code == "empty"
    check_complete(10, 10)


@pytest.mark.parametrize(
    ("header", "size", "span"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=90-", 100, (90, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-1000", 100, (0, 99)),
        ("bytes=50-1000", 100, (50, 99)),
        ("bytes=0-1,5-6", 100, None),  # several ranges: the whole object
        ("items=0-1", 100, None),
        ("bytes=9-1", 100, None),
        ("bytes=x-1", 100, None),
        ("bytes=-", 100, None),
    ],
)
def test_range_headers(header: str | None, size: int, span: tuple[int, int] | None) -> None:
    assert byte_range(header, size) == span


@pytest.mark.parametrize(("header", "size"), [("bytes=100-", 100), ("bytes=-0", 100), ("bytes=0-", 0)])
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        byte_range(header, size)


def top_level_boxes(body: bytes) -> list[tuple[bytes, int]]:
    """(type, size) of each box of an MP4 file, in order."""
    boxes, at = [], 0
    while at < len(body):
        size = int.from_bytes(body[at : at + 4], "big")
        boxes.append((body[at + 4 : at + 8], size))
        at += size
    assert at == len(body), "the boxes do not add up to the file"
    return boxes


PLAYABLE = sum(map(len, playable()))


@pytest.mark.parametrize("size", [1, 24, 31, PLAYABLE - 1, PLAYABLE, PLAYABLE + 1, 65536, 65536 * 3 + 7])
def test_the_simulators_video_has_its_size_and_stable_bytes(size: int) -> None:
    body = b"".join(video_chunks(size))
    assert len(body) == size
    assert body == b"".join(video_chunks(size))
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(b"".join(video_chunks(size))).hexdigest()
    assert body[:24] == FTYP[:size]
    if size >= PLAYABLE:
        # Playable whatever its size: the padding is at the end of the `mdat`, after the samples.
        (ftyp, _), (moov, moov_size), (mdat, mdat_size) = top_level_boxes(body)
        assert (ftyp, moov, mdat) == (b"ftyp", b"moov", b"mdat") and mdat_size == size - 24 - moov_size
        samples = playable()[1]
        assert body[PLAYABLE - len(samples) : PLAYABLE] == samples
        stco = body.index(b"stco")
        assert int.from_bytes(body[stco + 12 : stco + 16], "big") == PLAYABLE - len(samples), (
            "the chunk offset misses the samples"
        )
    else:
        assert body == b"".join(video_chunks(PLAYABLE))[:size]


@pytest.mark.parametrize("url", [None, "none", "file:///srv/videos", "s3://bucket", "s3://bucket/some/prefix"])
def test_storage_urls_we_take(url: str | None) -> None:
    assert check_storage_url(url) == url


@pytest.mark.parametrize("url", ["file://host/x", "file:relative", "s3:///prefix", "http://x/y", "/srv/videos"])
def test_storage_urls_we_refuse(url: str) -> None:
    with pytest.raises(ValueError):
        check_storage_url(url)


def test_a_local_copy_is_kept_by_rename_and_partials_are_cleaned(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "videos")
    first, second = storage.partial(), storage.partial()
    assert first != second and first.parent == second.parent
    first.write_bytes(b"one")
    storage.keep(first, "task_a.mp4", "video/mp4")
    assert not first.exists() and storage.locate("task_a.mp4", expires_s=60) == tmp_path / "videos" / "task_a.mp4"
    # A re-run keeps the same name again: replaced whole, never a second object.
    second.write_bytes(b"two")
    storage.keep(second, "task_a.mp4", "video/mp4")
    assert (tmp_path / "videos" / "task_a.mp4").read_bytes() == b"two"
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == [".partial", "task_a.mp4"]
    storage.delete("task_a.mp4")
    storage.delete("task_a.mp4")
    assert storage.locate("task_a.mp4", expires_s=60) is None
    left = storage.partial()
    left.write_bytes(b"killed mid-download")
    now = left.stat().st_mtime
    assert storage.clean_partials(older_than_s=10, now_s=now + 5) == 0
    assert storage.clean_partials(older_than_s=10, now_s=now + 11) == 1 and not left.exists()
