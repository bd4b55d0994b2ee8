"""Bad input against the real web process, driven by its own `/openapi.json`: schemathesis sends
valid and invalid requests to every operation; none may answer 5xx, and every answer must match
the documented status codes, media type, headers and schema.

The stack runs no worker, so what the fuzzer creates stays put: no provider is called and no
fuzzed webhook URL is ever contacted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from service.app import create_app
from service.routes.openapi import spec
from service.settings import load_settings
from tests.stack.conftest import API_KEY, Simulator, Stack
from tests.stack.fuzzing import without_framing_headers
from tests.stack.stacks import owned_stack

FUZZ_ENV = {"TASK_CREATE_RATE_PER_MIN": "0"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    ignored_auth,
]
# Ids of real resources, so fuzzed requests reach past the 404s too (filled in by the fixture).
REAL: dict[str, str] = {}


@pytest.fixture(scope="module")
def fuzz_stack(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with owned_stack(tmp_path_factory.mktemp("fuzz"), simulator, FUZZ_ENV, workers=0) as owned:
        with owned.stack.client() as api:
            REAL["task_id"] = api.post("/v1/tasks", json={"prompt": "a real task", "provider": "apikley"}).json()["id"]
            REAL["sub_id"] = api.post("/v1/subscriptions", json={"url": "http://127.0.0.1:9/hook"}).json()["id"]
        yield owned.stack


def flatmap_path_parameters(context: Any, path: dict[str, Any] | None) -> Any:
    """Now and then aim a generated request at a resource that exists."""
    if not path:
        return st.just(path)
    real = {name: REAL[name] for name in path if name in REAL}
    return st.sampled_from([path, {**path, **real}]) if real else st.just(path)


def flatmap_body(context: Any, body: Any) -> Any:
    """Now and then mend a generated body (a reachable URL, no fields that mostly fail
    validation), so the success answers get checked against the document too."""
    if not isinstance(body, dict):
        return st.just(body)
    mended = {k: v for k, v in body.items() if k not in ("webhook_url", "cfg_scale", "metadata")}
    if "url" in mended:
        mended["url"] = "http://127.0.0.1:9/fuzzed"
    return st.sampled_from([body, mended])


# The document the web serves is built from the code at import; the first test below proves the
# served one is this very document, so the operations are known when pytest collects.
# Event streams never end by themselves: tests/stack/test_streams.py reads them instead.
schema = schemathesis.openapi.from_dict(spec()).exclude(path_regex=r"/stream$")
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
schema.hook(flatmap_path_parameters)
schema.hook(flatmap_body)
schema.hook("map_headers")(without_framing_headers)


def test_the_fuzzed_document_is_the_one_the_web_serves(fuzz_stack: Stack) -> None:
    served = httpx.get(f"{fuzz_stack.url}/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == spec()


@schema.parametrize()
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_5xx_and_every_answer_matches_the_openapi_document(case: Any, fuzz_stack: Stack) -> None:
    case.call_and_validate(base_url=fuzz_stack.url, headers={"Authorization": f"Bearer {API_KEY}"}, checks=CHECKS)


def _api_routes() -> set[tuple[str, str]]:
    settings_ = load_settings(redis_url="redis://127.0.0.1:1/0", callback_secret="x", kling_relay_api_keys=["k"])
    found = set()
    for route in create_app(settings_).routes:
        if isinstance(route, Route) and route.path.startswith(("/v1/", "/callbacks/")):
            found |= {(method, route.path) for method in route.methods or () if method != "HEAD"}
    return found


def test_every_api_route_is_in_the_openapi_document_and_nothing_else(fuzz_stack: Stack) -> None:
    document = httpx.get(f"{fuzz_stack.url}/openapi.json", timeout=10).json()
    assert document["openapi"].startswith("3.1")
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        if path.startswith(("/v1/", "/callbacks/"))
        for method in operations
    }
    assert documented == _api_routes()


def test_request_bodies_are_the_validating_models(fuzz_stack: Stack) -> None:
    document = httpx.get(f"{fuzz_stack.url}/openapi.json", timeout=10).json()
    bodies = {
        f"{method.upper()} {path}": re.sub(r".*/", "", operation["requestBody"]["content"]["application/json"]["schema"]["$ref"])
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    }
    assert bodies == {
        "POST /v1/tasks": "TaskRequest",
        "POST /v1/subscriptions": "SubscriptionCreate",
        "PATCH /v1/subscriptions/{sub_id}": "SubscriptionUpdate",
        "POST /v1/subscriptions/{sub_id}/replay": "ReplayRequest",
        "POST /v1/subscriptions/{sub_id}/test": "SendTestEvent",
        "POST /callbacks/apikley/{task_id}/{token}": "ApikleyCallback",
        "POST /callbacks/novita/{task_id}/{token}": "NovitaWebhook",
    }
    # The task request carries its provider-independent limits straight from pydantic.
    task_request = document["components"]["schemas"]["TaskRequest"]
    assert task_request["additionalProperties"] is False
    assert task_request["required"] == ["prompt"]
