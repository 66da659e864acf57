"""Call quality signals, pure: sliding windows kept in memory, read inline by each decision.

No I/O, no clock (every method takes ``now_ns``), memory bounded. Numbers are held as the
integer of their E.164 digits (``+12125550100`` -> 12125550100), in memory only: never
written, logged or put in evidence.

**Call window** (``window_s``, ``EXCHANGE_QUALITY_WINDOW_S``): every inbound call, in arrival
order, while ``t > now - window`` (at most ``max_events`` of them: past that the oldest go
first). For a call it gives

- ``caller_calls``: the caller's calls in the window from this publisher, this one included
  (caller velocity; past ``EXCHANGE_QUALITY_VELOCITY_MAX_CALLS`` the call is rejected with
  ``caller_velocity``). Per publisher, so that no tenant can get a number refused at another
  by submitting it;
- ``near_duplicates``: the *other* numbers in the window, from the same publisher, equal to
  the caller's but for its last ``near_digits`` digits (rotating last digits to dodge dedupe).

and per publisher: ``calls``, ``repeats`` (calls whose caller had called this publisher within
the window before) and ``near_duplicate_calls`` (calls with ``near_duplicates >= 1``).

**Outcome window** (``outcome_window_s``, ``EXCHANGE_QUALITY_OUTCOME_WINDOW_S``), per
publisher, from ``completed`` events: ``completed``; ``short`` (``duration_s <
min_duration_s``, the route's payable buffer); ``payable`` (at or past a buffer above 0) and
``clustered`` (of those, ended less than ``cluster_s`` seconds past the buffer). Counted in 60
buckets of ``outcome_window_s / 60``: the window is the current bucket and the 59 before it.

**Risk score** (0-100) of a publisher, from those counts. Each ratio is shrunk toward 0 by
``PRIOR`` (20) pseudo-observations, so a few calls cannot make a score:
``S = short/(completed+20)``, ``K = clustered/(payable+20)``, ``N = near_duplicate_calls/(calls+20)``,
``V = repeats/(calls+20)``; ``risk = round(100 * (0.25*S + 0.35*K + 0.20*N + 0.20*V))``.
Durations clustered just past the buffer weigh most: paid calls that end there are the mark
of calls held open to be paid, where short calls alone are often honest hang-ups.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from msgspec import Struct

NS = 1_000_000_000
PRIOR = 20
WEIGHTS = (0.25, 0.35, 0.20, 0.20)  # short, clustered, near duplicates, repeats
BUCKETS = 60


class Observation(NamedTuple):
    caller_calls: int  # the caller's calls to this publisher in the window, this one included
    near_duplicates: int  # other numbers of this publisher in the window differing in the last digits only


class Inputs(NamedTuple):
    """A publisher's counts in the windows: what its risk score is computed from."""

    calls: int = 0
    repeats: int = 0
    near_duplicate_calls: int = 0
    completed: int = 0
    short: int = 0
    payable: int = 0
    clustered: int = 0


def risk_score(i: Inputs) -> int:
    """The documented formula (module docstring): 0..100."""
    return _score(i.calls, i.repeats, i.near_duplicate_calls, i.completed, i.short, i.payable, i.clustered)


def _score(calls: int, repeats: int, near: int, completed: int, short: int, payable: int, clustered: int) -> int:
    ws, wk, wn, wv = WEIGHTS
    x = ws * short / (completed + PRIOR) + wk * clustered / (payable + PRIOR) + (wn * near + wv * repeats) / (calls + PRIOR)
    return min(100, max(0, round(100 * x)))


class QualityEvidence(Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """What a decision records of call quality (the audit record's ``quality``)."""

    attestation: str = "unattested"  # the call's STIR/SHAKEN level
    caller_calls: int | None = None
    near_duplicates: int | None = None
    publisher_risk: int | None = None
    window_s: int | None = None
    velocity_max_calls: int | None = None  # the limit applied (absent: none)
    skipped: dict[str, int] | None = None  # campaigns passed over for attestation / publisher_risk
    adjusted: list[tuple[str, str, int, int, str]] | None = None  # (buyer, campaign, bid, bid for this call, multiplier)


def digits(e164: str) -> int | None:
    """``+12125550100`` -> 12125550100 (None: not an E.164 number)."""
    d = e164[1:] if e164.startswith("+") else ""
    return int(d) if d.isdigit() else None


PUB_BITS = 24  # a publisher's index in the low bits of the window's integer keys


class Quality:
    __slots__ = ("window_ns", "div", "max_events", "events", "callers", "groups", "pubs", "ids",
                 "width_ns", "cluster_s", "outcomes", "evicted")

    def __init__(self, window_s: int = 600, near_digits: int = 2, outcome_window_s: int = 86_400, cluster_s: int = 5,
                 max_events: int = 1_000_000) -> None:
        self.window_ns = window_s * NS
        self.div = 10 ** near_digits
        self.max_events = max_events
        # The call window: (t_ns, caller key, publisher, repeat, near) per call, oldest first. Keys are
        # integers, ``number << PUB_BITS | publisher index`` (no tuple per call): ~270 bytes a call in all.
        self.events: deque[tuple[int, int, str, bool, bool]] = deque()
        self.callers: dict[int, int] = {}  # caller key -> its calls in the window
        self.groups: dict[int, int] = {}  # (number // div) << PUB_BITS | publisher index -> distinct callers in it
        self.pubs: dict[str, list[int]] = {}  # publisher -> [calls, repeats, near_duplicate_calls]
        self.ids: dict[str, int] = {}  # publisher -> its index (never reused)
        self.width_ns = max(1, outcome_window_s * NS // BUCKETS)
        self.cluster_s = cluster_s
        # publisher -> (its buckets [index, completed, short, payable, clustered], oldest first; their totals)
        self.outcomes: dict[str, tuple[deque[list[int]], list[int]]] = {}
        self.evicted = 0  # calls dropped from the window early, for max_events

    # ------------------------------------------------------------------ calls
    def observe(self, publisher: str, caller: int, now_ns: int) -> Observation:
        """Count an inbound call into the window and read its signals."""
        events = self.events
        if events and events[0][0] <= now_ns - self.window_ns:
            self._expire(now_ns - self.window_ns)
        if len(events) >= self.max_events:
            self._drop()
            self.evicted += 1
        pid = self.ids.get(publisher)
        if pid is None:
            pid = self.ids[publisher] = len(self.ids) & ((1 << PUB_BITS) - 1)
        ckey, gkey = caller << PUB_BITS | pid, (caller // self.div) << PUB_BITS | pid
        n = self.callers.get(ckey, 0) + 1
        self.callers[ckey] = n
        distinct = self.groups.get(gkey, 0)
        near = distinct - (n > 1)  # the other numbers of its group
        if n == 1:
            self.groups[gkey] = distinct + 1
        pub = self.pubs.get(publisher)
        if pub is None:
            pub = self.pubs[publisher] = [0, 0, 0]
        pub[0] += 1
        if n > 1:
            pub[1] += 1
        if near:
            pub[2] += 1
        events.append((now_ns, ckey, publisher, n > 1, near > 0))
        return Observation(n, near)

    def _expire(self, cutoff_ns: int) -> None:
        events = self.events
        while events and events[0][0] <= cutoff_ns:
            self._drop()

    def _drop(self) -> None:
        _, ckey, publisher, repeat, near = self.events.popleft()
        m = self.callers[ckey] - 1
        if m:
            self.callers[ckey] = m
        else:
            del self.callers[ckey]
            pid = ckey & ((1 << PUB_BITS) - 1)
            gkey = ((ckey >> PUB_BITS) // self.div) << PUB_BITS | pid
            left = self.groups[gkey] - 1
            if left:
                self.groups[gkey] = left
            else:
                del self.groups[gkey]
        pub = self.pubs[publisher]
        pub[0] -= 1
        pub[1] -= repeat
        pub[2] -= near
        if not pub[0]:
            del self.pubs[publisher]

    def expire(self, now_ns: int) -> None:
        """Drop what has left the windows (the sweeper, twice a second: so a decision after a lull
        never pays for expiring a whole window of calls at once)."""
        self._expire(now_ns - self.window_ns)
        for publisher in [p for p, (buckets, _) in self.outcomes.items() if not buckets or buckets[-1][0] <= now_ns // self.width_ns - BUCKETS]:
            del self.outcomes[publisher]

    # ------------------------------------------------------------------ outcomes
    def completed(self, publisher: str, duration_s: int, buffer_s: int, now_ns: int) -> None:
        """A ``completed`` event of a call of ``publisher`` on a route with payable buffer ``buffer_s``."""
        buckets, totals = self._outcomes(publisher, now_ns)
        b = now_ns // self.width_ns
        if not buckets or buckets[-1][0] != b:
            buckets.append([b, 0, 0, 0, 0])
        last = buckets[-1]
        short = duration_s < buffer_s
        payable = buffer_s > 0 and not short
        clustered = payable and duration_s < buffer_s + self.cluster_s
        for i, x in ((1, 1), (2, short), (3, payable), (4, clustered)):
            last[i] += x
            totals[i] += x

    def _outcomes(self, publisher: str, now_ns: int) -> tuple[deque[list[int]], list[int]]:
        got = self.outcomes.get(publisher)
        if got is None:
            got = self.outcomes[publisher] = (deque(), [0, 0, 0, 0, 0])
        buckets, totals = got
        oldest = now_ns // self.width_ns - BUCKETS  # buckets at or before this one are out of the window
        while buckets and buckets[0][0] <= oldest:
            gone = buckets.popleft()
            for i in range(1, 5):
                totals[i] -= gone[i]
        return got

    # ------------------------------------------------------------------ reads
    def inputs(self, publisher: str, now_ns: int) -> Inputs:
        self._expire(now_ns - self.window_ns)
        calls, repeats, near = self.pubs.get(publisher) or (0, 0, 0)
        if publisher in self.outcomes:
            buckets, t = self._outcomes(publisher, now_ns)
            if not buckets:
                del self.outcomes[publisher]
            return Inputs(calls, repeats, near, t[1], t[2], t[3], t[4])
        return Inputs(calls, repeats, near)

    def risk(self, publisher: str, now_ns: int) -> int:
        """``risk_score(inputs(...))``, read straight from the counters (once per decision)."""
        events = self.events
        if events and events[0][0] <= now_ns - self.window_ns:
            self._expire(now_ns - self.window_ns)
        return self._risk(publisher, now_ns)

    def _risk(self, publisher: str, now_ns: int) -> int:
        """The score from the counters (the call window already expired to ``now_ns``): the
        formula of ``_score``, inline (a decision reads it every time)."""
        pub = self.pubs.get(publisher)
        calls, repeats, near = pub if pub is not None else (0, 0, 0)
        ws, wk, wn, wv = WEIGHTS
        x = (wn * near + wv * repeats) / (calls + PRIOR)
        got = self.outcomes.get(publisher)
        if got is not None:
            if got[0] and (got[0][0][0] + BUCKETS) * self.width_ns <= now_ns:  # (its oldest bucket is out: b0 <= now // width - BUCKETS)
                self._outcomes(publisher, now_ns)
            t = got[1]
            x = ws * t[2] / (t[1] + PRIOR) + wk * t[4] / (t[3] + PRIOR) + x
        r = round(100 * x)  # (x >= 0: counts)
        return r if r <= 100 else 100

    def observe_risk(self, publisher: str, caller: int | None, now_ns: int) -> tuple[Observation | None, int]:
        """``observe`` (a caller: an inbound call's number) then ``risk``, in one call: the
        signals a decision reads."""
        if caller is None:
            return None, self.risk(publisher, now_ns)
        return self.observe(publisher, caller, now_ns), self._risk(publisher, now_ns)

    def report(self, publisher: str, now_ns: int) -> dict[str, int]:
        """A publisher's score and its inputs, as ``GET /v1/reports`` shows them."""
        i = self.inputs(publisher, now_ns)
        return {"risk_score": risk_score(i), **i._asdict()}


__all__ = ["Quality", "Observation", "Inputs", "QualityEvidence", "risk_score", "digits", "PRIOR", "WEIGHTS"]
