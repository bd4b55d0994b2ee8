"""`/v1/subscriptions` and `/v1/deliveries` as a client sees them: shapes, validation, SSRF checks
at create/update (private addresses refused, as in production), secrets shown once, 404s."""

from __future__ import annotations

import time
from datetime import datetime

import httpx
import pytest

from tests.stack.conftest import Stack

STACK_ENV = {"ALLOW_PRIVATE_WEBHOOKS": "false", "WEBHOOK_SECRET_GRACE_S": "600"}
PUBLIC = "https://hooks.example.com/kling"


def _create(api: httpx.Client, **body: object) -> dict[str, object]:
    response = api.post("/v1/subscriptions", json={"url": PUBLIC, **body})
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created


def test_create_returns_the_secret_once_and_get_never_shows_it(api: httpx.Client) -> None:
    response = api.post(
        "/v1/subscriptions",
        json={"url": PUBLIC, "event_types": ["task.succeeded"], "description": "prod", "metadata": {"team": "video"}},
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["id"].startswith("sub_") and response.headers["location"] == f"/v1/subscriptions/{created['id']}"
    assert created["secret"].startswith("whsec_")
    assert {k: created[k] for k in ("url", "event_types", "description", "metadata", "enabled")} == {
        "url": PUBLIC, "event_types": ["task.succeeded"], "description": "prod", "metadata": {"team": "video"}, "enabled": True}
    shown = api.get(f"/v1/subscriptions/{created['id']}").json()
    assert "secret" not in shown and "secrets" not in shown
    # Reads add the subscription's health: nothing delivered yet (tests/stack/test_subscription_health.py).
    assert shown.pop("health") == {"success_at": None, "streak": 0, "failure_at": None, "failure": None, "failing_since": None}
    assert shown == {k: v for k, v in created.items() if k != "secret"}
    assert _create(api)["event_types"] == ["*"]


def test_list_pages_newest_first(api: httpx.Client) -> None:
    ids = [_create(api)["id"] for _ in range(3)]
    first = api.get("/v1/subscriptions", params={"limit": 2}).json()
    assert [s["id"] for s in first["data"]] == ids[::-1][:2]
    second = api.get("/v1/subscriptions", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert second["data"][0]["id"] == ids[0]
    assert all("secrets" not in s for s in first["data"] + second["data"])
    assert api.get("/v1/subscriptions", params={"limit": 0}).status_code == 400


def test_update_changes_only_what_is_sent_and_disable_enable_round_trips(api: httpx.Client) -> None:
    sub = _create(api, description="before")
    patched = api.patch(f"/v1/subscriptions/{sub['id']}", json={"event_types": ["task.failed"], "enabled": False})
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["event_types"] == ["task.failed"] and body["description"] == "before"
    assert body["enabled"] is False and body["disabled_reason"] == "manual" and body["disabled_at"]
    enabled = api.patch(f"/v1/subscriptions/{sub['id']}", json={"enabled": True}).json()
    assert enabled["enabled"] and enabled["disabled_reason"] is None and enabled["disabled_at"] is None
    moved = api.patch(f"/v1/subscriptions/{sub['id']}", json={"url": "https://other.example.org/h"}).json()
    assert moved["url"] == "https://other.example.org/h"


def test_delete_then_everything_about_it_is_404(api: httpx.Client) -> None:
    sub = _create(api)
    assert api.delete(f"/v1/subscriptions/{sub['id']}").status_code == 204
    for method, path in [("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/rotate-secret"), ("GET", "/deliveries")]:
        response = api.request(method, f"/v1/subscriptions/{sub['id']}{path}", json={} if method == "PATCH" else None)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook", "http://2130706433/hook", "http://0x7f000001/hook", "http://[::1]/hook",
        "http://[::ffff:10.0.0.1]/hook", "http://10.0.0.8/hook", "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data", "http://localhost:8000/hook", "http://db.internal/hook",
        "ftp://example.com/hook", "https://user:pw@example.com/hook", "not a url",
    ],
)
def test_unsafe_urls_are_refused_at_create_and_update(api: httpx.Client, url: str) -> None:
    created = api.post("/v1/subscriptions", json={"url": url})
    assert created.status_code == 422, created.text
    assert created.json()["error"]["code"] == "validation_error" and "url" in created.json()["error"]["fields"]
    sub = _create(api)
    patched = api.patch(f"/v1/subscriptions/{sub['id']}", json={"url": url})
    assert patched.status_code == 422 and "url" in patched.json()["error"]["fields"]
    assert api.get(f"/v1/subscriptions/{sub['id']}").json()["url"] == PUBLIC


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": PUBLIC, "event_types": ["task.succeded"]}, "event_types"),
        ({"url": PUBLIC, "event_types": []}, "event_types"),
        ({"url": PUBLIC, "colour": "red"}, "colour"),
        ({"url": PUBLIC, "metadata": {"x": "y" * 3000}}, "metadata"),
        ({"event_types": ["*"]}, "url"),
        ({"url": PUBLIC, "enabled": "maybe"}, "enabled"),
    ],
)
def test_invalid_bodies_name_the_field(api: httpx.Client, body: dict[str, object], field: str) -> None:
    response = api.post("/v1/subscriptions", json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["error"]["fields"]


def test_requests_without_a_valid_key_are_refused(stack: Stack) -> None:
    for key in (None, "wrong-key"):
        with stack.client(api_key=key) as anonymous:
            assert anonymous.get("/v1/subscriptions").status_code == 401
            assert anonymous.post("/v1/subscriptions", json={"url": PUBLIC}).status_code == 401
            assert anonymous.get("/v1/webhooks/default/secret").status_code == 401


def test_rotation_returns_a_new_secret_and_when_the_old_one_stops(api: httpx.Client) -> None:
    sub = _create(api)
    rotated = api.post(f"/v1/subscriptions/{sub['id']}/rotate-secret")
    assert rotated.status_code == 200
    body = rotated.json()
    assert body["secret"].startswith("whsec_") and body["secret"] != sub["secret"]
    expires = datetime.fromisoformat(body["previous_secret_expires_at"]).timestamp()
    assert abs(expires - (time.time() + 600)) < 30


def test_deliveries_and_replay_validation(api: httpx.Client) -> None:
    sub = _create(api)
    assert api.get(f"/v1/subscriptions/{sub['id']}/deliveries").json() == {"data": [], "next_cursor": None}
    bad_status = api.get(f"/v1/subscriptions/{sub['id']}/deliveries", params={"status": "lost"})
    assert bad_status.status_code == 400 and "status" in bad_status.json()["error"]["fields"]

    replay = f"/v1/subscriptions/{sub['id']}/replay"
    assert api.post(replay, json={}).status_code == 422
    backwards = api.post(replay, json={"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"})
    assert backwards.status_code == 422 and "until" in backwards.json()["error"]["fields"]
    ok = api.post(replay, json={"since": "2030-01-01T00:00:00Z", "failed_only": True})
    assert ok.status_code == 202 and ok.json() == {"replayed": 0, "truncated": False}
    api.patch(f"/v1/subscriptions/{sub['id']}", json={"enabled": False})
    assert api.post(replay, json={"since": "2030-01-01T00:00:00Z"}).status_code == 409

    for method, path in [("GET", "/v1/deliveries/dlv_missing"), ("POST", "/v1/deliveries/dlv_missing/retry")]:
        response = api.request(method, path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_the_default_webhook_secret_is_stable(api: httpx.Client) -> None:
    first = api.get("/v1/webhooks/default/secret").json()["secret"]
    assert first.startswith("whsec_") and api.get("/v1/webhooks/default/secret").json()["secret"] == first
