"""The imperative shell: owns the core, the clock, the connections and the RTB rounds.

Every call runs ``prepare`` -> (fan out bid requests, wait at most ``tmax_ms``) ->
``decide`` -> dispatch notices. Between the two pure steps other calls and bids are
served; ``decide`` re-checks every candidate, so nothing decided relies on stale state.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from time import perf_counter_ns
from typing import Protocol

import msgspec

from billing.ledger import DuplicateKey
from billing.postings import Entry, buyer_account, deposit, payout, publisher_account, refund
from billing.records import AccountRow
from billing.store import StoreRefused, StoreUnavailable, open_store
from billing.writer import Writer
from compliance.numbers import parse_number
from compliance.runtime import ComplianceRuntime

from . import gcpolicy
from .accounts import Account, Accounts, digest
from .clock import WallClock
from .core import CallRecord, Core, Notice
from .lifecycle import EventError, apply_event, expire_due
from .messages import CallEvent, CallFields, DecisionFields, Error, EventResponse, Message, NoBid, RtbBid
from .metrics import Metrics
from .pipeline import decide, prepare
from .recovery import decision_audit, event_audit, recorded_answer, restore
from .settings import Settings, database_url

log = logging.getLogger("exchange")


class Sender(Protocol):
    account: Account

    def send(self, msg: object) -> bool: ...


class RtbRound:
    """The live bids of one call: filled by buyers' answers until all arrive, every buyer
    still awaited has gone (its socket closed: a timeout at once), or tmax."""

    __slots__ = ("expected", "via", "answers", "done")

    def __init__(self) -> None:
        self.expected: dict[str, str] = {}  # request id -> buyer id
        self.via: dict[str, Sender] = {}  # request id -> the connection it was sent on
        self.answers: dict[str, tuple[RtbBid, int]] = {}
        self.done = asyncio.Event()


class CallRejected(Exception):
    """A call or event the edge must answer with an error body (status, code, message, path)."""

    def __init__(self, status: int, code: str, message: str, path: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.path, self.retry_after_s = status, code, path, retry_after_s


class Exchange:
    def __init__(self, settings: Settings, clock: WallClock | None = None) -> None:
        self.settings = settings
        self.clock = clock or WallClock()
        self.core = Core(settings)
        self.compliance = ComplianceRuntime.from_settings(self.core.gate, settings)
        self.admin_key = settings.admin_key or "dce_admin_" + secrets.token_urlsafe(32)
        self.accounts = Accounts(self.admin_key)
        self.metrics = Metrics()
        self.buyers: dict[str, list[Sender]] = {}
        self.rounds: dict[str, RtbRound] = {}
        self.closed_requests: OrderedDict[str, str] = OrderedDict()
        self.call_keys: dict[tuple[str, str], str] = {}
        self.store = open_store(database_url(settings))
        self.writer = Writer(self.store, settings.writer_max_batch, settings.writer_max_pending)
        self.restored = (0, 0, 0)  # (accounts, calls in flight recovered, holds released) at start
        self.ready = False
        self._tasks: list[asyncio.Task] = []
        self._refunds = asyncio.Lock()
        self.in_flight = 0  # calls being decided now
        self.draining = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        gcpolicy.tune()
        gcpolicy.watch(self.metrics)
        await self.store.open()
        await self.compliance.start()  # before the restore: recovered outbound calls are re-screened
        self.restored = await restore(self)
        await self.writer.start()
        self._durable()
        self._tasks.append(asyncio.create_task(self._sweeper(), name="sweeper"))
        self.ready = True

    async def drain(self, timeout_s: float = 5.0) -> int:
        """Stop taking calls (503 ``draining``) and wait for the decisions in flight; returns
        how many were still running at the deadline. Events are still taken meanwhile."""
        self.draining, self.ready = True, False
        end = asyncio.get_running_loop().time() + timeout_s
        while self.in_flight and asyncio.get_running_loop().time() < end:
            await asyncio.sleep(0.01)
        return self.in_flight

    async def stop(self) -> None:
        self.ready = False
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._durable()
        if not await self.writer.close(self.settings.ack_timeout_ms / 1000):
            log.error("ledger_not_flushed", extra={"pending": self.writer.enqueued - self.writer.committed})
        await self.store.close()
        await self.compliance.stop()

    # ------------------------------------------------------------------ durability
    def _durable(self, *extra: object) -> int:
        """Hand the core's pending effects (and ``extra`` records) to the writer; returns the
        sequence number to wait for."""
        out = self.core.ledger.drain()
        if extra:
            out.extend(extra)  # type: ignore[arg-type]
        return self.writer.put(out) if out else self.writer.enqueued

    async def _ack(self, seq: int) -> None:
        """Wait until record ``seq`` is committed; 503 with retry guidance if it cannot be."""
        try:
            await self.writer.wait(seq, self.settings.ack_timeout_ms / 1000)
        except StoreUnavailable as exc:
            raise CallRejected(503, "ledger_unavailable", f"{exc}; the change is kept and will be written: "
                               "retry with the same Idempotency-Key or reference", retry_after_s=1) from None
        except StoreRefused as exc:
            raise CallRejected(503, "ledger_stopped", f"the ledger writer stopped: {exc}", retry_after_s=30) from None

    async def _sweeper(self) -> None:
        """Release legs whose ``expires_at`` passed and forget calls past retention."""
        ticks = 0
        while True:
            await asyncio.sleep(0.5)
            ticks += 1
            if ticks % (2 * gcpolicy.FREEZE_EVERY_S) == 0:
                gcpolicy.settle()
            if ticks % 7200 == 0:  # hourly: forget repeat-caller entries past any dedupe window
                self.core.dedupe.prune(self.clock.now_ns())
            try:
                now = self.clock.now_ns()
                self.notify(expire_due(self.core, now))
                self._durable()
                self.core.forget_before(now - self.settings.call_retention_s * 1_000_000_000)
                if len(self.call_keys) > 2 * len(self.core.calls) + 1024:
                    self.call_keys = {k: v for k, v in self.call_keys.items() if v in self.core.calls}
            except Exception:  # the sweeper must outlive a bad record; the bug is logged
                log.exception("sweeper_failed")

    # ------------------------------------------------------------------ accounts and money
    async def create_account(self, kind: str, name: str, credit_limit_cents: int) -> tuple[Account, str]:
        acct, key = self.accounts.create(kind, name, credit_limit_cents)  # type: ignore[arg-type]
        if kind == "buyer":
            self.core.ledger.set_credit(buyer_account(acct.id), credit_limit_cents)
        await self._ack(self._durable(AccountRow(acct.id, kind, name, digest(key), credit_limit_cents, self.clock.now_ns())))
        return acct, key

    def ledger_account(self, acct: Account) -> str:
        return buyer_account(acct.id) if acct.kind == "buyer" else publisher_account(acct.id)

    async def _post(self, entry: Entry) -> bool:
        """Post a non-call entry and wait until it is durable; False if it was a replay."""
        try:
            _, created = self.core.ledger.post(entry)
        except DuplicateKey:
            raise CallRejected(409, "idempotency_conflict", "this reference was used with a different amount", "$.reference") from None
        await self._ack(self._durable())
        return created

    async def deposit(self, acct: Account, amount_cents: int, reference: str) -> bool:
        """Post a deposit; False if the same reference was already posted (a replay)."""
        return await self._post(deposit(self.ledger_account(acct), amount_cents, f"{acct.id}:{reference}", self.clock.now_ns()))

    async def payout(self, acct: Account, amount_cents: int, reference: str) -> bool:
        """Record money paid out to a publisher; never more than it is owed."""
        entry = payout(self.ledger_account(acct), amount_cents, f"{acct.id}:{reference}", self.clock.now_ns())
        if self.core.ledger.find(entry.reference, "payout") is None and self.core.ledger.available(entry.legs[0].account) < amount_cents:
            raise CallRejected(422, "insufficient_balance", f"{acct.id} is owed {self.core.ledger.available(entry.legs[0].account)} cents", "$.amount_cents")
        return await self._post(entry)

    async def refund(self, call_id: str, amount_cents: int | None, reference: str, reason: str) -> tuple[Entry, bool, int, int]:
        """Reverse part or all of a call's charge. Returns (entry, created, refunded total, charged)."""
        async with self._refunds:  # one refund at a time: each reads what was refunded before
            await self._ack(self._durable())  # everything posted so far is in the store
            try:
                entries = await self.store.call_entries(call_id)
            except StoreUnavailable as exc:
                raise CallRejected(503, "ledger_unavailable", str(exc), retry_after_s=1) from None
            charged = next((e for e in entries if e.kind == "charge"), None)
            if charged is None:
                if call_id in self.core.calls or await self.store.fetch("SELECT 1 FROM call_outcomes WHERE call_id = ?", call_id):
                    raise CallRejected(409, "call_not_billed", f"call {call_id} was not charged; there is nothing to refund")
                raise CallRejected(404, "unknown_call", f"no call {call_id!r}")
            price = -charged.legs[0].amount_cents
            refunds = [e for e in entries if e.kind == "refund"]
            done = sum(e.legs[0].amount_cents for e in refunds)
            prior = next((e for e in refunds if e.reference == f"{call_id}:{reference}"), None)
            if prior is not None:
                if amount_cents is not None and prior.legs[0].amount_cents != amount_cents:
                    raise CallRejected(409, "idempotency_conflict", "this reference was used with a different amount", "$.reference")
                return prior, False, done, price
            amount = price - done if amount_cents is None else amount_cents
            if amount <= 0:
                raise CallRejected(409, "already_refunded", f"the {price} cents charged were already refunded")
            if done + amount > price:
                raise CallRejected(422, "refund_exceeds_charge",
                                   f"{amount} cents would bring refunds to {done + amount}, over the {price} charged", "$.amount_cents")
            entry = refund(call_id, reference, charged, done, amount, self.clock.now_ns(), reason)
            await self._post(entry)
            return entry, True, done + amount, price

    # ------------------------------------------------------------------ buyers
    def attach(self, conn: Sender) -> None:
        self.buyers.setdefault(conn.account.id, []).append(conn)

    def detach(self, conn: Sender) -> None:
        conns = self.buyers.get(conn.account.id)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self.buyers[conn.account.id]
        gone = [(rid, rnd) for rid, rnd in self.rounds.items() if rnd.via.get(rid) is conn]
        for rid, rnd in gone:  # bid requests this socket can no longer answer: timeouts now, not at tmax
            buyer = rnd.expected.pop(rid)
            del rnd.via[rid], self.rounds[rid]
            self._close_request(rid, buyer)
            self.metrics.rtb_timeouts += 1
            if not rnd.expected:
                rnd.done.set()

    def notify(self, notices: list[Notice]) -> None:
        """Send each notice to the buyer's oldest open connection (if any)."""
        for buyer, msg in notices:
            conns = self.buyers.get(buyer)
            if conns:
                conns[0].send(msg)

    def on_rtb_answer(self, buyer: str, msg: RtbBid | NoBid) -> Error | None:
        rnd = self.rounds.get(msg.request_id)
        if rnd is None or rnd.expected.get(msg.request_id) != buyer:
            if self.closed_requests.get(msg.request_id) == buyer:
                return Error(code="late_answer", message="answer arrived after tmax_ms; counted as a timeout",
                             path="$.request_id", seq=msg.seq)
            return Error(code="unknown_request", message="no open bid_request with this id", path="$.request_id", seq=msg.seq)
        if isinstance(msg, RtbBid):
            rnd.answers[msg.request_id] = (msg, self.core.book.next_seq())
            self.metrics.rtb_answers += 1
        del rnd.expected[msg.request_id], rnd.via[msg.request_id]
        self.rounds.pop(msg.request_id, None)
        self._close_request(msg.request_id, buyer)
        if not rnd.expected:
            rnd.done.set()
        return None

    def _close_request(self, request_id: str, buyer: str) -> None:
        self.closed_requests[request_id] = buyer
        while len(self.closed_requests) > 100_000:
            self.closed_requests.popitem(last=False)

    # ------------------------------------------------------------------ publishers
    def check_numbers(self, call: CallFields) -> None:
        """Unparseable numbers are bad input (422 with the JSON path), not a decision."""
        if parse_number(call.caller) is None:
            raise CallRejected(422, "invalid_number", f"caller {call.caller!r} is not a valid phone number", "$.caller")
        if call.direction == "outbound":
            if call.callee is None:
                raise CallRejected(422, "invalid_message", "an outbound call needs callee", "$.callee")
            if parse_number(call.callee) is None:
                raise CallRejected(422, "invalid_number", f"callee {call.callee!r} is not a valid phone number", "$.callee")

    async def submit_call(self, publisher: Account, call: CallFields, idem_key: str | None = None) -> DecisionFields:
        if self.draining:
            raise CallRejected(503, "draining", "the exchange is shutting down; submit the call again", retry_after_s=1)
        self.in_flight += 1
        try:
            return await self._submit_call(publisher, call, idem_key)
        finally:
            self.in_flight -= 1

    async def _submit_call(self, publisher: Account, call: CallFields, idem_key: str | None) -> DecisionFields:
        await self.writer.room()  # back-pressure: the durable writer is behind
        if idem_key is not None:
            prior = self.call_keys.get((publisher.id, idem_key))
            if prior is not None:
                rec = self.core.calls.get(prior)
                if rec is None or rec.decision is None:
                    raise CallRejected(409, "in_progress", "a call with this Idempotency-Key is being decided")
                if rec.request != call:
                    raise CallRejected(409, "idempotency_conflict", "this Idempotency-Key was used with a different body")
                return rec.decision
        self.check_numbers(call)
        call_id = "call_" + secrets.token_hex(8)
        if idem_key is not None:
            self.call_keys[(publisher.id, idem_key)] = call_id
        core = self.core
        t0 = perf_counter_ns()
        p = prepare(core, call, publisher.id, call_id, self.clock.now_ns())
        if p.verdict.pending is not None:  # the shared (Redis) frequency counter: the one awaited compliance step
            v = await self.compliance.settle(p.verdict, call_id)
            p = p._replace(verdict=v) if v.allow else p._replace(verdict=v, bid_requests=())
        t1 = perf_counter_ns()
        answers: dict[str, tuple[RtbBid, int]] = {}
        wait_us = None
        if p.bid_requests:
            rnd = RtbRound()
            for buyer, req in p.bid_requests:
                conns = self.buyers.get(buyer)
                if conns and conns[0].send(req):
                    rnd.expected[req.request_id] = buyer
                    rnd.via[req.request_id] = conns[0]
                    self.rounds[req.request_id] = rnd
            self.metrics.rtb_requests += len(rnd.expected)
            if rnd.expected:
                try:
                    await asyncio.wait_for(rnd.done.wait(), p.tmax_ms / 1000)
                except TimeoutError:
                    pass
                for rid, buyer in rnd.expected.items():
                    self.rounds.pop(rid, None)
                    self._close_request(rid, buyer)
                self.metrics.rtb_timeouts += len(rnd.expected)
                answers = rnd.answers
            wait_us = (perf_counter_ns() - t1) // 1000
        t2 = perf_counter_ns()
        rec, notices = decide(core, p, answers, self.clock.now_ns())
        if rec.status == "routed" and rec.route is not None:  # an inbound call is the consumer's inquiry (EBR)
            core.gate.note_inquiry(rec.direction, rec.consumer, rec.route.buyer, rec.created_ns)
        t3 = perf_counter_ns()
        decision_us = (t1 - t0 + t3 - t2) // 1000
        rec.decision = msgspec.structs.replace(rec.decision, decision_us=decision_us, rtb_wait_us=wait_us)
        self.metrics.decision_us.observe(decision_us)
        self.metrics.count_call(rec.decision.decision, rec.decision.reason)
        self.notify(notices)
        rec.durable_seq = self._durable(decision_audit(rec))  # the hold and the decision: written, not awaited
        return rec.decision

    def owned_call(self, account: Account, call_id: str) -> CallRecord:
        rec = self.core.calls.get(call_id)
        if rec is None or (account.kind != "operator" and rec.publisher != account.id):
            raise CallRejected(404, "unknown_call", f"no call {call_id!r}")
        return rec

    async def call_event(self, account: Account, call_id: str, idem_key: str, ev: CallEvent) -> EventResponse:
        """Apply a publisher event; answered once its money and audit records are durable
        (a replay waits for the same records, so it never answers before the original)."""
        await self.writer.room()
        if call_id not in self.core.calls:
            return await self._recorded_answer(account, call_id, idem_key, ev)
        rec = self.owned_call(account, call_id)
        applied = len(rec.events)
        now = self.clock.now_ns()
        out, notices = apply_event(self.core, rec, idem_key, ev, now)
        if isinstance(out, EventError):
            raise CallRejected(out.status, out.code, out.message, out.path)
        if len(rec.events) > applied:
            self.metrics.events[ev.event] = self.metrics.events.get(ev.event, 0) + 1
            rec.durable_seq = self._durable(event_audit(rec, idem_key, ev, out, now))
        self.notify(notices)
        await self._ack(rec.durable_seq)
        return out

    async def _recorded_answer(self, account: Account, call_id: str, idem_key: str, ev: CallEvent) -> EventResponse:
        """An event for a call no longer in memory (finished before a restart, or past
        retention): a replay gets its recorded answer; anything else is refused."""
        try:
            answer = await recorded_answer(self, None if account.kind == "operator" else account.id, call_id, idem_key, ev)
        except LookupError:
            raise CallRejected(409, "call_finished", f"call {call_id} has finished") from None
        except ValueError as exc:
            raise CallRejected(409, "idempotency_conflict", str(exc)) from None
        except StoreUnavailable as exc:
            raise CallRejected(503, "ledger_unavailable", str(exc), retry_after_s=1) from None
        if answer is None:
            raise CallRejected(404, "unknown_call", f"no call {call_id!r}")
        return answer

    def gauges(self) -> dict[str, int]:
        core = self.core
        return {
            "book_campaigns": len(core.book),
            "book_campaigns_parked": core.book.parked,
            "book_listings_scanned": core.book.scanned,
            "calls_active": len(core.active),
            "calls_in_memory": len(core.calls),
            "rtb_rounds_open": len(self.rounds),
            "ledger_entries": core.ledger.posted,
            "ledger_writer_pending": self.writer.enqueued - self.writer.committed,
            "ledger_writer_batches": self.writer.batches,
            "ledger_writer_up": int(self.writer.state == "up"),
        }


def send_all(conn: Sender, msgs: list[Message]) -> None:
    if msgs:
        conn.send(msgs[0] if len(msgs) == 1 else msgs)
