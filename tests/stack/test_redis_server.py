"""The embedded redis-server (`service/redis_server.py`, also `kling-relay dev`'s): a port it chose
that another process took first is chosen again; a port it was given, or has served on, is kept."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from redis import Redis

from service.redis_server import RedisServer


def test_a_chosen_port_taken_before_redis_binds_it_is_chosen_again(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))  # bound, as a client connection's port is
        taken = squatter.getsockname()[1]
        server = RedisServer(tmp_path / "redis", appendonly=False)
        server.port = taken  # as if another process had taken the chosen port first
        with server:
            assert server.port != taken
            assert Redis(port=server.port).ping()


def test_a_port_given_is_kept_even_when_taken(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))  # bound, as a client connection's port is
        taken = squatter.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"did not start on port {taken}"):
            RedisServer(tmp_path / "redis", port=taken, appendonly=False).start()
