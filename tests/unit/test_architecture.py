"""The code's shape, checked: the functional core stays pure (no clock, randomness, logging or
I/O imports), dependencies point inward, no module imports itself back through a cycle, and
no product module grows past ~400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE = [
    "routing/book.py", "routing/auction.py", "routing/parking.py", "exchange/pipeline.py", "exchange/lifecycle.py",
    "exchange/core.py", "exchange/errors.py", "exchange/ids.py", "exchange/instants.py", "routing/schedule.py", "routing/capacity.py", "routing/dedupe.py", "routing/eligibility.py", "routing/attestation.py", "exchange/quality.py",
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


PRODUCT = ["exchange", "routing", "compliance", "billing"]
MAX_LINES = 420  # "no module over ~400 lines"


def _module_graph() -> dict[str, set[str]]:
    """module -> the product modules it imports at run time (relative imports resolved), at
    any depth of the file (imports inside functions count: they still form a cycle when run;
    those under ``if TYPE_CHECKING:`` do not)."""
    graph: dict[str, set[str]] = {}
    modules = {f"{pkg}.{p.stem}" for pkg in PRODUCT for p in (ROOT / pkg).glob("*.py")}
    for name in modules:
        pkg = name.split(".")[0]
        tree = ast.parse((ROOT / pkg / (name.split(".")[1] + ".py")).read_text())
        typing_only = {id(n) for top in ast.walk(tree) if isinstance(top, ast.If) and ast.unparse(top.test) in
                       ("TYPE_CHECKING", "typing.TYPE_CHECKING") for b in top.body for n in ast.walk(b)}
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:  # annotations only: not imported at run time
                continue
            if isinstance(node, ast.ImportFrom):
                base = f"{pkg}.{node.module}" if node.level == 1 and node.module else node.module if node.level == 0 else pkg
                for alias in node.names:
                    for cand in (f"{base}.{alias.name}", base):
                        if cand in modules:
                            deps.add(cand)
                            break
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
        deps.discard(name)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a -> ... -> a), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)) is not None:
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)) is not None:
            return found
    return None


def test_no_import_cycles_between_product_modules():
    cycle = find_cycle(_module_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}}) == ["a.x", "a.y", "a.z", "a.x"]
    assert find_cycle({"a.x": {"a.y"}, "a.y": set()}) is None


@pytest.mark.parametrize("package", PRODUCT)
def test_no_product_module_over_400_lines(package):
    big = {p.name: n for p in (ROOT / package).glob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"{package}: {big} (split by concern)"
