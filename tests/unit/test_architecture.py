"""The functional core stays pure: no clock, randomness, logging or I/O imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE = [
    "exchange/book.py", "exchange/auction.py", "exchange/pipeline.py", "exchange/lifecycle.py", "exchange/core.py",
    "exchange/instants.py", "routing/schedule.py", "routing/capacity.py", "routing/dedupe.py", "routing/eligibility.py",
    "compliance/gate.py", "compliance/numbers.py", "compliance/suppression.py", "compliance/rules.py",
    "compliance/geo.py", "compliance/instants.py", "compliance/dncarray.py", "compliance/consent.py",
    "compliance/frequency.py", "compliance/stores.py", "compliance/windows.py",
    "billing/money.py", "billing/postings.py", "billing/ledger.py",
]
FORBIDDEN = {"asyncio", "socket", "time", "random", "logging", "os", "threading", "subprocess", "secrets",
             "redis", "asyncpg", "httpx", "websockets", "starlette", "uvicorn", "sqlite3"}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io_clock_or_randomness(module):
    bad = imports(ROOT / module) & FORBIDDEN
    assert not bad, f"{module} imports {sorted(bad)}"


@pytest.mark.parametrize("package", ["routing", "compliance", "billing"])
def test_core_packages_never_import_the_edges(package):
    for path in (ROOT / package).glob("*.py"):
        assert "exchange" not in imports(path), f"{path} imports the exchange package (dependencies point inward)"
