"""One printer of instants: ``rfc3339`` prints exactly what msgspec prints for the same datetime
(the wire messages' ``expires_at`` and the statements', audit's and compliance answers' times
used to come out in three formats)."""

from __future__ import annotations

import msgspec
from hypothesis import given, strategies as st

from exchange.instants import from_ns, rfc3339, to_ns


@given(st.integers(0, 4_102_444_800 * 10**9))  # 1970 .. 2100
def test_rfc3339_is_msgspecs_format_and_round_trips_to_the_microsecond(ns):
    text = rfc3339(ns)
    assert msgspec.json.encode(from_ns(ns)).decode() == f'"{text}"'
    assert to_ns(msgspec.json.decode(f'"{text}"'.encode(), type=__import__("datetime").datetime)) == ns // 1000 * 1000
