"""Strict RFC 3339 parsing into integer UNIX nanoseconds; pure, never raises.

The gate accepts only full date-times with ``Z`` or a numeric offset (COMPLIANCE.md §6 step 1):
a naive time, a bare date, a leap second or any other shape yields ``None``, which the gate
turns into ``invalid_request``.
"""

from __future__ import annotations

import re
from datetime import date, datetime, UTC

NS = 1_000_000_000
NS_PER_DAY = 86_400 * NS
_EPOCH_ORD = date(1970, 1, 1).toordinal()
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)


def parse_rfc3339(text: object) -> int | None:
    """Nanoseconds since the epoch, or None when ``text`` is not an RFC 3339 time with a zone."""
    if type(text) is not str or len(text) > 40:
        return None
    m = _RFC3339.fullmatch(text)
    if m is None:
        return None
    y, mo, d, h, mi, s, frac, z, sign, oh, om = m.groups()
    try:
        day = date(int(y), int(mo), int(d)).toordinal()
    except ValueError:
        return None
    hh, mm, ss = int(h), int(mi), int(s)
    if hh > 23 or mm > 59 or ss > 59:
        return None
    offset = 0
    if z is None:
        if int(oh) > 23 or int(om) > 59:
            return None
        offset = (int(oh) * 3600 + int(om) * 60) * (1 if sign == "+" else -1)
    secs = (day - _EPOCH_ORD) * 86_400 + hh * 3600 + mm * 60 + ss - offset
    return secs * NS + (int(frac.ljust(9, "0")) if frac else 0)


def utc_day(at_ns: int) -> int:
    """The proleptic ordinal of the UTC date of an instant."""
    return _EPOCH_ORD + at_ns // NS_PER_DAY


def day_start_ns(day: int) -> int:
    return (day - _EPOCH_ORD) * NS_PER_DAY


def rfc3339(at_ns: int) -> str:
    """The exchange's one way to print an instant: ``2026-04-15T16:00:00Z``, or with six digits
    of microseconds when there are any (``...:00.120000Z``), exactly as msgspec prints the
    datetimes of the wire messages. Nanoseconds below the microsecond are dropped."""
    secs, frac = divmod(at_ns, NS)
    text = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    us = frac // 1000
    return f"{text}.{us:06d}Z" if us else text + "Z"
