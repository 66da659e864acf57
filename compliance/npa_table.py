"""Generator of ``compliance/data/npa.json``, the NANP area-code (NPA) table.

Run ``python -m compliance.npa_table`` to rewrite the file, or with ``--check`` to fail when
the checked-in file differs from what this generator produces (the unit tests do the same).

For every NPA 200..999 the generator asks ``phonenumbers`` (COMPLIANCE.md §3.1):

* validity, region and number type, probing sample numbers ``+1 NPA NXX 4567``: a short
  list of NXX codes and the NXX codes of every prefix the library's time-zone, geocoder and
  carrier data knows under the NPA, then every NXX 200..999 of an NPA found valid (or with
  prefix data). NPAs with no valid sample are skipped;
* the candidate zones: the UNION of the zones listed for every time-zone prefix under the
  NPA (a single number lookup returns only the longest matching prefix, which hides the
  second zone of a split NPA);
* the state, parsed from the geocoder text ("Miami, FL", "Florida", "Washington State").

``all_nxx`` says whether every ``+1 NPA [2-9]XX XXXX`` is valid (one line number per NXX is
probed: no NANP pattern of the library restricts the line digits except 52[34], which is
partial by NXX anyway): only then may the runtime fast path skip ``phonenumbers``. The curated
corrections below are applied last and checked (``_check``) so that a library upgrade that
breaks them fails loudly instead of shipping a quietly different table.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import PhoneNumber, PhoneNumberType
from phonenumbers.carrierdata import CARRIER_DATA
from phonenumbers.geodata import GEOCODE_DATA
from phonenumbers.timezone import UNKNOWN_TIMEZONE, time_zones_for_number
from phonenumbers.tzdata import TIMEZONE_DATA

OUTPUT = Path(__file__).resolve().parent / "data" / "npa.json"
GENERATED_BY = "python -m compliance.npa_table"

# ---------------------------------------------------------------------------------------
# Curated overlay / correction list: COMPLIANCE.md §3.1 ("Time zone of a US number").
# Bump CURATION_REVISION (and CURATED_ON) whenever any of this data changes; both are part
# of the table version that the gate logs with each decision.
# ---------------------------------------------------------------------------------------
CURATED_ON = "20261123"
CURATION_REVISION = 1

# Overlay NPA -> parent NPA. The library maps each overlay to a single zone, but an overlay
# covers the same territory as its parent, so it gets the union of the parent's zones.
# 930/458/364/448 are listed in §3.1; 986 (overlay of 208 since 2017) already has both
# offset classes in the library and is listed for completeness.
OVERLAYS: dict[int, int] = {930: 812, 458: 541, 364: 270, 448: 850, 986: 208}

# (prefix, zone) pairs dropped from the union. 907-581 is Unalaska, AK (Aleutians East of
# 169°30'W), which keeps Alaska time; the library maps it to Pacific/Honolulu, which §3.1
# calls suspect. The western Aleutians (Adak, Atka) that really are on Hawaii-Aleutian time
# are covered by America/Adak, which observes DST as they do; Honolulu does not. Only this
# pair is dropped: should the library map another 907 prefix to Honolulu, it stays in.
DROPPED_PREFIX_ZONES: frozenset[tuple[str, str]] = frozenset({("1907581", "Pacific/Honolulu")})

# Zones an NPA must list whatever the library says (§3.1: 907 spans Alaska and
# Hawaii-Aleutian time).
REQUIRED_ZONES: dict[int, tuple[str, ...]] = {907: ("America/Adak", "America/Anchorage")}

# §3.1: US NPAs whose prefixes span more than one UTC-offset class, plus the overlays.
# Checked: each must list zones of more than one (January, July) offset class.
MULTI_OFFSET_NPAS: frozenset[int] = frozenset(
    {208, 219, 270, 308, 423, 541, 574, 605, 606, 620, 701, 775, 785, 812, 850, 906, 907,
     928, 986} | set(OVERLAYS)
)

# Service codes that are never geographic (toll-free 8YY, premium 900, personal 5XX ERCs,
# 600/622/633 Canadian non-geographic, 700/710). Only NPAs the library knows enter the
# table; the check fails if the library calls one of these a fixed-line/mobile code.
NON_GEOGRAPHIC_NPAS: frozenset[int] = frozenset(
    {500, 521, 522, 523, 524, 525, 526, 527, 528, 529, 532, 533, 535, 538, 542, 543, 544,
     545, 546, 547, 549, 550, 552, 553, 554, 556, 558, 566, 569, 577, 578, 588, 589,
     600, 622, 633, 700, 710, 800, 833, 844, 855, 866, 877, 888, 900}
)

# Geocoder prefixes whose state disagrees with the NPA-level answer and are ignored:
# 201-631 reads "New York, NY" but 201 is a New Jersey code (NPA entry "New Jersey").
IGNORED_STATE_PREFIXES: frozenset[str] = frozenset({"1201631"})

# ---------------------------------------------------------------------------------------

DOMESTIC_TERRITORIES = frozenset({"PR", "GU", "VI", "AS", "MP"})
_SAMPLE_NXX = ("234", "555", "456", "720", "987", "212", "300")
_LINE = "4567"  # line digits are free in every NANP pattern but 52[34] (partial anyway)
_GEOGRAPHIC_TYPES = frozenset(
    {PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE}
)
_CITY_STATE = re.compile(r", ([A-Z]{2})$")
STATE_NAMES: dict[str, str] = {
    "Alabama": "AL", "Alaska": "AK", "Arizona": "AZ", "Arkansas": "AR", "California": "CA",
    "Colorado": "CO", "Connecticut": "CT", "Delaware": "DE", "Florida": "FL", "Georgia": "GA",
    "Hawaii": "HI", "Idaho": "ID", "Illinois": "IL", "Indiana": "IN", "Iowa": "IA",
    "Kansas": "KS", "Kentucky": "KY", "Louisiana": "LA", "Maine": "ME", "Maryland": "MD",
    "Massachusetts": "MA", "Michigan": "MI", "Minnesota": "MN", "Mississippi": "MS",
    "Missouri": "MO", "Montana": "MT", "Nebraska": "NE", "Nevada": "NV",
    "New Hampshire": "NH", "New Jersey": "NJ", "New Mexico": "NM", "New York": "NY",
    "North Carolina": "NC", "North Dakota": "ND", "Ohio": "OH", "Oklahoma": "OK",
    "Oregon": "OR", "Pennsylvania": "PA", "Rhode Island": "RI", "South Carolina": "SC",
    "South Dakota": "SD", "Tennessee": "TN", "Texas": "TX", "Utah": "UT", "Vermont": "VT",
    "Virginia": "VA", "Washington": "WA", "Washington State": "WA", "West Virginia": "WV",
    "Wisconsin": "WI", "Wyoming": "WY", "Washington D.C.": "DC", "District of Columbia": "DC",
}
_STATE_CODES = frozenset(STATE_NAMES.values())


def table_version() -> str:
    """``npa-<phonenumbers version>-<curation date>-c<curation revision>``."""
    return f"npa-{phonenumbers.__version__}-{CURATED_ON}-c{CURATION_REVISION}"


class _Prefixes:
    """The library's +1 prefix data indexed by NPA (one pass over each data set)."""

    def __init__(self) -> None:
        self.zones: dict[int, dict[str, tuple[str, ...]]] = {}
        self.places: dict[int, dict[str, str]] = {}
        self.nxx: dict[int, set[str]] = {}
        for key, zones in self._under_npas(TIMEZONE_DATA):
            self.zones.setdefault(int(key[1:4]), {})[key] = zones
        for key, names in self._under_npas(GEOCODE_DATA):
            self.places.setdefault(int(key[1:4]), {})[key] = names.get("en", "")
        for data in (TIMEZONE_DATA, GEOCODE_DATA, CARRIER_DATA):
            for key, _ in self._under_npas(data):
                rest = key[4:7]  # NXX candidates: a 5- or 6-digit prefix gives its completions
                width = 3 - len(rest)
                if width < 3:
                    completions = (rest + str(i).zfill(width) for i in range(10**width))
                    self.nxx.setdefault(int(key[1:4]), set()).update(completions)
                else:
                    self.nxx.setdefault(int(key[1:4]), set())

    @staticmethod
    def _under_npas(data: dict[str, Any]) -> list[tuple[str, Any]]:
        return [(k, v) for k, v in data.items()
                if k.startswith("1") and len(k) >= 4 and k[1] in "23456789"]


def _number(npa: int, nxx: int | str) -> PhoneNumber:
    return PhoneNumber(country_code=1, national_number=int(f"{npa}{nxx}{_LINE}"))


def _probe(npa: int, prefix_nxx: set[str]) -> tuple[PhoneNumber, str, bool, bool] | None:
    """(sample, region, geographic, all_nxx) for an NPA the library knows, else None.

    The sample is the first valid number of a fixed-line/mobile type if there is one (then
    the NPA is geographic), else the first valid number. The NXX scan uses
    ``is_valid_number_for_region`` with the sample's region, which is what
    ``is_valid_number`` runs after finding the region, at a third of the cost (for 9.0.43 a
    full ``is_valid_number`` scan with line numbers 0000 and 9999 gave the same table).
    """
    candidates = (*_SAMPLE_NXX, *sorted(prefix_nxx))
    first = next((n for nxx in candidates if nxx[0] in "23456789"
                  for n in (_number(npa, nxx),) if phonenumbers.is_valid_number(n)), None)
    if first is None and prefix_nxx:  # known prefixes but no valid sample yet: scan
        first = next((n for nxx in range(200, 1000)
                      for n in (_number(npa, nxx),) if phonenumbers.is_valid_number(n)), None)
    if first is None:
        return None
    region = phonenumbers.region_code_for_number(first)
    if region is None:
        return None
    geo: PhoneNumber | None = None
    all_nxx = True
    for nxx in range(200, 1000):
        number = _number(npa, nxx)
        if not phonenumbers.is_valid_number_for_region(number, region):
            all_nxx = False
        elif geo is None and phonenumbers.number_type(number) in _GEOGRAPHIC_TYPES:
            geo = number
    return (geo or first), region, geo is not None, all_nxx


def _zones(prefixes: _Prefixes, npa: int, sample: PhoneNumber, geographic: bool) -> set[str]:
    """Union of the zones of every time-zone prefix under the NPA (library answer if none)."""
    zones: set[str] = set()
    if geographic:
        for key, names in prefixes.zones.get(npa, {}).items():
            zones.update(z for z in names if (key, z) not in DROPPED_PREFIX_ZONES)
    if not zones:  # non-geographic: the library gives the whole +1 country list
        zones.update(time_zones_for_number(sample))
    zones.discard(UNKNOWN_TIMEZONE)
    return zones


def _state_of(description: str) -> str | None:
    match = _CITY_STATE.search(description)
    if match:
        return match.group(1) if match.group(1) in _STATE_CODES else None
    return STATE_NAMES.get(description)


def _us_state(prefixes: _Prefixes, npa: int) -> str:
    """The one state of a US geographic NPA; raises if the geocoder text is ambiguous."""
    places = prefixes.places.get(npa, {})
    npa_level = places.get(f"1{npa}")
    npa_state = _state_of(npa_level) if npa_level else None
    prefix_states = {
        state for key, text in places.items()
        if len(key) > 4 and key not in IGNORED_STATE_PREFIXES
        for state in (_state_of(text),) if state
    }
    states = {npa_state} if npa_state else set(prefix_states)
    if len(states) != 1 or not prefix_states <= states:
        raise ValueError(f"NPA {npa}: geocoder gives states {sorted(prefix_states)} / {npa_level!r}")
    return states.pop()


def _offset_classes(zones: set[str]) -> set[tuple[Any, ...]]:
    """Distinct (January, July) UTC offsets of the zones."""
    out: set[tuple[Any, ...]] = set()
    for name in zones:
        zone = ZoneInfo(name)
        out.add(tuple(dt.datetime(2026, m, 15, 12, tzinfo=zone).utcoffset() for m in (1, 7)))
    return out


def _check(npa: dict[str, dict[str, Any]]) -> None:
    """Fail loudly when the curated expectations do not hold."""
    for npa_code in sorted(MULTI_OFFSET_NPAS):
        zones = set(npa.get(str(npa_code), {}).get("zones", ()))
        if len(zones) < 2 or len(_offset_classes(zones)) < 2:
            raise ValueError(f"NPA {npa_code} must span more than one offset class: {sorted(zones)}")
    for code, entry in npa.items():
        if int(code) in NON_GEOGRAPHIC_NPAS and entry["geographic"]:
            raise ValueError(f"NPA {code} is a service code but the library calls it geographic")
        if entry["geographic"] and entry["region"] == "US" and entry["state"] not in _STATE_CODES:
            raise ValueError(f"US NPA {code} has no state")
        if not entry["zones"]:
            raise ValueError(f"NPA {code} has no zone")
        _offset_classes(set(entry["zones"]))  # every name must be a real IANA zone


def build_table() -> dict[str, Any]:
    """The whole table as written to ``npa.json`` (nothing is written here)."""
    prefixes = _Prefixes()
    npa: dict[str, dict[str, Any]] = {}
    raw_zones: dict[int, set[str]] = {}
    for code in range(200, 1000):
        probe = _probe(code, prefixes.nxx.get(code, set()))
        if probe is None:
            continue
        sample, region, geographic, all_nxx = probe
        geographic = geographic and code not in NON_GEOGRAPHIC_NPAS
        state: str | None = None
        if region == "US" and geographic:
            state = _us_state(prefixes, code)
        elif region in DOMESTIC_TERRITORIES:
            state = region
        raw_zones[code] = _zones(prefixes, code, sample, geographic)
        npa[str(code)] = {"region": region, "state": state, "zones": [],
                          "geographic": geographic, "all_nxx": all_nxx}
    for code, zones in raw_zones.items():
        merged = set(zones) | set(REQUIRED_ZONES.get(code, ()))
        if code in OVERLAYS:
            merged |= raw_zones[OVERLAYS[code]]
        npa[str(code)]["zones"] = sorted(merged)
    _check(npa)
    return {"version": table_version(), "generated_by": GENERATED_BY, "npa": npa}


def render(table: dict[str, Any]) -> str:
    """JSON text, one NPA per line."""
    head = {k: v for k, v in table.items() if k != "npa"}
    lines = ["{"] + [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    lines.append('  "npa": {')
    entries = [f"    {json.dumps(code)}: {json.dumps(entry)}" for code, entry in table["npa"].items()]
    lines.append(",\n".join(entries))
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Rewrite ``npa.json`` atomically, or with ``--check`` compare it and return 1 on drift."""
    args = sys.argv[1:] if argv is None else argv
    text = render(build_table())
    if "--check" in args:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        print("npa.json is up to date" if current == text else "npa.json differs from generator")
        return 0 if current == text else 1
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUTPUT.with_suffix(".json.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, OUTPUT)
    print(f"wrote {OUTPUT} ({len(json.loads(text)['npa'])} NPAs, {table_version()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
