"""`/docs`: Swagger UI over `/openapi.json`, served from the process itself (works offline),
under a Content-Security-Policy that lets nothing inline run but its hashed init script."""

from __future__ import annotations

import base64
import hashlib
import re

import httpx
import pytest

from tests.stack.browser import browser
from tests.stack.conftest import Stack, wait_for


@pytest.fixture(scope="module")
def web(reading_web: Stack) -> str:
    return reading_web.url


def test_the_docs_page_loads_nothing_from_other_hosts(web: str) -> None:
    page = httpx.get(f"{web}/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text and '"//' not in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(a.startswith("/docs/assets/") for a in assets)
    for asset in assets:
        assert httpx.get(f"{web}{asset}").status_code == 200, asset


def test_the_docs_page_and_its_files_send_the_browser_security_headers(web: str) -> None:
    page = httpx.get(f"{web}/docs")
    csp = dict(part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'none'" and csp["frame-ancestors"] == "'none'"
    assert (
        "unsafe-inline" not in page.headers["content-security-policy"]
        and "unsafe-eval" not in page.headers["content-security-policy"]
    )
    inline = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    assert inline, "the init script is inline"
    for body in inline:
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp["script-src"].split()
    for response in (page, httpx.get(f"{web}/docs/assets/swagger-ui-bundle.js"), httpx.get(f"{web}/docs/assets/swagger-ui.css")):
        assert response.status_code == 200
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"
        assert response.headers["content-security-policy"] == page.headers["content-security-policy"]


def test_chromium_renders_the_openapi_31_document_offline_with_no_csp_violation(web: str) -> None:
    with browser() as chromium:
        chromium.open(f"{web}/docs")
        dom = wait_for(
            lambda: (text := str(chromium.run("return document.body.innerText"))) and "OAS 3.1" in text and text,
            timeout_s=20, interval_s=0.2, what="Swagger UI to render the API",
        )
        console = chromium.console()
    assert "Create a task" in dom and "/v1/subscriptions/{sub_id}/replay" in dom
    assert "Webhooks" in dom and "task.succeeded" in dom  # the event catalog, as OpenAPI 3.1 webhooks
    assert [message for message in console if "Content Security Policy" in message] == []
