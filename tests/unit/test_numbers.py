"""Unit and property tests of compliance.numbers and of the NPA table it loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compliance import npa_table
from compliance.numbers import NPA_TABLE_VERSION, NumberInfo, is_us_region, parse_number

TABLE_PATH = Path(npa_table.__file__).resolve().parent / "data" / "npa.json"
TABLE: dict[str, Any] = json.loads(TABLE_PATH.read_text(encoding="utf-8"))

SPLIT_NPAS = (208, 219, 270, 308, 423, 541, 574, 605, 606, 620, 701, 775, 785, 812, 850,
              906, 907, 928, 986)
OVERLAYS = {930: 812, 458: 541, 364: 270, 448: 850}


def info(number: str) -> NumberInfo:
    parsed = parse_number(number)
    assert parsed is not None, number
    return parsed


@pytest.mark.parametrize("raw", [
    "+12127365000", "(212) 736-5000", "2127365000", "+1 212-736-5000", "1 (212) 736-5000",
    "212.736.5000", "  +1 212 736 5000  ", "+1 (212) 736-5000",
])
def test_canonical_and_non_canonical_forms_agree(raw: str) -> None:
    assert info(raw) == info("+12127365000")
    assert info(raw).e164 == "+12127365000"


def test_manhattan_number() -> None:
    assert info("+12125550100") == NumberInfo(
        e164="+12125550100", npa=212, region="US", state="NY",
        zones=("America/New_York",), geographic=True)


def test_fictional_555_numbers_are_valid() -> None:
    for raw in ("+12125550100", "+13055550199", "+19075550123"):
        assert info(raw).geographic


@pytest.mark.parametrize(("raw", "region", "zone"), [
    ("+17875551234", "PR", "America/Puerto_Rico"),
    ("+19395551234", "PR", "America/Puerto_Rico"),
    ("+16715551234", "GU", "Pacific/Guam"),
    ("+13407751234", "VI", "America/St_Thomas"),
])
def test_territories_are_domestic_with_their_own_state(raw: str, region: str, zone: str) -> None:
    parsed = info(raw)
    assert (parsed.region, parsed.state, parsed.zones) == (region, region, (zone,))
    assert is_us_region(parsed.region) and parsed.geographic


def test_partial_npa_agrees_between_forms() -> None:
    # 671 (Guam) accepts only some NXX codes: it always takes the phonenumbers path.
    assert info("(671) 555-1234") == info("+16715551234")
    assert parse_number("+16713011234") is None  # NXX 301 is not a Guam code


def test_canada_is_not_domestic() -> None:
    parsed = info("+14165551234")
    assert parsed.region == "CA" and parsed.state is None
    assert parsed.zones == ("America/Toronto",)
    assert not is_us_region(parsed.region)


@pytest.mark.parametrize("raw", ["+18005551234", "+18885551234", "+19005551234", "+15005551234"])
def test_service_numbers_are_not_geographic(raw: str) -> None:
    parsed = info(raw)
    assert not parsed.geographic
    assert parsed.zones  # never empty: an empty zone list would read as "no constraint"


def test_non_nanp_number() -> None:
    parsed = info("+447911123456")
    assert parsed.npa is None and parsed.state is None
    assert parsed.region == "GG" and "Europe/London" in parsed.zones
    assert not is_us_region(parsed.region)


@pytest.mark.parametrize("npa", SPLIT_NPAS)
def test_split_npas_have_more_than_one_zone(npa: int) -> None:
    assert len(info(f"+1{npa}5550100").zones) > 1


@pytest.mark.parametrize(("overlay", "parent"), sorted(OVERLAYS.items()))
def test_overlays_have_their_parents_zones(overlay: int, parent: int) -> None:
    zones = set(info(f"+1{overlay}5550100").zones)
    assert set(info(f"+1{parent}5550100").zones) <= zones and len(zones) > 1


def test_alaska_keeps_adak_without_the_suspect_honolulu_prefix() -> None:
    zones = set(info("+19075810100").zones)
    assert {"America/Anchorage", "America/Adak"} <= zones
    assert "Pacific/Honolulu" not in zones


@pytest.mark.parametrize("raw", [
    None, 123, 2127365000, b"+12127365000", "", "   ", "anonymous", "+1212736500",
    "not-a-number", "+1" + "9" * 40, "+12121365000", "+11127365000", "+17005551234",
    "1-800-FLOWERS", "+1212736500０", "+1２１２7365000", "212-736-5000 x12",
])
def test_invalid_inputs_give_none(raw: object) -> None:
    assert parse_number(raw) is None


def test_is_us_region() -> None:
    assert all(is_us_region(r) for r in ("US", "PR", "GU", "VI", "AS", "MP"))
    assert not any(is_us_region(r) for r in ("CA", "GB", "DO", "JM", ""))
    assert npa_table.DOMESTIC_TERRITORIES | {"US"} == {"US", "PR", "GU", "VI", "AS", "MP"}


def test_every_table_npa_parses_the_same_on_both_paths() -> None:
    for code, row in TABLE["npa"].items():
        if not row["all_nxx"]:
            continue
        fast = info(f"+1{code}5550100")
        assert fast == info(f"1 ({code}) 555-0100"), code
        assert (fast.region, fast.state, list(fast.zones), fast.geographic) == (
            row["region"], row["state"], row["zones"], row["geographic"])


def test_every_us_geographic_npa_has_one_state() -> None:
    rows = [r for r in TABLE["npa"].values() if r["region"] == "US" and r["geographic"]]
    assert len(rows) >= 359
    assert all(isinstance(r["state"], str) and len(r["state"]) == 2 for r in rows)


@pytest.fixture(scope="module")
def generated() -> dict[str, Any]:
    return npa_table.build_table()


def test_checked_in_table_matches_its_generator(generated: dict[str, Any]) -> None:
    assert TABLE == generated
    assert TABLE_PATH.read_text(encoding="utf-8") == npa_table.render(generated)
    assert NPA_TABLE_VERSION == generated["version"] == npa_table.table_version()


_DIALLED = st.from_regex(
    r"\A(\+?1)?[ (]{0,2}[2-9][0-9]{2}[) .-]{0,2}[0-9]{3}[ .-]?[0-9]{4}\Z", fullmatch=True)
_E164 = st.from_regex(r"\A\+[1-9][0-9]{6,14}\Z", fullmatch=True)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=40), _DIALLED, _E164))
def test_parse_never_raises_and_is_idempotent(raw: str) -> None:
    parsed = parse_number(raw)
    if parsed is not None:
        assert parse_number(parsed.e164) == parsed
        assert parsed.e164.startswith("+") and parsed.e164[1:].isdigit()
        assert (parsed.npa is not None) == parsed.e164.startswith("+1")


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.integers(), st.floats(), st.binary(), st.lists(st.text())))
def test_parse_never_raises_on_non_strings(raw: object) -> None:
    assert parse_number(raw) is None
