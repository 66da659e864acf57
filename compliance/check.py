"""The acceptance harness: ``python -m compliance.check CASES.jsonl`` (COMPLIANCE.md §7).

Each input line is ``{id, call, state, expect?, why?}``. ``state`` is loaded into the gate's
real stores (the same classes and loaders the server uses: ``DncArray`` lists, the
suppression list, the consent store, the frequency counter and inquiry history, the RND
cache, the holiday calendar) and the real gate decides the call for its buyer and campaign.
One JSON object per non-blank input line goes to stdout, in input order:
``{"id", "allow", "reason", "rule"?}``. A line that cannot be read, or whose call or state is
malformed, yields ``invalid_request``; nothing makes the harness crash.

``--evidence`` adds ``retry_after_utc`` and the decision's ``evidence`` to each output line.
A summary (and every mismatch with ``expect``) goes to stderr; ``--strict`` exits 1 when any
case disagrees with its ``expect``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Any
from collections.abc import Iterable

from .consent import consent_from_record
from .dncarray import from_keys, national_key
from .frequency import FrequencyCounter
from .gate import Gate, Verdict
from .instants import day_start_ns, parse_rfc3339
from .numbers import parse_number
from .rules import compile_holidays, default_rules, parse_day
from .stores import Flags, NumberList, Rnd, StateLists, Stores


class BadCase(ValueError):
    pass


def _keys(numbers: Any, where: str) -> list[int]:
    items = list(numbers.keys()) if isinstance(numbers, dict) else numbers
    if not isinstance(items, list):
        raise BadCase(f"{where}: expected a list or an object of numbers")
    out = []
    for raw in items:
        n = raw.get("number") if isinstance(raw, dict) else raw
        key = national_key(n)
        if key is None:
            raise BadCase(f"{where}: {n!r} is not a NANP number")
        out.append(key)
    return out


def _instant(raw: Any, where: str) -> int:
    at = parse_rfc3339(raw)
    if at is None:
        try:
            return day_start_ns(parse_day(raw))
        except ValueError:
            raise BadCase(f"{where}: {raw!r} is not an RFC 3339 time") from None
    return at


def _e164(raw: Any, where: str) -> str:
    info = parse_number(raw)
    if info is None:
        raise BadCase(f"{where}: {raw!r} is not a valid phone number")
    return info.e164


def load_state(state: Any, stores: Stores | None = None) -> Stores:
    """Stores holding exactly what ``state`` describes (see the module docstring)."""
    if not isinstance(state, dict):
        raise BadCase("state must be an object")
    st = stores if stores is not None else Stores()
    nat = state.get("national_dnc")
    if nat is not None:
        if not isinstance(nat, dict):
            raise BadCase("national_dnc must be an object")
        day = parse_day(nat["snapshot_date"]) if nat.get("snapshot_date") is not None else None
        keys = _keys(nat.get("numbers") or {}, "national_dnc.numbers")
        arr = from_keys(keys, {"snapshot_date": nat.get("snapshot_date")})
        st.national = NumberList(arr, day, f"national:{nat.get('snapshot_date')}:n={len(arr)}")
    by_state: dict[str, NumberList] = {}
    for code, lst in (state.get("state_dnc") or {}).items():
        if not isinstance(code, str) or len(code) != 2:
            raise BadCase(f"state_dnc: bad state {code!r}")
        raw_date = lst.get("snapshot_date") if isinstance(lst, dict) else None
        nums = lst.get("numbers", []) if isinstance(lst, dict) else lst
        arr = from_keys(_keys(nums, f"state_dnc.{code}"), {"state": code})
        by_state[code] = NumberList(arr, parse_day(raw_date) if raw_date else None, f"state:{code}:{raw_date}:n={len(arr)}")
    st.state_lists = StateLists.of(by_state)
    for i, entry in enumerate(state.get("internal_dnc") or []):
        if not isinstance(entry, dict):
            raise BadCase(f"internal_dnc[{i}] must be an object")
        scope = entry.get("scope") or "exchange"
        if scope == "buyer" and isinstance(entry.get("buyer"), str):
            scope = f"buyer:{entry['buyer']}"
        if not isinstance(scope, str) or not (scope == "exchange" or scope.startswith("buyer:")):
            raise BadCase(f"internal_dnc[{i}]: scope must be exchange or buyer:<id>")
        added = _instant(entry.get("added_at"), f"internal_dnc[{i}].added_at")
        st.suppressions.add(_e164(entry.get("number"), f"internal_dnc[{i}].number"), scope, added, str(entry.get("source") or ""))
    lit = state.get("litigators") or []
    st.litigators = NumberList(from_keys(_keys(lit, "litigators")), None, f"litigators:n={len(lit)}")
    consents = state.get("consents") or {}
    if not isinstance(consents, dict):
        raise BadCase("consents must be an object keyed by token")
    for token, rec in consents.items():
        try:
            st.consents.add(consent_from_record(token, rec))
        except ValueError as exc:
            raise BadCase(str(exc)) from None
    for i, pc in enumerate(state.get("prior_calls") or []):
        if not isinstance(pc, dict):
            raise BadCase(f"prior_calls[{i}] must be an object")
        who = _e164(pc.get("consumer"), f"prior_calls[{i}].consumer")
        at = _instant(pc.get("at_utc"), f"prior_calls[{i}].at_utc")
        if pc.get("direction") == "inbound":
            if isinstance(pc.get("buyer"), str):
                st.inquiries.record(who, pc["buyer"], at)
        elif pc.get("direction", "outbound") == "outbound":
            st.frequency.record(FrequencyCounter.key(str(pc.get("vertical") or ""), who), at)
        else:
            raise BadCase(f"prior_calls[{i}]: unknown direction")
    rnd: dict[str, int] = {}
    for number, val in (state.get("rnd") or {}).items():
        raw = val.get("disconnected_at") if isinstance(val, dict) else val
        if raw is None:
            continue
        rnd[_e164(number, "rnd")] = parse_day(raw)
    st.rnd = Rnd(f"rnd:n={len(rnd)}", rnd)
    if "state_holidays" in state:
        hol = state.get("state_holidays") or {}
        if not isinstance(hol, dict):
            raise BadCase("state_holidays must be an object")
        st.holidays = compile_holidays("holidays:case", hol)
    st.flags = Flags("flags:case", frozenset(state.get("emergency_states") or ()),
                     frozenset(state.get("abandoned_campaigns") or ()))
    st.generation += 1
    return st


def decide_case(case: Any, gate_factory=None) -> tuple[Verdict, Gate | None]:
    """The gate's verdict on one parsed case line (``invalid_request`` when malformed)."""
    if not isinstance(case, dict) or not isinstance(case.get("call"), dict):
        return Verdict(False, "invalid_request"), None
    call = case["call"]
    try:
        stores = load_state(case.get("state") if case.get("state") is not None else {})
    except (BadCase, ValueError, KeyError, TypeError, AttributeError):
        return Verdict(False, "invalid_request"), None
    gate = Gate(rules=default_rules(), stores=stores)
    direction = call.get("direction")
    number = call.get("caller") if direction == "inbound" else call.get("callee")
    verdict = gate.decide(
        direction, number, parse_rfc3339(call.get("at_utc")), buyer=call.get("buyer"), campaign=call.get("campaign"),
        vertical=call.get("vertical"), consent_token=call.get("consent_token"), origin=call.get("origin"),
        dial_mode=call.get("dial_mode"),
    )
    return verdict, gate


def decision_line(case_id: Any, verdict: Verdict, gate: Gate | None, evidence: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"id": case_id, "allow": verdict.allow, "reason": verdict.reason}
    if verdict.rule is not None:
        out["rule"] = verdict.rule
    if evidence:
        if gate is not None:
            ev = gate.evidence(verdict)
            if "retry_after_utc" in ev:
                out["retry_after_utc"] = ev["retry_after_utc"]
            out["evidence"] = ev
    return out


def run(lines: Iterable[str], out: IO[str], err: IO[str], evidence: bool = False) -> tuple[int, int]:
    """Decide every case; returns (cases, mismatches with ``expect``)."""
    n = bad = 0
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        n += 1
        case: Any = None
        try:
            case = json.loads(line)
        except ValueError:
            pass
        case_id = case.get("id") if isinstance(case, dict) else None
        try:
            verdict, gate = decide_case(case)
        except Exception:  # the gate never raises; this guards the harness itself
            verdict, gate = Verdict(False, "invalid_request"), None
        result = decision_line(case_id, verdict, gate, evidence)
        out.write(json.dumps(result, separators=(", ", ": ")) + "\n")
        expect = case.get("expect") if isinstance(case, dict) else None
        if isinstance(expect, dict):
            wrong = [k for k in ("allow", "reason", "rule") if k in expect and expect[k] != result.get(k)]
            if wrong:
                bad += 1
                err.write(f"MISMATCH line {line_no} id={case_id!r}: expected "
                          f"{ {k: expect.get(k) for k in wrong} }, got { {k: result.get(k) for k in wrong} }\n")
    return n, bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compliance.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", help="JSON lines file of cases ('-' for stdin)")
    parser.add_argument("--evidence", action="store_true", help="add retry_after_utc and the evidence to each line")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any case disagrees with its expect")
    args = parser.parse_args(argv)
    src = sys.stdin if args.cases == "-" else open(args.cases, encoding="utf-8", errors="replace")
    with src:
        n, bad = run(src, sys.stdout, sys.stderr, args.evidence)
    sys.stdout.flush()
    sys.stderr.write(f"{n} cases, {bad} disagree with their expect\n")
    return 1 if (args.strict and bad) else 0


if __name__ == "__main__":
    sys.exit(main())
