"""The call desk: publishers' calls and events, idempotency, and the decision's timing.

Every call runs ``prepare`` -> (the RTB desk fans out bid requests and waits at most
``tmax_ms``) -> ``decide`` -> notices. Between the two pure steps other calls and bids are
served; ``decide`` re-checks every candidate, so nothing decided relies on stale state.
A decision is answered at once; its hold and audit record are handed to the journal (not
awaited) -- unless the call carries an ``Idempotency-Key``: then the key is part of the
decision's audit record and the answer waits until that record is durable, so a retry after a
crash gets the original decision back (``recorded``: the keys rebuilt at start, looked up in
the store on use). An event is answered once its money and audit records are durable.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from time import perf_counter_ns
from typing import Any, NamedTuple

import msgspec

from compliance.numbers import parse_number
from billing.records import Record
from compliance.runtime import ComplianceRuntime

from .accounts import Account
from .clock import WallClock
from .core import CallRecord, Core, Notice
from .errors import Conflict, Invalid, NotFound, Refused, Unavailable
from .ids import BuyerId, CallId
from .journal import Journal
from .lifecycle import apply_event
from .messages import BidRequest, CallEvent, CallFields, DecisionFields, EventResponse, RtbBid
from .metrics import Metrics
from .nodes import Node
from .pipeline import Prepared, decide, prepare
from .recovery import decision_audit, event_audit, recorded_answer, recorded_decision, recorded_keys
from .rtb import RtbDesk, RtbRound
from .calllog import CallLog
from .tally import Tally


class Decided(NamedTuple):
    """A decision made, not yet settled (``CallDesk.settle``)."""

    rec: CallRecord
    p: Prepared
    notices: list[Notice]
    taken: list[Record]  # the ledger's effects of the decision (its hold), recorded after its audit record
    rnd: RtbRound | None
    idem_key: str | None


class CallIds:
    """Call ids: ``call_`` and 16 hex digits from the OS's CSPRNG (as ``secrets.token_hex(8)``),
    drawn 2 KiB at a time: one ``getrandom`` per 256 calls instead of one per call."""

    __slots__ = ("_hex", "_at")

    def __init__(self) -> None:
        self._hex, self._at = "", 0

    def next(self) -> CallId:
        at = self._at
        if at >= len(self._hex):
            self._hex, at = os.urandom(2048).hex(), 0
        self._at = at + 16
        return CallId("call_" + self._hex[at:at + 16])


class CallDesk:
    __slots__ = ("core", "compliance", "rtb", "journal", "metrics", "clock", "keys", "recorded", "recorded_until_ns", "in_flight", "draining",
                 "tally", "log", "node", "ids")

    def __init__(self, core: Core, compliance: ComplianceRuntime, rtb: RtbDesk, journal: Journal, metrics: Metrics, clock: WallClock) -> None:
        self.core, self.compliance, self.rtb, self.journal, self.metrics, self.clock = core, compliance, rtb, journal, metrics, clock
        self.keys: dict[tuple[str, str], CallId] = {}  # (publisher, Idempotency-Key) -> call id
        self.recorded: dict[tuple[str, str], str] = {}  # the same, of keyed calls decided before the last start
        self.recorded_until_ns = 0  # when those fall out of the retention window
        self.in_flight = 0  # calls being decided now
        self.draining = False
        self.tally = Tally(core.settings.report_days)  # the report aggregate (GET /v1/reports)
        self.log = CallLog()  # who may list which calls (GET /v1/calls)
        self.node: Node | None = None  # one node of a market: it decides only while it sells with a fresh lease
        self.ids = CallIds()

    async def drain(self, timeout_s: float) -> int:
        """Stop taking calls (``draining``) and wait for the decisions in flight; returns how
        many were still running at the deadline. Events are still taken meanwhile."""
        self.draining = True
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while self.in_flight and loop.time() < end:
            await asyncio.sleep(0.01)
        return self.in_flight

    def forget_keys(self, now_ns: int = 0) -> None:
        """Drop idempotency keys of calls no longer in memory (the sweeper, now and then), and
        the keys restored at start once their retention window has passed."""
        if self.recorded and now_ns >= self.recorded_until_ns:
            self.recorded = {}
        if len(self.keys) > 2 * len(self.core.calls) + 1024:
            calls = self.core.calls
            self.keys = {k: v for k, v in self.keys.items() if v in calls}

    async def restore_keys(self, now_ns: int, retention_ns: int) -> int:
        """At start: the keys of the keyed calls decided in the retention window; how many."""
        self.recorded = await recorded_keys(self.journal.store, now_ns - retention_ns)
        self.recorded_until_ns = now_ns + retention_ns
        return len(self.recorded)

    # ------------------------------------------------------------------ calls
    @staticmethod
    def check_numbers(call: CallFields) -> None:
        """Unparseable numbers are bad input (the JSON path named), not a decision."""
        if parse_number(call.caller) is None:
            raise Invalid("invalid_number", f"caller {call.caller!r} is not a valid phone number", "$.caller")
        if call.direction == "outbound":
            if call.callee is None:
                raise Invalid("invalid_message", "an outbound call needs callee", "$.callee")
            if parse_number(call.callee) is None:
                raise Invalid("invalid_number", f"callee {call.callee!r} is not a valid phone number", "$.callee")

    async def submit(self, publisher: Account, call: CallFields, idem_key: str | None = None) -> DecisionFields:
        if self.draining:
            raise Unavailable("draining", "the exchange is shutting down; submit the call again", retry_after_s=1)
        if self.node is not None:
            refused = self.node.refusal()
            if refused is not None:
                raise refused
        self.in_flight += 1
        try:
            return await self._submit(publisher, call, idem_key)
        finally:
            self.in_flight -= 1

    async def _submit(self, publisher: Account, call: CallFields, idem_key: str | None) -> DecisionFields:
        await self.journal.room()  # back-pressure: the durable writer is behind
        core = self.core
        if idem_key is not None:
            prior = self.keys.get((publisher.id, idem_key))
            if prior is not None:
                rec = core.calls.get(prior)
                if rec is None or rec.decision is None:
                    raise Conflict("in_progress", "a call with this Idempotency-Key is being decided")
                if rec.request != call:
                    raise Conflict("idempotency_conflict", "this Idempotency-Key was used with a different body")
                await self.journal.ack(rec.durable_seq)  # a replay never answers before the original is durable
                return rec.decision
            if (publisher.id, idem_key) in self.recorded:
                return await self._recorded_decision(publisher, idem_key, call)
        self.check_numbers(call)
        call_id = self.ids.next()
        if idem_key is None:
            rec = await self._decide(publisher, call, call_id, None)
            assert rec.decision is not None
            return rec.decision
        key = (publisher.id, idem_key)
        self.keys[key] = call_id
        try:
            rec = await self._decide(publisher, call, call_id, idem_key)
        except BaseException:
            if call_id not in core.calls:  # never decided: the key is free again (not "in progress" forever)
                self.keys.pop(key, None)
            raise
        await self.journal.ack(rec.durable_seq)  # keyed: answered once the decision (and its key) is durable
        assert rec.decision is not None
        return rec.decision

    async def _recorded_decision(self, publisher: Account, idem_key: str, call: CallFields) -> DecisionFields:
        call_id = self.recorded[(publisher.id, idem_key)]
        try:
            with self.journal.reading():
                decision = await recorded_decision(self.journal.store, publisher.id, call_id, call, self.journal.vault)
        except ValueError as exc:
            raise Conflict("idempotency_conflict", str(exc)) from None
        if decision is None:
            raise Unavailable("ledger_unavailable", "the decision of this Idempotency-Key cannot be read now", retry_after_s=1)
        return decision

    def decide_now(self, publisher: Account, call: CallFields) -> Decided | Coroutine[Any, Any, DecisionFields]:
        """A call without an ``Idempotency-Key`` (the publisher socket's), decided at once when
        nothing has to be awaited: no back-pressure from the writer, no RTB round, no shared
        frequency counter. Then the decision is made and returned with what ``settle`` records
        of it (a frame's calls are decided one after the other, then settled in the same order,
        with no await between: nothing observes the difference), without a task or a coroutine
        per call; else a coroutine that finishes the call the way ``submit`` does (from where
        this left it: ``prepare`` is not run twice). Raises ``Refused`` as ``submit`` does."""
        if self.draining or self.node is not None or not self.journal.has_room:
            return self.submit(publisher, call)
        self.check_numbers(call)
        call_id = self.ids.next()
        t0 = perf_counter_ns()
        p = prepare(self.core, call, publisher.id, call_id, self.clock.now_ns())
        if p.verdict.pending is not None or p.bid_requests:
            return self._finish(p, t0)
        t1 = perf_counter_ns()
        return self._conclude(p, {}, None, None, None, t0, t1, t1)

    async def _finish(self, p: Prepared, t0: int) -> DecisionFields:
        self.in_flight += 1
        try:
            rec = await self._ask(p, t0, None)
        finally:
            self.in_flight -= 1
        assert rec.decision is not None
        return rec.decision

    async def _decide(self, publisher: Account, call: CallFields, call_id: CallId, idem_key: str | None) -> CallRecord:
        t0 = perf_counter_ns()
        p = prepare(self.core, call, publisher.id, call_id, self.clock.now_ns())
        return await self._ask(p, t0, idem_key)

    async def _ask(self, p: Prepared, t0: int, idem_key: str | None) -> CallRecord:
        if p.verdict.pending is not None:  # the shared (Redis) frequency counter: the one awaited compliance step
            v = await self.compliance.settle(p.verdict, p.call_id)
            p = p._replace(verdict=v) if v.allow else p._replace(verdict=v, bid_requests=())
        t1 = perf_counter_ns()
        answers, wait_us, rnd = await self.rtb.ask(p.bid_requests, p.tmax_ms, p.caller.e164 if p.caller else None) if p.bid_requests else ({}, None, None)
        return self.settle(self._conclude(p, answers, wait_us, rnd, idem_key, t0, t1, perf_counter_ns()))

    def _conclude(self, p: Prepared, answers: dict[str, tuple[RtbBid, int]], wait_us: int | None, rnd: RtbRound | None,
                  idem_key: str | None, t0: int, t1: int, t2: int) -> Decided:
        """``decide``, its timing, and the effects it left in the ledger taken (they are recorded
        by ``settle``, after the decision's own record)."""
        core = self.core
        rec, notices = decide(core, p, answers, self.clock.now_ns())
        if rnd is not None and rnd.declined and rec.replay is not None and rec.replay.unanswered:  # said no_bid, not silent
            declined = {(b, q.campaign) for b, q in p.bid_requests if q.request_id in rnd.declined}
            rec.replay = rec.replay._replace(unanswered=tuple(
                (b, c, "no_bid" if (b, c) in declined else why) for b, c, why in rec.replay.unanswered))
        if rec.status == "routed" and rec.route is not None:  # an inbound call is the consumer's inquiry (EBR)
            core.gate.note_inquiry(rec.direction, rec.consumer, rec.route.buyer, rec.created_ns)
        t3 = perf_counter_ns()
        decision_us = (t1 - t0 + t3 - t2) // 1000
        assert rec.decision is not None
        rec.decision = msgspec.structs.replace(rec.decision, decision_us=decision_us, rtb_wait_us=wait_us)
        return Decided(rec, p, notices, core.ledger.drain(), rnd, idem_key)

    def settle(self, d: Decided) -> CallRecord:
        """What the desk records of a decision: its metrics, the audit record and the hold
        handed to the writer (not awaited), the counts; then the notices are sent."""
        rec = d.rec
        assert rec.decision is not None
        self.metrics.decision_us.observe(rec.decision.decision_us)
        self.metrics.count_call(rec.decision.decision, rec.decision.reason)
        try:
            audit = decision_audit(rec, d.idem_key)
        except BaseException:  # (a bug) the decision's hold is written all the same, as it was left in the ledger before
            self.journal.record_taken(d.taken)
            raise
        rec.durable_seq = self.journal.record_taken(d.taken, audit)  # the decision, then its hold: written, not awaited
        self._count(rec, d.p.floor_cents, d.p.bid_requests, d.rnd)
        if rec.status == "rejected":
            self.core.trim(rec)
        self.rtb.notify(d.notices)
        return rec

    def _count(self, rec: CallRecord, floor_cents: int, asked: tuple[tuple[BuyerId, BidRequest], ...], rnd: RtbRound | None) -> None:
        """The decision into the report aggregate and the call logs (a few dict updates)."""
        assert rec.decision is not None
        live = []
        if rnd is not None:
            for b, q in asked:
                rid = q.request_id
                why = "ineligible" if rid in rnd.answers else "no_bid" if rid in rnd.declined else "timeout"
                live.append((b, q.campaign, why, rnd.answer_ms.get(rid)))
        self.tally.decided(
            rec.created_ns, rec.publisher, rec.vertical, rec.state, rec.decision.reason,
            [(r.buyer, r.campaign) for r in rec.routes], [(b, c, x) for b, c, x, _ in rec.bids], floor_cents, live,
        )
        self.log.decided(rec.call_id, rec.publisher, rec.created_ns)
        if rec.status == "routed" and rec.route is not None:
            self.log.rang(rec.call_id, rec.route.buyer, rec.created_ns)

    def _count_event(self, rec: CallRecord, ev: CallEvent, before: int) -> None:
        """An applied event into the report aggregate and the call logs."""
        if ev.event == "completed" and rec.status == "completed":
            leg, first = rec.routes[rec.index], rec.routes[0]
            self.tally.completed(
                rec.created_ns, rec.publisher, rec.vertical, rec.state, (first.buyer, first.campaign), (leg.buyer, leg.campaign),
                "won" if rec.index == 0 else "fallback", ev.duration_s or 0, rec.billable, rec.charged_cents, rec.payout_cents,
                rec.margin_cents,
            )
        elif ev.event == "failed" and rec.active and rec.index != before:
            leg = rec.routes[rec.index]
            self.tally.rang(rec.created_ns, rec.publisher, rec.vertical, rec.state, leg.buyer, leg.campaign)
            self.log.rang(rec.call_id, leg.buyer, rec.created_ns)

    def owned(self, account: Account, call_id: str) -> CallRecord:
        """A call in memory visible to ``account`` (its publisher, or the operator)."""
        rec = self.core.calls.get(call_id)
        if rec is None or (account.kind != "operator" and rec.publisher != account.id):
            raise NotFound("unknown_call", f"no call {call_id!r}")
        return rec

    # ------------------------------------------------------------------ events
    async def event(self, account: Account, call_id: str, idem_key: str, ev: CallEvent) -> EventResponse:
        """Apply a publisher event; answered once its money and audit records are durable
        (a replay waits for the same records, so it never answers before the original)."""
        await self.journal.room()
        if call_id not in self.core.calls:
            return await self._recorded(account, call_id, idem_key, ev)
        rec = self.owned(account, call_id)
        applied, before = len(rec.events), rec.index
        now = self.clock.now_ns()
        out, notices = apply_event(self.core, rec, idem_key, ev, now)
        if isinstance(out, Refused):
            raise out
        if len(rec.events) > applied:
            self.metrics.events[ev.event] = self.metrics.events.get(ev.event, 0) + 1
            rec.durable_seq = self.journal.record(event_audit(rec, idem_key, ev, out, now))
            self._count_event(rec, ev, before)
        self.rtb.notify(notices)
        await self.journal.ack(rec.durable_seq)
        return out

    async def _recorded(self, account: Account, call_id: str, idem_key: str, ev: CallEvent) -> EventResponse:
        """An event for a call no longer in memory (finished before a restart, or past
        retention): a replay gets its recorded answer; anything else is refused."""
        try:
            with self.journal.reading():
                answer = await recorded_answer(self.journal.store, None if account.kind == "operator" else account.id, call_id, idem_key, ev)
        except LookupError:
            raise Conflict("call_finished", f"call {call_id} has finished") from None
        except ValueError as exc:
            raise Conflict("idempotency_conflict", str(exc)) from None
        if answer is None:
            raise NotFound("unknown_call", f"no call {call_id!r}")
        return answer
