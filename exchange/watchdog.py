"""The event loop's watchdog: finds what holds the loop when it stalls.

Every decision, RTB answer and socket of a process shares one event loop, so a callback that
runs for 100 ms delays all of them at once (an RTB answer past its ``tmax_ms`` is refused as
late). A sampling profiler sees where the loop spends its time on average, not which rare
callback held it; this catches the rare one in the act.

The loop stamps a heartbeat every ``TICK_S`` (a ``call_later`` chain, ~100 callbacks a second);
a daemon thread looks at it every ``TICK_S``. When the heartbeat is older than the threshold
(``EXCHANGE_STALL_LOG_MS``; 0, the default, leaves the watchdog off), the thread samples the loop
thread's Python stack every tick (``sys._current_frames``) until the loop beats again, then logs
one ``loop_stall`` record: when it began (``at``, UTC), how long the loop was held, the stacks
seen and how often each, the collector's pauses inside it, and where the loop's thread was
meanwhile by the kernel's account (``/proc/self/task/TID/schedstat``): ``cpu_ms`` running,
``runqueue_ms`` ready but waiting for a core (the host is short of CPU), the rest blocked
(waiting for the interpreter lock that another thread holds, or in a system call). The thread needs the interpreter lock to sample, which the
loop's Python code hands over every switch interval (5 ms); a stall inside one C call (a
collection, a long ``bytes.join``) shows as the Python line that made the call.

``exchange_loop_stalls_total`` counts the stalls and ``exchange_loop_stalled_ms_total`` adds up
their lengths.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from types import FrameType
from collections import Counter
from datetime import UTC, datetime
from time import monotonic, time
from typing import Any

log = logging.getLogger("exchange.loop")
TICK_S = 0.01
DEPTH = 12  # frames kept of each sampled stack, innermost last


def stack_of(thread_id: int, depth: int = DEPTH) -> str:
    """The thread's current Python stack as ``file:line function`` lines, outermost first."""
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return "<no frame>"
    # read off the frames themselves: ``traceback.extract_stack`` stats every source file
    # (``linecache.checkcache``), a system call per frame, and after each one this thread waited a
    # switch interval for the lock the held loop keeps: 2 samples in a 300 ms stall instead of ~20
    out: list[str] = []
    f: FrameType | None = frame
    while f is not None and len(out) < depth:
        code = f.f_code
        out.append(f"{code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno} {code.co_name}")
        f = f.f_back
    return " < ".join(out)


class Watchdog:
    def __init__(self, threshold_ms: float, metrics: Any = None, tick_s: float = TICK_S) -> None:
        self.threshold_s = threshold_ms / 1000
        self.tick_s = tick_s
        self.metrics = metrics
        self.beat = monotonic()
        self.stalls: list[dict[str, Any]] = []  # the last few, for tests and the operator's eye
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._loop_thread = 0
        self._schedstat = ""

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._schedstat = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        self.beat = monotonic()
        self._tick()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None

    def _tick(self) -> None:
        self.beat = monotonic()
        assert self._loop is not None
        self._handle = self._loop.call_later(self.tick_s, self._tick)

    def _watch(self) -> None:
        stop, tick, threshold = self._stop, self.tick_s, self.threshold_s
        while not stop.wait(tick):
            beat = self.beat
            if monotonic() - beat - tick <= threshold:
                continue
            seen: Counter[str] = Counter()
            gc_pauses, sched = self._gc_pauses(), self._sched()
            while self.beat == beat and not stop.is_set():
                seen[stack_of(self._loop_thread)] += 1
                stop.wait(tick)
            after = self._sched()
            self._report(beat + tick, self.beat - beat - tick, seen, self._gc_pauses() - gc_pauses,
                         [(b - a) / 1e6 for a, b in zip(sched, after)])

    def _sched(self) -> tuple[int, int]:
        """The loop thread's (ns on a core, ns ready and waiting for one) since it started."""
        try:
            with open(self._schedstat, "rb") as f:
                run, wait, *_ = f.read().split()
            return int(run), int(wait)
        except (OSError, ValueError):
            return 0, 0

    def _gc_pauses(self) -> int:
        m = self.metrics
        return sum(m.gc_collections) if m is not None else 0

    def _report(self, began: float, held_s: float, seen: Counter[str], collections: int, sched: list[float]) -> None:
        ms = round(held_s * 1000, 1)
        stacks = [{"samples": n, "stack": s} for s, n in seen.most_common(5)]
        at = datetime.fromtimestamp(time() - (monotonic() - began), UTC).isoformat(timespec="milliseconds")
        rec = {"at": at, "held_ms": ms, "cpu_ms": round(sched[0], 1), "runqueue_ms": round(sched[1], 1),
               "samples": sum(seen.values()), "collections": collections, "stacks": stacks}
        self.stalls = [*self.stalls[-31:], rec]
        m = self.metrics
        if m is not None:
            m.loop_stalls += 1
            m.loop_stalled_ms += int(ms)
        log.warning("loop_stall", extra=rec)
