"""The public `/v1/tasks` API: authentication, validation, idempotency, reading and listing.

Every rejected request must answer a JSON error naming what was wrong and must leave no trace:
no task in the API, no `kr:task:*` key in Redis.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.stack.conftest import API_KEY, Simulator, Stack, wait_for, wait_for_status

SECOND_API_KEY = "test-key-2"
STACK_ENV = {"KLING_RELAY_API_KEYS": f"{API_KEY},{SECOND_API_KEY}"}

MIB = 1024 * 1024
TERMINAL = {"succeeded", "failed"}


def unique_prompt(label: str) -> str:
    return f"{label} {uuid.uuid4().hex}"


def all_tasks(api: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    """Every task the list endpoint returns, following the cursor to the end."""
    tasks: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {"limit": 100, **params, **({"cursor": cursor} if cursor else {})}
        response = api.get("/v1/tasks", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        tasks.extend(page["data"])
        cursor = page["next_cursor"]
        if not cursor:
            return tasks


@dataclass(frozen=True)
class Footprint:
    """What a request could have created: tasks in the API, task and idempotency keys in Redis."""

    api_task_ids: tuple[str, ...]
    redis_keys: frozenset[bytes]

    @classmethod
    def take(cls, stack: Stack, api: httpx.Client) -> Footprint:
        redis = stack.redis()
        keys = {*redis.keys("kr:task:*"), *redis.keys("kr:idem:*")}
        return cls(tuple(sorted(t["id"] for t in all_tasks(api))), frozenset(keys))


def assert_error(response: httpx.Response, status: int, code: str, field_name: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    if field_name is not None:
        assert field_name in error["fields"], error
        assert error["fields"][field_name]
    return error


@pytest.fixture
def quiet_sim(sim: Simulator) -> Simulator:
    """Provider tasks that never finish, so tasks accepted here stay put and cost nothing."""
    sim.configure(queue_s=3600, callback_mode="drop")
    return sim


# --- authentication ---------------------------------------------------------------------------

V1_ROUTES = [
    ("POST", "/v1/tasks"),
    ("GET", "/v1/tasks"),
    ("GET", "/v1/tasks/task_000000000doesnotexist00000"),
    ("GET", "/v1/tasks/task_000000000doesnotexist00000/events"),
]

BAD_AUTHORIZATION = {
    "missing": None,
    "wrong key": "Bearer not-a-key",
    "bearer without a key": "Bearer",
    "key without scheme": API_KEY,
    "basic scheme": f"Basic {API_KEY}",
    "prefix of a key": f"Bearer {API_KEY[:-1]}",
}


@pytest.mark.parametrize("authorization", BAD_AUTHORIZATION.values(), ids=BAD_AUTHORIZATION.keys())
@pytest.mark.parametrize(("method", "path"), V1_ROUTES, ids=[f"{m} {p.split('/', 3)[-1]}" for m, p in V1_ROUTES])
def test_v1_routes_answer_401_without_a_valid_bearer_key(
    stack: Stack, api: httpx.Client, method: str, path: str, authorization: str | None
) -> None:
    before = Footprint.take(stack, api)
    headers = {"Authorization": authorization} if authorization is not None else {}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=10) as anonymous:
        response = anonymous.request(method, path, json={"prompt": "a fox"} if method == "POST" else None)
    assert_error(response, 401, "unauthorized")
    assert Footprint.take(stack, api) == before


@pytest.mark.parametrize("api_key", [API_KEY, SECOND_API_KEY])
def test_every_configured_api_key_is_accepted(stack: Stack, api_key: str) -> None:
    with stack.client(api_key) as client:
        assert client.get("/v1/tasks", params={"limit": 1}).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_probes_need_no_api_key(stack: Stack, path: str) -> None:
    response = httpx.get(f"{stack.url}{path}", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"


# --- creating a task --------------------------------------------------------------------------


def test_create_answers_202_with_a_queued_task(api: httpx.Client, quiet_sim: Simulator) -> None:
    body = {"prompt": unique_prompt("a red fox"), "metadata": {"order": 42, "tags": ["a", "b"]}}
    response = api.post("/v1/tasks", json=body)

    assert response.status_code == 202, response.text
    task = response.json()
    assert task["id"].startswith("task_")
    assert task["status"] == "queued"
    assert task["provider"] == "apikley"  # `auto` resolves to DEFAULT_PROVIDER
    assert task["provider_task_id"] is None
    assert task["result"] is None and task["error"] is None
    assert task["input"] == {
        "prompt": body["prompt"],
        "negative_prompt": None,
        "duration": "5",
        "aspect_ratio": "16:9",
        "cfg_scale": None,
    }
    assert task["metadata"] == body["metadata"]
    assert task["created_at"] and task["updated_at"]

    stored = api.get(f"/v1/tasks/{task['id']}").json()
    assert stored["id"] == task["id"]
    assert stored["input"] == task["input"]
    assert stored["metadata"] == body["metadata"]


ACCEPTED = {
    "apikley prompt at 5000": {"provider": "apikley", "prompt": "p" * 5000},
    "apikley negative at 500": {"provider": "apikley", "prompt": "p", "negative_prompt": "n" * 500},
    "auto uses apikley limits": {"provider": "auto", "prompt": "p" * 5000},
    "novita prompt at 2500": {"provider": "novita", "prompt": "p" * 2500},
    "novita negative at 2500": {"provider": "novita", "prompt": "p", "negative_prompt": "n" * 2500},
    "duration 10": {"prompt": "p", "duration": "10"},
    "duration as a number": {"prompt": "p", "duration": 5},
    "aspect 9:16": {"prompt": "p", "aspect_ratio": "9:16"},
    "aspect 1:1": {"prompt": "p", "aspect_ratio": "1:1"},
    "cfg_scale 0": {"prompt": "p", "cfg_scale": 0},
    "cfg_scale 1": {"prompt": "p", "cfg_scale": 1},
    "cfg_scale 0.3": {"prompt": "p", "cfg_scale": 0.3},
    "metadata at 2048 bytes": {"prompt": "p", "metadata": {"k": "v" * 2040}},  # {"k":"…"} is 8 bytes more
    "webhook_url": {"prompt": "p", "webhook_url": "https://hooks.example.com/kling?x=1"},
}


@pytest.mark.parametrize("body", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_requests_within_every_limit_are_accepted(api: httpx.Client, quiet_sim: Simulator, body: dict[str, Any]) -> None:
    response = api.post("/v1/tasks", json=body)
    assert response.status_code == 202, response.text
    task = response.json()
    assert task["status"] == "queued"
    assert task["input"]["prompt"] == body["prompt"]
    assert task["input"]["duration"] == str(body.get("duration", "5"))
    if "cfg_scale" in body:
        assert task["input"]["cfg_scale"] == pytest.approx(body["cfg_scale"])
    if body.get("provider", "auto") != "auto":
        assert task["provider"] == body["provider"]


@dataclass(frozen=True)
class Rejected:
    status: int
    code: str
    field: str | None  # the field the error must name (None: the body as a whole is wrong)
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _over(size: int) -> bytes:
    """A syntactically valid JSON object of more than `size` bytes."""
    return json.dumps({"prompt": "p", "metadata": {"pad": "x" * size}}).encode()


def _chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), 64 * 1024):
        yield data[start : start + 64 * 1024]


REJECTED = {
    "apikley prompt over 5000": Rejected(422, "validation_error", "prompt", {"provider": "apikley", "prompt": "p" * 5001}),
    "apikley negative over 500": Rejected(
        422, "validation_error", "negative_prompt", {"provider": "apikley", "prompt": "p", "negative_prompt": "n" * 501}
    ),
    "auto prompt over apikley's 5000": Rejected(422, "validation_error", "prompt", {"prompt": "p" * 5001}),
    "novita prompt over 2500": Rejected(422, "validation_error", "prompt", {"provider": "novita", "prompt": "p" * 2501}),
    "novita negative over 2500": Rejected(
        422, "validation_error", "negative_prompt", {"provider": "novita", "prompt": "p", "negative_prompt": "n" * 2501}
    ),
    "empty prompt": Rejected(422, "validation_error", "prompt", {"prompt": ""}),
    "blank prompt": Rejected(422, "validation_error", "prompt", {"prompt": "   \n"}),
    "missing prompt": Rejected(422, "validation_error", "prompt", {"duration": "5"}),
    "prompt not a string": Rejected(422, "validation_error", "prompt", {"prompt": 123}),
    "duration 7": Rejected(422, "validation_error", "duration", {"prompt": "p", "duration": "7"}),
    "duration 15 as number": Rejected(422, "validation_error", "duration", {"prompt": "p", "duration": 15}),
    "duration boolean": Rejected(422, "validation_error", "duration", {"prompt": "p", "duration": True}),
    "aspect_ratio 4:3": Rejected(422, "validation_error", "aspect_ratio", {"prompt": "p", "aspect_ratio": "4:3"}),
    "cfg_scale above 1": Rejected(422, "validation_error", "cfg_scale", {"prompt": "p", "cfg_scale": 1.1}),
    "cfg_scale below 0": Rejected(422, "validation_error", "cfg_scale", {"prompt": "p", "cfg_scale": -0.1}),
    "cfg_scale not a 0.1 step": Rejected(422, "validation_error", "cfg_scale", {"prompt": "p", "cfg_scale": 0.55}),
    "cfg_scale not a number": Rejected(422, "validation_error", "cfg_scale", {"prompt": "p", "cfg_scale": "high"}),
    "cfg_scale boolean": Rejected(422, "validation_error", "cfg_scale", {"prompt": "p", "cfg_scale": True}),
    "unknown field": Rejected(422, "validation_error", "seed", {"prompt": "p", "seed": 7}),
    "unknown provider": Rejected(422, "validation_error", "provider", {"prompt": "p", "provider": "openai"}),
    "body is an array": Rejected(422, "validation_error", "body", ["prompt", "p"]),
    "body is a string": Rejected(422, "validation_error", "body", "a fox"),
    "body is null": Rejected(422, "validation_error", "body", None, content=b"null"),
    "metadata at 2049 bytes": Rejected(422, "validation_error", "metadata", {"prompt": "p", "metadata": {"k": "v" * 2041}}),
    "metadata not an object": Rejected(422, "validation_error", "metadata", {"prompt": "p", "metadata": ["a"]}),
    "webhook_url not a URL": Rejected(422, "validation_error", "webhook_url", {"prompt": "p", "webhook_url": "not a url"}),
    "webhook_url ftp": Rejected(422, "validation_error", "webhook_url", {"prompt": "p", "webhook_url": "ftp://example.com/h"}),
    "webhook_url with credentials": Rejected(
        422, "validation_error", "webhook_url", {"prompt": "p", "webhook_url": "https://u:p@example.com/h"}
    ),
    "webhook_url too long": Rejected(
        422, "validation_error", "webhook_url", {"prompt": "p", "webhook_url": "https://example.com/" + "a" * 2100}
    ),
    "webhook_url not a string": Rejected(422, "validation_error", "webhook_url", {"prompt": "p", "webhook_url": 5}),
    "invalid JSON": Rejected(400, "invalid_json", None, content=b'{"prompt": "p",'),
    "wrong content type": Rejected(
        415, "unsupported_media_type", None, content=b'{"prompt": "p"}', headers={"Content-Type": "text/plain"}
    ),
    "form content type": Rejected(
        415, "unsupported_media_type", None, content=b"prompt=p", headers={"Content-Type": "application/x-www-form-urlencoded"}
    ),
    "body over 1 MiB": Rejected(413, "payload_too_large", None, content=_over(MIB)),
    "Idempotency-Key over 255 chars": Rejected(
        400, "invalid_idempotency_key", None, {"prompt": "p"}, headers={"Idempotency-Key": "k" * 256}
    ),
    "empty Idempotency-Key": Rejected(400, "invalid_idempotency_key", None, {"prompt": "p"}, headers={"Idempotency-Key": ""}),
}


@pytest.mark.parametrize("case", REJECTED.values(), ids=REJECTED.keys())
def test_invalid_requests_are_rejected_naming_the_field_and_create_nothing(
    stack: Stack, api: httpx.Client, quiet_sim: Simulator, case: Rejected
) -> None:
    before = Footprint.take(stack, api)
    if case.content is not None:
        headers = {"Content-Type": "application/json", **case.headers}
        response = api.post("/v1/tasks", content=case.content, headers=headers)
    else:
        response = api.post("/v1/tasks", json=case.json, headers=case.headers)
    assert_error(response, case.status, case.code, case.field)
    assert Footprint.take(stack, api) == before


def test_oversized_body_without_content_length_is_rejected_while_streaming(
    stack: Stack, api: httpx.Client, quiet_sim: Simulator
) -> None:
    before = Footprint.take(stack, api)
    body = _over(MIB)
    response = api.post("/v1/tasks", content=_chunks(body), headers={"Content-Type": "application/json"})
    assert "content-length" not in response.request.headers  # sent chunked: the cap must hold anyway
    assert_error(response, 413, "payload_too_large")
    assert Footprint.take(stack, api) == before


# --- idempotency ------------------------------------------------------------------------------


def provider_tasks_for(sim: Simulator, prompt: str) -> list[dict[str, Any]]:
    def prompt_of(task: dict[str, Any]) -> Any:
        request = task["request"]
        return request.get("input", request).get("prompt")

    return [t for t in sim.tasks() if prompt_of(t) == prompt]


def test_same_idempotency_key_and_body_return_the_same_task_and_one_provider_task(
    api: httpx.Client, sim: Simulator
) -> None:
    prompt = unique_prompt("idempotent fox")
    key = {"Idempotency-Key": f"idem-{uuid.uuid4()}"}
    first = api.post("/v1/tasks", json={"prompt": prompt, "duration": "10", "aspect_ratio": "1:1"}, headers=key)
    # The same body with its keys in another order is the same request.
    second = api.post("/v1/tasks", json={"aspect_ratio": "1:1", "duration": "10", "prompt": prompt}, headers=key)

    assert first.status_code == 202, first.text
    assert second.status_code == 202, second.text
    assert second.json()["id"] == first.json()["id"]
    assert "idempotent-replayed" not in first.headers
    assert second.headers.get("idempotent-replayed") == "true"

    done = wait_for_status(api, first.json()["id"], TERMINAL)
    assert done["status"] == "succeeded", done
    third = api.post("/v1/tasks", json={"prompt": prompt, "duration": "10", "aspect_ratio": "1:1"}, headers=key)
    assert third.status_code == 202 and third.json()["id"] == done["id"]
    assert third.json()["status"] == "succeeded"  # a replay shows the task as it is now
    assert len(provider_tasks_for(sim, prompt)) == 1
    assert [t["id"] for t in all_tasks(api) if t["input"]["prompt"] == prompt] == [done["id"]]


def test_same_idempotency_key_with_another_body_is_a_409_that_creates_nothing(
    stack: Stack, api: httpx.Client, quiet_sim: Simulator
) -> None:
    key = {"Idempotency-Key": f"idem-{uuid.uuid4()}"}
    first = api.post("/v1/tasks", json={"prompt": unique_prompt("first")}, headers=key)
    assert first.status_code == 202, first.text

    before = Footprint.take(stack, api)
    conflict = api.post("/v1/tasks", json={"prompt": unique_prompt("second")}, headers=key)
    assert_error(conflict, 409, "idempotency_conflict")
    assert Footprint.take(stack, api) == before


def test_idempotency_keys_are_scoped_to_the_api_key(stack: Stack, api: httpx.Client, quiet_sim: Simulator) -> None:
    key = {"Idempotency-Key": f"shared-{uuid.uuid4()}"}
    body = {"prompt": unique_prompt("scoped")}
    with stack.client(SECOND_API_KEY) as other:
        mine = api.post("/v1/tasks", json=body, headers=key)
        theirs = other.post("/v1/tasks", json=body, headers=key)
        theirs_again = other.post("/v1/tasks", json=body, headers=key)
        theirs_other_body = other.post("/v1/tasks", json={"prompt": unique_prompt("other")}, headers=key)

    assert mine.status_code == theirs.status_code == 202
    assert theirs.json()["id"] != mine.json()["id"]
    assert "idempotent-replayed" not in theirs.headers
    assert theirs_again.json()["id"] == theirs.json()["id"]
    assert theirs_other_body.status_code == 409  # the key is theirs now, bound to their body


def test_concurrent_requests_with_one_idempotency_key_create_one_task(
    stack: Stack, api: httpx.Client, quiet_sim: Simulator
) -> None:
    prompt = unique_prompt("racing fox")
    key = {"Idempotency-Key": f"race-{uuid.uuid4()}"}

    def post(_: int) -> httpx.Response:
        with stack.client() as client:
            return client.post("/v1/tasks", json={"prompt": prompt}, headers=key)

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(post, range(8)))

    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(1 for r in responses if "idempotent-replayed" not in r.headers) == 1
    assert len([t for t in all_tasks(api) if t["input"]["prompt"] == prompt]) == 1


# --- reading, listing, events -----------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/events"])
def test_unknown_task_is_404(api: httpx.Client, suffix: str) -> None:
    assert_error(api.get(f"/v1/tasks/task_000000000doesnotexist00000{suffix}"), 404, "not_found")


def test_list_pages_through_every_task_once_newest_first(api: httpx.Client, quiet_sim: Simulator) -> None:
    tag = uuid.uuid4().hex
    created = []
    for n in range(5):
        response = api.post("/v1/tasks", json={"prompt": f"page {tag} {n}"})
        assert response.status_code == 202, response.text
        created.append(response.json()["id"])

    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        page = api.get("/v1/tasks", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        pages += 1
        assert len(page["data"]) <= 2
        seen.extend(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(page["data"]) == 2

    ids = [t["id"] for t in seen]
    assert len(ids) == len(set(ids)), "a task appeared on two pages"
    assert ids == sorted(ids, reverse=True)
    created_at = [t["created_at"] for t in seen]
    assert created_at == sorted(created_at, reverse=True)
    assert [i for i in ids if i in created] == list(reversed(created))
    assert pages == (len(ids) + 1) // 2
    assert sorted(ids) == sorted(t["id"] for t in all_tasks(api))


def test_list_filters_by_status_across_pages(api: httpx.Client, sim: Simulator) -> None:
    tag = uuid.uuid4().hex
    good = [api.post("/v1/tasks", json={"prompt": f"good {tag} {n}"}).json()["id"] for n in range(2)]
    bad = [api.post("/v1/tasks", json={"prompt": f"bad {tag} {n} [sim:fail]"}).json()["id"] for n in range(2)]
    for task_id in good + bad:
        wait_for_status(api, task_id, TERMINAL)

    # Terminal statuses are final, so these pages cannot race a transition.
    by_status = {status: all_tasks(api, status=status, limit=1) for status in ("succeeded", "failed")}
    for status, tasks in by_status.items():
        assert all(t["status"] == status for t in tasks), status
        assert len({t["id"] for t in tasks}) == len(tasks)
    succeeded = {t["id"] for t in by_status["succeeded"]}
    failed = {t["id"] for t in by_status["failed"]}
    assert set(good) <= succeeded and not set(good) & failed
    assert set(bad) <= failed and not set(bad) & succeeded
    assert not {*good, *bad} & {t["id"] for t in all_tasks(api, status="queued")}


@pytest.mark.parametrize(
    ("params", "field_name"),
    [
        ({"status": "done"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "ten"}, "limit"),
    ],
    ids=["unknown status", "limit 0", "limit 101", "limit not a number"],
)
def test_list_rejects_bad_query_parameters(api: httpx.Client, params: dict[str, Any], field_name: str) -> None:
    assert_error(api.get("/v1/tasks", params=params), 400, "validation_error", field_name)


@pytest.mark.parametrize(
    ("prompt", "final", "types"),
    [
        ("a fox", "succeeded", ["task.submitted", "task.succeeded"]),
        ("a fox [sim:fail]", "failed", ["task.submitted", "task.failed"]),
    ],
    ids=["succeeded", "failed"],
)
def test_events_list_each_transition_with_the_task_as_it_became(
    api: httpx.Client, sim: Simulator, prompt: str, final: str, types: list[str]
) -> None:
    task_id = api.post("/v1/tasks", json={"prompt": unique_prompt(prompt)}).json()["id"]
    done = wait_for_status(api, task_id, TERMINAL)
    assert done["status"] == final, done

    events = wait_for(lambda: api.get(f"/v1/tasks/{task_id}/events").json()["data"], what="events")
    assert [e["type"] for e in events] == types
    assert [e["sequence"] for e in events] == list(range(1, len(types) + 1))
    assert len({e["id"] for e in events}) == len(events)
    for event in events:
        assert event["id"].startswith("evt_")
        assert event["data"]["id"] == task_id
        assert event["data"]["status"] == event["type"].removeprefix("task.")
        assert event["data"]["sequence"] == event["sequence"]
    assert events[-1]["data"] == done
