"""``python -m tests.e2e.shifted SECONDS ARGS...``: ``python -m exchange ARGS...`` with its wall
clock (``time.time``, ``time.time_ns``) running ``SECONDS`` ahead; monotonic clocks untouched.

The clocks are replaced before the exchange is imported, so every ``from time import time_ns``
binds the shifted one. Used by ``tests.e2e.clockshift`` for outbound calls at hours when no US
zone is inside its calling window; the clock is the only thing changed.
"""

from __future__ import annotations

import runpy
import sys
import time


def main() -> None:
    shift_ns = int(sys.argv[1]) * 1_000_000_000
    real_ns, real = time.time_ns, time.time
    time.time_ns = lambda: real_ns() + shift_ns
    time.time = lambda: real() + shift_ns / 1e9
    sys.argv = ["exchange", *sys.argv[2:]]
    runpy.run_module("exchange", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
