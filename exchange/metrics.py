"""Prometheus text metrics, counted with plain integers on the hot path.

A counter increment here is one dict or attribute add (tens of nanoseconds); a general
metrics client with locks and label objects costs about a microsecond per event, which
would be a visible share of a 5 µs bid. The exposition format is small enough to write.
The decision-latency histogram also keeps a bounded window of raw samples so the demo
and benchmarks can report exact p50/p99/p99.9.
"""

from __future__ import annotations

import os
from array import array
from bisect import bisect_left

DECISION_BUCKETS_US = (5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 50000)
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """This process's resident set (``/proc/self/statm``: one small read); None where there is no /proc."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class Histogram:
    __slots__ = ("bounds", "counts", "total", "n", "window", "_w", "_cap")

    def __init__(self, bounds: tuple[int, ...], window: int = 200_000) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0
        self.n = 0
        self._cap = window
        self.window = array("q")
        self._w = 0

    def observe(self, value: int) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1
        if len(self.window) < self._cap:
            self.window.append(value)
        else:
            self.window[self._w] = value
            self._w = (self._w + 1) % self._cap

    def quantiles(self, qs: tuple[float, ...] = (0.5, 0.99, 0.999)) -> dict[str, int]:
        data = sorted(self.window)
        if not data:
            return {}
        return {f"p{q * 100:g}": data[min(len(data) - 1, int(q * len(data)))] for q in qs}


class Metrics:
    """Every figure /metrics exposes. Attributes are bumped directly by the edges."""

    def __init__(self) -> None:
        self.bids_ingested = 0
        self.campaign_upserts = 0
        self.frames_in = 0
        self.messages_rejected: dict[str, int] = {}
        self.calls: dict[tuple[str, str], int] = {}  # (decision, reason) -> n
        self.rtb_requests = 0
        self.rtb_answers = 0
        self.rtb_timeouts = 0
        self.events: dict[str, int] = {}
        self.pings = self.ping_bids = 0  # HTTP bidders (exchange.httpbid): pings sent, answered with a bid
        self.ping_no_bids: dict[str, int] = {}  # ... and no_bid, by reason
        self.buyer_connections = 0
        self.publisher_connections = 0
        self.slow_consumers_closed = 0
        self.ws_abuse_closed = 0  # sockets closed (1008) after ws_abuse_strikes refused frames in a row
        self.ws_idle_closed = 0  # sockets closed (1001) after idle_timeout_s of silence
        self.http_unauth_refused = 0  # connections refused (429): their address held too many without a valid key
        self.node_link_requests = 0  # an edge's calls and events answered over its link to the seller (exchange.nodelink)
        self.node_link_notices = 0  # notices and bid requests (seller) or RTB answers (edge) sent over the link, not Redis
        self.decision_us = Histogram(DECISION_BUCKETS_US)
        self.gc_pause_us = Histogram(DECISION_BUCKETS_US, window=10_000)  # the collector's pauses (gcpolicy.watch)
        self.gc_collections = [0, 0, 0]  # by generation
        self.loop_stalls = 0  # the event loop held past EXCHANGE_STALL_LOG_MS (exchange.watchdog)
        self.loop_stalled_ms = 0  # ... and for how long in all

    def count_call(self, decision: str, reason: str) -> None:
        key = (decision, reason)
        self.calls[key] = self.calls.get(key, 0) + 1

    def reject_message(self, code: str) -> None:
        self.messages_rejected[code] = self.messages_rejected.get(code, 0) + 1

    def render(self, gauges: dict[str, int]) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, int]]) -> None:
            out.append(f"# HELP {name} {help_}\n# TYPE {name} {kind}")
            out.extend(f"{name}{labels} {value}" for labels, value in samples)

        metric("exchange_bids_ingested_total", "counter", "Bids validated and applied to the book.", [("", self.bids_ingested)])
        metric("exchange_campaign_upserts_total", "counter", "Campaigns created or replaced.", [("", self.campaign_upserts)])
        metric("exchange_buyer_frames_total", "counter", "WebSocket frames received from buyers.", [("", self.frames_in)])
        metric("exchange_messages_rejected_total", "counter", "Client messages answered with an error, by code.",
               [(f'{{code="{c}"}}', n) for c, n in sorted(self.messages_rejected.items())])
        metric("exchange_calls_total", "counter", "Calls decided, by decision and reason.",
               [(f'{{decision="{d}",reason="{r}"}}', n) for (d, r), n in sorted(self.calls.items())])
        metric("exchange_rtb_requests_total", "counter", "bid_request messages sent.", [("", self.rtb_requests)])
        metric("exchange_rtb_answers_total", "counter", "rtb_bid answers in time.", [("", self.rtb_answers)])
        metric("exchange_rtb_timeouts_total", "counter", "bid_requests unanswered by tmax_ms.", [("", self.rtb_timeouts)])
        metric("exchange_pings_total", "counter", "HTTP bidder pings (campaigns with a ping).", [("", self.pings)])
        metric("exchange_ping_bids_total", "counter", "HTTP bidder pings answered in time with a bid.", [("", self.ping_bids)])
        metric("exchange_ping_no_bids_total", "counter", "HTTP bidder pings counted as no_bid, by reason (GET /v1/pings: per campaign).",
               [(f'{{reason="{r}"}}', n) for r, n in sorted(self.ping_no_bids.items())])
        metric("exchange_call_events_total", "counter", "Publisher call events applied, by event.",
               [(f'{{event="{e}"}}', n) for e, n in sorted(self.events.items())])
        metric("exchange_slow_consumers_closed_total", "counter", "Connections closed for a full send queue.", [("", self.slow_consumers_closed)])
        metric("exchange_ws_abuse_closed_total", "counter", "Connections closed for sustained rate-limit abuse.", [("", self.ws_abuse_closed)])
        metric("exchange_ws_idle_closed_total", "counter", "Connections closed after the idle timeout.", [("", self.ws_idle_closed)])
        metric("exchange_http_unauth_refused_total", "counter",
               "Connections refused because their address held too many that had not presented a valid key.",
               [("", self.http_unauth_refused)])
        metric("exchange_node_link_requests_total", "counter",
               "An edge's calls and events sent to its seller over the node link (the rest of its API goes over HTTP).",
               [("", self.node_link_requests)])
        metric("exchange_node_link_notices_total", "counter",
               "Sent over the node link instead of Redis: a seller's notices and bid requests to buyers on edges, an edge's RTB answers.",
               [("", self.node_link_notices)])
        metric("exchange_connections", "gauge", "Open WebSocket connections by role.",
               [('{role="buyer"}', self.buyer_connections), ('{role="publisher"}', self.publisher_connections)])
        for name, value in sorted(gauges.items()):
            metric(f"exchange_{name}", "gauge", name.replace("_", " ") + ".", [("", value)])
        metric("exchange_gc_collections_total", "counter", "Garbage collections, by generation.",
               [(f'{{generation="{g}"}}', n) for g, n in enumerate(self.gc_collections)])
        metric("exchange_loop_stalls_total", "counter", "Times the event loop was held past EXCHANGE_STALL_LOG_MS (logged as loop_stall).",
               [("", self.loop_stalls)])
        metric("exchange_loop_stalled_ms_total", "counter", "Milliseconds the event loop was held in those stalls.", [("", self.loop_stalled_ms)])
        rss = resident_bytes()
        if rss is not None:  # (not gc.get_freeze_count(): it walks every frozen object, ~150 ms at 100K campaigns)
            metric("process_resident_memory_bytes", "gauge", "Resident memory of this process: steady under a steady load; "
                   "a steady climb is a leak (e.g. reference cycles that died frozen, exchange.gcpolicy).", [("", rss)])
        for name, h, help_ in (("exchange_decision_us", self.decision_us, "Decision time in microseconds (decoded to decided, RTB wait excluded)."),
                               ("exchange_gc_pause_us", self.gc_pause_us, "Garbage-collector pauses in microseconds.")):
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} histogram")
            cum = 0
            for bound, n in zip(h.bounds, h.counts):
                cum += n
                out.append(f'{name}_bucket{{le="{bound}"}} {cum}')
            out.append(f'{name}_bucket{{le="+Inf"}} {h.n}')
            out.append(f"{name}_sum {h.total}")
            out.append(f"{name}_count {h.n}")
        return "\n".join(out) + "\n"
