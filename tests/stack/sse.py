"""Reading the relay's event streams from outside, as a client would: raw bytes over HTTP, split
into SSE messages here (not with the service's own client code)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson


@dataclass(frozen=True)
class Sse:
    id: str
    event: str
    data: bytes

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = orjson.loads(self.data)
        return body


def messages(raw: bytes) -> tuple[list[Sse], int]:
    """The complete messages in `raw`, and how many `: ping` comments came with them."""
    found, pings = [], 0
    for block in raw.split(b"\n\n")[:-1]:
        fields: dict[bytes, bytes] = {}
        for line in block.split(b"\n"):
            if line.startswith(b":"):
                pings += line == b": ping"
                continue
            name, _, value = line.partition(b": ")
            fields[name] = value
        if b"data" in fields:
            found.append(Sse(fields[b"id"].decode(), fields[b"event"].decode(), fields[b"data"]))
    return found, pings


@dataclass
class StreamReader:
    """One stream read on a thread of its own until the server ends it or `close()`."""

    url: str
    api_key: str
    last_event_id: str | None = None
    raw: bytearray = field(default_factory=bytearray)
    status: int | None = None
    ended: bool = False  # the server ended it
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._opened = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        try:
            with httpx.stream("GET", self.url, headers=headers, timeout=httpx.Timeout(10, read=60)) as response:
                self.status = response.status_code
                self._opened.set()
                for chunk in response.iter_raw():
                    with self._lock:
                        self.raw += chunk
                    if self._stop.is_set():
                        return
                self.ended = True
        except BaseException as exc:  # noqa: BLE001 (reported to the test)
            self.error = exc
        finally:
            self._opened.set()

    @property
    def messages(self) -> list[Sse]:
        with self._lock:
            return messages(bytes(self.raw))[0]

    @property
    def pings(self) -> int:
        with self._lock:
            return messages(bytes(self.raw))[1]

    @property
    def connected(self) -> bool:
        """Its head came and the first bytes of the body (the retry hint): the server holds it."""
        with self._lock:
            return self.status == 200 and bytes(self.raw).startswith(b"retry:")

    def wait_opened(self, timeout_s: float = 10) -> None:
        assert self._opened.wait(timeout_s), "no answer"

    def join(self, timeout_s: float = 30) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the stream did not end"

    def close(self) -> None:
        self._stop.set()
