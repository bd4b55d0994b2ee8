"""Keeping our own copy of a finished video, as pure decisions: whether a task needs one, until
when its provider URL lasts, when to try again, what a download must look like to be kept, and
which bytes a Range header asks for. No I/O, no clock: callers pass `now_s` in.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.domain.clock import iso_to_unix
from service.domain.status import TaskStatus
from service.domain.tasks import StorageError, Task

# The events about our copy: no status changes.
STORAGE_EVENTS = frozenset({"task.stored", "task.storage_failed"})
# An ISO base media file (MP4, MOV) names its brand in an `ftyp` box at bytes 4-8.
MP4_SIGNATURE = b"ftyp"
# Types object stores and CDNs give files they know nothing about: kept only with an MP4 signature.
GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})


class DownloadProblem(Exception):
    """A download that did not give a video we keep. `retryable`: worth another try later (the
    URL may answer then); otherwise the same URL will never give one (too large, not a video,
    an address we refuse to reach)."""

    def __init__(self, code: str, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True)
class StoredCopy:
    """The copy is kept: what the task's result shows of it."""

    stored_url: str
    sha256: str
    bytes: int
    content_type: str
    stored_until: str


@dataclass(frozen=True)
class StorageFailed:
    """No copy will be kept (last try made, or a problem no retry mends)."""

    error: StorageError


StorageOutcome = StoredCopy | StorageFailed


@dataclass(frozen=True)
class RetryRules:
    initial_s: float
    factor: float
    max_s: float
    # How long a result URL lasts when the provider does not say (Apikley: about a day).
    default_url_ttl_s: float


def needs_storing(task: Task) -> bool:
    """A succeeded task with a result, neither kept nor given up on yet."""
    result = task.result
    return (
        task.status is TaskStatus.SUCCEEDED
        and result is not None
        and result.sha256 is None
        and result.storage_error is None
    )


def url_expiry_s(task: Task, rules: RetryRules) -> float:
    """When the provider's URL stops answering: its stated expiry, else a default lifetime counted
    from the success (the task's last update before any copy is kept)."""
    result = task.result
    if result is not None and result.expires_at is not None:
        return iso_to_unix(result.expires_at)
    return iso_to_unix(task.updated_at) + rules.default_url_ttl_s


def retry_in(problem: DownloadProblem, *, tries: int, now_s: float, expires_s: float, rules: RetryRules) -> float | None:
    """Seconds until the next try after `tries` failed ones, or None to give up: the problem is
    final, or the URL will have expired by then."""
    if not problem.retryable:
        return None
    delay = min(rules.initial_s * rules.factor ** max(tries - 1, 0), rules.max_s)
    return delay if now_s + delay < expires_s else None


def kept_type(content_type: str | None, head: bytes) -> str:
    """The content type to keep the download under, from its header and its first bytes.

    `video/*` is taken as the server says. A generic type (or none) is kept as `video/mp4` only
    if the bytes carry an MP4 signature: object stores serve untyped uploads that way. Anything
    else (an HTML error page, JSON) is refused."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media.startswith("video/") and len(media) > len("video/"):
        return media
    if media in GENERIC_TYPES and head[4:8] == MP4_SIGNATURE:
        return "video/mp4"
    shown = media or "none"
    raise DownloadProblem("wrong_content_type", f"content type {shown} is not a video", retryable=False)


def check_length(declared: int | None, *, max_bytes: int) -> None:
    """Refuse before reading a body whose declared length is over the cap."""
    if declared is not None and declared > max_bytes:
        raise DownloadProblem("too_large", f"the video is {declared} bytes, over the {max_bytes}-byte limit", retryable=False)


def check_received(received: int, *, max_bytes: int) -> None:
    """While reading: over the cap (whatever the length header said)."""
    if received > max_bytes:
        raise DownloadProblem("too_large", f"the video is over the {max_bytes}-byte limit", retryable=False)


def check_complete(received: int, declared: int | None) -> None:
    """After reading: cut short of its declared length, or empty."""
    if declared is not None and received != declared:
        raise DownloadProblem("truncated", f"got {received} of {declared} bytes", retryable=True)
    if received == 0:
        raise DownloadProblem("empty", "the video has no bytes", retryable=True)


def object_name(task_id: str) -> str:
    """The stored object's name: one per task, so a re-run writes the same object again."""
    return f"{task_id}.mp4"


class Unsatisfiable(Exception):
    """A Range that asks for nothing inside the object (416)."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte a Range header asks for; None for the whole object.

    One range only: a header we cannot read, or one with several ranges, is ignored (the whole
    object is served, as RFC 9110 allows)."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash or not (first_text or last_text):
        return None
    if not (first_text.isdigit() or first_text == "") or not (last_text.isdigit() or last_text == ""):
        return None
    if first_text == "":
        # A suffix: the last N bytes.
        length = int(last_text)
        if length == 0 or size == 0:
            raise Unsatisfiable(header)
        return max(size - length, 0), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None
    if first >= size:
        raise Unsatisfiable(header)
    last = int(last_text) if last_text else size - 1
    return first, min(last, size - 1)
