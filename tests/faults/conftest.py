"""Fixtures of the fault matrix: where each scenario's figures go for `docs/reliability.md`.

With `RELIABILITY_FIGURES=<path>` set (as `bench/reliability_report.py` does), the figures of
every scenario that ran are merged into that JSON file at the end of the session; otherwise
they are only asserted on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.faults.ledger import Figures, Record

FIGURES_ENV = "RELIABILITY_FIGURES"


@pytest.fixture(scope="session")
def _all_figures() -> Iterator[list[Figures]]:
    collected: list[Figures] = []
    yield collected
    target = os.environ.get(FIGURES_ENV)
    if not target or not collected:
        return
    path = Path(target)
    book: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"scenarios": {}}
    for figures in collected:
        book["scenarios"][figures.scenario] = figures.as_dict()
    book["generated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    path.write_text(json.dumps(book, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def record(_all_figures: list[Figures]) -> Record:
    """Hand a scenario's figures to the report."""
    return _all_figures.append


# (scenario, how it is injected, provider tasks created, the task's outcome)
PaidRecord = Callable[[str, str, int, str], None]


@pytest.fixture(scope="session")
def _all_paid() -> Iterator[dict[str, dict[str, Any]]]:
    collected: dict[str, dict[str, Any]] = {}
    yield collected
    target = os.environ.get(FIGURES_ENV)
    if not target or not collected:
        return
    path = Path(target)
    book: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"scenarios": {}}
    book.setdefault("paid", {}).update(collected)
    path.write_text(json.dumps(book, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def record_paid(_all_paid: dict[str, dict[str, Any]]) -> PaidRecord:
    """Hand a paid-submission scenario's count of provider tasks to the report."""

    def record(scenario: str, injection: str, provider_tasks: int, outcome: str) -> None:
        _all_paid[scenario] = {"injection": injection, "tasks": 1, "provider_tasks": provider_tasks, "outcome": outcome}

    return record
