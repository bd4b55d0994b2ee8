"""Fixtures of the fault matrix: where each scenario's figures go for `docs/reliability.md`.

With `RELIABILITY_FIGURES=<path>` set (as `bench/reliability_report.py` does), the figures of
every scenario that ran are merged into that JSON file at the end of the session; otherwise
they are only asserted on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.stack.faults.ledger import Figures, Record

FIGURES_ENV = "RELIABILITY_FIGURES"


# (scenario, how it is injected, provider tasks created, the task's outcome)
PaidRecord = Callable[[str, str, int, str], None]


@dataclass
class Collected:
    figures: list[Figures] = field(default_factory=list)
    # Paid-submission scenarios: name → their row of the report.
    paid: dict[str, dict[str, Any]] = field(default_factory=dict)


@pytest.fixture(scope="session")
def _collected() -> Iterator[Collected]:
    collected = Collected()
    yield collected
    target = os.environ.get(FIGURES_ENV)
    if not target or not (collected.figures or collected.paid):
        return
    path = Path(target)
    book: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"scenarios": {}}
    for figures in collected.figures:
        book["scenarios"][figures.scenario] = figures.as_dict()
    book.setdefault("paid", {}).update(collected.paid)
    book["generated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    path.write_text(json.dumps(book, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def record(_collected: Collected) -> Record:
    """Hand a scenario's figures to the report."""
    return _collected.figures.append


@pytest.fixture
def record_paid(_collected: Collected) -> PaidRecord:
    """Hand a paid-submission scenario's count of provider tasks to the report."""

    def record(scenario: str, injection: str, provider_tasks: int, outcome: str) -> None:
        _collected.paid[scenario] = {"injection": injection, "tasks": 1, "provider_tasks": provider_tasks, "outcome": outcome}

    return record
