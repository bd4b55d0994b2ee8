"""The `kling-relay` command line without a stack: every command has help, and the live status
line people see on stderr (the commands against real processes are `tests/stack/test_cli.py`)."""

from __future__ import annotations

import io

import pytest

from service.cli import build_parser
from service.cli_client import StatusLine

COMMANDS = [
    [],
    ["web"],
    ["worker"],
    ["simulator"],
    ["dev"],
    ["submit"],
    ["tasks"],
    ["tasks", "list"],
    ["tasks", "show"],
    ["tasks", "cancel"],
    ["subscriptions"],
    ["subscriptions", "add"],
    ["subscriptions", "list"],
    ["subscriptions", "rm"],
    ["subscriptions", "rotate"],
    ["deliveries"],
    ["deliveries", "list"],
    ["deliveries", "retry"],
    ["replay"],
    ["listen"],
    ["subscriptions", "test"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "kling-relay")
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*command, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: kling-relay")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_line_redraws_a_progress_bar_in_place_on_a_terminal() -> None:
    screen = Terminal()
    line = StatusLine(screen)
    line.show({"id": "task_1", "status": "submitted"}, 1.0)
    line.show({"id": "task_1", "status": "running", "progress": 50}, 2.0)
    line.done()
    frames = screen.getvalue().split("\r")[1:]
    assert "[############------------]  50%" in frames[-1]
    assert frames[0].startswith("task_1 submitted") and screen.getvalue().endswith("\n")


def test_status_line_prints_one_line_per_change_in_a_log() -> None:
    log = io.StringIO()
    line = StatusLine(log)
    for status in ("queued", "queued", "running", "running", "succeeded"):
        line.show({"id": "task_1", "status": status}, 0.0)
    assert [row.split()[1] for row in log.getvalue().splitlines()] == ["queued", "running", "succeeded"]
