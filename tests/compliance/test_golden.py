"""The golden cases (written from COMPLIANCE.md) through the real harness, as a subprocess.

The repository's own golden file (``tests/compliance/golden.jsonl``) always runs through
``python -m compliance.check``. Only the check of the spec's own examples needs the spec,
``<repo>/../shared/COMPLIANCE.md`` (CI clones the repository with ``../shared`` beside it):
without it that test is skipped locally and fails under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.compliance import make_golden

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
GOLDEN = HERE / "golden.jsonl"
SPEC = ROOT.parent / "shared" / "COMPLIANCE.md"


def spec_text() -> str:
    if not SPEC.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{SPEC} is required under CI=true (the repository is cloned with ../shared beside it)")
        pytest.skip(f"{SPEC} is not beside the repository")
    return SPEC.read_text(encoding="utf-8")


def harness(path: Path, *extra: str) -> tuple[list[dict], str]:
    out = subprocess.run([sys.executable, "-m", "compliance.check", str(path), *extra], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()], out.stderr


def test_golden_file_is_what_the_generator_writes():
    expected = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in make_golden.cases())
    assert GOLDEN.read_text(encoding="utf-8") == expected, "run python -m tests.compliance.make_golden"


def test_golden_file_covers_the_spec():
    cases = [json.loads(line) for line in GOLDEN.read_text(encoding="utf-8").splitlines()]
    assert len(cases) >= 60
    assert all(c.get("why") and c.get("expect") for c in cases)
    reasons = {c["expect"]["reason"] for c in cases}
    from compliance.gate import REASONS

    untested = set(REASONS) - reasons - {"internal_error"}
    assert not untested, f"no golden case for {sorted(untested)}"
    for st in ("FL", "OK", "MD", "WA", "AL"):  # every state row marked high
        assert any(c["expect"].get("rule") == st for c in cases), st
    assert {"2026-03-08", "2026-11-01"} <= {c["call"]["at_utc"][:10] for c in cases}


def test_every_golden_case_passes_through_the_harness():
    cases = [json.loads(line) for line in GOLDEN.read_text(encoding="utf-8").splitlines()]
    got, err = harness(GOLDEN)
    assert [g["id"] for g in got] == [c["id"] for c in cases]  # one line per case, in order
    wrong = []
    for case, out in zip(cases, got):
        exp = case["expect"]
        if out["allow"] != exp["allow"] or out["reason"] != exp["reason"] or ("rule" in exp and out.get("rule") != exp["rule"]):
            wrong.append((case["id"], exp, out))
    assert not wrong, wrong
    assert "0 disagree" in err


def test_the_spec_examples_pass(tmp_path):
    text = spec_text()
    lines = [line for line in text.splitlines() if line.startswith('{"id": ')]
    assert len(lines) >= 6
    src = tmp_path / "spec.jsonl"
    src.write_text("\n".join(lines) + "\n")
    got, err = harness(src)
    for line, out in zip(lines, got):
        exp = json.loads(line)["expect"]
        assert (out["allow"], out["reason"]) == (exp["allow"], exp["reason"]), out
        if "rule" in exp:
            assert out["rule"] == exp["rule"]


def test_bad_lines_yield_invalid_request_and_never_crash(tmp_path):
    good = GOLDEN.read_text(encoding="utf-8").splitlines()[0]
    bad_state = json.loads(good)
    bad_state["id"] = "bad_state"
    bad_state["state"]["national_dnc"]["snapshot_date"] = "yesterday"
    bad_consent = json.loads(good)
    bad_consent["id"] = "bad_consent"
    next(iter(bad_consent["state"]["consents"].values()))["created_at"] = "2026-04-13 15:00"  # naive
    lines = [
        "this is not json",
        "[1, 2, 3]",
        '{"id": "no_call"}',
        '{"id": "call_not_object", "call": "x", "state": {}}',
        '{"id": "state_not_object", "call": {"direction": "outbound"}, "state": 7}',
        json.dumps(bad_state),
        json.dumps(bad_consent),
        '{"id": "weird_types", "call": {"direction": "outbound", "at_utc": 5, "callee": ["x"], "buyer": 3}, "state": {}}',
        '{"id": "missing_buyer", "call": {"direction": "outbound", "at_utc": "2026-04-15T16:00:00Z", "callee": "+12127365000"}, "state": {}}',
        '{"id": "bad_token_type", "call": {"direction": "outbound", "at_utc": "2026-04-15T16:00:00Z", "callee": "+12127365000", "buyer": "b", "consent_token": 12}, "state": {}}',
        "",
        good,
    ]
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    got, _ = harness(src, "--evidence")
    assert len(got) == len(lines) - 1  # the blank line has no output
    assert [g["reason"] for g in got[:-1]] == ["invalid_request"] * (len(lines) - 2)
    assert all(g["allow"] is False for g in got[:-1])
    assert got[2]["id"] == "no_call" and got[0]["id"] is None
    assert got[-1]["id"] == json.loads(good)["id"] and "evidence" in got[-1]


def test_evidence_names_the_data_versions(tmp_path):
    src = tmp_path / "one.jsonl"
    src.write_text(next(line for line in GOLDEN.read_text().splitlines() if '"fl_2000_deny"' in line) + "\n")
    (out,), _ = harness(src, "--evidence")
    ev = out["evidence"]
    assert out["retry_after_utc"] == "2026-04-16T12:00:00Z"  # 08:00 EDT the next morning
    assert ev["npa_table"].startswith("npa-") and ev["rules"].startswith("rules-") and ev["tzdata"]
    assert ev["dnc_snapshot_date"] == "2026-04-11" and ev["gate"]  # five days before the call
    assert ev["candidate_states"] == ["FL"] and ev["candidate_zones"] == ["America/New_York"]


def test_a_missing_spec_fails_under_ci_and_is_skipped_elsewhere(monkeypatch, tmp_path):
    monkeypatch.setattr(sys.modules[__name__], "SPEC", tmp_path / "COMPLIANCE.md")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="required under CI=true"):
        spec_text()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        spec_text()
    (tmp_path / "COMPLIANCE.md").write_text("spec")
    assert spec_text() == "spec"
