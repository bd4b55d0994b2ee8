"""The web's pipelined Redis connection, on real redis-servers: replies reach the right callers,
errors are redis-py's, and restarts, stalls, a stopped server, a replica, credentials (password,
ACL user) and TLS behave as with redis-py."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.redis_async import PipelinedRedis
from service.redis_client import connect_redis
from service.redis_server import RedisServer, find_redis_server, free_port
from service.settings import load_settings
from tests.stack.conftest import wait_for


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


def test_an_acl_user_logs_in_by_name(own_server: RedisServer) -> None:
    admin = Redis(port=own_server.port)
    admin.acl_setuser("relay", enabled=True, passwords=["+relay-pw"], keys=["*"], channels=["*"], commands=["+@all"])
    admin.acl_setuser("default", enabled=False)  # so nothing gets in as the default user
    redis, aredis = connect_redis(load_settings(redis_url=f"redis://relay:relay-pw@127.0.0.1:{own_server.port}/2"))
    asyncio.run(aredis.execute("SET", "who", "relay"))
    assert redis.get("who") == b"relay"

    _, wrong = connect_redis(load_settings(redis_url=f"redis://relay:wrong@127.0.0.1:{own_server.port}/2"))
    with pytest.raises(ResponseError, match="WRONGPASS"):
        asyncio.run(wrong.get("who"))


def test_a_stopped_server_times_out_commands_then_connects_and_answers_again(tmp_path: Path) -> None:
    # SIGSTOP: the kernel still accepts connections, but nothing answers them.
    with RedisServer(tmp_path / "redis", appendonly=False) as server:
        Redis(port=server.port).config_set("requirepass", "s3cret")
        aredis = client_for(f"redis://:s3cret@127.0.0.1:{server.port}/0", timeout_s=0.3, connect_timeout_s=0.3)
        assert server.process is not None
        pid = server.process.pid

        async def main() -> object:
            await aredis.execute("SET", "k", "v")
            os.kill(pid, signal.SIGSTOP)
            try:
                with pytest.raises(RedisTimeoutError):
                    await aredis.get("k")  # on the open connection
                with pytest.raises(RedisConnectionError, match="cannot connect"):
                    await aredis.get("k")  # a new connection: its AUTH is never answered
            finally:
                os.kill(pid, signal.SIGCONT)
            return await aredis.get("k")

        assert asyncio.run(main()) == b"v"


def test_a_replica_is_left_for_the_master(tmp_path: Path) -> None:
    # What a client reaching a demoted master meets: READONLY. It drops that connection and asks
    # where the master is (Sentinel, in production) before the next command.
    with (
        RedisServer(tmp_path / "master", appendonly=False) as master,
        RedisServer(tmp_path / "replica", appendonly=False) as replica,
    ):
        Redis(port=replica.port).replicaof("127.0.0.1", master.port)
        answers = iter([replica.port, master.port])

        async def locate() -> tuple[str, int]:
            return "127.0.0.1", next(answers)

        aredis = PipelinedRedis(locate)

        async def main() -> object:
            with pytest.raises(RedisConnectionError, match="read-only"):
                await aredis.execute("SET", "k", "v")
            return await aredis.execute("SET", "k", "v")

        assert asyncio.run(main()) == b"OK"
        assert Redis(port=master.port).get("k") == b"v"


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server answering only TLS, with a self-signed certificate for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificate to test TLS with")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    port, log = free_port(), tmp_path / "redis.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [find_redis_server(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
             "--save", "", "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
             "--tls-auth-clients", "no"],
            stdout=output, stderr=subprocess.STDOUT,
        )
    try:
        admin = Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(cert), socket_connect_timeout=0.2)

        def up() -> bool:
            if process.poll() is not None:
                pytest.skip(f"this redis-server does not serve TLS: {log.read_text().strip().splitlines()[-1:]}")
            try:
                return bool(admin.ping())
            except (RedisConnectionError, RedisTimeoutError):
                return False

        wait_for(up, timeout_s=10, what="redis-server with TLS to start")
        yield port, cert
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_tls_connects_to_a_trusted_server_only(tls_server: tuple[int, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    port, cert = tls_server
    url = f"rediss://127.0.0.1:{port}/1"
    untrusted = client_for(url)
    with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(untrusted.get("k"))

    # Trusted as the system's certificate authorities are (OpenSSL reads SSL_CERT_FILE).
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    redis, aredis = connect_redis(load_settings(redis_url=url))
    asyncio.run(aredis.execute("SET", "k", "over tls"))
    assert redis.get("k") == b"over tls"
