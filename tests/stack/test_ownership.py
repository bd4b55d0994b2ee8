"""Each API key's data is its own: tasks, subscriptions, deliveries, replays and the default
webhook secret belong to the key that made them; any other key gets 404; admin keys see and
manage everything, including data from before ownership was recorded. Over HTTP, with real
web and worker processes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from service.domain.clock import now_iso
from service.domain.ids import new_id
from service.domain.tasks import Task, TaskInput
from service.keys import index_key, task_key
from tests.stack.conftest import Simulator, Stack, wait_for
from tests.stack.receivers import (
    Receiver,
    deliveries_of,
    run_task,
    serve_receiver,
    subscribe,
    verify_both,
)
from tests.stack.stacks import owned_stack

ALICE, BOB, ADMIN = "key-alice-0123456789", "key-bob-9876543210", "key-admin-5555555555"


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass
class World:
    stack: Stack
    receiver: Receiver
    alice_task: dict[str, Any]
    bob_task: dict[str, Any]
    alice_sub: dict[str, Any]
    bob_sub: dict[str, Any]
    admin_sub: dict[str, Any]

    def client(self, key: str) -> httpx.Client:
        return self.stack.client(key)


@pytest.fixture(scope="module")
def world(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    simulator.reset()
    env = {"KLING_RELAY_API_KEYS": f"{ALICE},{BOB}", "KLING_RELAY_ADMIN_KEYS": ADMIN}
    with owned_stack(tmp_path_factory.mktemp("ownership"), simulator, env) as owned, serve_receiver() as receiver:
        stack = owned.stack
        with stack.client(ALICE) as alice, stack.client(BOB) as bob, stack.client(ADMIN) as admin:
            alice_sub = subscribe(alice, receiver.answer("alice"))
            bob_sub = subscribe(bob, receiver.answer("bob"))
            admin_sub = subscribe(admin, receiver.answer("admin"))
            alice_task = run_task(alice, prompt="alice's fox", webhook_url=receiver.answer("alice-own"))
            bob_task = run_task(bob, prompt="bob's fox")
            wait_for(
                lambda: len(deliveries_of(alice, alice_sub["id"])) >= 2 and len(deliveries_of(bob, bob_sub["id"])) >= 2,
                what="deliveries",
            )
        yield World(stack, receiver, alice_task, bob_task, alice_sub, bob_sub, admin_sub)


def test_tasks_and_subscriptions_name_their_owner_by_key_id_never_the_key(world: World) -> None:
    assert world.alice_task["owner"] == key_id(ALICE)
    assert world.alice_sub["owner"] == key_id(ALICE)
    redis = world.stack.redis()
    for key in redis.scan_iter(match="kr:*"):
        assert ALICE.encode() not in key and BOB.encode() not in key
        if redis.type(key) == b"string":
            value = redis.get(key) or b""
            assert ALICE.encode() not in value and BOB.encode() not in value and ADMIN.encode() not in value


OTHERS_PATHS = {
    "task": ("GET", "/v1/tasks/{alice_task}"),
    "task events": ("GET", "/v1/tasks/{alice_task}/events"),
    "task video": ("GET", "/v1/tasks/{alice_task}/video"),
    "subscription": ("GET", "/v1/subscriptions/{alice_sub}"),
    "subscription update": ("PATCH", "/v1/subscriptions/{alice_sub}"),
    "subscription rotate": ("POST", "/v1/subscriptions/{alice_sub}/rotate-secret"),
    "subscription deliveries": ("GET", "/v1/subscriptions/{alice_sub}/deliveries"),
    "subscription replay": ("POST", "/v1/subscriptions/{alice_sub}/replay"),
    "subscription delete": ("DELETE", "/v1/subscriptions/{alice_sub}"),
    "delivery": ("GET", "/v1/deliveries/{alice_delivery}"),
    "delivery retry": ("POST", "/v1/deliveries/{alice_delivery}/retry"),
}
BODIES = {"PATCH": {"url": "http://127.0.0.1:9/stolen"}, "POST": {"since": "2000-01-01T00:00:00Z"}}


@pytest.mark.parametrize(("method", "template"), OTHERS_PATHS.values(), ids=OTHERS_PATHS.keys())
def test_another_keys_data_does_not_exist_for_a_key(world: World, method: str, template: str) -> None:
    with world.client(ALICE) as alice, world.client(BOB) as bob:
        [delivery, *_] = deliveries_of(alice, world.alice_sub["id"])
        ids = {"alice_task": world.alice_task["id"], "alice_sub": world.alice_sub["id"], "alice_delivery": delivery["id"]}
        path = template.format(**ids)
        before = alice.get(f"/v1/subscriptions/{ids['alice_sub']}").json()
        body = BODIES.get(method) if not path.endswith(("rotate-secret", "retry")) else None
        refused = bob.request(method, path, json=body)
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"]["code"] == "not_found"
        # Nothing changed: the subscription is as it was, its secret still verifies.
        assert alice.get(f"/v1/subscriptions/{ids['alice_sub']}").json() == before


def test_lists_show_a_key_its_own_and_an_admin_everything(world: World) -> None:
    with world.client(ALICE) as alice, world.client(BOB) as bob, world.client(ADMIN) as admin:
        def task_ids(api: httpx.Client) -> set[str]:
            return {t["id"] for t in api.get("/v1/tasks", params={"limit": 100}).json()["data"]}

        def sub_ids(api: httpx.Client) -> set[str]:
            return {s["id"] for s in api.get("/v1/subscriptions", params={"limit": 100}).json()["data"]}

        assert task_ids(alice) == {world.alice_task["id"]}
        assert task_ids(bob) == {world.bob_task["id"]}
        assert {world.alice_task["id"], world.bob_task["id"]} <= task_ids(admin)
        assert task_ids(alice) == {t["id"] for t in alice.get("/v1/tasks", params={"status": "succeeded"}).json()["data"]}
        assert sub_ids(alice) == {world.alice_sub["id"]}
        assert sub_ids(bob) == {world.bob_sub["id"]}
        assert {world.alice_sub["id"], world.bob_sub["id"], world.admin_sub["id"]} <= sub_ids(admin)
        # An admin reads and manages another key's things.
        assert admin.get(f"/v1/tasks/{world.alice_task['id']}").status_code == 200
        assert admin.get(f"/v1/subscriptions/{world.bob_sub['id']}/deliveries").status_code == 200


def test_a_subscription_receives_its_own_keys_events_and_an_admins_everyones(world: World) -> None:
    def tasks_seen(path: str, secret: str) -> set[str]:
        return {verify_both(secret, r)["data"]["id"] for r in world.receiver.received(path)}

    wait_for(lambda: len(tasks_seen("admin", world.admin_sub["secret"])) >= 2, what="the admin's deliveries")
    assert tasks_seen("alice", world.alice_sub["secret"]) == {world.alice_task["id"]}
    assert tasks_seen("bob", world.bob_sub["secret"]) == {world.bob_task["id"]}
    assert {world.alice_task["id"], world.bob_task["id"]} <= tasks_seen("admin", world.admin_sub["secret"])


def test_a_replay_never_reaches_another_keys_events(world: World) -> None:
    with world.client(BOB) as bob:
        before = len(world.receiver.received("bob"))
        replayed = bob.post(f"/v1/subscriptions/{world.bob_sub['id']}/replay", json={"since": "2000-01-01T00:00:00Z"})
        assert replayed.status_code == 202, replayed.text
        wait_for(lambda: len(world.receiver.received("bob")) >= before + replayed.json()["replayed"], what="the replay")
    seen = {verify_both(world.bob_sub["secret"], r)["data"]["id"] for r in world.receiver.received("bob")}
    assert seen == {world.bob_task["id"]}


def test_each_key_has_its_own_default_webhook_secret(world: World) -> None:
    with world.client(ALICE) as alice, world.client(BOB) as bob:
        alice_secret = alice.get("/v1/webhooks/default/secret").json()["secret"]
        bob_secret = bob.get("/v1/webhooks/default/secret").json()["secret"]
    assert alice_secret != bob_secret
    [first, *_] = world.receiver.wait_for_count("alice-own", 1)
    assert Webhook(alice_secret).verify(first.body, first.headers)["data"]["id"] == world.alice_task["id"]
    with pytest.raises(WebhookVerificationError):
        Webhook(bob_secret).verify(first.body, first.headers)


def test_tasks_from_before_ownership_are_the_admins(world: World) -> None:
    # As an upgrade finds them: stored with no owner, listed only in the everyone index. Its id is
    # fresh, so the retention sweep, which trims index entries by id time, leaves it be.
    now = now_iso()
    legacy = Task(id=new_id("task"), provider="apikley", input=TaskInput(prompt="old"), created_at=now, updated_at=now)
    redis = world.stack.redis()
    redis.set(task_key(legacy.id), legacy.dumps())
    redis.zadd(index_key(None), {legacy.id: 0})
    redis.zadd(index_key(legacy.status), {legacy.id: 0})
    try:
        with world.client(ALICE) as alice, world.client(ADMIN) as admin:
            assert alice.get(f"/v1/tasks/{legacy.id}").status_code == 404
            assert admin.get(f"/v1/tasks/{legacy.id}").json()["owner"] is None
            assert legacy.id in {t["id"] for t in admin.get("/v1/tasks", params={"limit": 100}).json()["data"]}
    finally:
        redis.delete(task_key(legacy.id))
        redis.zrem(index_key(None), legacy.id)
        redis.zrem(index_key(legacy.status), legacy.id)


def test_the_dashboard_shows_a_key_its_own_tasks_only(world: World) -> None:
    def page(key: str, path: str = "/dashboard") -> httpx.Response:
        return httpx.get(f"{world.stack.url}{path}", headers={"Authorization": f"Bearer {key}"})

    alice_id, bob_id = world.alice_task["id"], world.bob_task["id"]
    assert alice_id in page(ALICE).text and bob_id not in page(ALICE).text
    assert bob_id in page(BOB).text and alice_id not in page(BOB).text
    assert alice_id in page(ADMIN).text and bob_id in page(ADMIN).text
    assert page(BOB, f"/dashboard/tasks/{alice_id}").status_code == 404
    # Alice's own task page lists deliveries to her subscriptions, never to the admin's.
    alice_page = page(ALICE, f"/dashboard/tasks/{alice_id}").text
    assert world.receiver.url("alice") in alice_page and world.receiver.url("admin") not in alice_page
