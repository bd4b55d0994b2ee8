"""Test modules run longest first.

xdist runs each module whole on one of its workers, handing them out in collection order, and the
suite ends when its last module does: a long module collected last (alphabetically, say) would
run on alone at the end. So modules are ordered by how long they took, longest first:
`tests/durations.json`, seconds per module from a whole run. A module missing from it (a new
one) counts as quick and keeps its place among those. Refresh the file with

    KR_RECORD_DURATIONS=tests/durations.json .venv/bin/python -m pytest
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

DURATIONS = Path(__file__).with_name("durations.json")
RECORD = "KR_RECORD_DURATIONS"

_seconds: defaultdict[str, float] = defaultdict(float)


def _module(nodeid: str) -> str:
    return nodeid.partition("::")[0]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not DURATIONS.exists():
        return
    seconds: dict[str, float] = json.loads(DURATIONS.read_text())
    # A stable sort: each module's tests keep their order and stay together.
    items.sort(key=lambda item: -seconds.get(_module(item.nodeid), 0.0))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if os.environ.get(RECORD):
        _seconds[_module(report.nodeid)] += report.duration  # setup, call and teardown


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get(RECORD)
    if path and not hasattr(session.config, "workerinput"):  # xdist's controller, or a run without it
        ordered = dict(sorted(((m, round(s, 1)) for m, s in _seconds.items()), key=lambda kv: -kv[1]))
        Path(path).write_text(json.dumps(ordered, indent=1) + "\n")
