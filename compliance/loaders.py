"""Readers of the operator's small compliance files (``rnd.csv``, ``flags.json``,
``holidays.json``) into the values the gate's stores swap in (``ComplianceRuntime.scan``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .numbers import parse_number
from .rules import compile_holidays, parse_day
from .stores import Flags, Rnd


def load_rnd(path: Path) -> Rnd:
    out: dict[str, int] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2 or not parts[0] or parts[0].lower() in ("number", "phone"):
            continue
        info = parse_number(parts[0])
        if info is None:
            continue
        out[info.e164] = parse_day(parts[1])
    return Rnd(f"rnd:{path.stat().st_mtime_ns}:n={len(out)}", out)

def load_flags(path: Path) -> Flags:
    raw = json.loads(path.read_text(encoding="utf-8"))
    return Flags(str(raw.get("version", f"flags:{path.stat().st_mtime_ns}")), frozenset(raw.get("emergency_states", ())),
                 frozenset(raw.get("abandon_campaigns", ())))

def load_holidays(path: Path) -> Any:
    raw = json.loads(path.read_text(encoding="utf-8"))
    return compile_holidays(str(raw.get("version", "holidays-file")), raw.get("dates", {}))
