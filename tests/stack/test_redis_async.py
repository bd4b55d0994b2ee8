"""The web's pipelined Redis connection, on real redis-servers: replies reach the right callers,
errors are redis-py's, and restarts, stalls and credentials behave as with redis-py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.redis_async import PipelinedRedis
from service.redis_client import connect_redis
from service.redis_server import RedisServer
from service.settings import load_settings


def client_for(url: str, **options: object) -> PipelinedRedis:
    _, aredis = connect_redis(load_settings(redis_url=url))
    for name, value in options.items():
        setattr(aredis, name, value)
    return aredis


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis", appendonly=False) as server:
        yield server


def test_concurrent_commands_each_get_their_own_reply(redis_server: RedisServer) -> None:
    aredis = client_for(f"redis://127.0.0.1:{redis_server.port}/9")

    async def one(i: int) -> tuple[object, object]:
        await aredis.execute("SET", f"pipelined:{i}", f"value-{i}")
        return i, await aredis.get(f"pipelined:{i}")

    async def main() -> list[tuple[object, object]]:
        return await asyncio.gather(*(one(i) for i in range(500)))

    assert asyncio.run(main()) == [(i, f"value-{i}".encode()) for i in range(500)]
    assert Redis(port=redis_server.port, db=9).get("pipelined:7") == b"value-7"


def test_an_error_reply_raises_for_its_caller_only(redis_server: RedisServer) -> None:
    aredis = client_for(f"redis://127.0.0.1:{redis_server.port}/9")

    async def main() -> tuple[BaseException | object, ...]:
        await aredis.execute("SET", "not-a-number", "x")
        return tuple(
            await asyncio.gather(aredis.execute("INCR", "not-a-number"), aredis.get("not-a-number"), return_exceptions=True)
        )

    error, value = asyncio.run(main())
    assert isinstance(error, ResponseError) and "not an integer" in str(error)
    assert value == b"x"


def test_a_script_unknown_to_the_server_is_loaded_on_first_use(redis_server: RedisServer) -> None:
    aredis = client_for(f"redis://127.0.0.1:{redis_server.port}/9")
    Redis(port=redis_server.port).script_flush()
    double = aredis.register_script("return tonumber(ARGV[1]) * 2")

    async def main() -> tuple[object, object]:
        return await double(keys=[], args=[21]), await double(keys=[], args=[5])

    assert asyncio.run(main()) == (42, 10)


def test_password_and_database_come_from_the_url(own_server: RedisServer) -> None:
    Redis(port=own_server.port).config_set("requirepass", "s3cret")
    aredis = client_for(f"redis://:s3cret@127.0.0.1:{own_server.port}/3")
    asyncio.run(aredis.execute("SET", "where", "db3"))
    assert Redis(port=own_server.port, password="s3cret", db=3).get("where") == b"db3"

    wrong = client_for(f"redis://:wrong@127.0.0.1:{own_server.port}/3")
    with pytest.raises(ResponseError):
        asyncio.run(wrong.get("where"))


def test_a_redis_restart_fails_commands_meanwhile_then_reconnects(own_server: RedisServer) -> None:
    aredis = client_for(own_server.url)

    async def main() -> object:
        await aredis.execute("SET", "k", "before")
        own_server.stop()
        with pytest.raises(RedisConnectionError):
            await aredis.get("k")
        with pytest.raises(RedisConnectionError):
            await aredis.get("k")  # still down: a clear error, not a hang
        own_server.start()
        return await aredis.execute("PING")

    assert asyncio.run(main()) == b"PONG"


def test_a_stalled_server_times_out_and_the_next_command_reconnects(own_server: RedisServer) -> None:
    aredis = client_for(own_server.url, timeout_s=0.3)

    async def main() -> object:
        await aredis.execute("SET", "k", "v")
        Redis(port=own_server.port).execute_command("CLIENT", "PAUSE", "1200", "ALL")
        with pytest.raises(RedisTimeoutError):
            await aredis.get("k")
        await asyncio.sleep(1.2)
        return await aredis.get("k")

    assert asyncio.run(main()) == b"v"


def test_each_event_loop_gets_its_own_connection(redis_server: RedisServer) -> None:
    aredis = client_for(f"redis://127.0.0.1:{redis_server.port}/9")
    for i in range(3):  # a connection made on one loop cannot be used from the next
        assert asyncio.run(aredis.execute("ECHO", f"loop-{i}")) == f"loop-{i}".encode()
