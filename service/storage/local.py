"""A local folder of videos: `{root}/{task id}.mp4`, downloads written under `{root}/.partial/`
(the same filesystem, so keeping one is a rename)."""

from __future__ import annotations

import os
from pathlib import Path

from service.storage.base import PartialFiles, StorageWriteError

PARTIAL_DIR = ".partial"


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._partials = PartialFiles(root / PARTIAL_DIR)

    def partial(self) -> Path:
        return self._partials.new()

    def keep(self, partial: Path, name: str, content_type: str) -> None:
        try:
            # On disk before it has its name: a crash after the rename must not leave a hole.
            with open(partial, "rb") as written:
                os.fsync(written.fileno())
            os.replace(partial, self.root / name)
            folder = os.open(self.root, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError as exc:
            raise StorageWriteError(f"could not keep {name}: {exc}") from exc

    def locate(self, name: str, *, expires_s: int) -> Path | str | None:
        path = self.root / name
        return path if path.is_file() else None

    def media_origin(self) -> str | None:
        return None

    def delete(self, name: str) -> None:
        try:
            (self.root / name).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageWriteError(f"could not delete {name}: {exc}") from exc

    def clean_partials(self, *, older_than_s: float, now_s: float) -> int:
        return self._partials.clean(older_than_s=older_than_s, now_s=now_s)
