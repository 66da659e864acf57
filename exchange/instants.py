"""Conversions between aware datetimes at the edges and integer UNIX nanoseconds in the core."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from compliance.instants import rfc3339  # the one printer of instants (as msgspec prints datetimes)

__all__ = ["EPOCH", "to_ns", "from_ns", "rfc3339"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def to_ns(dt: datetime) -> int:
    """An aware datetime as UNIX nanoseconds (exact to the microsecond)."""
    return (dt - EPOCH) // _US * 1000


def from_ns(ns: int) -> datetime:
    """UNIX nanoseconds as an aware UTC datetime (microsecond precision)."""
    return EPOCH + timedelta(microseconds=ns // 1000)

