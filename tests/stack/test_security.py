"""Security on the real processes: every `/v1/*` route wants a key (the list comes from the app's
own route table, so a new route is covered the day it is added); no secret or key reaches a log
line, an error body or Redis; a callback token opens one task only; every route caps its body;
task creation is rate limited per API key.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from starlette.routing import Route

from service.app import create_app
from service.domain.tokens import callback_token
from service.ratelimit import take
from service.routes.openapi import spec
from service.settings import load_settings
from service.simulator.app import create_simulator_app
from tests.stack.conftest import ServedApp, Simulator, Stack, wait_for, wait_for_status
from tests.stack.receivers import Receiver, serve_receiver
from tests.stack.stacks import owned_stack

KEY = f"rk_live_{secrets.token_hex(12)}"
OTHER_KEY = f"rk_live_{secrets.token_hex(12)}"
CALLBACK_SECRET = f"cbsecret_{secrets.token_hex(16)}"
PROVIDER_KEY = f"pk_{secrets.token_hex(16)}"
MIB = 1024 * 1024
BODY_METHODS = {"POST", "PUT", "PATCH"}


def app_routes() -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, read from its route table."""
    settings = load_settings(redis_url="redis://127.0.0.1:1/0", callback_secret="x", kling_relay_api_keys=["k"])
    found = set()
    for route in create_app(settings).routes:
        if isinstance(route, Route):
            found |= {(method, route.path) for method in route.methods or () if method != "HEAD"}
    return sorted(found)


V1_ROUTES = [(m, p) for m, p in app_routes() if p.startswith("/v1/")]
BODY_ROUTES = [(m, p) for m, p in app_routes() if m in BODY_METHODS]
# Routes that parse a JSON body, per the OpenAPI document.
READS_BODY = {(m.upper(), p) for p, ops in spec()["paths"].items() for m, op in ops.items() if "requestBody" in op}


@dataclass
class World:
    """A stack with distinctive secrets, and real resources for every kind of path parameter."""

    stack: Stack
    receiver: Receiver
    provider: Simulator
    ids: dict[str, str] = field(default_factory=dict)
    # Secrets handed out on purpose (shown once): they may appear in those answers only.
    issued: list[str] = field(default_factory=list)
    answers: list[httpx.Response] = field(default_factory=list)

    def client(self, key: str | None = KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.stack.url, headers=headers, timeout=30, event_hooks={"response": [self._keep]})

    def _keep(self, response: httpx.Response) -> None:
        response.read()
        self.answers.append(response)

    def path(self, template: str) -> str:
        # A callback route's token is per task and per provider: /callbacks/{provider}/...
        provider = template.split("/")[2] if template.startswith("/callbacks/") else "apikley"
        ids = {**self.ids, "token": callback_token(CALLBACK_SECRET, self.ids["task_id"], provider)}
        return re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), "x"), template)

    def state(self) -> tuple[Any, ...]:
        """What an unauthorised or refused request could have changed."""
        redis = self.stack.redis()
        keys = sorted(
            k for pattern in ("kr:task:*", "kr:sub:*", "kr:dlv:*", "kr:idem:*", "kr:events:*") for k in redis.keys(pattern)
        )
        with self.client() as api:
            views = [
                api.get(self.path(p)).json()
                for p in ("/v1/tasks/{task_id}", "/v1/tasks/{task_id}/events", "/v1/deliveries/{delivery_id}")
            ]
        return keys, redis.get(f"kr:sub:{self.ids['sub_id']}"), views


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with ServedApp(create_simulator_app(api_key=PROVIDER_KEY)) as provider, serve_receiver() as receiver:
        env = {
            "KLING_RELAY_API_KEYS": f"{KEY},{OTHER_KEY}",
            "CALLBACK_SECRET": CALLBACK_SECRET,
            "APIKLEY_API_KEY": PROVIDER_KEY,
            "NOVITA_API_KEY": PROVIDER_KEY,
            "APIKLEY_CALLBACK_GRACE_S": "2",
            "MAX_BODY_BYTES": str(64 * 1024),
            "WEBHOOK_RETRY_SCHEDULE_S": "0,0.2",
        }
        with owned_stack(tmp_path_factory.mktemp("security"), Simulator(provider.url), env) as owned:
            w = World(owned.stack, receiver, Simulator(provider.url))
            exercise(w)
            yield w


def exercise(w: World) -> None:
    """Drive every path that handles a secret: tasks on both providers (callbacks, polls,
    failures), signed deliveries (good and failing), rotation, and refused requests."""
    with w.client() as api:
        sub = api.post("/v1/subscriptions", json={"url": w.receiver.answer("ok")}).json()
        failing = api.post("/v1/subscriptions", json={"url": w.receiver.answer("down", then=500)}).json()
        w.issued += [sub["secret"], failing["secret"]]
        rotated = api.post(f"/v1/subscriptions/{sub['id']}/rotate-secret").json()
        w.issued.append(rotated["secret"])
        w.issued.append(api.get("/v1/webhooks/default/secret").json()["secret"])
        bodies = [
            {"prompt": "a secret fox", "provider": "apikley", "webhook_url": w.receiver.answer("own")},
            {"prompt": "a secret owl", "provider": "novita"},
            {"prompt": "[sim:fail] a secret eel", "provider": "apikley"},
            {"prompt": "[sim:drop-callback] a secret elk", "provider": "apikley"},
        ]
        tasks = [
            api.post("/v1/tasks", json=body, headers={"Idempotency-Key": f"idem-{n}"}).json() for n, body in enumerate(bodies)
        ]
        for task in tasks:
            wait_for_status(api, task["id"], {"succeeded", "failed"}, timeout_s=30)
        wait_for(lambda: api.get(f"/v1/subscriptions/{sub['id']}/deliveries").json()["data"], what="a delivery")
        delivery = api.get(f"/v1/subscriptions/{sub['id']}/deliveries").json()["data"][0]
        w.ids.update(task_id=tasks[0]["id"], sub_id=sub["id"], delivery_id=delivery["id"])
        # Let every delivery settle (delivered, or failed after its two attempts) before tests
        # compare what exists before and after a request.
        events = sum(len(api.get(f"/v1/tasks/{t['id']}/events").json()["data"]) for t in tasks)

        def settled() -> bool:
            found = [
                d
                for s in (sub, failing)
                for d in api.get(f"/v1/subscriptions/{s['id']}/deliveries", params={"limit": 100}).json()["data"]
            ]
            return len(found) == 2 * events and all(d["status"] != "pending" for d in found)

        wait_for(settled, timeout_s=30, what="every delivery to settle")
        # Refusals of every kind, each of which might be tempted to echo what it was sent.
        api.post("/v1/tasks", json={"prompt": "", "webhook_url": f"http://{KEY}@10.0.0.1/"})
        api.post(f"/v1/subscriptions/{sub['id']}/replay", json={"since": "not a time"})
    for key in (OTHER_KEY[:-1], f"{KEY}x", CALLBACK_SECRET, PROVIDER_KEY):
        with w.client(key) as stranger:
            stranger.get("/v1/tasks")
    with w.client(None) as anonymous:
        task_id = w.ids["task_id"]
        anonymous.post(
            f"/callbacks/apikley/{task_id}/{callback_token('guess', task_id)}", json={"data": {"taskId": "t", "state": "success"}}
        )
        anonymous.post(
            w.path("/callbacks/apikley/{task_id}/{token}"), content=b"{not json", headers={"Content-Type": "application/json"}
        )
        anonymous.get("/dashboard", params={"key": KEY}, follow_redirects=False)
        anonymous.get("/dashboard", params={"key": OTHER_KEY[:-1]}, follow_redirects=False)


# --- every /v1 route needs a key -------------------------------------------------------------

BAD_AUTHORIZATION = {
    "none": None,
    "unknown key": "Bearer rk_live_unknown",
    "bearer without a key": "Bearer",
    "key without scheme": KEY,
    "basic scheme": f"Basic {KEY}",
    "prefix of a key": f"Bearer {KEY[:-1]}",
    "key plus a character": f"Bearer {KEY}0",
    "two keys": f"Bearer {KEY},{OTHER_KEY}",
}


@pytest.mark.parametrize("authorization", BAD_AUTHORIZATION.values(), ids=BAD_AUTHORIZATION.keys())
@pytest.mark.parametrize(("method", "path"), V1_ROUTES, ids=[f"{m} {p}" for m, p in V1_ROUTES])
def test_every_v1_route_refuses_a_request_without_a_valid_key_and_changes_nothing(
    world: World, method: str, path: str, authorization: str | None
) -> None:
    before = world.state()
    headers = {"Authorization": authorization} if authorization is not None else {}
    with httpx.Client(base_url=world.stack.url, headers=headers, timeout=30) as client:
        response = client.request(
            method, world.path(path), json={"prompt": "x", "url": "http://127.0.0.1:9/"} if method in BODY_METHODS else None
        )
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"
    assert world.state() == before


def test_the_route_table_has_v1_routes_to_check() -> None:
    # Guards the parametrization above against silently covering nothing.
    assert {("POST", "/v1/tasks"), ("GET", "/v1/subscriptions"), ("POST", "/v1/deliveries/{delivery_id}/retry")} <= set(V1_ROUTES)


# --- secrets stay secret ------------------------------------------------------------------------


def secrets_in_play(world: World) -> dict[str, str]:
    callback_tokens = {f"callback token of {t}": callback_token(CALLBACK_SECRET, t) for t in _task_ids(world)}
    issued = {f"whsec #{n}": s for n, s in enumerate(world.issued)}
    whsec_bodies = {f"whsec #{n} key part": s.removeprefix("whsec_") for n, s in enumerate(world.issued)}
    return {
        "API key": KEY,
        "second API key": OTHER_KEY,
        "CALLBACK_SECRET": CALLBACK_SECRET,
        "provider key": PROVIDER_KEY,
        **issued,
        **whsec_bodies,
        **callback_tokens,
    }


def _task_ids(world: World) -> list[str]:
    with world.client() as api:
        return [t["id"] for t in api.get("/v1/tasks", params={"limit": 100}).json()["data"]]


def test_no_secret_or_key_appears_in_any_log_line(world: World) -> None:
    logs = {path.name: path.read_text(errors="replace") for path in Path(world.stack.log_dir).glob("*.log")}
    assert {name.split("-")[0] for name in logs} >= {"web", "worker"}
    # (A callback's one line is its receiver's: the access log leaves callbacks out.)
    assert '"logger":"service.routes.callbacks"' in "".join(logs.values()), "the receiver was exercised"
    for label, secret in secrets_in_play(world).items():
        for name, text in logs.items():
            assert secret not in text, f"{label} appears in {name}"


def test_no_secret_or_key_appears_in_any_answer_except_where_it_is_issued(world: World) -> None:
    issuing = re.compile(r"/v1/subscriptions(/[^/]+/rotate-secret)?$|/v1/webhooks/default/secret$")
    in_play = secrets_in_play(world)
    answers = list(world.answers)
    assert any(r.status_code >= 400 for r in answers)
    for response in answers:
        body = response.text
        handed_out = (
            response.status_code < 300
            and response.request.method in ("POST", "GET")
            and issuing.search(response.request.url.path)
        )
        for label, secret in in_play.items():
            if handed_out and secret in world.issued + [s.removeprefix("whsec_") for s in world.issued]:
                continue
            assert secret not in body, (
                f"{label} in {response.request.method} {response.request.url.path} → {response.status_code}"
            )


def test_no_api_key_callback_secret_or_provider_key_is_stored_in_redis(world: World) -> None:
    redis = world.stack.redis()
    dump = b"".join(_dump(redis, key) for key in redis.scan_iter(count=1000))
    for label, secret in {
        "API key": KEY,
        "second API key": OTHER_KEY,
        "CALLBACK_SECRET": CALLBACK_SECRET,
        "provider key": PROVIDER_KEY,
    }.items():
        assert secret.encode() not in dump, label


def _dump(redis: Redis, key: Any) -> bytes:
    """A key and everything stored under it, as bytes."""
    kind = _bytes(redis.type(key))
    parts: list[Any] = [key]
    if kind == b"string":
        parts.append(redis.get(key) or b"")
    elif kind == b"list":
        parts += redis.lrange(key, 0, -1)
    elif kind == b"hash":
        parts += [item for pair in redis.hgetall(key).items() for item in pair]
    elif kind == b"set":
        parts += list(redis.smembers(key))
    elif kind == b"zset":
        parts += redis.zrange(key, 0, -1)
    return b"".join(_bytes(part) for part in parts)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


# --- callback tokens are per task ----------------------------------------------------------------

FORGED_TOKENS = {
    "another task's token": lambda victim, other: callback_token(CALLBACK_SECRET, other),
    "the right task under another secret": lambda victim, other: callback_token("not-the-secret", victim),
    "the right token, truncated": lambda victim, other: callback_token(CALLBACK_SECRET, victim)[:-1],
    "the right token, one character changed": lambda victim, other: _flip(callback_token(CALLBACK_SECRET, victim)),
    "the right token, upper-cased": lambda victim, other: callback_token(CALLBACK_SECRET, victim).upper(),
    "the CALLBACK_SECRET itself": lambda victim, other: CALLBACK_SECRET,
}


def _flip(token: str) -> str:
    return token[:-1] + ("A" if token[-1] != "A" else "B")


@pytest.fixture(scope="module")
def two_tasks(world: World) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two Apikley tasks the provider keeps queued and never calls back about."""
    world.provider.configure(queue_s=3600, callback_mode="drop")
    with world.client() as api:
        made = [api.post("/v1/tasks", json={"prompt": f"waiting {n}", "provider": "apikley"}).json() for n in range(2)]
        victim, other = (wait_for_status(api, t["id"], {"submitted", "running"}) for t in made)
    return victim, other


@pytest.mark.parametrize("forge", FORGED_TOKENS.values(), ids=FORGED_TOKENS.keys())
def test_a_callback_token_opens_its_own_task_only(
    world: World, two_tasks: tuple[dict[str, Any], dict[str, Any]], forge: Any
) -> None:
    victim, other = two_tasks
    body = {"code": 501, "msg": "forged", "data": {"taskId": victim["provider_task_id"], "state": "fail", "failMsg": "forged"}}
    with world.client() as api, world.client(None) as anonymous:
        before = api.get(f"/v1/tasks/{victim['id']}/events").json()
        response = anonymous.post(f"/callbacks/apikley/{victim['id']}/{forge(victim['id'], other['id'])}", json=body)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "invalid_token"
        assert api.get(f"/v1/tasks/{victim['id']}/events").json() == before


# --- body limits ---------------------------------------------------------------------------------


def _oversized() -> bytes:
    return b'{"pad": "' + b"x" * MIB + b'"}'


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES, ids=[f"{m} {p}" for m, p in BODY_ROUTES])
def test_every_route_refuses_a_body_over_the_limit_and_changes_nothing(world: World, method: str, path: str) -> None:
    before = world.state()
    with world.client() as api:
        response = api.request(method, world.path(path), content=_oversized(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert world.state() == before


@pytest.mark.parametrize(("method", "path"), sorted(READS_BODY), ids=[f"{m} {p}" for m, p in sorted(READS_BODY)])
def test_every_route_that_reads_a_body_stops_a_streamed_one_at_the_limit(world: World, method: str, path: str) -> None:
    def stream() -> Iterator[bytes]:
        data = _oversized()
        for start in range(0, len(data), 64 * 1024):
            yield data[start : start + 64 * 1024]

    before = world.state()
    with world.client() as api:
        response = api.request(method, world.path(path), content=stream(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert world.state() == before


# --- rate limit on task creation -------------------------------------------------------------------

LIMIT = 3


@pytest.fixture(scope="module")
def limited(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"KLING_RELAY_API_KEYS": f"{KEY},{OTHER_KEY}", "TASK_CREATE_RATE_PER_MIN": str(LIMIT)}
    with owned_stack(tmp_path_factory.mktemp("ratelimit"), simulator, env, workers=0) as owned:
        yield owned.stack


def test_task_creation_is_limited_per_api_key_with_retry_after(limited: Stack) -> None:
    with limited.client(KEY) as api, limited.client(OTHER_KEY) as other:
        for n in range(LIMIT):
            assert api.post("/v1/tasks", json={"prompt": f"within the limit {n}"}).status_code == 202
        refused = api.post("/v1/tasks", json={"prompt": "one too many"})
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        # Nothing was created, reading is not limited, and another key has its own allowance.
        assert len(api.get("/v1/tasks").json()["data"]) == LIMIT
        assert other.post("/v1/tasks", json={"prompt": "another key"}).status_code == 202


def test_the_window_slides_so_capacity_returns_as_old_creations_age_out(limited: Stack) -> None:
    redis = limited.redis()
    key = f"probe-{secrets.token_hex(4)}"
    assert [take(redis, key, limit=2, window_s=1).allowed for _ in range(3)] == [True, True, False]
    refused = take(redis, key, limit=2, window_s=1)
    assert not refused.allowed and refused.retry_after_s == 1
    wait_for(lambda: take(redis, key, limit=2, window_s=1).allowed, timeout_s=5, what="a slot to free up")
