"""What every storage backend offers (service/storage/local.py, s3.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class StorageWriteError(Exception):
    """The backend could not keep or delete an object (disk full, bucket refused)."""


class Storage(Protocol):
    def partial(self) -> Path:
        """A new local path, private to one try, to download into."""
        ...

    def keep(self, partial: Path, name: str, content_type: str) -> None:
        """Make `partial` the object `name`, in one atomic step; raises StorageWriteError."""
        ...

    def locate(self, name: str, *, expires_s: int) -> Path | str | None:
        """Where a reader gets the object: a local file, a URL valid `expires_s` seconds, or None
        if it is not there."""
        ...

    def delete(self, name: str) -> None:
        """Delete the object if it exists; raises StorageWriteError."""
        ...

    def clean_partials(self, *, older_than_s: float, now_s: float) -> int:
        """Delete partial files a killed try left behind; how many went."""
        ...
