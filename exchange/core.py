"""The exchange's state in one place: book, ledger, gate, dedupe index and calls.

Everything here is synchronous and in memory. The pipeline (decisions) and the lifecycle
(events, expiry) are functions over this state that take ``now_ns`` as an argument and
return values; the async edges own the clock, the sockets and the durable writes.
"""

from __future__ import annotations

from heapq import heapify, heappush

import msgspec

from billing.ledger import Ledger
from billing.records import CallOutcome
from compliance.gate import Gate
from compliance.numbers import NumberInfo
from routing.capacity import Capacity, Taken
from routing.dedupe import DedupeIndex
from routing.schedule import LocalClock

from routing.auction import PlannedRoute
from routing.book import Book
from routing.eligibility import idle_refusal, reopens_at
from routing.parking import FUNDS, PARKABLE
from routing.standing import CampaignSpec, Standing
from .messages import DecisionFields, EventResponse, Message
from .replay import Replay
from .quality import Quality, QualityEvidence
from .settings import Settings

Notice = tuple[str, Message]  # (buyer id, message to send)


class CallRecord:
    """One call: its decision, its plan and where it stands."""

    __slots__ = (
        "call_id", "publisher", "consumer", "caller", "direction", "vertical", "state", "decision",
        "routes", "index", "status", "taken", "expires_ns", "events", "billable", "charged_cents",
        "payout_cents", "margin_cents", "history", "evidence", "created_ns", "final_ns", "request", "bids",
        "durable_seq", "replay", "quality",
    )

    def __init__(self, call_id: str, publisher: str, created_ns: int) -> None:
        self.call_id, self.publisher, self.created_ns = call_id, publisher, created_ns
        self.consumer: NumberInfo | None = None  # the consumer's number (caller inbound, callee outbound)
        self.caller: str | None = None
        self.state: str | None = None
        self.direction = self.vertical = ""
        self.decision: DecisionFields | None = None
        self.routes: tuple[PlannedRoute, ...] = ()
        self.index = 0
        self.status = "rejected"
        self.taken: tuple[Capacity, Taken] | None = None  # the leg in use: its campaign's counters and what it took
        self.expires_ns: int | None = None
        self.events: dict[str, tuple[object, EventResponse]] = {}
        self.billable = False
        self.charged_cents = self.payout_cents = self.margin_cents = 0
        self.history: list[tuple[int, str, int]] = []  # (at_ns, event, route_index)
        self.evidence: dict[str, object] = {}
        self.final_ns: int | None = None
        self.request: object = None
        self.bids: tuple[tuple[str, str, int, bool], ...] = ()  # (buyer, campaign, bid_cents, live) considered
        self.durable_seq = 0  # the writer's sequence number of this call's last durable record
        self.replay: Replay | None = None  # what the auction saw (GET /v1/calls/{id}/auction); None: not recorded
        self.quality: QualityEvidence | None = None  # call quality signals and attestation (exchange/quality.py)

    @property
    def route(self) -> PlannedRoute | None:
        return self.routes[self.index] if self.index < len(self.routes) else None

    @property
    def active(self) -> bool:
        return self.status in ("routed", "connected")


class Core:
    __slots__ = ("settings", "book", "ledger", "gate", "dedupe", "clock", "calls", "active", "finished", "stats", "_evidence", "quality",
                 "expiring")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.book = Book(settings.max_campaigns_per_buyer)
        self.ledger = Ledger()
        self.clock = LocalClock()
        self.gate = Gate()
        self.dedupe = DedupeIndex()
        self.calls: dict[str, CallRecord] = {}
        self.active: dict[str, CallRecord] = {}
        self.finished: list[tuple[int, str]] = []  # (final_ns, call id), in order, for retention
        self.expiring: list[tuple[int, str]] = []  # heap of (expires_ns, call id): an entry counts while it is the call's
        self.stats = Stats()
        self._evidence: dict[bytes, dict[str, object]] = {}  # interned evidence of trimmed calls
        self.quality = Quality(settings.quality_window_s, settings.quality_near_digits, settings.quality_outcome_window_s,
                               settings.quality_cluster_s, settings.quality_max_events)

    def upsert_campaign(self, buyer: str, msg: CampaignSpec, now_ns: int, away: bool = False) -> Standing:
        """``Book.upsert`` (raises ``CampaignError``), then, if the campaign can take no call at
        all now for a known period, straight to the parking lot instead of the heaps, where
        decisions would find it one by one: 90,000 closed campaigns and an unfunded buyer's top
        bids cost each bucket's first decisions a walk through all of them (decision p99
        2.6 ms against 0.9 ms for the clean book of 100,000 under the load test)."""
        st = self.book.upsert(buyer, msg, away)
        if not (st.rtb or st.held or st.listing < 0 or not st.live):
            why = idle_refusal(self, st, now_ns)
            if why is not None and why in PARKABLE:
                self.book.park(st, why, None if why == FUNDS else reopens_at(self.clock, st, why, now_ns), now_ns)
        return st

    def trim(self, rec: CallRecord) -> None:
        """Keep of a rejected call (once its decision record is handed to the writer) only what
        ``GET /v1/calls/{id}`` and an idempotent replay read: its request, decision, status and
        times; its evidence is shared with the other calls that had the same."""
        rec.consumer = rec.caller = rec.state = None
        rec.bids, rec.routes = (), ()
        rec.events, rec.history = _NO_EVENTS, _NO_HISTORY  # a rejected call takes no event (refused before any write)
        key = _evidence_key(rec.evidence)
        shared = self._evidence.get(key)
        if shared is None:
            if len(self._evidence) >= 4096:
                self._evidence.clear()
            shared = self._evidence[key] = rec.evidence
        rec.evidence = shared

    def expire_at(self, rec: CallRecord, ns: int) -> None:
        """When ``rec``'s leg lapses without an ending event (``lifecycle.expire_due`` reads the
        heap, not every active call). Entries whose call ended or moved its instant are dropped
        when they surface, and the heap is rebuilt from the active calls once it holds twice as
        many entries (connected calls' entries lie ``max_call_s`` ahead)."""
        rec.expires_ns = ns
        heap = self.expiring
        heappush(heap, (ns, rec.call_id))
        if len(heap) > 2 * len(self.active) + 1024:
            self.expiring = [(r.expires_ns, r.call_id) for r in self.active.values() if r.expires_ns is not None]
            heapify(self.expiring)

    def finish(self, rec: CallRecord, status: str, now_ns: int) -> None:
        """End a call; a routed call's outcome goes to the ledger's outbox (reconciliation
        proves every billable outcome charged once and every other one not at all)."""
        rec.status = status
        rec.final_ns = now_ns
        rec.expires_ns = None
        self.active.pop(rec.call_id, None)
        self.finished.append((now_ns, rec.call_id))
        r = rec.route
        if r is not None and status != "rejected":
            self.ledger.outbox.append(CallOutcome(
                rec.call_id, rec.publisher, r.buyer, r.campaign, status, rec.billable, r.price_cents,
                rec.charged_cents, rec.payout_cents, rec.margin_cents, rec.created_ns, now_ns,
            ))

    def forget_before(self, cutoff_ns: int) -> int:
        """Drop finished calls older than the retention window from memory."""
        n = 0
        while n < len(self.finished) and self.finished[n][0] < cutoff_ns:
            self.calls.pop(self.finished[n][1], None)
            n += 1
        if n:
            del self.finished[:n]
        return n


_evidence_key = msgspec.json.Encoder().encode
_NO_EVENTS: dict[str, tuple[object, EventResponse]] = {}  # shared by every trimmed call: never written
_NO_HISTORY: list[tuple[int, str, int]] = []


class Stats:
    """Plain counters of money moved and calls, read by the metrics and the demo."""

    __slots__ = ("calls", "routed", "rejected", "by_reason", "billable", "charged_cents", "payout_cents", "margin_cents", "bids", "fallbacks_used")

    def __init__(self) -> None:
        self.calls = self.routed = self.rejected = self.billable = self.bids = self.fallbacks_used = 0
        self.charged_cents = self.payout_cents = self.margin_cents = 0
        self.by_reason: dict[str, int] = {}
