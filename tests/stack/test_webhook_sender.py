"""The delivery HTTP client against a real local server: SSRF vetting at delivery time (after DNS),
no redirects, a capped response read and a per-attempt deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from service.webhooks.sender import AttemptResult, WebhookSender
from tests.stack.conftest import ServedApp

hits: list[str] = []


async def _hook(request: Request) -> Response:
    hits.append(request.url.path)
    await request.body()
    return Response(status_code=204)


async def _redirect(request: Request) -> Response:
    hits.append(request.url.path)
    return RedirectResponse("/hook", status_code=302)


async def _big(request: Request) -> Response:
    return Response(b"y" * 50_000, status_code=500)


async def _slow(request: Request) -> Response:
    await asyncio.sleep(1)
    return Response(status_code=204)


@pytest.fixture(scope="module")
def server() -> Iterator[ServedApp]:
    app = Starlette(routes=[Route(f"/{name}", handler, methods=["POST"]) for name, handler in
                            [("hook", _hook), ("redirect", _redirect), ("big", _big), ("slow", _slow)]])
    with ServedApp(app) as served:
        yield served


def _post(url: str, *, allow_private: bool, resolve_to: list[str] | None = None, timeout_s: float = 5.0) -> AttemptResult:
    async def resolver(host: str, port: int) -> list[str]:
        assert resolve_to is not None, f"unexpected DNS lookup of {host}"
        return resolve_to

    async def go() -> AttemptResult:
        sender = WebhookSender(timeout_s=timeout_s, concurrency=4, allow_private=allow_private, resolver=resolver)
        try:
            return await sender.post(url, {"content-type": "application/json"}, b"{}")
        finally:
            await sender.close()

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("host", "addresses"),
    [("rebind.example.com", ["10.0.0.7"]), ("mixed.example.com", ["93.184.216.34", "127.0.0.1"]),
     ("v6.example.com", ["::1"]), ("mapped.example.com", ["::ffff:169.254.169.254"])],
)
def test_a_name_resolving_to_a_private_address_is_refused_at_delivery_time(
    server: ServedApp, host: str, addresses: list[str]
) -> None:
    hits.clear()
    result = _post(f"http://{host}:{server.port}/hook", allow_private=False, resolve_to=addresses)
    assert result.status_code is None and (result.error or "").startswith("unsafe_url:")
    assert hits == []


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/hook", "http://2130706433:{port}/hook", "http://[::ffff:127.0.0.1]:{port}/hook"])
def test_a_literal_private_address_is_refused_at_delivery_time(server: ServedApp, url: str) -> None:
    hits.clear()
    result = _post(url.format(port=server.port), allow_private=False)
    assert (result.error or "").startswith("unsafe_url:") and hits == []


def test_the_connection_goes_to_the_vetted_address(server: ServedApp) -> None:
    hits.clear()
    # The name exists nowhere but in our resolver: a 204 proves the client used its answer.
    result = _post(f"http://hooks.relay-test.example:{server.port}/hook", allow_private=True, resolve_to=["127.0.0.1"])
    assert (result.status_code, result.error) == (204, None)
    assert hits == ["/hook"]


def test_redirects_are_not_followed(server: ServedApp) -> None:
    hits.clear()
    result = _post(f"{server.url}/redirect", allow_private=True)
    assert result.status_code == 302 and hits == ["/redirect"]


def test_only_the_first_kilobyte_of_the_answer_is_read(server: ServedApp) -> None:
    result = _post(f"{server.url}/big", allow_private=True)
    assert result.status_code == 500 and result.body == b"y" * 1024


def test_an_attempt_has_one_deadline(server: ServedApp) -> None:
    result = _post(f"{server.url}/slow", allow_private=True, timeout_s=0.3)
    assert result.status_code is None and result.error == "timeout: no answer within 0.3 s"
    assert 250 <= result.latency_ms < 1500


def test_a_refused_connection_is_a_failed_attempt() -> None:
    from service.redis_server import free_port

    result = _post(f"http://127.0.0.1:{free_port()}/hook", allow_private=True)
    assert result.status_code is None and (result.error or "").startswith("connection_error:")


