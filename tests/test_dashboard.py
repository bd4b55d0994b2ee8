"""The dashboard: who may see it, what it shows, and (in headless Chromium) that a task's status
changes on screen as it moves, with no reload."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.browser import browser
from tests.conftest import API_KEY, Simulator, Stack, wait_for
from tests.receivers import Receiver, run_task, serve_receiver, subscribe
from tests.stacks import owned_stack


@pytest.fixture(scope="module")
def own(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    simulator.reset()  # to its defaults: an earlier module may have reconfigured it
    with owned_stack(tmp_path_factory.mktemp("dashboard"), simulator) as owned:
        yield owned.stack


def test_signing_in_with_the_key_sets_a_cookie_that_is_not_the_key(own: Stack) -> None:
    with httpx.Client(base_url=own.url) as browser_like:
        assert browser_like.get("/dashboard").status_code == 401
        assert browser_like.get("/dashboard", params={"key": "wrong"}).status_code == 401
        assert browser_like.get("/dashboard/stream").status_code == 401
        signed = browser_like.get("/dashboard", params={"key": API_KEY, "status": "failed"})
        assert signed.status_code == 303 and signed.headers["location"] == "/dashboard?status=failed"
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
        assert API_KEY not in cookie
        page = browser_like.get("/dashboard")
        assert page.status_code == 200 and "<table id=tasks>" in page.text
    with httpx.Client(base_url=own.url) as form_user:
        assert form_user.post("/dashboard/login", data={"key": "wrong"}).status_code == 401
        assert form_user.post("/dashboard/login", data={"key": API_KEY}).status_code == 303
        assert form_user.get("/dashboard").status_code == 200
    assert httpx.get(f"{own.url}/dashboard", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200


def test_what_users_typed_is_shown_escaped(own: Stack) -> None:
    with own.client() as api:
        task = api.post("/v1/tasks", json={"prompt": "<img src=x onerror=alert(1)> a fox", "provider": "novita"}).json()
    page = httpx.get(f"{own.url}/dashboard", headers={"Authorization": f"Bearer {API_KEY}"}).text
    assert f"id='task-{task['id']}'" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "<img src=x" not in page


def test_the_stream_sends_each_changed_row_as_rendered_html(own: Stack) -> None:
    with own.client() as api:
        task = run_task(api, prompt="a lighthouse for the stream")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream("GET", f"{own.url}/dashboard/stream", headers=headers, timeout=10) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: ") and task["id"] in line:
                row = orjson.loads(line.removeprefix("data: "))
                break
    assert row["id"] == task["id"]
    assert row["html"].startswith(f"<tr id='task-{task['id']}' data-status='succeeded'>")
    assert "submitted \u2192 succeeded" in row["html"]


def test_the_task_page_lists_its_events_and_deliveries(own: Stack) -> None:
    with serve_receiver() as receiver, own.client() as api:
        assert isinstance(receiver, Receiver)
        sub = subscribe(api, receiver.answer("dash"), ["task.succeeded"])
        task = run_task(api)
        receiver.wait_for_count("dash", 1)

        def page() -> str | None:
            text = httpx.get(f"{own.url}/dashboard/tasks/{task['id']}", headers={"Authorization": f"Bearer {API_KEY}"}).text
            return text if "s-delivered" in text else None

        text = wait_for(page, timeout_s=10, what="the delivery on the task page")
        api.delete(f"/v1/subscriptions/{sub['id']}")
    assert "task.submitted" in text and "task.succeeded" in text
    assert receiver.url("dash") in text
    assert "http-equiv=refresh" not in text  # settled: nothing left to watch


def test_a_tasks_status_changes_on_screen_without_a_reload(own: Stack, sim: Simulator) -> None:
    sim.configure(queue_s=1.0, generate_s=1.5)
    status_of = "const cell = document.querySelector('#task-' + arguments[0] + ' .status-cell'); return cell && cell.textContent;"
    with browser() as chromium:
        chromium.open(f"{own.url}/dashboard?key={API_KEY}")
        assert chromium.run("return document.location.pathname + document.location.search") == "/dashboard"
        wait_for(lambda: str(chromium.run("return document.getElementById('live').textContent")).endswith("live"), timeout_s=10, what="the stream")
        chromium.run("window.sameDocument = true;")
        with own.client() as api:
            task_id = api.post("/v1/tasks", json={"prompt": "a kite over dunes", "provider": "novita"}).json()["id"]
        seen: list[str] = []

        def shows_succeeded() -> bool:
            status = str(chromium.run(status_of, task_id) or "")
            if status and (not seen or seen[-1] != status):
                seen.append(status)
            return status == "succeeded"

        wait_for(shows_succeeded, timeout_s=20, interval_s=0.1, what=f"{task_id} to show succeeded on screen")
        assert chromium.run("return window.sameDocument === true"), "the page reloaded"
        events = chromium.run("return document.querySelector('#task-' + arguments[0] + ' .events-cell').textContent", task_id)
    assert len(seen) >= 2 and seen[-1] == "succeeded", seen
    assert any(status.startswith(("submitted", "running")) for status in seen[:-1]), seen
    assert events.startswith("submitted \u2192 running \u2192 succeeded"), events
