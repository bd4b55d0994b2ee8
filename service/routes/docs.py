"""`GET /docs`: Swagger UI over `/openapi.json`, served entirely from this process.

The UI's files come from the `swagger-ui-bundle-v2` wheel (Swagger UI 5, which renders
OpenAPI 3.1), so the page works offline and behind firewalls: no CDN, no validator badge
calling out, nothing fetched from anywhere but this server. The page and its files carry the
browser security headers; its CSP allows this origin's files and the one inline script by hash.
"""

from __future__ import annotations

from pathlib import Path

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from service.security_headers import (
    SecurityHeaders,
    browser_headers,
    content_security_policy,
    inline_source,
)

ASSETS = "/docs/assets"

INIT_SCRIPT = """
    window.ui = SwaggerUIBundle({
      url: "/openapi.json",
      dom_id: "#swagger-ui",
      validatorUrl: null,
      deepLinking: true,
      persistAuthorization: false,
    });
"""

PAGE = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>kling-relay API</title>
  <link rel="stylesheet" href="{ASSETS}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{ASSETS}/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{ASSETS}/swagger-ui-bundle.js"></script>
  <script>{INIT_SCRIPT}</script>
</body>
</html>
"""

HEADERS = browser_headers(content_security_policy({
    "default-src": "'none'",
    "script-src": f"'self' {inline_source(INIT_SCRIPT)}",
    "style-src": "'self'",
    "img-src": "'self' data:",  # Swagger UI's icons are data: URLs in its stylesheet
    "connect-src": "'self'",  # /openapi.json, and "Try it out"
    "form-action": "'self'",
    "base-uri": "'none'",
    "frame-ancestors": "'none'",
}))


async def docs_page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


routes = [
    Route("/docs", docs_page, methods=["GET"], middleware=[Middleware(SecurityHeaders, headers=HEADERS)]),
    Mount(ASSETS, app=SecurityHeaders(StaticFiles(directory=Path(str(swagger_ui_path))), headers=HEADERS), name="docs-assets"),
]
