"""`/docs`: Swagger UI over `/openapi.json`, served from the process itself (works offline)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from service.app import create_app
from service.redis_server import RedisServer
from service.settings import load_settings
from tests.browser import dump_dom
from tests.conftest import API_KEY, CALLBACK_SECRET, ServedApp


@pytest.fixture(scope="module")
def web(redis_server: RedisServer) -> Iterator[str]:
    settings = load_settings(redis_url=redis_server.url, callback_secret=CALLBACK_SECRET, kling_relay_api_keys=API_KEY)
    with ServedApp(create_app(settings)) as served:
        yield served.url


def test_the_docs_page_loads_nothing_from_other_hosts(web: str) -> None:
    page = httpx.get(f"{web}/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text and '"//' not in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(a.startswith("/docs/assets/") for a in assets)
    for asset in assets:
        assert httpx.get(f"{web}{asset}").status_code == 200, asset


def test_chromium_renders_the_openapi_31_document_offline(web: str) -> None:
    dom = dump_dom(f"{web}/docs")
    assert "OAS 3.1" in dom
    assert "Create a task" in dom and "/v1/subscriptions/{sub_id}/replay" in dom
