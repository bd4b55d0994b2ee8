"""Logs are one JSON object per line, carry the ids that tie them to the API, and leak no secret."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson
import pytest

from service.domain.tokens import callback_token
from tests.stack.conftest import API_KEY, CALLBACK_SECRET, Simulator, Stack, wait_for
from tests.stack.receivers import Receiver, run_task, serve_receiver, subscribe
from tests.stack.stacks import owned_stack


@pytest.fixture(scope="module")
def own(simulator: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    simulator.reset()  # to its defaults: an earlier module may have reconfigured it
    with owned_stack(tmp_path_factory.mktemp("logs"), simulator) as owned:
        yield owned.stack


def test_real_processes_log_only_json_lines_with_ids_and_no_secrets(own: Stack) -> None:
    with serve_receiver() as receiver, own.client() as api:
        assert isinstance(receiver, Receiver)
        sub = subscribe(api, receiver.answer("logs", then=503), ["task.succeeded"])
        task = run_task(api)
        receiver.wait_for_count("logs", 1)
        api.delete(f"/v1/subscriptions/{sub['id']}")
    secrets = [API_KEY, CALLBACK_SECRET, callback_token(CALLBACK_SECRET, task["id"]), sub["secret"].removeprefix("whsec_")]

    def lines() -> list[dict[str, object]] | None:
        parsed = []
        for path in own.log_dir.glob("*.log"):
            text = path.read_text()
            for secret in secrets:
                assert secret not in text, f"{path.name} leaks a secret"
            parsed += [orjson.loads(line) for line in text.splitlines() if line.strip()]  # each must be JSON
        about = [line for line in parsed if line.get("task_id") == task["id"]]
        return about if any("delivery_id" in line for line in about) else None

    about = wait_for(lines, timeout_s=10, what="the task's log lines")
    transitions = [line for line in about if str(line["message"]).startswith("task.")]
    assert [str(line["message"]).split()[0] for line in transitions] == ["task.submitted", "task.succeeded"]
    assert all(str(line["event_id"]).startswith("evt_") for line in transitions)
    [failed] = [line for line in about if "delivery_id" in line]
    assert failed["subscription_id"] == sub["id"] and "status=503" in str(failed["message"])


def test_a_key_sent_under_a_percent_encoded_parameter_name_is_masked_in_the_access_log(own: Stack) -> None:
    signed = httpx.get(f"{own.url}/dashboard?%6Bey={API_KEY}&status=failed")
    assert signed.status_code == 303 and signed.cookies.get("kr_dashboard"), "the server took it as the key"

    def access_line() -> str | None:
        for path in own.log_dir.glob("web-*.log"):
            for line in path.read_text().splitlines():
                if "/dashboard?%6Bey=" in line:
                    return line
        return None

    line = wait_for(access_line, timeout_s=10, what="the access log line")
    assert API_KEY not in line
    assert "/dashboard?%6Bey=[redacted]&status=failed" in orjson.loads(line)["message"]


def test_a_callback_leaves_one_line_naming_its_task_and_what_it_came_to(own: Stack) -> None:
    task_id = "task_000000000logsrefused00000"
    refused = httpx.post(f"{own.url}/callbacks/apikley/{task_id}/forged", json={"code": 200, "data": {"taskId": "p"}})
    assert refused.status_code == 401

    def about() -> list[str] | None:
        found = [line for path in own.log_dir.glob("web-*.log") for line in path.read_text().splitlines() if task_id in line]
        return found or None

    [line] = wait_for(about, timeout_s=10, what="the callback's line")
    parsed = orjson.loads(line)
    assert parsed["task_id"] == task_id and parsed["message"].startswith("callback refused")
    assert "status=401 code=invalid_token" in parsed["message"]  # and no access line for it


def test_at_warning_web_and_worker_log_no_line_for_a_callback_or_a_job(
    simulator: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with owned_stack(tmp_path_factory.mktemp("quiet"), simulator, {"LOG_LEVEL": "warning"}) as owned:
        stack = owned.stack
        task_id = "task_000000000logsquiet0000000"
        assert httpx.post(f"{stack.url}/callbacks/apikley/{task_id}/forged", json={"code": 200}).status_code == 401
        with stack.client() as api:
            run_task(api)  # jobs run: RQ's per-job lines are INFO too
        text = {path.name: path.read_text() for path in stack.log_dir.glob("*.log")}
        assert {name.split("-")[0] for name in text} >= {"web", "worker"}
        assert task_id not in "".join(text.values())
        assert not [name for name, lines in text.items() if '"level":"info"' in lines]
