"""The versioned rule data of the gate, compiled once: windows, banned days, holidays, caps.

``compliance/data/rules.json`` holds the federal window, the state table of COMPLIANCE.md §2
(hours by weekday, ``null`` for a banned weekday, whether holidays are banned, the frequency
cap) with its sources and confidence, the policy knobs of §6 and the seeded holiday calendars.
``compile_rules`` turns it into immutable values with minute ranges and date ordinals, so the
hot path only compares integers.

Zones are loaded from the ``tzdata`` package, never from the host's zoneinfo directory, so the
DST rules the gate applies do not depend on the machine (COMPLIANCE.md §3.2).
"""

from __future__ import annotations

import json
from datetime import date
from functools import lru_cache, cache
from importlib import resources
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import tzdata

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
TZDATA_VERSION: str = getattr(tzdata, "IANA_VERSION", "unknown")

Window = tuple[int, int]  # [open, close) in minutes of the local day


class StateRule(NamedTuple):
    state: str
    days: tuple[Window | None, ...]  # by weekday, 0 = Monday; None = no calls that day
    holidays_banned: bool
    frequency_cap: int | None
    confidence: str
    source: str


class Policy(NamedTuple):
    allow_dnc_with_pewc: bool = True
    ebr_inquiry_days: int = 90
    snapshot_max_age_days: int = 31
    frequency_window_hours: int = 24
    block_litigators: bool = True
    retry_horizon_days: int = 14


class Holidays(NamedTuple):
    """Banned holidays by state, as proleptic ordinals of local dates; swapped as a whole."""

    version: str
    by_state: dict[str, frozenset[int]]

    def banned(self, state: str, day: int) -> bool:
        days = self.by_state.get(state)
        return days is not None and day in days


class Rules(NamedTuple):
    version: str
    federal: Window
    states: dict[str, StateRule]
    policy: Policy
    holidays: Holidays


class RulesError(ValueError):
    pass


def _minutes(text: Any, where: str) -> int:
    if not isinstance(text, str) or len(text) != 5 or text[2] != ":":
        raise RulesError(f"{where}: expected HH:MM, got {text!r}")
    h, m = int(text[:2]), int(text[3:])
    if not (0 <= h <= 24 and 0 <= m < 60) or h * 60 + m > 1440:
        raise RulesError(f"{where}: {text!r} is not a time of day")
    return h * 60 + m


def _window(raw: Any, where: str) -> Window:
    if not isinstance(raw, (list, tuple)) or len(raw) != 2:
        raise RulesError(f"{where}: expected [open, close]")
    a, b = _minutes(raw[0], where), _minutes(raw[1], where)
    if a >= b:
        raise RulesError(f"{where}: the window must close after it opens")
    return a, b


def parse_day(text: Any) -> int:
    """``YYYY-MM-DD`` (or the date part of an RFC 3339 time) to a proleptic ordinal."""
    if not isinstance(text, str) or len(text) < 10 or text[4] != "-" or text[7] != "-":
        raise RulesError(f"expected a date YYYY-MM-DD, got {text!r}")
    if len(text) > 10 and text[10] not in "Tt ":
        raise RulesError(f"expected a date YYYY-MM-DD, got {text!r}")
    try:
        return date(int(text[:4]), int(text[5:7]), int(text[8:10])).toordinal()
    except ValueError:
        raise RulesError(f"{text!r} is not a calendar date") from None


def compile_holidays(version: str, raw: dict[str, Any]) -> Holidays:
    out: dict[str, frozenset[int]] = {}
    for st, days in raw.items():
        if not isinstance(st, str) or len(st) != 2 or not isinstance(days, list):
            raise RulesError(f"holidays: bad entry for {st!r}")
        out[st] = frozenset(parse_day(d) for d in days)
    return Holidays(version, out)


def compile_rules(raw: dict[str, Any]) -> Rules:
    version = raw.get("version")
    if not isinstance(version, str) or not version.startswith("rules-"):
        raise RulesError(f"bad rules version {version!r}")
    fed = raw["federal"]
    federal = (_minutes(fed["open"], "federal.open"), _minutes(fed["close"], "federal.close"))
    states: dict[str, StateRule] = {}
    for st, row in raw["states"].items():
        hours = row["hours"]
        days = tuple(None if hours[d] is None else _window(hours[d], f"states.{st}.hours.{d}") for d in WEEKDAYS)
        cap = row.get("frequency_cap")
        if cap is not None and (not isinstance(cap, int) or cap < 1):
            raise RulesError(f"states.{st}.frequency_cap must be a positive integer")
        states[st] = StateRule(st, days, bool(row.get("holidays_banned", False)), cap,
                               str(row.get("confidence", "")), str(row.get("source", "")))
    policy = Policy(**raw.get("policy", {}))
    hol = raw.get("holidays", {})
    holidays = compile_holidays(str(hol.get("version", version)), hol.get("dates", {}))
    return Rules(version, federal, states, policy, holidays)


@lru_cache(maxsize=1)
def default_rules() -> Rules:
    """The packaged rule data, compiled once per process (the result is immutable)."""
    raw = json.loads(resources.files(__package__).joinpath("data").joinpath("rules.json").read_bytes())
    return compile_rules(raw)


@cache
def zone(name: str) -> ZoneInfo:
    """An IANA zone read from the pinned ``tzdata`` package (one object per name)."""
    path = resources.files("tzdata.zoneinfo")
    for part in name.split("/"):
        if not part or part in (".", ".."):
            raise RulesError(f"bad zone name {name!r}")
        path = path.joinpath(part)
    with path.open("rb") as f:
        return ZoneInfo.from_file(f, key=name)
