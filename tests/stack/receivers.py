"""Real subscriber endpoints for webhook tests: a Starlette app that records every POST and answers
each path from a script (status codes in order, then a default, optionally after a delay)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import httpx
import jsonschema
import orjson
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from svix.webhooks import Webhook as SvixWebhook

from service.domain.catalog import standalone_schema
from service.domain.events import BY_NAME
from tests.stack.conftest import ServedApp, wait_for


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = orjson.loads(self.body)
        return body


class Receiver:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._scripts: dict[str, list[int]] = {}
        self._defaults: dict[str, int] = {}
        self._delays: dict[str, float] = {}
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])
        self.base_url = ""

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        path = request.path_params["path"]
        with self._lock:
            self._received.append(Received(path, dict(request.headers), body, time.time()))
            script = self._scripts.get(path)
            status = script.pop(0) if script else self._defaults.get(path, 204)
            delay = self._delays.get(path, 0.0)
        if delay:
            await asyncio.sleep(delay)
        return Response(None if status == 204 else f"answer {status} from {path}", status_code=status)

    def answer(self, path: str, *statuses: int, then: int = 204, delay_s: float = 0.0) -> str:
        """Script `path` and return its URL."""
        with self._lock:
            self._scripts[path] = list(statuses)
            self._defaults[path] = then
            self._delays[path] = delay_s
        return self.url(path)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path}"

    def received(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self._received if r.path == path]

    def wait_for_count(self, path: str, count: int, timeout_s: float = 20.0) -> list[Received]:
        def check() -> list[Received] | None:
            got = self.received(path)
            return got if len(got) >= count else None

        return wait_for(check, timeout_s=timeout_s, what=f"{count} requests at /{path}")  # type: ignore[no-any-return]


@contextmanager
def serve_receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    with ServedApp(receiver.app) as served:
        receiver.base_url = served.url
        yield receiver


@cache
def _validator(event_type: str) -> jsonschema.Draft202012Validator:
    # The catalog's schema (`GET /v1/event-types` serves the very same: test_event_catalog.py).
    return jsonschema.Draft202012Validator(standalone_schema(BY_NAME[event_type]))


def verify_both(secret: str, received: Received) -> dict[str, Any]:
    """Verify a delivery exactly as a consumer would, with both reference libraries, unmodified,
    and check its payload against the event catalog's JSON Schema for its type."""
    payload: dict[str, Any] = Webhook(secret).verify(received.body, received.headers)
    SvixWebhook(secret).verify(received.body, received.headers)
    _validator(payload["type"]).validate(payload)
    return payload


def subscribe(api: httpx.Client, url: str, event_types: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"url": url, **extra}
    if event_types is not None:
        body["event_types"] = event_types
    response = api.post("/v1/subscriptions", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def run_task(api: httpx.Client, **extra: Any) -> dict[str, Any]:
    """Create an Apikley task (the simulator makes it succeed) and wait until it has succeeded."""
    response = api.post("/v1/tasks", json={"prompt": "a lighthouse in a storm", "provider": "apikley", **extra})
    assert response.status_code == 202, response.text
    task_id = response.json()["id"]

    def done() -> dict[str, Any] | None:
        task: dict[str, Any] = api.get(f"/v1/tasks/{task_id}").json()
        return task if task["status"] in ("succeeded", "failed") else None

    task = wait_for(done, timeout_s=30, what=f"task {task_id} to finish")
    assert task["status"] == "succeeded", task
    return task  # type: ignore[no-any-return]


def events_of(api: httpx.Client, task_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = api.get(f"/v1/tasks/{task_id}/events").json()["data"]
    return events


def deliveries_of(api: httpx.Client, sub_id: str, **params: Any) -> list[dict[str, Any]]:
    response = api.get(f"/v1/subscriptions/{sub_id}/deliveries", params={"limit": 100, **params})
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["data"]
    return found


def wait_for_deliveries(api: httpx.Client, sub_id: str, count: int, status: str, timeout_s: float = 20.0) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        found = [d for d in deliveries_of(api, sub_id) if d["status"] == status]
        return found if len(found) >= count else None

    return wait_for(check, timeout_s=timeout_s, what=f"{count} {status} deliveries of {sub_id}")  # type: ignore[no-any-return]
