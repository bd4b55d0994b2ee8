"""Where our copies of finished videos are kept (STORAGE_URL), and how they are fetched.

`open_storage` picks the backend: a local folder (`file:///path`, the default `var/videos` under
the working directory) or an S3-compatible bucket (`s3://bucket/prefix`). Every backend writes
a download into a private partial file first and keeps it under one name per task with a single
atomic step (a rename, or one PUT), so a re-run after a crash writes the same object again and a
reader never sees half a video.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from service.storage.base import Storage, StorageWriteError
from service.storage.local import LocalStorage

__all__ = ["Storage", "StorageWriteError", "check_storage_url", "open_storage"]

# STORAGE_URL's value that keeps no copies at all.
DISABLED = "none"
DEFAULT_FOLDER = Path("var/videos")


def check_storage_url(url: str | None) -> str | None:
    """STORAGE_URL as given, if it is one we can use; raises ValueError naming the problem."""
    if url is None or url == DISABLED:
        return url
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError("a file URL must be file:///absolute/path")
        return url
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError("an S3 URL must name its bucket: s3://bucket/prefix")
        return url
    raise ValueError("must be file:///path, s3://bucket/prefix or none")


def open_storage(url: str | None) -> Storage | None:
    """The backend STORAGE_URL names; None when copies are turned off."""
    if url == DISABLED:
        return None
    if url is None:
        return LocalStorage(DEFAULT_FOLDER.resolve())
    parts = urlsplit(url)
    if parts.scheme == "s3":
        try:
            from service.storage.s3 import S3Storage  # only S3 users load boto3
        except ImportError as exc:
            raise RuntimeError("STORAGE_URL=s3://… needs boto3: pip install 'kling-relay[s3]'") from exc

        return S3Storage(bucket=parts.netloc, prefix=parts.path.strip("/"))
    return LocalStorage(Path(unquote(parts.path)))
