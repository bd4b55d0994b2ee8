"""The dashboard: who may see it and for how long, what it shows, the headers and CSRF checks
that keep other sites out, and (in headless Chromium) that a task's status changes on screen as it
moves, with no reload and no Content-Security-Policy violation."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator

import httpx
import orjson
import pytest

from service.domain.clock import now_iso
from service.domain.ids import new_id
from service.domain.status import TaskStatus
from service.domain.tasks import Task, TaskInput, TaskResult
from service.keys import task_key
from tests.stack.browser import browser
from tests.stack.conftest import API_KEY, Simulator, Stack, wait_for
from tests.stack.receivers import Receiver, run_task, serve_receiver, subscribe
from tests.stack.stacks import owned_stack

ADMIN_KEY = "test-admin-key-1"
COOKIE = "kr_dashboard"
BEARER = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def own(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    simulator.reset()  # to its defaults: an earlier module may have reconfigured it
    # Callbacks believed as sent, so a test can play a provider that reports a hostile video URL.
    env = {"KLING_RELAY_ADMIN_KEYS": ADMIN_KEY, "APIKLEY_CONFIRM_CALLBACKS": "false"}
    with owned_stack(tmp_path_factory.mktemp("dashboard"), simulator, env) as owned:
        yield owned.stack


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def sign_in(stack: Stack, key: str = API_KEY) -> str:
    """The session cookie a sign-in link gives for `key`."""
    signed = httpx.get(f"{stack.url}/dashboard", params={"key": key})
    assert signed.status_code == 303, signed.text
    return signed.cookies[COOKIE]


def dashboard_status(stack: Stack, cookie: str, path: str = "/dashboard") -> int:
    # The cookie is sent by hand: a client's cookie jar would drop it at its Max-Age by itself,
    # and these tests are about what the server accepts.
    return httpx.get(f"{stack.url}{path}", headers={"Cookie": f"{COOKIE}={cookie}"}).status_code


def csrf_token_of(page: str) -> str:
    found = re.search(r"<meta name=csrf-token content='([^']+)'>", page)
    assert found, "the page carries no CSRF token"
    return found.group(1)


def test_signing_in_sets_a_session_cookie_naming_the_key_id_never_the_key(own: Stack) -> None:
    with httpx.Client(base_url=own.url) as browser_like:
        assert browser_like.get("/dashboard").status_code == 401
        assert browser_like.get("/dashboard", params={"key": "wrong"}).status_code == 401
        assert browser_like.get("/dashboard/stream").status_code == 401
        signed = browser_like.get("/dashboard", params={"key": API_KEY, "status": "failed"})
        assert signed.status_code == 303 and signed.headers["location"] == "/dashboard?status=failed"
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
        assert "Max-Age=43200" in cookie and "Secure" not in cookie  # plain http here
        assert API_KEY not in cookie
        assert signed.cookies[COOKIE].startswith(f"v1.{key_id(API_KEY)}.")
        page = browser_like.get("/dashboard")
        assert page.status_code == 200 and "<table id=tasks>" in page.text
    with httpx.Client(base_url=own.url, headers={"Origin": own.url}) as form_user:
        assert form_user.post("/dashboard/login", data={"key": "wrong"}).status_code == 401
        assert form_user.post("/dashboard/login", data={"key": API_KEY}).status_code == 303
        assert form_user.get("/dashboard").status_code == 200
    assert httpx.get(f"{own.url}/dashboard", headers=BEARER).status_code == 200


def test_every_sign_in_issues_a_fresh_cookie(own: Stack) -> None:
    first, second = sign_in(own), sign_in(own)
    assert first != second
    assert dashboard_status(own, first) == dashboard_status(own, second) == 200


def test_admin_keys_sign_in_too(own: Stack) -> None:
    cookie = sign_in(own, ADMIN_KEY)
    assert cookie.startswith(f"v1.{key_id(ADMIN_KEY)}.")
    assert dashboard_status(own, cookie) == 200
    assert httpx.get(f"{own.url}/dashboard", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200


def _tampered(cookie: str) -> dict[str, str]:
    version, kid, issued, nonce, signature = cookie.split(".")
    forged_body = f"{version}.{kid}.{issued}.{nonce}"
    wrong_secret = base64.urlsafe_b64encode(hashlib.sha256(forged_body.encode()).digest()).decode().rstrip("=")
    return {
        "issue time moved": f"{version}.{kid}.{int(issued) + 3600}.{nonce}.{signature}",
        "key id swapped": f"{version}.{key_id(ADMIN_KEY)}.{issued}.{nonce}.{signature}",
        "signature dropped": forged_body,
        "signature not ours": f"{forged_body}.{wrong_secret}",
        "the old HMAC(key) cookie": "0" * 64,
        "the key itself": API_KEY,
    }


def test_a_tampered_or_forged_cookie_opens_nothing(own: Stack) -> None:
    for label, forged in _tampered(sign_in(own)).items():
        for path in ("/dashboard", "/dashboard/stream"):
            assert dashboard_status(own, forged, path) == 401, f"{label} opened {path}"


@pytest.fixture(scope="module")
def brief(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A web process like `own` (same CALLBACK_SECRET and keys) whose sessions last one second."""
    with owned_stack(tmp_path_factory.mktemp("brief"), simulator, {"DASHBOARD_SESSION_S": "1"}, workers=0) as owned:
        yield owned.stack


def test_a_session_expires_on_the_server_after_DASHBOARD_SESSION_S(own: Stack, brief: Stack) -> None:
    signed = httpx.get(f"{brief.url}/dashboard", params={"key": API_KEY})
    assert "Max-Age=1;" in signed.headers["set-cookie"]
    cookie = signed.cookies[COOKIE]
    # A process with the default lifetime shows the cookie is a good one; the short-lived
    # process refuses it once its own lifetime has passed, whatever the browser does.
    assert dashboard_status(own, cookie) == 200
    wait_for(lambda: dashboard_status(brief, cookie) == 401, timeout_s=60, interval_s=0.5, what="the session to expire")
    assert dashboard_status(brief, cookie, "/dashboard/stream") == 401
    assert dashboard_status(own, cookie) == 200


def test_an_open_stream_ends_with_its_session(brief: Stack) -> None:
    def stream_ended_signed_out() -> bool:
        cookie = sign_in(brief)
        with httpx.stream("GET", f"{brief.url}/dashboard/stream", headers={"Cookie": f"{COOKIE}={cookie}"}, timeout=90) as stream:
            if stream.status_code == 401:
                return False  # expired before the stream opened (a slow machine): sign in again
            lines = list(stream.iter_lines())  # until the server ends the stream
        assert "event: signed-out" in lines, lines[-5:]
        return True

    wait_for(stream_ended_signed_out, timeout_s=120, what="a stream that opened before its session expired")


def test_a_session_stops_working_once_its_key_is_removed(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> None:
    env = {"KLING_RELAY_ADMIN_KEYS": ADMIN_KEY}
    with owned_stack(tmp_path_factory.mktemp("removed"), simulator, env, workers=0) as owned:
        stack = owned.stack
        admin, user = sign_in(stack, ADMIN_KEY), sign_in(stack, API_KEY)
        assert dashboard_status(stack, admin) == dashboard_status(stack, user) == 200
        stack.stop()
        stack.env_overrides["KLING_RELAY_ADMIN_KEYS"] = ""
        stack.start_web()
        assert dashboard_status(stack, admin) == 401
        assert dashboard_status(stack, admin, "/dashboard/stream") == 401
        assert dashboard_status(stack, user) == 200


def inline_sources(page: str) -> list[str]:
    """The CSP hash sources of every inline script and style of a page."""
    bodies = re.findall(r"<script>(.*?)</script>|<style>(.*?)</style>", page, re.DOTALL)
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for pair in bodies for body in pair if body
    ]


def assert_browser_headers(response: httpx.Response) -> None:
    headers = response.headers
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"
    assert headers["cross-origin-opener-policy"] == "same-origin"
    assert headers["cache-control"] == "no-store"
    csp = dict(part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'none'" and csp["frame-ancestors"] == "'none'" and csp["base-uri"] == "'none'"
    assert "unsafe-inline" not in headers["content-security-policy"] and "unsafe-eval" not in headers["content-security-policy"]
    if response.headers.get("content-type", "").startswith("text/html"):
        allowed = f"{csp['script-src']} {csp['style-src']}".split()
        assert all(source in allowed for source in inline_sources(response.text)), "an inline block the CSP does not allow"


def test_every_dashboard_answer_sends_the_browser_security_headers(own: Stack) -> None:
    with own.client() as api:
        task = run_task(api, prompt="a harbour for the headers")
    cookie = sign_in(own)
    signed = {"Cookie": f"{COOKIE}={cookie}"}
    answers = {
        "sign-in form": httpx.get(f"{own.url}/dashboard"),
        "sign-in link": httpx.get(f"{own.url}/dashboard", params={"key": API_KEY}),
        "tasks page": httpx.get(f"{own.url}/dashboard", headers=signed),
        "task page": httpx.get(f"{own.url}/dashboard/tasks/{task['id']}", headers=signed),
        "missing task": httpx.get(f"{own.url}/dashboard/tasks/task_nope", headers=signed),
        "bad filter": httpx.get(f"{own.url}/dashboard", params={"status": "bogus"}, headers=signed),
        "stream refused": httpx.get(f"{own.url}/dashboard/stream"),
        "login refused": httpx.post(f"{own.url}/dashboard/login", data={"key": API_KEY}, headers={"Origin": "https://evil.example"}),
        "logout refused": httpx.post(f"{own.url}/dashboard/logout", headers={**signed, "Origin": own.url}),
    }
    with httpx.stream("GET", f"{own.url}/dashboard/stream", headers=signed, timeout=10) as stream:
        answers["stream"] = stream
    assert [(label, r.status_code) for label, r in answers.items()] == [
        ("sign-in form", 401), ("sign-in link", 303), ("tasks page", 200), ("task page", 200), ("missing task", 404),
        ("bad filter", 400), ("stream refused", 401), ("login refused", 403), ("logout refused", 403), ("stream", 200),
    ]
    for label, response in answers.items():
        try:
            assert_browser_headers(response)
        except (AssertionError, KeyError) as exc:
            raise AssertionError(f"{label}: {exc!r}") from exc


def test_what_users_typed_is_shown_escaped(own: Stack) -> None:
    with own.client() as api:
        task = api.post("/v1/tasks", json={"prompt": "<img src=x onerror=alert(1)> a fox", "provider": "novita"}).json()
    page = httpx.get(f"{own.url}/dashboard", headers=BEARER).text
    assert f"id='task-{task['id']}'" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "<img src=x" not in page


def test_a_video_url_that_is_not_http_is_shown_as_text_not_as_a_link(own: Stack) -> None:
    hostile = "javascript:alert(document.cookie)//https://cdn.example/v.mp4"
    # Such a URL is refused from providers now (invalid_result_url); a task stored before that
    # could still hold one, so the dashboard must not link it either. Stored as an upgrade finds it.
    task = Task(
        id=new_id("task"), owner=key_id(API_KEY), provider="apikley", input=TaskInput(prompt="an old hostile result"),
        status=TaskStatus.SUCCEEDED, result=TaskResult(video_url=hostile), created_at=now_iso(), updated_at=now_iso(),
    )
    own.redis().set(task_key(task.id), task.dumps())
    page = httpx.get(f"{own.url}/dashboard/tasks/{task.id}", headers=BEARER).text
    assert "<code>javascript:alert(document.cookie)//https://cdn.example/v.mp4</code>" in page
    assert "href='javascript" not in page.lower() and 'href="javascript' not in page.lower()


def test_an_http_video_url_is_a_link(own: Stack) -> None:
    with own.client() as api:
        task = run_task(api, prompt="a lighthouse with a link")
    page = httpx.get(f"{own.url}/dashboard/tasks/{task['id']}", headers=BEARER).text
    url = task["result"]["video_url"]
    assert url.startswith("http://") and f"<a href='{url}' rel='noopener noreferrer'>" in page


CROSS_ORIGIN = {
    "another origin": {"Origin": "https://evil.example"},
    "another port": {"Origin": "http://127.0.0.1:1"},
    "an opaque origin": {"Origin": "null"},
    "cross-site fetch metadata": {"Sec-Fetch-Site": "cross-site"},
    "same-site fetch metadata": {"Sec-Fetch-Site": "same-site"},
    "no origin at all": {},
}


@pytest.mark.parametrize("headers", CROSS_ORIGIN.values(), ids=CROSS_ORIGIN.keys())
def test_the_sign_in_form_refuses_a_post_from_another_origin_and_sets_no_cookie(own: Stack, headers: dict[str, str]) -> None:
    refused = httpx.post(f"{own.url}/dashboard/login", data={"key": API_KEY}, headers=headers)
    assert refused.status_code == 403 and "set-cookie" not in refused.headers


def test_the_sign_in_form_takes_a_post_from_its_own_origin(own: Stack) -> None:
    for headers in ({"Origin": own.url}, {"Sec-Fetch-Site": "same-origin"}, {"Origin": own.url, "Sec-Fetch-Site": "same-origin"}):
        accepted = httpx.post(f"{own.url}/dashboard/login", data={"key": API_KEY}, headers=headers)
        assert accepted.status_code == 303 and COOKIE in accepted.cookies, headers


def test_a_sign_in_link_opened_from_another_site_signs_nobody_in(own: Stack) -> None:
    refused = httpx.get(f"{own.url}/dashboard", params={"key": API_KEY}, headers={"Sec-Fetch-Site": "cross-site"})
    assert refused.status_code == 303 and "set-cookie" not in refused.headers
    assert refused.headers["location"] == "/dashboard?signin=crosssite" and API_KEY not in refused.headers["location"]
    form = httpx.get(f"{own.url}{refused.headers['location']}")
    assert form.status_code == 401 and "not from another site" in form.text


def _signed_in_page(stack: Stack) -> tuple[str, str]:
    cookie = sign_in(stack)
    page = httpx.get(f"{stack.url}/dashboard", headers={"Cookie": f"{COOKIE}={cookie}"})
    assert page.status_code == 200
    return cookie, csrf_token_of(page.text)


def test_a_dashboard_post_without_the_sessions_csrf_token_or_from_another_origin_is_refused(own: Stack) -> None:
    cookie, token = _signed_in_page(own)
    _, other_sessions_token = _signed_in_page(own)
    same_origin = {"Origin": own.url, "Sec-Fetch-Site": "same-origin"}
    attempts = {
        "no token": ({}, same_origin),
        "empty token": ({"csrf_token": ""}, same_origin),
        "another session's token": ({"csrf_token": other_sessions_token}, same_origin),
        **{f"token, {label}": ({"csrf_token": token}, headers) for label, headers in CROSS_ORIGIN.items()},
    }
    for label, (form, headers) in attempts.items():
        refused = httpx.post(f"{own.url}/dashboard/logout", data=form, headers={**headers, "Cookie": f"{COOKIE}={cookie}"})
        assert refused.status_code == 403, label
        assert refused.json()["error"]["code"] == "forbidden", label
        assert "set-cookie" not in refused.headers, label
        assert dashboard_status(own, cookie) == 200, f"{label} changed the session"
    signed_out = httpx.post(f"{own.url}/dashboard/logout", data={"csrf_token": token}, headers={**same_origin, "Cookie": f"{COOKIE}={cookie}"})
    assert signed_out.status_code == 303 and signed_out.headers["location"] == "/dashboard"
    assert f'{COOKIE}=""' in signed_out.headers["set-cookie"] and "Max-Age=0" in signed_out.headers["set-cookie"]


def test_bearer_pages_carry_no_csrf_token_and_bearer_posts_need_none(own: Stack) -> None:
    assert "csrf-token" not in httpx.get(f"{own.url}/dashboard", headers=BEARER).text
    assert httpx.post(f"{own.url}/dashboard/logout", headers=BEARER).status_code == 303


def test_the_stream_sends_each_changed_row_as_rendered_html(own: Stack) -> None:
    with own.client() as api:
        task = run_task(api, prompt="a lighthouse for the stream")
    with httpx.stream("GET", f"{own.url}/dashboard/stream", headers=BEARER, timeout=10) as stream:
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
            text = httpx.get(f"{own.url}/dashboard/tasks/{task['id']}", headers=BEARER).text
            return text if "s-delivered" in text else None

        text = wait_for(page, timeout_s=10, what="the delivery on the task page")
        api.delete(f"/v1/subscriptions/{sub['id']}")
    assert "task.submitted" in text and "task.succeeded" in text
    assert receiver.url("dash") in text
    assert "http-equiv=refresh" not in text  # settled: nothing left to watch


def csp_violations(console: list[str]) -> list[str]:
    return [message for message in console if "Content Security Policy" in message]


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
        console = chromium.console()
    assert len(seen) >= 2 and seen[-1] == "succeeded", seen
    assert any(status.startswith(("submitted", "running")) for status in seen[:-1]), seen
    assert events.startswith("submitted \u2192 running \u2192 succeeded"), events
    assert csp_violations(console) == []


def test_chromium_signs_in_with_the_form_and_out_with_the_button(own: Stack) -> None:
    with browser() as chromium:
        chromium.open(f"{own.url}/dashboard")
        chromium.run("document.querySelector('input[name=key]').value = arguments[0]; document.querySelector('form button').click();", API_KEY)
        wait_for(lambda: chromium.run("return document.getElementById('tasks') !== null"), timeout_s=10, what="the tasks page")
        wait_for(lambda: str(chromium.run("return document.getElementById('live').textContent")).endswith("live"), timeout_s=10, what="the stream")
        assert chromium.run("return document.cookie") == ""  # HttpOnly: no script can read it
        chromium.run("document.querySelector('header form button').click();")
        wait_for(lambda: chromium.run("return document.querySelector('input[name=key]') !== null"), timeout_s=10, what="the sign-in form")
        chromium.open(f"{own.url}/dashboard")
        assert chromium.run("return document.querySelector('input[name=key]') !== null"), "still signed in after signing out"
        console = chromium.console()
    assert csp_violations(console) == []
