"""The dashboard: who may see it and for how long, what it shows, the headers and CSRF checks
that keep other sites out; subscriptions with their health, deliveries with their attempts and
"Retry now", the cancel button and the stored video, each to its own key only; and (in headless
Chromium) that a task's status and progress bar change on screen as it moves, that its stored
video plays, and that "Retry now" adds an attempt, with no reload and no Content-Security-Policy
violation. The browser tests keep screenshots (tests/README.md says where)."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from service.domain.clock import now_iso
from service.domain.ids import new_id
from service.domain.status import TaskStatus
from service.domain.tasks import Task, TaskInput, TaskResult
from service.keys import task_key
from service.simulator.state import video_chunks
from tests.stack.browser import Browser, browser
from tests.stack.conftest import API_KEY, Simulator, Stack, wait_for
from tests.stack.receivers import (
    Receiver,
    run_task,
    serve_receiver,
    subscribe,
    wait_for_deliveries,
)
from tests.stack.stacks import owned_stack

ADMIN_KEY = "test-admin-key-1"
OTHER_KEY = "test-key-2"
COOKIE = "kr_dashboard"
BEARER = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def own(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    simulator.reset()  # to its defaults: an earlier module may have reconfigured it
    env = {
        "KLING_RELAY_API_KEYS": f"{API_KEY},{OTHER_KEY}",
        "KLING_RELAY_ADMIN_KEYS": ADMIN_KEY,
        # Callbacks believed as sent, so a test can play a provider that reports a hostile video URL.
        "APIKLEY_CONFIRM_CALLBACKS": "false",
        # Videos kept, for the task page to play.
        "STORAGE_URL": tmp_path_factory.mktemp("videos").as_uri(),
        # One attempt per round: a delivery that fails stays failed until someone retries it.
        "WEBHOOK_RETRY_SCHEDULE_S": "0",
    }
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
    signed_out = httpx.post(
        f"{own.url}/dashboard/logout", data={"csrf_token": token}, headers={**same_origin, "Cookie": f"{COOKIE}={cookie}"}
    )
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


def csp_violations(console: list[str]) -> list[str]:
    return [message for message in console if "Content Security Policy" in message]


def test_a_tasks_status_changes_on_screen_without_a_reload(own: Stack, sim: Simulator) -> None:
    sim.configure(queue_s=1.0, generate_s=1.5)
    status_of = "const cell = document.querySelector('#task-' + arguments[0] + ' .status-cell'); return cell && cell.textContent;"
    with browser() as chromium:
        chromium.open(f"{own.url}/dashboard?key={API_KEY}")
        assert chromium.run("return document.location.pathname + document.location.search") == "/dashboard"
        wait_for(
            lambda: str(chromium.run("return document.getElementById('live').textContent")).endswith("live"),
            timeout_s=10,
            what="the stream",
        )
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
    # In the order they happened; `running` only if a poll caught the task while it ran (a busy
    # machine's poll may first see it finished).
    shown = [step.split()[0] for step in events.split(" \u2192 ")]  # less a "(+N progress)" note
    assert shown[0] == "submitted" and "succeeded" in shown, events
    order = ["submitted", "running", "succeeded", "stored", "storage_failed"]
    assert set(shown) <= set(order) and shown == sorted(shown, key=order.index), events
    assert csp_violations(console) == []


def test_chromium_signs_in_with_the_form_and_out_with_the_button(own: Stack) -> None:
    with browser() as chromium:
        chromium.open(f"{own.url}/dashboard")
        chromium.run(
            "document.querySelector('input[name=key]').value = arguments[0]; document.querySelector('form button').click();",
            API_KEY,
        )
        wait_for(lambda: chromium.run("return document.getElementById('tasks') !== null"), timeout_s=10, what="the tasks page")
        wait_for(
            lambda: str(chromium.run("return document.getElementById('live').textContent")).endswith("live"),
            timeout_s=10,
            what="the stream",
        )
        assert chromium.run("return document.cookie") == ""  # HttpOnly: no script can read it
        chromium.run("document.querySelector('header form button').click();")
        wait_for(
            lambda: chromium.run("return document.querySelector('input[name=key]') !== null"),
            timeout_s=10,
            what="the sign-in form",
        )
        chromium.open(f"{own.url}/dashboard")
        assert chromium.run("return document.querySelector('input[name=key]') !== null"), "still signed in after signing out"
        console = chromium.console()
    assert csp_violations(console) == []


# --- subscriptions, deliveries, buttons and the stored video ---------------------------------------

SAME_ORIGIN_FORM = {"Sec-Fetch-Site": "same-origin"}


def signed_in(stack: Stack, key: str = API_KEY) -> tuple[dict[str, str], str]:
    """A session's cookie header and its CSRF token, as a signed-in page carries it."""
    cookie = {"Cookie": f"{COOKIE}={sign_in(stack, key)}"}
    page = httpx.get(f"{stack.url}/dashboard", headers=cookie)
    return cookie, csrf_token_of(page.text)


def post(
    stack: Stack, path: str, session: dict[str, str], form: dict[str, str], origin: dict[str, str] | None = None
) -> httpx.Response:
    """A form POST as a browser sends it (from a page of this origin unless told otherwise)."""
    headers = {**session, **({"Origin": stack.url, **SAME_ORIGIN_FORM} if origin is None else origin)}
    return httpx.post(f"{stack.url}{path}", data=form, headers=headers)


def table_row(page: str, row_id: str) -> str:
    found = re.search(rf"<tr id='{re.escape(row_id)}'.*?</tr>", page, re.DOTALL)
    assert found, f"no row {row_id}"
    return found.group(0)


@pytest.fixture
def made(own: Stack) -> Iterator[list[tuple[str, str]]]:
    """(API key, subscription id) of the subscriptions a test made, deleted after it, so later
    tests' tasks do not reach them."""
    subs: list[tuple[str, str]] = []
    yield subs
    for key, sub_id in subs:
        with own.client(key) as api:
            api.delete(f"/v1/subscriptions/{sub_id}")


def subscribed(made: list[tuple[str, str]], api: httpx.Client, key: str, url: str, **extra: Any) -> dict[str, Any]:
    sub = subscribe(api, url, ["task.succeeded"], **extra)
    made.append((key, sub["id"]))
    return sub


def test_the_subscriptions_page_shows_state_last_success_and_failure_streak_to_their_owner_only(
    own: Stack, sim: Simulator, receiver: Receiver, made: list[tuple[str, str]]
) -> None:
    with own.client() as mine, own.client(OTHER_KEY) as theirs:
        ok = subscribed(made, mine, API_KEY, receiver.answer("health-ok"), description="the happy one")
        bad = subscribed(made, mine, API_KEY, receiver.answer("health-bad", then=503))
        off = subscribed(made, mine, API_KEY, receiver.answer("health-off"), enabled=False)
        other = subscribed(made, theirs, OTHER_KEY, receiver.answer("health-theirs"))
        run_task(mine)
        wait_for_deliveries(mine, ok["id"], 1, "delivered")
        [failed] = wait_for_deliveries(mine, bad["id"], 1, "failed")
    session, _ = signed_in(own)
    page = httpx.get(f"{own.url}/dashboard/subscriptions", headers=session)
    assert page.status_code == 200
    assert_browser_headers(page)
    happy, failing, disabled = (table_row(page.text, f"sub-{s['id']}") for s in (ok, bad, off))
    assert "s-enabled" in happy and "the happy one" in happy
    assert re.search(r"class=success-cell>\d{4}-\d\d-\d\dT", happy) and "class=streak-cell>0<" in happy
    assert "class=success-cell><span class=muted>never" in failing
    assert "1 failed attempt" in failing and "failing since" in failing and "http_status: 503" in failing
    assert "s-disabled" in disabled and "manual, since" in disabled
    assert other["id"] not in page.text
    # Another key sees its own only, and none of ours even by id; an admin sees everyone's.
    their_session, _ = signed_in(own, OTHER_KEY)
    their_page = httpx.get(f"{own.url}/dashboard/subscriptions", headers=their_session).text
    assert f"sub-{other['id']}" in their_page and ok["id"] not in their_page and bad["id"] not in their_page
    for path in (f"/dashboard/subscriptions/{bad['id']}", f"/dashboard/deliveries/{failed['id']}"):
        assert httpx.get(f"{own.url}{path}", headers=their_session).status_code == 404, path
    admin_session, _ = signed_in(own, ADMIN_KEY)
    admin_page = httpx.get(f"{own.url}/dashboard/subscriptions", headers=admin_session).text
    assert all(f"sub-{s['id']}" in admin_page for s in (ok, bad, off, other))
    # A subscription's page lists its deliveries, each linking to its attempts.
    detail = httpx.get(f"{own.url}/dashboard/subscriptions/{bad['id']}", headers=session)
    assert detail.status_code == 200 and f"href='/dashboard/deliveries/{failed['id']}'" in detail.text
    only_delivered = httpx.get(
        f"{own.url}/dashboard/subscriptions/{bad['id']}", params={"status": "delivered"}, headers=session
    ).text
    assert failed["id"] not in only_delivered


def test_retry_now_resends_a_delivery_only_with_the_sessions_token_from_this_origin(
    own: Stack, sim: Simulator, receiver: Receiver, made: list[tuple[str, str]]
) -> None:
    with own.client() as mine:
        sub = subscribed(made, mine, API_KEY, receiver.answer("retry-http", 500, then=204))
        run_task(mine)
        [failed] = wait_for_deliveries(mine, sub["id"], 1, "failed")
        session, token = signed_in(own)
        _, another_sessions_token = signed_in(own)
        their_session, their_token = signed_in(own, OTHER_KEY)
        path = f"/dashboard/deliveries/{failed['id']}/retry"
        page = httpx.get(f"{own.url}/dashboard/deliveries/{failed['id']}", headers=session)
        assert page.status_code == 200 and f"action='{path}'" in page.text and "http_status: 500" in page.text
        refused = {
            "no token": post(own, path, session, {}),
            "another session's token": post(own, path, session, {"csrf_token": another_sessions_token}),
            **{
                f"token, {label}": post(own, path, session, {"csrf_token": token}, headers)
                for label, headers in CROSS_ORIGIN.items()
            },
        }
        assert {label: r.status_code for label, r in refused.items()} == dict.fromkeys(refused, 403)
        assert post(own, path, their_session, {"csrf_token": their_token}).status_code == 404  # not theirs to see
        assert mine.get(f"/v1/deliveries/{failed['id']}").json()["attempt_count"] == 1
        accepted = post(own, path, session, {"csrf_token": token})
        assert accepted.status_code == 303 and accepted.headers["location"] == f"/dashboard/deliveries/{failed['id']}"
        delivered = wait_for_deliveries(mine, sub["id"], 1, "delivered")[0]
        # One attempt more, the one retried: none of the refused requests sent anything.
        assert delivered["attempt_count"] == 2 and len(receiver.received("retry-http")) == 2
        retried = httpx.get(f"{own.url}/dashboard/deliveries/{failed['id']}", headers=session).text
        assert retried.count("<tr class=attempt>") == 2 and "204" in retried
        # A disabled subscription's deliveries wait until it is enabled again, with the buttons.
        sub_path = f"/dashboard/subscriptions/{sub['id']}"
        assert post(own, f"{sub_path}/disable", session, {}).status_code == 403
        assert post(own, f"{sub_path}/disable", their_session, {"csrf_token": their_token}).status_code == 404
        assert post(own, f"{sub_path}/disable", session, {"csrf_token": token}).status_code == 303
        assert mine.get(f"/v1/subscriptions/{sub['id']}").json()["disabled_reason"] == "manual"
        while_disabled = post(own, path, session, {"csrf_token": token})
        assert while_disabled.status_code == 409 and "enable the subscription" in while_disabled.text
        assert "<p class=notice>" in while_disabled.text
        assert post(own, f"{sub_path}/enable", session, {"csrf_token": token}).status_code == 303
        assert mine.get(f"/v1/subscriptions/{sub['id']}").json()["enabled"] is True


def test_the_cancel_button_cancels_an_unfinished_task_with_the_sessions_token_only(own: Stack, sim: Simulator) -> None:
    sim.configure(queue_s=60)  # it stays unfinished until canceled
    with own.client() as mine:
        task_id = mine.post("/v1/tasks", json={"prompt": "a task to cancel", "provider": "novita"}).json()["id"]
        session, token = signed_in(own)
        their_session, their_token = signed_in(own, OTHER_KEY)
        path = f"/dashboard/tasks/{task_id}/cancel"
        page = httpx.get(f"{own.url}/dashboard/tasks/{task_id}", headers=session).text
        assert f"action='{path}'" in page and "Cancel task" in page
        assert post(own, path, session, {}).status_code == 403
        assert post(own, path, session, {"csrf_token": token}, CROSS_ORIGIN["another origin"]).status_code == 403
        assert post(own, path, their_session, {"csrf_token": their_token}).status_code == 404
        assert httpx.get(f"{own.url}/dashboard/tasks/{task_id}", headers=their_session).status_code == 404
        assert mine.get(f"/v1/tasks/{task_id}").json()["status"] != "canceled"
        canceled = post(own, path, session, {"csrf_token": token})
        assert canceled.status_code == 303 and canceled.headers["location"] == f"/dashboard/tasks/{task_id}"
        assert mine.get(f"/v1/tasks/{task_id}").json()["status"] == "canceled"
        page = httpx.get(f"{own.url}/dashboard/tasks/{task_id}", headers=session).text
        assert "s-canceled" in page and f"action='{path}'" not in page
        again = post(own, path, session, {"csrf_token": token})
        assert again.status_code == 409 and "already finished as canceled" in again.text


def test_the_task_page_plays_the_stored_copy_from_a_dashboard_route_only_its_owner_may_read(own: Stack, sim: Simulator) -> None:
    with own.client() as mine:
        task = run_task(mine, prompt="a harbour to keep")
        stored = wait_for(
            lambda: (t := mine.get(f"/v1/tasks/{task['id']}").json())["result"].get("sha256") and t, what="the stored copy"
        )
        by_api = mine.get(f"/v1/tasks/{task['id']}/video").content
    session, _ = signed_in(own)
    path = f"/dashboard/tasks/{task['id']}/video"
    page = httpx.get(f"{own.url}/dashboard/tasks/{task['id']}", headers=session)
    assert f"<video controls preload=metadata src='{path}'></video>" in page.text
    assert "media-src 'self'" in page.headers["content-security-policy"]
    assert_browser_headers(page)
    video = httpx.get(f"{own.url}{path}", headers=session)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert video.content == by_api == b"".join(video_chunks(stored["result"]["bytes"]))
    assert video.headers["etag"] == f'"{stored["result"]["sha256"]}"'
    ranged = httpx.get(f"{own.url}{path}", headers={**session, "Range": "bytes=0-99"})
    assert ranged.status_code == 206 and ranged.content == video.content[:100]
    their_session, _ = signed_in(own, OTHER_KEY)
    assert httpx.get(f"{own.url}{path}", headers=their_session).status_code == 404
    assert httpx.get(f"{own.url}{path}").status_code == 401


def values_seen(chromium: Browser, selector: str, seen: list[float]) -> Callable[[], bool]:
    """A `wait_for` predicate: records each new value of the progress bar at `selector`, true
    once it has shown two."""

    def check() -> bool:
        value = chromium.run("const bar = document.querySelector(arguments[0]); return bar ? bar.value : null;", selector)
        if value is not None and (not seen or seen[-1] != value):
            seen.append(value)
        return len(seen) >= 2

    return check


def test_in_chromium_progress_bars_move_live_cancel_works_and_the_stored_video_plays(own: Stack, sim: Simulator) -> None:
    with own.client() as mine:
        # Finished first, at the simulator's usual speed; its copy is stored while the rest runs.
        finished = run_task(mine, prompt="a harbour to watch")["id"]
        sim.configure(queue_s=0.5, generate_s=10)  # for tasks submitted from now on
        with browser() as chromium:
            chromium.open(f"{own.url}/dashboard?key={API_KEY}")
            wait_for(
                lambda: str(chromium.run("return document.getElementById('live').textContent")).endswith("live"),
                timeout_s=10,
                what="the stream",
            )
            chromium.run("window.sameDocument = true;")
            running = mine.post("/v1/tasks", json={"prompt": "a kite with a progress bar", "provider": "novita"}).json()["id"]
            on_list: list[float] = []
            wait_for(
                values_seen(chromium, f"#task-{running} progress", on_list),
                timeout_s=20,
                interval_s=0.1,
                what="the row's bar to move",
            )
            assert chromium.run("return window.sameDocument === true"), "the list reloaded"
            chromium.keep_screenshot("dashboard-tasks-progress")

            chromium.open(f"{own.url}/dashboard/tasks/{running}")
            chromium.run("window.sameDocument = true;")
            on_page: list[float] = []
            wait_for(
                values_seen(chromium, "#facts progress", on_page),
                timeout_s=20,
                interval_s=0.1,
                what="the task page's bar to move",
            )
            assert chromium.run("return window.sameDocument === true"), "the task page reloaded"
            chromium.keep_screenshot("dashboard-task-progress")
            chromium.run("document.querySelector(\"#actions form[action$='/cancel'] button\").click();")
            wait_for(
                lambda: chromium.run("return document.querySelector('#facts .status').textContent") == "canceled",
                timeout_s=10,
                what="the task page to show canceled",
            )
            canceled_buttons = chromium.run("return document.querySelectorAll('#actions button').length")

            wait_for(
                lambda: (mine.get(f"/v1/tasks/{finished}").json()["result"] or {}).get("sha256"),
                what="the finished task's stored copy",
            )
            chromium.open(f"{own.url}/dashboard/tasks/{finished}")
            video = (
                "const v = document.querySelector('#media video'); return v && {w: v.videoWidth, h: v.videoHeight,"
                " d: v.duration, state: v.readyState, error: v.error && v.error.code};"
            )
            loaded = wait_for(lambda: (v := chromium.run(video)) and v["w"] and v, timeout_s=20, what="the stored video to load")
            chromium.run("const v = document.querySelector('#media video'); v.muted = true; v.play();")
            wait_for(
                lambda: chromium.run("return document.querySelector('#media video').currentTime > 0.5"),
                timeout_s=20,
                what="the video to play",
            )
            played = chromium.run(video)
            chromium.keep_screenshot("dashboard-task-video")
            console = chromium.console()
        assert mine.get(f"/v1/tasks/{running}").json()["status"] == "canceled"
    assert on_list == sorted(on_list) and on_page == sorted(on_page), (on_list, on_page)
    assert canceled_buttons == 0
    assert (loaded["w"], loaded["h"], loaded["d"], loaded["error"]) == (48, 32, 2, None)
    assert played["state"] >= 2 and played["error"] is None  # frames decoded: a real video
    assert csp_violations(console) == []


def test_in_chromium_retry_now_adds_an_attempt_and_the_subscription_recovers(
    own: Stack, sim: Simulator, receiver: Receiver, made: list[tuple[str, str]]
) -> None:
    with own.client() as mine:
        sub = subscribed(made, mine, API_KEY, receiver.answer("retry-browser", 500, then=204), description="flaky receiver")
        run_task(mine)
        [failed] = wait_for_deliveries(mine, sub["id"], 1, "failed")
    cell = "return document.querySelector('#sub-' + arguments[0] + ' .' + arguments[1]).textContent"
    with browser() as chromium:
        chromium.open(f"{own.url}/dashboard?key={API_KEY}")
        chromium.run("document.querySelector(\"header a[href='/dashboard/subscriptions']\").click();")
        wait_for(
            lambda: chromium.run("return document.getElementById('subscriptions') !== null"),
            timeout_s=10,
            what="the subscriptions page",
        )
        streak_before = chromium.run(cell, sub["id"], "streak-cell")
        failure_before = chromium.run(cell, sub["id"], "failure-cell")
        chromium.keep_screenshot("dashboard-subscriptions-failing")
        chromium.run("document.querySelector('#sub-' + arguments[0] + ' a').click();", sub["id"])
        wait_for(
            lambda: chromium.run("return document.getElementById('deliveries') !== null"),
            timeout_s=10,
            what="the subscription page",
        )
        chromium.run("document.querySelector('#delivery-' + arguments[0] + ' a').click();", failed["id"])
        wait_for(
            lambda: chromium.run("return document.getElementById('attempts') !== null"), timeout_s=10, what="the delivery page"
        )
        attempts = "return [...document.querySelectorAll('#attempts tr.attempt')].map(row => row.textContent)"
        before = chromium.run(attempts)
        chromium.run("document.querySelector(\"form[action$='/retry'] button\").click();")
        after = wait_for(
            lambda: len(rows := chromium.run(attempts)) == 2 and rows, timeout_s=20, what="the new attempt on the page"
        )
        chromium.keep_screenshot("dashboard-delivery-retried")
        status = chromium.run("return document.querySelector('#facts .status').textContent")
        chromium.open(f"{own.url}/dashboard/subscriptions")
        streak_after = chromium.run(cell, sub["id"], "streak-cell")
        success_after = chromium.run(cell, sub["id"], "success-cell")
        chromium.keep_screenshot("dashboard-subscriptions-recovered")
        console = chromium.console()
    assert streak_before.startswith("1 failed attempt") and "http_status: 500" in failure_before
    assert len(before) == 1 and "500" in before[0]
    assert after[0].startswith("2") and "204" in after[0] and after[1] == before[0]  # newest first
    assert status == "delivered"
    assert streak_after == "0" and success_after[:2] == "20"
    assert csp_violations(console) == []
