"""Hypothesis properties of the gate: denials compose, allows respect every window, no input raises."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib import resources
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compliance.check import decide_case, load_state
from compliance.gate import REASONS, Gate
from compliance.dncformats import parse_fields, parse_full_chunk
from compliance.instants import parse_rfc3339, rfc3339
from compliance.numbers import parse_number
from compliance.rules import default_rules

RAW_RULES = json.loads(resources.files("compliance").joinpath("data", "rules.json").read_text())
NUMBERS = ["+12127365000", "+13053581234", "+18504321234", "+14485551234", "+14055551234", "+14105551234",
           "+12065551234", "+12145551234", "+19155551234", "+12055551234", "+15045551234", "+16015551234",
           "+12035551234", "+15025551234", "+18124221234", "+19305551234", "+19285551234", "+19072761234",
           "+18085861234", "+17875551234", "+14015551234", "+16175551234", "+13125550100", "+17025551234"]
START = int(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp())
END = int(datetime(2027, 1, 1, tzinfo=timezone.utc).timestamp())
DAY = 86_400
instants = st.one_of(
    st.integers(START, END),
    # both 2026 DST days, densely
    st.integers(int(datetime(2026, 3, 8, tzinfo=timezone.utc).timestamp()), int(datetime(2026, 3, 9, 12, tzinfo=timezone.utc).timestamp())),
    st.integers(int(datetime(2026, 11, 1, tzinfo=timezone.utc).timestamp()), int(datetime(2026, 11, 2, 12, tzinfo=timezone.utc).timestamp())),
)
PERTURBATIONS = ["internal_exchange", "internal_buyer", "revoked", "litigator", "stale", "no_snapshot", "national",
                 "state_list", "no_token", "unknown_token", "phone_mismatch", "seller_mismatch", "expired",
                 "rnd", "frequency", "holiday", "emergency", "abandon", "address_fl"]


def base_state(number: str, at_s: int, perturb: frozenset[str]) -> tuple[dict, dict]:
    at = rfc3339(at_s * 10**9)
    day = datetime.fromtimestamp(at_s, timezone.utc).date()
    snap = datetime.fromtimestamp(at_s - 3 * DAY, timezone.utc).date().isoformat()
    rec = {"phone": number, "sellers": ["b"], "created_at": rfc3339((at_s - 2 * DAY) * 10**9),
           "expires_at": rfc3339((at_s + 90 * DAY) * 10**9), "revoked_at": None}
    state: dict = {"national_dnc": {"snapshot_date": snap, "numbers": {}}, "consents": {"t": rec}, "state_dnc": {},
                   "internal_dnc": [], "litigators": [], "prior_calls": [], "rnd": {}, "state_holidays": {}}
    call = {"direction": "outbound", "at_utc": at, "buyer": "b", "campaign": "c", "vertical": "v", "consent_token": "t",
            "caller": "+18885550100", "callee": number}
    info = parse_number(number)
    for p in perturb:
        if p == "internal_exchange":
            state["internal_dnc"].append({"number": number, "scope": "exchange", "added_at": at})
        elif p == "internal_buyer":
            state["internal_dnc"].append({"number": number, "scope": "buyer:b", "added_at": rfc3339((at_s - 1) * 10**9)})
        elif p == "revoked":
            rec["revoked_at"] = at
        elif p == "litigator":
            state["litigators"].append(number)
        elif p == "stale" and state["national_dnc"] is not None:
            state["national_dnc"]["snapshot_date"] = datetime.fromtimestamp(at_s - 40 * DAY, timezone.utc).date().isoformat()
        elif p == "no_snapshot":
            state["national_dnc"] = None
        elif p == "national" and state["national_dnc"] is not None:
            state["national_dnc"]["numbers"][number] = {"added": snap}
            call["consent_token"] = "other" if "no_token" not in perturb else None
            state["consents"]["other"] = dict(rec, sellers=["z"])
        elif p == "state_list":
            state["state_dnc"]["TX"] = {"snapshot_date": snap, "numbers": [number]}
            rec["sellers"] = ["z"]
        elif p == "no_token":
            call["consent_token"] = None
        elif p == "unknown_token":
            call["consent_token"] = "nobody"
        elif p == "phone_mismatch":
            rec["phone"] = "+12025550123" if number != "+12025550123" else "+12125550123"
        elif p == "seller_mismatch":
            rec["sellers"] = ["z"]
        elif p == "expired":
            rec["expires_at"] = at
        elif p == "rnd":
            state["rnd"][number] = {"disconnected_at": day.isoformat()}
        elif p == "frequency":
            state["prior_calls"] += [{"consumer": number, "direction": "outbound", "vertical": "v",
                                      "at_utc": rfc3339((at_s - k * 3600) * 10**9)} for k in (1, 2, 3)]
            rec["address"] = {"state": "FL"}
        elif p == "holiday" and info is not None and info.state:
            state["state_holidays"] = {"AL": [day.isoformat()]}
            rec["address"] = {"state": "AL"}
        elif p == "emergency":
            state["emergency_states"] = ["LA"]
            rec["address"] = {"state": "LA"}
        elif p == "abandon":
            state["abandoned_campaigns"] = ["c"]
        elif p == "address_fl":
            rec["address"] = {"state": "FL"}
    return call, state


def verdict(number: str, at_s: int, perturb: frozenset[str]):
    call, state = base_state(number, at_s, perturb)
    return decide_case({"call": call, "state": state})[0]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(NUMBERS), instants, st.frozensets(st.sampled_from(PERTURBATIONS), max_size=5))
def test_any_deny_from_any_rule_denies(number, at_s, perturb):
    combined = verdict(number, at_s, perturb)
    for p in perturb:
        alone = verdict(number, at_s, frozenset({p}))
        if not alone.allow:
            assert not combined.allow, (p, alone, combined)
    if combined.allow:
        assert verdict(number, at_s, frozenset()).allow


def _inside(zone: str, states: list[str], at_s: int, holidays: dict) -> bool:
    local = datetime.fromtimestamp(at_s, ZoneInfo(zone))
    minute = local.hour * 60 + local.minute
    if not 8 * 60 <= minute < 21 * 60:
        return False
    day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[local.weekday()]
    for s in states:
        row = RAW_RULES["states"].get(s)
        if row is None:
            continue
        w = row["hours"][day]
        if w is None:
            return False
        lo = int(w[0][:2]) * 60 + int(w[0][3:])
        hi = int(w[1][:2]) * 60 + int(w[1][3:])
        if not lo <= minute < hi:
            return False
        if row["holidays_banned"] and local.date().isoformat() in holidays.get(s, []):
            return False
    return True


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(NUMBERS), instants, st.sampled_from([None, "FL", "TX", "AL", "AZ", "AK", "WA", "RI"]))
def test_an_allow_is_inside_every_window_in_every_candidate_zone(number, at_s, address):
    call, state = base_state(number, at_s, frozenset())
    if address is not None:
        state["consents"]["t"]["address"] = {"state": address}
    v, gate = decide_case({"call": call, "state": state})
    if not v.allow:
        assert v.reason in REASONS
        return
    assert v.plan is not None and v.plan.zones
    info = parse_number(number)
    expected_states = {info.state} | ({address} if address else set())
    assert set(v.plan.states) == expected_states - {None}
    assert set(info.zones) <= set(v.plan.zones)
    for zone in v.plan.zones:
        assert _inside(zone, list(v.plan.states), at_s, {}), (zone, rfc3339(at_s * 10**9))
    # and a temporal denial's retry instant is itself inside every window
    for s in range(0, 48):
        probe = at_s + s * 1800
        pv, _ = decide_case({"call": dict(call, at_utc=rfc3339(probe * 10**9)), "state": state})
        if pv.retry_after_ns is not None and pv.reason != "state_frequency_limit":
            r = pv.retry_after_ns // 10**9
            assert r > probe and all(_inside(z, list(pv.plan.states), r, {}) for z in pv.plan.zones)
            break


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
call_fields = st.fixed_dictionaries({}, optional={
    "direction": st.sampled_from(["inbound", "outbound", "sideways", "", None, 3]),
    "at_utc": st.one_of(st.sampled_from(["2026-04-15T16:00:00Z", "2026-04-15T16:00:00", "2026-13-45T99:00:00Z", "", "2026-03-08T07:30:00-05:00"]), st.text(max_size=30), st.integers()),
    "caller": st.one_of(st.sampled_from(NUMBERS + ["anonymous", "", "+44", "1-800-FLOWERS"]), st.text(max_size=20), st.integers()),
    "callee": st.one_of(st.sampled_from(NUMBERS + ["anonymous", "", "+4479111234567"]), st.text(max_size=20), json_values),
    "buyer": st.one_of(st.just("b"), json_values), "campaign": st.one_of(st.just("c"), json_values),
    "vertical": st.one_of(st.just("v"), json_values), "consent_token": st.one_of(st.just("t"), json_values),
    "origin": st.one_of(st.sampled_from(["callback", "consumer_dialed", "warm_transfer", "x"]), json_values),
    "dial_mode": st.one_of(st.sampled_from(["manual", "autodialed", "prerecorded", "x"]), json_values),
})
state_fields = st.fixed_dictionaries({}, optional={
    "national_dnc": st.one_of(st.none(), st.fixed_dictionaries({"snapshot_date": st.one_of(st.just("2026-04-10"), json_values),
                                                                "numbers": st.one_of(st.just({"+12127365000": {}}), json_values)})),
    "consents": st.one_of(st.just({"t": {"phone": "+12127365000", "sellers": ["b"], "created_at": "2026-04-14T00:00:00Z"}}), json_values),
    "internal_dnc": json_values, "litigators": json_values, "prior_calls": json_values, "rnd": json_values,
    "state_dnc": json_values, "state_holidays": json_values,
})


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call_fields, state_fields)
def test_arbitrary_input_never_raises_and_never_allows_outbound_nonsense(call, state):
    v, _ = decide_case({"id": "x", "call": call, "state": state})
    assert v.reason in REASONS
    if v.allow:
        assert call.get("direction") in ("inbound", "outbound")
        assert parse_rfc3339(call.get("at_utc")) is not None


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_lines_never_raise(value):
    v, _ = decide_case(value)
    assert v.reason in REASONS


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.integers(), st.none(), st.binary(max_size=20)))
def test_gate_entry_points_never_raise(raw):
    gate = Gate(rules=default_rules(), stores=load_state({"national_dnc": {"snapshot_date": "2026-04-10", "numbers": {}}}))
    at = parse_rfc3339(raw) if isinstance(raw, str) else None
    assert gate.decide("outbound", raw, at, buyer="b", vertical=raw, consent_token=raw, origin=raw, dial_mode=raw).reason in REASONS
    assert gate.check(raw, parse_number(raw), 10**18).reason in REASONS  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_import_parsers_never_raise_and_only_yield_valid_numbers(data):
    keys, lines, rejected = parse_full_chunk(data + b"\n")
    for k in keys.tolist():
        assert 2_000_000_000 <= k <= 9_999_999_999 and (k // 10_000) % 1000 >= 200
    assert len(keys) + len(rejected) <= lines
    for line in data.decode("utf-8", "replace").splitlines():
        key, _ = parse_fields(line)
        assert key is None or 2_000_000_000 <= key <= 9_999_999_999


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(NUMBERS), instants, st.sampled_from([None, "FL", "TX", "AL", "RI"]))
def test_retry_after_is_the_first_open_minute(number, at_s, address):
    call, state = base_state(number, at_s, frozenset())
    if address is not None:
        state["consents"]["t"]["address"] = {"state": address}
    v, _ = decide_case({"call": call, "state": state})
    if v.reason not in ("outside_calling_hours", "state_day_restriction"):
        return
    assert v.retry_after_ns is not None
    retry = v.retry_after_ns // 10**9
    states = list(v.plan.states)
    assert all(_inside(z, states, retry, {}) for z in v.plan.zones)
    assert retry - at_s <= 4 * DAY
    minute = (at_s // 60 + 1) * 60
    while minute < retry:  # every minute before it is closed somewhere
        assert not all(_inside(z, states, minute, {}) for z in v.plan.zones), rfc3339(minute * 10**9)
        minute += 60
