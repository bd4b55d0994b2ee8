"""Following a Server-Sent Events stream of the relay from the command line (httpx, sync).

`parse` is the pure half (the SSE line format, as browsers read it); `follow` opens a stream and
yields its messages, raising `StreamRefused` for an answer other than a stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Message:
    """One SSE message; a heartbeat comment is a message with `event` "ping" and no data."""

    id: str | None
    event: str
    data: str


PING = Message(None, "ping", "")


class StreamRefused(Exception):
    """The server answered without a stream (its status code and answer are attached)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"{response.status_code}")
        self.response = response


def parse(lines: Iterable[str]) -> Iterator[Message]:
    """SSE messages from lines (without their line ends): fields until a blank line; comments
    (`: ping`) come out as `PING`, so a reader can act on heartbeats (check a deadline)."""
    event_id: str | None = None
    event = ""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield Message(event_id, event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            yield PING
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            event_id = value
        elif name == "event":
            event = value
        elif name == "data":
            data.append(value)


def follow(
    http: httpx.Client, path: str, *, last_event_id: str | None = None, read_timeout_s: float | None = None
) -> Iterator[Message]:
    """The stream's messages until the server ends it; httpx errors propagate."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    timeout = httpx.Timeout(http.timeout.connect, read=read_timeout_s, write=http.timeout.write, pool=http.timeout.pool)
    with http.stream("GET", path, headers=headers, timeout=timeout) as response:
        if response.status_code != 200 or not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.read()
            raise StreamRefused(response)
        yield from parse(response.iter_lines())
