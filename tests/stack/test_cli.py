"""The `kling-relay` client commands, run as real processes against a real stack: what scripts
see (stdout, exit codes) and what people see (live status on stderr)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from service.redis_server import free_port
from tests.stack.conftest import API_KEY, ROOT, Simulator, Stack, wait_for
from tests.stack.receivers import Receiver
from tests.stack.stacks import owned_stack

ENTRY_POINT = Path(sys.executable).parent / "kling-relay"


@pytest.fixture(scope="module")
def own(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    simulator.reset()  # to its defaults: an earlier module may have reconfigured it
    with owned_stack(tmp_path_factory.mktemp("cli"), simulator) as owned:
        yield owned.stack


def kling_relay(
    stack: Stack, *args: str, env: dict[str, str] | None = None, exe: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KLING_RELAY_")}
    base.update(KLING_RELAY_URL=stack.url, KLING_RELAY_API_KEY=API_KEY)
    base.update(env or {})
    command = exe or [sys.executable, "-m", "service.cli"]
    return subprocess.run([*command, *args], check=False, env=base, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_submit_wait_shows_live_status_then_prints_only_the_video_url(own: Stack) -> None:
    result = kling_relay(
        own,
        "submit",
        "a red fox running through snow",
        "--provider",
        "apikley",
        "--wait",
        "--poll-interval",
        "0.2",
        exe=[str(ENTRY_POINT)],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(".mp4") and result.stdout.count("\n") == 1
    # Not a terminal: one line per status change, ending in the terminal one.
    statuses = [line.split()[1] for line in result.stderr.splitlines()]
    assert statuses[0] == "queued" and statuses[-1] == "succeeded"
    assert len(statuses) == len(set(statuses))


def test_submit_wait_exits_1_and_says_why_when_the_task_fails(own: Stack) -> None:
    result = kling_relay(own, "submit", "a fox [sim:fail]", "--provider", "apikley", "--wait", "--poll-interval", "0.2")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "failed: generation_failed" in result.stderr.splitlines()[-1]


def test_submit_wait_gives_up_with_exit_4_after_its_timeout(own: Stack) -> None:
    result = kling_relay(own, "submit", "a fox", "--wait", "--timeout", "0", "--poll-interval", "0.1")
    assert result.returncode == 4
    assert "still" in result.stderr and "kling-relay tasks show task_" in result.stderr


def test_submit_passes_every_option_and_prints_the_task_id(own: Stack) -> None:
    result = kling_relay(
        own, "submit", "a heron at dawn", "--provider", "novita", "--duration", "10", "--aspect-ratio", "9:16",
        "--negative-prompt", "blur", "--cfg-scale", "0.7", "--metadata", '{"order": 7}', "--idempotency-key", "heron-1",
    )
    assert result.returncode == 0, result.stderr
    task_id = result.stdout.strip()
    with own.client() as api:
        task = api.get(f"/v1/tasks/{task_id}").json()
    assert task["provider"] == "novita" and task["metadata"] == {"order": 7}
    assert task["input"] == {
        "prompt": "a heron at dawn",
        "negative_prompt": "blur",
        "duration": "10",
        "aspect_ratio": "9:16",
        "cfg_scale": 0.7,
    }
    again = kling_relay(
        own,
        "submit",
        "a heron at dawn",
        "--provider",
        "novita",
        "--duration",
        "10",
        "--aspect-ratio",
        "9:16",
        "--negative-prompt",
        "blur",
        "--cfg-scale",
        "0.7",
        "--metadata",
        '{"order": 7}',
        "--idempotency-key",
        "heron-1",
    )
    assert again.stdout.strip() == task_id


@pytest.mark.parametrize(
    ("args", "env", "code", "says"),
    [
        (["submit", "a fox", "--cfg-scale", "0.35"], {}, 3, "cfg_scale"),
        (["tasks", "show", "task_nope"], {}, 3, "404 not_found"),
        (["tasks", "list"], {"KLING_RELAY_API_KEY": "wrong"}, 3, "401 unauthorized"),
        (["tasks", "list", "--url", "http://127.0.0.1:{free}"], {}, 3, "cannot reach"),
        (["tasks", "list"], {"KLING_RELAY_API_KEY": ""}, 2, "no API key"),
        (["submit"], {}, 2, "the following arguments are required: prompt"),
        (["submit", "a fox", "--duration", "7"], {}, 2, "invalid choice"),
        (["submit", "a fox", "--metadata", "{oops"], {}, 2, "--metadata is not valid JSON"),
    ],
)
def test_failures_exit_with_a_documented_code_and_a_reason(
    own: Stack, args: list[str], env: dict[str, str], code: int, says: str
) -> None:
    args = [a.replace("{free}", str(free_port())) for a in args]
    result = kling_relay(own, *args, env=env)
    assert result.returncode == code, result.stderr
    assert says in result.stderr
    assert result.stdout == ""


def test_api_key_falls_back_to_the_first_of_the_servers_keys(own: Stack) -> None:
    result = kling_relay(own, "tasks", "list", env={"KLING_RELAY_API_KEY": "", "KLING_RELAY_API_KEYS": f"{API_KEY},another"})
    assert result.returncode == 0, result.stderr


def test_tasks_list_filters_by_status_and_show_lists_the_events(own: Stack) -> None:
    done = kling_relay(own, "submit", "a quiet harbour", "--provider", "apikley", "--wait", "--poll-interval", "0.2")
    assert done.returncode == 0
    listed = kling_relay(own, "tasks", "list", "--status", "succeeded", "--limit", "100")
    assert listed.returncode == 0
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:3] == ["ID", "STATUS", "PROVIDER"]
    assert rows and all(row.split()[1] == "succeeded" for row in rows)
    task_id = next(row.split()[0] for row in rows if "a quiet harbour" in row)
    shown = kling_relay(own, "tasks", "show", task_id)
    assert "status:    succeeded" in shown.stdout and "video_url: http" in shown.stdout
    assert [line.split()[2] for line in shown.stdout.split("events:\n")[1].splitlines()] == ["task.submitted", "task.succeeded"]
    as_json = kling_relay(own, "tasks", "show", task_id, "--json")
    assert '"events"' in as_json.stdout and '"video_url"' in as_json.stdout


def _settled(stack: Stack) -> bool:
    with stack.client() as api:
        return not any(api.get("/v1/tasks", params={"status": s}).json()["data"] for s in ("queued", "submitted", "running"))


def _subscription_rows(stack: Stack) -> list[list[str]]:
    listed = kling_relay(stack, "subscriptions", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "ENABLED", "EVENTS", "STREAK", "LAST", "SUCCESS", "URL"]
    return [row.split() for row in rows]


def test_subscription_commands_cover_a_webhooks_whole_life(own: Stack, receiver: Receiver) -> None:
    # Earlier tests' tasks must not finish into this subscription.
    wait_for(lambda: _settled(own), timeout_s=30, what="earlier tasks to finish")
    since = (datetime.now(UTC) - timedelta(milliseconds=100)).isoformat()
    added = kling_relay(own, "subscriptions", "add", receiver.answer("cli-hook"), "--events", "task.succeeded")
    assert added.returncode == 0, added.stderr
    sub_id, secret = added.stdout.split()
    assert sub_id.startswith("sub_") and secret.startswith("whsec_")
    url = receiver.url("cli-hook")
    assert [sub_id, "yes", "task.succeeded", "0", "never", url] in _subscription_rows(own)

    assert kling_relay(own, "submit", "a lantern", "--provider", "apikley", "--wait", "--poll-interval", "0.2").returncode == 0
    [first] = receiver.wait_for_count("cli-hook", 1)
    assert Webhook(secret).verify(first.body, first.headers)["type"] == "task.succeeded"

    def delivered() -> list[str] | None:
        rows = kling_relay(own, "deliveries", "list", sub_id).stdout.splitlines()[1:]
        return rows if rows and rows[0].split()[1] == "delivered" else None

    [row] = wait_for(delivered, timeout_s=10, what="the delivery to be logged")
    [listed] = [r for r in _subscription_rows(own) if r[0] == sub_id]
    assert listed[3] == "0" and listed[4].startswith("20"), listed  # its success, on its row
    assert kling_relay(own, "deliveries", "retry", row.split()[0]).returncode == 0
    receiver.wait_for_count("cli-hook", 2)

    rotated = kling_relay(own, "subscriptions", "rotate", sub_id)
    assert rotated.returncode == 0 and rotated.stdout.strip().startswith("whsec_") and rotated.stdout.strip() != secret
    replayed = kling_relay(own, "replay", sub_id, "--since", since)
    assert replayed.returncode == 0 and replayed.stdout.strip() == "1", replayed.stderr
    third = receiver.wait_for_count("cli-hook", 3)[2]
    assert Webhook(rotated.stdout.strip()).verify(third.body, third.headers)["id"] == first.json()["id"]
    assert kling_relay(own, "replay", sub_id, "--since", since, "--failed-only").stdout.strip() == "0"

    tested = kling_relay(own, "subscriptions", "test", sub_id, "--event-type", "task.failed")
    assert tested.returncode == 0 and tested.stdout.strip().startswith("dlv_"), tested.stderr
    fourth = receiver.wait_for_count("cli-hook", 4)[3]
    test_event = Webhook(rotated.stdout.strip()).verify(fourth.body, fourth.headers)
    assert test_event["type"] == "task.failed" and test_event["test"] is True
    assert kling_relay(own, "subscriptions", "test", sub_id, "--event-type", "task.nope").returncode == 3

    assert kling_relay(own, "subscriptions", "rm", sub_id).returncode == 0
    assert sub_id not in kling_relay(own, "subscriptions", "list").stdout


def test_dev_prints_a_submit_wait_example_that_works_as_printed(tmp_path: Path) -> None:
    """The README's first run: `kling-relay dev` on a bare environment, then its own example."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("KLING_RELAY_", "APIKLEY_", "NOVITA_", "REDIS_", "CALLBACK_"))
    }
    env.update(PORT=str(free_port()), PYTHONUNBUFFERED="1")
    dev = subprocess.Popen(
        [str(ENTRY_POINT), "dev"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert dev.stdout is not None
        printed = ""
        while "Press Ctrl-C" not in printed:
            line = dev.stdout.readline()
            assert line, f"dev exited early: {printed}"
            printed += line
        exports = re.search(r"export (KLING_RELAY_URL=\S+) (KLING_RELAY_API_KEY=\S+)", printed)
        assert exports is not None, printed
        example = re.search(r"^\s+(\S*kling-relay) submit \"(.+)\" --wait$", printed, re.MULTILINE)
        assert example is not None, printed
        assert f"/dashboard?key={exports[2].split('=', 1)[1]}" in printed
        run_env = {**env, **dict(pair.split("=", 1) for pair in exports.groups())}
        result = subprocess.run(
            [example[1], "submit", example[2], "--wait"],
            check=False,
            cwd=tmp_path,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().endswith(".mp4")
    finally:
        dev.send_signal(signal.SIGTERM)
        assert dev.wait(timeout=20) == 0
