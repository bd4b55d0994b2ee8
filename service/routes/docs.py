"""`GET /docs`: Swagger UI over `/openapi.json`, served entirely from this process.

The UI's files come from the `swagger-ui-bundle-v2` wheel (Swagger UI 5, which renders
OpenAPI 3.1), so the page works offline and behind firewalls: no CDN, no validator badge
calling out, nothing fetched from anywhere but this server.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

ASSETS = "/docs/assets"

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
  <script>
    window.ui = SwaggerUIBundle({{
      url: "/openapi.json",
      dom_id: "#swagger-ui",
      validatorUrl: null,
      deepLinking: true,
      persistAuthorization: false,
    }});
  </script>
</body>
</html>
"""


async def docs_page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


routes = [
    Route("/docs", docs_page, methods=["GET"]),
    Mount(ASSETS, app=StaticFiles(directory=Path(str(swagger_ui_path))), name="docs-assets"),
]
