"""Call ids: ``call_`` and 16 hex digits of the OS's CSPRNG, drawn in blocks, never repeated."""

from __future__ import annotations

import re

from exchange.calldesk import CallIds


def test_call_ids_have_the_same_shape_and_do_not_repeat_across_blocks():
    ids = CallIds()
    got = [ids.next() for _ in range(1000)]  # several 2 KiB draws (256 ids each)
    assert all(re.fullmatch(r"call_[0-9a-f]{16}", i) for i in got)
    assert len(set(got)) == len(got)
