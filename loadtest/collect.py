"""Figures the load generators collect beside Locust's own statistics, and how they merge.

Locust's statistics keep response times in whole milliseconds, too coarse for a decision
measured in microseconds, so the users also keep:

* ``Hist`` — a mergeable latency histogram in microseconds (exact below 1 ms, 3 significant
  digits above), for the server's ``decision_us`` and the client-observed latencies;
* ``Collector`` — counters (bids sent, frames, calls by outcome, wins, RTB answers, errors)
  and per-second buckets of the same, so the report can draw figures over time and compute
  them over exactly the measured window.

Workers ship what they collected since their last report (``drain``) to the master, which
``absorb``s it; everything on the wire is plain lists, dicts, ints and strings.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any
from collections.abc import Iterable

HISTS = ("decision_us", "call_us", "call_rtb_us", "event_us", "ack_us", "rtb_answer_us", "edge_call_us")


def bucket(v: int) -> int:
    """Exact below 1,000; three significant digits above (≤ 0.5 % error)."""
    if v < 1000:
        return v if v > 0 else 0
    e = int(math.log10(v)) - 2
    q = 10**e
    return (v + q // 2) // q * q


class Hist:
    __slots__ = ("counts", "n")

    def __init__(self, counts: dict[int, int] | None = None) -> None:
        self.counts: dict[int, int] = defaultdict(int)
        self.n = 0
        if counts:
            self.merge(counts)

    def add(self, v: int, k: int = 1) -> None:
        self.counts[bucket(int(v))] += k
        self.n += k

    def merge(self, other: Hist | dict[int, int] | Iterable[tuple[int, int]]) -> None:
        items = other.counts.items() if isinstance(other, Hist) else (other.items() if isinstance(other, dict) else other)
        for b, k in items:
            self.counts[int(b)] += int(k)
            self.n += int(k)

    def quantile(self, q: float) -> int | None:
        if self.n == 0:
            return None
        rank = max(1, math.ceil(q * self.n))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return b
        return max(self.counts)

    def summary(self) -> dict[str, Any]:
        if self.n == 0:
            return {"n": 0}
        total = sum(b * k for b, k in self.counts.items())
        return {"n": self.n, "mean": round(total / self.n, 1), "p50": self.quantile(0.5), "p90": self.quantile(0.9),
                "p99": self.quantile(0.99), "p999": self.quantile(0.999), "max": max(self.counts)}

    def wire(self) -> list[list[int]]:
        return [[b, k] for b, k in self.counts.items()]


class Collector:
    """Counters and histograms of one process, in total and per wall-clock second."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = defaultdict(int)
        self.hists: dict[str, Hist] = {h: Hist() for h in HISTS}
        self.secs: dict[int, dict[str, Any]] = {}
        self.gauges: dict[str, int] = defaultdict(int)  # e.g. buyers ready (latest, not summed over time)
        self.samples: dict[str, list[Any]] = defaultdict(list)  # a few examples of each error

    def _sec(self, t: float | None = None) -> dict[str, Any]:
        s = int(t if t is not None else time.time())
        b = self.secs.get(s)
        if b is None:
            b = self.secs[s] = {"counts": defaultdict(int), "hists": {}}
        return b

    def count(self, name: str, k: int = 1) -> None:
        self.counts[name] += k
        self._sec()["counts"][name] += k

    def observe(self, hist: str, us: int) -> None:
        self.hists[hist].add(us)
        hs = self._sec()["hists"]
        h = hs.get(hist)
        if h is None:
            h = hs[hist] = Hist()
        h.add(us)

    def sample(self, kind: str, value: Any, keep: int = 5) -> None:
        if len(self.samples[kind]) < keep:
            self.samples[kind].append(value)

    # ---------------------------------------------------------------- distribution
    def drain(self) -> dict[str, Any]:
        """What was collected since the last drain, as plain data; resets this collector
        (gauges are sent as they are)."""
        out = {
            "counts": dict(self.counts),
            "hists": {k: h.wire() for k, h in self.hists.items() if h.n},
            "secs": [[s, dict(b["counts"]), {k: h.wire() for k, h in b["hists"].items()}] for s, b in self.secs.items()],
            "gauges": dict(self.gauges),
            "samples": {k: list(v) for k, v in self.samples.items()},
        }
        self.counts = defaultdict(int)
        self.hists = {h: Hist() for h in HISTS}
        self.secs = {}
        self.samples = defaultdict(list)
        return out

    def absorb(self, data: dict[str, Any]) -> None:
        for k, v in data.get("counts", {}).items():
            self.counts[k] += v
        for k, pairs in data.get("hists", {}).items():
            self.hists.setdefault(k, Hist()).merge(pairs)
        for s, counts, hists in data.get("secs", []):
            b = self.secs.get(int(s))
            if b is None:
                b = self.secs[int(s)] = {"counts": defaultdict(int), "hists": {}}
            for k, v in counts.items():
                b["counts"][k] += v
            for k, pairs in hists.items():
                b["hists"].setdefault(k, Hist()).merge(pairs)
        for k, v in data.get("samples", {}).items():
            for x in v:
                self.sample(k, x)

    # ---------------------------------------------------------------- figures
    def window(self, start: float, end: float) -> dict[str, Any]:
        """Counters and histogram summaries over the whole seconds in [start, end)."""
        counts: dict[str, int] = defaultdict(int)
        hists: dict[str, Hist] = {}
        for s, b in self.secs.items():
            if start <= s and s + 1 <= end + 1e-9:
                for k, v in b["counts"].items():
                    counts[k] += v
                for k, h in b["hists"].items():
                    hists.setdefault(k, Hist()).merge(h)
        return {"counts": dict(counts), "latency_us": {k: h.summary() for k, h in sorted(hists.items())}}

    def series(self, last: int | None = None) -> list[dict[str, Any]]:
        """One row per second (the ``last`` ones only, if given): counters and p50/p99 of
        each histogram."""
        rows = []
        for s in sorted(self.secs)[-last if last else 0 :]:
            b = self.secs[s]
            row: dict[str, Any] = {"t": s, **b["counts"]}
            for k, h in b["hists"].items():
                row[f"{k}_p50"] = h.quantile(0.5)
                row[f"{k}_p99"] = h.quantile(0.99)
                row[f"{k}_n"] = h.n
            rows.append(row)
        return rows

    def totals(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "latency_us": {k: h.summary() for k, h in self.hists.items() if h.n},
                "samples": {k: list(v) for k, v in self.samples.items()}}
