"""Pure parsing of a consumer phone number into what the compliance gate needs.

``parse_number`` turns untrusted input into a ``NumberInfo`` (E.164 form, area code, region,
state, candidate time zones, geographic or not) or ``None``; it never raises.

* Fast path: canonical ``+1NXXNXXXXXX`` text is matched by one precompiled regex and looked
  up in the NPA table (``compliance/data/npa.json``, built by ``compliance.npa_table``),
  without calling ``phonenumbers``. Only NPAs where the library accepts every NXX take it.
* Slow path: anything else goes through ``phonenumbers.parse(raw, "US")`` and
  ``is_valid_number``; a +1 result then takes region, state and zones from the NPA table, any
  other number takes them from ``phonenumbers``.

The table is loaded once at import; this module does no other I/O and keeps no cache.
Zones of a +1 number are the union over its whole area code (COMPLIANCE.md §3.2); an empty
``zones`` means "unknown" (possible only for non-NANP numbers), never "no constraint".
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

import msgspec
import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from phonenumbers.timezone import UNKNOWN_TIMEZONE, time_zones_for_number

__all__ = ["NPA_TABLE_VERSION", "NumberInfo", "is_us_region", "parse_number", "zones_of_state"]

MAX_INPUT_LEN = 32
US_REGIONS: frozenset[str] = frozenset({"US", "PR", "GU", "VI", "AS", "MP"})

_CANONICAL = re.compile(r"\+1([2-9][0-9][0-9])[2-9][0-9]{6}")
# Slow-path input: ASCII digits and the usual punctuation only. Letters (vanity numbers such
# as 1-800-FLOWERS, extensions, "tel:" URIs) and non-ASCII digits are refused, not guessed.
_ALLOWED = re.compile(r"[0-9+()\-. /\t]+")
_SUBSCRIBER_TYPES = frozenset(
    {PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE}
)


class NumberInfo(msgspec.Struct, frozen=True):
    """A valid phone number as the gate sees it.

    ``npa`` is the area code of a +1 number, else None. ``state`` is the two-letter state
    of a US area code (the region code for PR, GU, VI, AS, MP), else None. ``zones`` are the
    candidate IANA zones, sorted. ``geographic`` is False for toll-free, premium, personal
    and other service numbers; true for fixed-line and mobile numbers.
    """

    e164: str
    npa: int | None
    region: str
    state: str | None
    zones: tuple[str, ...]
    geographic: bool


class _Entry(msgspec.Struct, frozen=True):
    """One row of the NPA table as stored."""

    region: str
    state: str | None
    zones: tuple[str, ...]
    geographic: bool
    all_nxx: bool


def _load_table() -> tuple[str, dict[str, tuple[int, _Entry]]]:
    raw: dict[str, Any] = json.loads(
        resources.files(__package__).joinpath("data").joinpath("npa.json").read_bytes()
    )
    version = raw["version"]
    if not isinstance(version, str) or not version.startswith("npa-"):
        raise ValueError(f"bad NPA table version {version!r}")
    table = {
        code: (int(code), msgspec.convert(row, _Entry))
        for code, row in raw["npa"].items()
    }
    return version, table


NPA_TABLE_VERSION, _TABLE = _load_table()
# Area codes where every +1 NPA [2-9]XX XXXX is valid: (npa, region, state, zones, geographic).
_FAST: dict[str, tuple[int, str, str | None, tuple[str, ...], bool]] = {
    code: (npa, e.region, e.state, e.zones, e.geographic)
    for code, (npa, e) in _TABLE.items() if e.all_nxx
}


def is_us_region(region: str) -> bool:
    """True for the domestic regions of COMPLIANCE.md §3.2: US, PR, GU, VI, AS, MP."""
    return region in US_REGIONS


def parse_number(raw: object) -> NumberInfo | None:
    """Parse untrusted input; None when it is not a valid, known phone number. Never raises."""
    if type(raw) is str:
        match = _CANONICAL.fullmatch(raw)
        if match is not None:
            row = _FAST.get(match.group(1))
            if row is not None:
                return NumberInfo(raw, row[0], row[1], row[2], row[3], row[4])
            if match.group(1) not in _TABLE:
                return None  # canonical shape, but an area code the library does not know
    try:
        return _parse_slow(raw)
    except Exception:  # phonenumbers raises NumberParseException and, on odd input, others
        return None


def _parse_slow(raw: object) -> NumberInfo | None:
    if not isinstance(raw, str) or len(raw) > MAX_INPUT_LEN:
        return None
    text = str(raw).strip()
    if not text or _ALLOWED.fullmatch(text) is None:
        return None
    number = phonenumbers.parse(text, "US")
    if not phonenumbers.is_valid_number(number):
        return None
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    if number.country_code == 1:
        code = e164[2:5]
        found = _TABLE.get(code) if len(e164) == 12 else None
        if found is None:
            return None
        npa, entry = found
        return NumberInfo(e164, npa, entry.region, entry.state, entry.zones, entry.geographic)
    region = phonenumbers.region_code_for_number(number)
    if not region:
        return None
    zones = tuple(sorted(z for z in time_zones_for_number(number) if z != UNKNOWN_TIMEZONE))
    geographic = phonenumbers.number_type(number) in _SUBSCRIBER_TYPES
    return NumberInfo(e164, None, region, None, zones, geographic)


def _state_zones() -> dict[str, tuple[str, ...]]:
    zones: dict[str, set[str]] = {}
    for _, entry in _TABLE.values():
        if entry.geographic and entry.state is not None and is_us_region(entry.region):
            zones.setdefault(entry.state, set()).update(entry.zones)
    return {st: tuple(sorted(z)) for st, z in zones.items()}


STATE_ZONES: dict[str, tuple[str, ...]] = _state_zones()


def zones_of_state(state: str) -> tuple[str, ...]:
    """Every zone of any geographic area code of ``state`` (empty for an unknown code)."""
    return STATE_ZONES.get(state, ())
