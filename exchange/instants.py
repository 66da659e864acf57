"""Conversions between aware datetimes at the edges and integer UNIX nanoseconds in the core."""

from __future__ import annotations

from datetime import datetime, timedelta, UTC

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def to_ns(dt: datetime) -> int:
    """An aware datetime as UNIX nanoseconds (exact to the microsecond)."""
    return (dt - EPOCH) // _US * 1000


def from_ns(ns: int) -> datetime:
    """UNIX nanoseconds as an aware UTC datetime (microsecond precision)."""
    return EPOCH + timedelta(microseconds=ns // 1000)


def rfc3339(ns: int) -> str:
    return from_ns(ns).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
