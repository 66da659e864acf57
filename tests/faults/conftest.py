"""Fault tests: a real exchange process is killed, starved of its database or flooded with bad
input, and must lose nothing. Every test records what it tried in ``faults`` and the run ends
with a summary (also written to ``bench/results/faults.json``): faults injected, bad inputs sent,
requests answered 5xx, money discrepancies (must be 0).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.conftest import pg_schema_url

ROOT = Path(__file__).resolve().parents[2]
TALLY: Counter[str] = Counter()
DONE: list[str] = []


class Faults:
    """What one test tried and what survived it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def injected(self, what: str, n: int = 1) -> None:
        TALLY["faults injected"] += n
        TALLY[f"fault: {what}"] += n

    def bad_input(self, what: str, n: int = 1) -> None:
        TALLY["bad inputs sent"] += n
        TALLY[f"bad input: {what}"] += n

    def server_errors(self, n: int) -> None:
        TALLY["5xx answers"] += n

    def discrepancies(self, n: int) -> None:
        TALLY["money discrepancies"] += n


@pytest.fixture
def faults(request: pytest.FixtureRequest) -> Iterator[Faults]:
    f = Faults(request.node.name)
    yield f
    DONE.append(request.node.name)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tempfile.mkdtemp(prefix='dce-faults-')}/ledger.db"
        return
    yield from pg_schema_url("faults")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not DONE:
        return
    TALLY.setdefault("money discrepancies", 0)
    tr = terminalreporter
    tr.section("faults survived")
    tr.write_line(f"tests: {len(DONE)}")
    for k in sorted(TALLY):
        tr.write_line(f"  {k}: {TALLY[k]}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "faults.json").write_text(json.dumps({"tests": DONE, "tally": dict(TALLY), "pid": os.getpid()}, indent=2))
