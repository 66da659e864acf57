"""Conversions between aware datetimes at the edges and integer UNIX nanoseconds in the core."""

from __future__ import annotations

from datetime import datetime, timedelta

from compliance.instants import rfc3339  # the one printer of instants (as msgspec prints datetimes)
from routing.schedule import EPOCH, to_ns  # the one reader

__all__ = ["EPOCH", "to_ns", "from_ns", "rfc3339"]

def from_ns(ns: int) -> datetime:
    """UNIX nanoseconds as an aware UTC datetime (microsecond precision)."""
    return EPOCH + timedelta(microseconds=ns // 1000)

