"""The dashboard's pages as rendered (pure): progress bars, the video or why there is none, the
buttons and their CSRF field, live parts that change only with their content, and no inline code
but the hashed script and style."""

from __future__ import annotations

import re
from typing import Any

import pytest

from service.dashboard_html import (
    LIVE_SCRIPT,
    STYLE,
    TaskPage,
    TaskView,
    content_security_policy_for,
    delivery_page,
    section_update,
    sections_html,
    subscription_page,
    subscriptions_page,
    task_page,
    task_row,
    tasks_page,
)
from service.domain.clock import iso_to_unix
from service.domain.status import TaskStatus
from service.domain.tasks import StorageError, Task, TaskInput, TaskResult
from service.webhooks.models import (
    Attempt,
    Delivery,
    Subscription,
    SubscriptionHealth,
    SubscriptionWithHealth,
)

NOW = "2026-01-01T00:00:00.000Z"
LATER = "2026-01-08T00:00:00.000Z"
TOKEN = "csrf-token-of-the-session"


def task(status: TaskStatus = TaskStatus.RUNNING, **fields: Any) -> Task:
    return Task(
        id="task_1", owner="k1", provider="novita", input=TaskInput(prompt="a fox"), status=status,
        created_at=NOW, updated_at=NOW, **fields,
    )


def page_of(t: Task, *, storing: bool = True, now: str = NOW) -> TaskPage:
    return TaskPage(TaskView(t), {}, storing=storing, now=iso_to_unix(now))


STORED = TaskResult(
    video_url="https://cdn.example/v.mp4", sha256="ab" * 32, bytes=4096, content_type="video/mp4", stored_until=LATER
)


def test_a_running_tasks_percentage_is_a_progress_bar_in_its_row_and_on_its_page() -> None:
    running = task(progress=40)
    assert "<progress max=100 value=40></progress>" in task_row(TaskView(running))
    assert "<progress max=100 value=40></progress>" in task_page(page_of(running))
    for t in (task(), task(TaskStatus.SUCCEEDED, progress=100)):
        assert "<progress" not in task_row(TaskView(t)) + task_page(page_of(t))


@pytest.mark.parametrize(
    ("result", "storing", "now", "shown"),
    [
        (STORED, True, NOW, "<video controls preload=metadata src='/dashboard/tasks/task_1/video'></video>"),
        (STORED, True, LATER, "deleted after its retention period"),
        (TaskResult(video_url="https://cdn.example/v.mp4"), True, NOW, "Storing the video"),
        (
            TaskResult(video_url="https://x/v.mp4", storage_error=StorageError(code="too_large", message="big", attempts=1)),
            True,
            NOW,
            "could not be stored: too_large: big",
        ),
        (STORED, False, NOW, "<section id=media data-v=e3b0c44298fc1c14></section>"),  # no copies kept: nothing
    ],
)
def test_the_task_page_plays_the_stored_copy_or_says_why_there_is_none(
    result: TaskResult, storing: bool, now: str, shown: str
) -> None:
    html = task_page(page_of(task(TaskStatus.SUCCEEDED, result=result), storing=storing, now=now))
    assert shown in html
    assert ("<video" in html) == (shown.startswith("<video"))


def test_the_cancel_button_is_on_unfinished_tasks_only_and_carries_the_csrf_token() -> None:
    form = (
        "<form class=action method=post action='/dashboard/tasks/task_1/cancel'>"
        "<input type=hidden name=csrf_token value='csrf-token-of-the-session'>"
    )
    for status in (TaskStatus.QUEUED, TaskStatus.SUBMITTED, TaskStatus.RUNNING):
        assert form in task_page(page_of(task(status)), csrf=TOKEN)
    for status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED):
        assert "/cancel" not in task_page(page_of(task(status)), csrf=TOKEN)


def delivery(*attempts: Attempt) -> Delivery:
    return Delivery(
        id="dlv_1", event_id="evt_1", event_type="task.succeeded", subject_id="task_1", subscription_id="sub_1", owner="k1",
        attempt_count=len(attempts), created_at=NOW, updated_at=NOW, attempts=list(attempts),
    )


def test_a_delivery_page_lists_attempts_newest_first_with_answer_and_duration_and_a_retry_button() -> None:
    first = Attempt(
        number=1, at=NOW, url="https://r/x", status_code=500, latency_ms=31, error="http_status: 500", response_body="<b>busy</b>"
    )
    second = Attempt(number=2, at=LATER, url="https://r/x", latency_ms=15000, error="timeout: no answer within 15 s")
    html = delivery_page(delivery(first, second), "https://r/x", csrf=TOKEN)
    rows = re.findall(r"<tr class=attempt>.*?</tr>", html)
    assert len(rows) == 2 and rows[0].startswith("<tr class=attempt><td>2</td>") and "timeout: no answer" in rows[0]
    assert "500" in rows[1] and "31 ms" in rows[1] and "&lt;b&gt;busy&lt;/b&gt;" in rows[1]
    assert "action='/dashboard/deliveries/dlv_1/retry'><input type=hidden name=csrf_token" in html


def test_subscriptions_show_their_state_and_health() -> None:
    sub = Subscription(id="sub_1", url="https://r/<x>", event_types=["*"], created_at=NOW, updated_at=NOW)
    off = sub.model_copy(update={"id": "sub_2", "enabled": False, "disabled_reason": "failing", "disabled_at": LATER})
    failing = SubscriptionHealth(success_at=NOW, streak=3, failure_at=LATER, failure="http_status: 503", failing_since=NOW)
    html = subscriptions_page(
        [SubscriptionWithHealth.of(sub, failing), SubscriptionWithHealth.of(off, SubscriptionHealth())], next_cursor="sub_0"
    )
    assert "https://r/&lt;x&gt;" in html and "<x>" not in html
    assert f"3 failed attempts <span class=muted>failing since {NOW}" in html and "http_status: 503" in html
    assert f"disabled</span> <span class=muted>failing, since {LATER}" in html
    assert "class=success-cell><span class=muted>never" in html
    assert "href='/dashboard/subscriptions?cursor=sub_0'" in html
    assert "/enable'" in subscription_page(
        SubscriptionWithHealth.of(off, SubscriptionHealth()), [], status=None, next_cursor=None
    )


def test_a_live_part_changes_version_only_when_its_content_does() -> None:
    assert (
        section_update("facts", "<p>a</p>")["v"]
        == section_update("facts", "<p>a</p>")["v"]
        != section_update("facts", "<p>b</p>")["v"]
    )
    assert (
        sections_html({"facts": "<p>a</p>"})
        == f"<section id=facts data-v={section_update('facts', '<p>a</p>')['v']}><p>a</p></section>"
    )


def test_no_page_has_inline_code_but_the_hashed_script_and_style() -> None:
    sub = SubscriptionWithHealth.of(
        Subscription(id="sub_1", url="https://r/x", event_types=["*"], created_at=NOW, updated_at=NOW), SubscriptionHealth()
    )
    pages = [
        tasks_page([TaskView(task(progress=10))], status=None, csrf=TOKEN),
        task_page(page_of(task(TaskStatus.SUCCEEDED, result=STORED)), csrf=TOKEN),
        delivery_page(delivery(), "https://r/x", csrf=TOKEN),
        subscriptions_page([sub], next_cursor=None, csrf=TOKEN),
        subscription_page(sub, [delivery()], status=None, next_cursor=None, csrf=TOKEN),
    ]
    for html in pages:
        assert set(re.findall(r"<script>(.*?)</script>", html, re.DOTALL)) <= {LIVE_SCRIPT}
        assert re.findall(r"<style>(.*?)</style>", html, re.DOTALL) == [STYLE]
        assert not re.search(r"\s(style|on[a-z]+)=", html), "an inline style or event handler attribute"


def test_the_policy_allows_media_from_this_origin_and_a_buckets_when_copies_are_there() -> None:
    assert "media-src 'self';" in content_security_policy_for()
    assert "media-src 'self' https://bucket.s3.example;" in content_security_policy_for("https://bucket.s3.example")
