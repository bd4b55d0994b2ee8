"""Redis behind Sentinel: the clients find the master through real sentinels, and follow it when
Sentinel fails over to a replica."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import MasterNotFoundError, Sentinel

from service.redis_client import connect_redis
from service.redis_server import RedisServer, find_redis_server, free_port
from service.settings import load_settings
from tests.stack.conftest import wait_for


class SentinelProcess:
    def __init__(self, data_dir: Path, master_port: int) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = data_dir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {data_dir}\n"
            f"sentinel monitor mymaster 127.0.0.1 {master_port} 1\n"
            # Long enough that a busy machine's slow answer is not taken for a dead master.
            "sentinel down-after-milliseconds mymaster 1000\n"
            "sentinel failover-timeout mymaster 2000\n"
        )
        self.process = subprocess.Popen(
            [find_redis_server(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        client = Redis(port=self.port, socket_connect_timeout=0.2)
        wait_for(lambda: _answers(client), timeout_s=10, what="sentinel to start")
        sentinel = Sentinel([("127.0.0.1", self.port)], socket_timeout=1)
        wait_for(lambda: _master_known(sentinel), timeout_s=20, what="sentinel to vouch for the master")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def _master_known(sentinel: Sentinel) -> bool:
    try:
        sentinel.discover_master("mymaster")
    except MasterNotFoundError:
        return False
    return True


def _answers(client: Redis) -> bool:
    try:
        return bool(client.ping())
    except (RedisConnectionError, RedisTimeoutError):
        return False


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer, SentinelProcess]]:
    master = RedisServer(tmp_path / "master", appendonly=False).start()
    replica = RedisServer(tmp_path / "replica", appendonly=False).start()
    Redis(port=replica.port).replicaof("127.0.0.1", master.port)
    sentinel = SentinelProcess(tmp_path / "sentinel", master.port)
    yield master, replica, sentinel
    sentinel.stop()
    replica.stop()
    master.stop()


def test_clients_find_the_master_through_sentinel_and_follow_a_failover(
    sentinel_setup: tuple[RedisServer, RedisServer, SentinelProcess],
) -> None:
    master, replica, sentinel = sentinel_setup
    settings = load_settings(redis_sentinels=f"127.0.0.1:{sentinel.port}", redis_sentinel_master="mymaster", redis_url="redis://ignored-host/2")
    redis, aredis = connect_redis(settings)
    redis.set("k", "before")
    assert Redis(port=master.port, db=2).get("k") == b"before"

    async def read() -> object:
        return await aredis.get("k")

    assert asyncio.run(read()) == b"before"
    wait_for(lambda: Redis(port=replica.port, db=2).get("k") == b"before", timeout_s=10, what="replication")

    master.stop()

    def written_after_failover() -> bool:
        try:
            redis.set("k", "after")
        except (RedisConnectionError, RedisTimeoutError, ReadOnlyError):
            time.sleep(0.1)
            return False
        return True

    wait_for(written_after_failover, timeout_s=20, what="the client to reach the promoted replica")
    assert Redis(port=replica.port, db=2).get("k") == b"after"

    # The web's pipelined client drops its connection to the dead master and asks again.
    def read_after_failover() -> object:
        try:
            return asyncio.run(read())
        except (RedisConnectionError, RedisTimeoutError):
            time.sleep(0.1)
            return None

    assert wait_for(read_after_failover, timeout_s=20, what="the async client to reach the promoted replica") == b"after"


def test_the_async_client_follows_a_failover_whose_old_master_stays_up(
    sentinel_setup: tuple[RedisServer, RedisServer, SentinelProcess],
) -> None:
    # A manual failover demotes the old master but leaves it running: the connection to it must
    # not go on being used (writes there would fail READONLY, reads would be stale).
    master, replica, sentinel = sentinel_setup
    settings = load_settings(redis_sentinels=f"127.0.0.1:{sentinel.port}", redis_sentinel_master="mymaster", redis_url="redis://ignored-host/2")
    _, aredis = connect_redis(settings)

    async def write(value: str) -> object:
        return await aredis.execute("SET", "k", value)

    assert asyncio.run(write("before")) == b"OK"
    wait_for(lambda: Redis(port=replica.port, db=2).get("k") == b"before", timeout_s=10, what="replication")
    Redis(port=sentinel.port).execute_command("SENTINEL", "FAILOVER", "mymaster")
    wait_for(lambda: Redis(port=master.port).role()[0] == b"slave", timeout_s=20, what="the old master to be demoted")

    def written_after_failover() -> bool:
        try:
            return asyncio.run(write("after")) == b"OK"
        except (RedisConnectionError, RedisTimeoutError):
            time.sleep(0.1)
            return False

    wait_for(written_after_failover, timeout_s=20, what="the async client to reach the promoted replica")
    assert Redis(port=replica.port, db=2).get("k") == b"after"
