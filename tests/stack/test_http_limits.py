"""The web process's HTTP limits, seen from outside: a real `kling-relay web` and raw sockets.

A request head over HTTP_MAX_HEADER_BYTES gets 431 without the process buffering it; a client
that stops mid-head or mid-body is disconnected; past HTTP_MAX_CONNECTIONS a request gets 503;
ordinary traffic (keep-alive, a 1 MiB callback) is served as before. Nothing here times the
server: every wait is for an outcome, with a socket timeout far above the deadline under test.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.domain.tokens import callback_token
from tests.stack.conftest import CALLBACK_SECRET, READING_WEB_ENV, Simulator, Stack, wait_for
from tests.stack.stacks import owned_stack

MAX_HEAD = 32 * 1024  # HTTP_MAX_HEADER_BYTES's default, which the stack below keeps
READ_TIMEOUT_S = float(READING_WEB_ENV["HTTP_READ_TIMEOUT_S"])
# Far above the read deadline (and its check interval), so only the server can end these waits.
PATIENCE_S = 60.0
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def web(reading_web: Stack) -> Stack:
    return reading_web


def connect(stack: Stack) -> socket.socket:
    return socket.create_connection(("127.0.0.1", stack.port), timeout=PATIENCE_S)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    chunks: list[bytes] = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length body, leaving the connection open."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {buffer!r}"
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def status_of(response: bytes) -> int | None:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else None


def head_of_size(size: int, path: str = "/healthz") -> bytes:
    """A GET whose request line and headers (with the blank line ending them) are `size` bytes."""
    start = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: ".encode()
    end = b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def callback_path(task_id: str) -> str:
    return f"/callbacks/apikley/{task_id}/{callback_token(CALLBACK_SECRET, task_id)}"


@pytest.mark.parametrize(
    ("size", "status"),
    [(MAX_HEAD - 1024, 200), (MAX_HEAD, 200), (MAX_HEAD + 1, 431), (33 * 1024, 431)],
    ids=["1 KB under the limit", "exactly the limit", "one byte over", "33 KB"],
)
def test_a_head_up_to_the_limit_is_served_and_one_past_it_gets_431_and_a_close(web: Stack, size: int, status: int) -> None:
    with connect(web) as sock:
        sock.sendall(head_of_size(size))
        if status == 200:
            assert read_response(sock)[0] == 200
        else:
            response = read_until_closed(sock)
            assert status_of(response) == 431, response[:200]
            assert b"connection: close" in response.lower()


def test_huge_heads_are_refused_without_growing_the_process(web: Stack) -> None:
    assert web.web is not None
    pid = web.web.pid
    with connect(web) as warm:
        warm.sendall(head_of_size(1024))
        assert read_response(warm)[0] == 200
    peak_before = memory_kib(pid, "VmHWM")
    header = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: " + b"a" * (8 * MIB) + b"\r\n\r\n"
    for _ in range(4):
        with connect(web) as sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(header)  # the server may stop reading and close: what we want
            response = read_until_closed(sock)
        # Either the 431 reached us before the close, or the close came first: never a 200.
        assert status_of(response) in (431, None), response[:200]
    # 32 MiB were sent; the process's peak resident size grew by less than one of the heads.
    assert memory_kib(pid, "VmHWM") - peak_before < 8 * 1024
    assert memory_kib(pid, "VmRSS") - peak_before < 8 * 1024
    with connect(web) as sock:
        sock.sendall(head_of_size(1024))
        assert read_response(sock)[0] == 200


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /heal", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: abc"],
    ids=["nothing", "half a request line", "half the headers"],
)
def test_a_client_that_stops_mid_head_is_disconnected(web: Stack, sent: bytes) -> None:
    with connect(web) as sock:
        sock.sendall(sent)
        response = read_until_closed(sock)  # returns only once the server closes
    # A client that sent part of a head is told why; one that sent nothing is just closed.
    assert status_of(response) == (408 if sent else None), response[:200]


def test_a_head_trickled_in_faster_than_the_deadline_is_still_cut_off(web: Stack) -> None:
    """The head deadline runs from the head's first byte: bytes that keep coming do not extend it."""
    with connect(web) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        sent = 0
        while not select.select([sock], [], [], READ_TIMEOUT_S / 8)[0]:
            sock.sendall(b"a")  # a gap far shorter than the deadline between any two bytes
            sent += 1
            assert sent < PATIENCE_S * 8 / READ_TIMEOUT_S, "the server kept taking the head"
        response = read_until_closed(sock)
    assert status_of(response) == 408, response[:200]


def test_a_stalled_request_body_is_disconnected(web: Stack) -> None:
    body = json.dumps({"code": 200, "data": {"taskId": "x", "state": "generating"}}).encode()
    head = (
        f"POST {callback_path('task_stalled')} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with connect(web) as sock:
        sock.sendall(head + body[:10])
        response = read_until_closed(sock)
    assert status_of(response) == 408, response[:200]


def test_keep_alive_serves_several_requests_on_one_connection(web: Stack) -> None:
    with connect(web) as sock:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status, headers, body = read_response(sock)
            assert (status, json.loads(body)) == (200, {"status": "ok"})
            assert headers.get("connection") != "close"


def test_an_idle_keep_alive_connection_is_closed(web: Stack) -> None:
    with connect(web) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock)[0] == 200
        assert read_until_closed(sock) == b""  # HTTP_KEEPALIVE_S=1 ends it, with nothing more sent


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_1_mib_json_callback_is_read_whole(web: Stack, chunked: bool) -> None:
    prefix = b'{"code": 200, "msg": "success", "data": {"taskId": "task_kling_x", "state": "generating", "pad": "'
    suffix = b'"}}'
    body = prefix + b"a" * (MIB - len(prefix) - len(suffix)) + suffix
    assert len(body) == MIB
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {MIB}"
    head = (
        f"POST {callback_path('task_unknown')} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()
    payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if chunked else body
    with connect(web) as sock:
        sock.sendall(head + payload)
        status, _, answer = read_response(sock)
    # The whole body was read and parsed (not 408, 413 or 400): the receiver got to its task lookup.
    assert (status, json.loads(answer)["error"]["code"]) == (404, "not_found")


@pytest.fixture
def capped_web(tmp_path: Path, simulator: Simulator) -> Iterator[Stack]:
    env = {"HTTP_MAX_CONNECTIONS": "3", "HTTP_KEEPALIVE_S": "300", "HTTP_READ_TIMEOUT_S": "300"}
    with owned_stack(tmp_path, simulator, env, workers=0) as owned:
        yield owned.stack


def test_past_the_connection_cap_a_request_gets_503(capped_web: Stack) -> None:
    held = [connect(capped_web) for _ in range(3)]
    try:
        for sock in held:  # each is served, then stays open (keep-alive)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert read_response(sock)[0] == 200
        with connect(capped_web) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            response = read_until_closed(extra)
        assert status_of(response) == 503, response[:200]
        held.pop().close()

        def served_again() -> bool:
            with connect(capped_web) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                return status_of(read_until_closed(sock)) == 200

        # Once a held connection is gone (the server notices asynchronously), a new one is served.
        wait_for(served_again, timeout_s=PATIENCE_S, interval_s=0.2, what="a freed slot to be served")
    finally:
        for sock in held:
            sock.close()
