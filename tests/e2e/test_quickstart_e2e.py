"""The README's quick starts, run verbatim against a fresh server: the buyer's block, then the
publisher's, in one bash shell, as a reader pastes them (so the docs cannot rot)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.e2e.conftest import ADMIN, ROOT, start_server, stop_server

pytestmark = pytest.mark.e2e


def quick_starts() -> dict[str, str]:
    """The README's ```sh blocks whose first line is ``# Quick start, <who>: ...``, by who."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```sh\n(# Quick start, (\w+):.*?)^```$", text, re.M | re.S)
    return {who: body for body, who in blocks}


def test_the_readme_has_a_buyer_and_a_publisher_quick_start():
    assert set(quick_starts()) == {"buyer", "publisher"}


def test_the_quick_starts_run_verbatim_against_a_fresh_server():
    blocks = quick_starts()
    server = start_server()
    try:
        env = {**os.environ, "EXCHANGE_ADMIN_KEY": ADMIN, "EX": server.url,
               "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
        script = blocks["buyer"] + "\n" + blocks["publisher"]
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        text = out.stdout
        assert '{"type":"ack","seq":1}' in text and '{"type":"ack","seq":2}' in text, text
        assert '"decision":"routed"' in text and '"payout_cents":2080' in text, text
        assert '"status":"completed","billable":true,"charged_cents":2600,"payout_cents":2080' in text, text
        assert "key,calls,routed,rejected" in text and "\nc1,1,1,0," in text, text  # the buyer's CSV report
        assert '"kind":"charge"' in text and '"amount_cents":-2600' in text, text  # the buyer's statement
    finally:
        stop_server(server)
