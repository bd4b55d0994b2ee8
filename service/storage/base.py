"""What every storage backend offers (service/storage/local.py, s3.py), and the partial files
downloads are written into before they are kept."""

from __future__ import annotations

import uuid
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

    def media_origin(self) -> str | None:
        """The origin browsers load copies from when `locate` gives a URL (the dashboard's CSP
        must allow it); None when this service serves them itself."""
        ...

    def clean_partials(self, *, older_than_s: float, now_s: float) -> int:
        """Delete partial files a killed try left behind; how many went."""
        ...


class PartialFiles:
    """A folder of `*.part` files, one per download try; made on first use (a web process that
    only serves copies never makes it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def new(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder / f"{uuid.uuid4().hex}.part"

    def clean(self, *, older_than_s: float, now_s: float) -> int:
        gone = 0
        for path in self.folder.glob("*.part") if self.folder.is_dir() else ():
            try:
                if path.stat().st_mtime < now_s - older_than_s:
                    path.unlink()
                    gone += 1
            except FileNotFoundError:
                continue  # its try just finished, or another sweeper took it
        return gone
