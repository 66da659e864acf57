"""``python -m exchange demo``: a progress line while it runs, and a summary whose totals add up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import pytest

from tests.e2e.conftest import ROOT

pytestmark = pytest.mark.e2e


def _n(text: str) -> int:
    return int(text.replace(",", ""))


def test_the_demo_summary_adds_up_and_shows_progress():
    env = {**os.environ, "EXCHANGE_DATABASE_URL": f"sqlite:///{tempfile.mkdtemp(prefix='dce-demo-test-')}/ledger.db"}
    env.pop("EXCHANGE_ADMIN_KEY", None)
    out = subprocess.run([sys.executable, "-m", "exchange", "demo", "--seconds", "5", "--calls-per-s", "30"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert re.search(r"^demo: +\d+/5 s +calls [\d,]+ +routed [\d,]+", text, re.M), text  # the progress line
    summary = text.split("=== Exchange demo summary")[1]
    top = {m.group(1): _n(m.group(2)) for m in re.finditer(r"^(calls submitted|routed|rejected|refused)\s+([\d,]+)", summary, re.M)}
    assert top["calls submitted"] == top["routed"] + top["rejected"] + top["refused"], summary
    blocks = re.split(r"^(?=\S)", summary, flags=re.M)

    def parts(head: str) -> int:
        block = next(b for b in blocks if b.startswith(head))
        return sum(_n(m.group(1)) for m in re.finditer(r"^    .+? ([\d,]+)(?: {3}.*)?$", block, re.M))

    assert parts("routed") == top["routed"], summary
    assert parts("rejected") == top["rejected"], summary
    assert parts("refused") == top["refused"], summary
    assert re.search(r"^bids ingested\s+\d{1,3}(,\d{3})*\s", summary, re.M), summary  # thousands separated
