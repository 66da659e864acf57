"""Hypothesis: any sequence of deposits, holds, captures, releases, fallbacks, refunds and payouts
keeps the ledger's books closed (the balances sum to zero), never lets a buyer's
``balance - held + credit`` go below zero through holds, and never refunds more than a charge;
and the same sequence written through the group-commit writer into SQLite leaves the store's
balances and open holds exactly the in-memory ledger's."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from billing import postings
from billing.ledger import Ledger
from billing.postings import Entry
from billing.reconcile import reconcile
from billing.backends import open_store
from billing.writer import Writer

BUYERS = ["b0", "b1", "b2"]
PUBLISHERS = ["p0", "p1"]
T0 = 1_794_312_000 * 1_000_000_000

ops = st.lists(st.one_of(
    st.tuples(st.just("deposit"), st.integers(0, 2), st.integers(1, 10_000)),
    st.tuples(st.just("hold"), st.integers(0, 2), st.integers(0, 5_000)),
    st.tuples(st.just("capture"), st.integers(0, 40), st.integers(0, 1), st.integers(0, 10_000)),
    st.tuples(st.just("release"), st.integers(0, 40)),
    st.tuples(st.just("fallback"), st.integers(0, 40)),
    st.tuples(st.just("refund"), st.integers(0, 40), st.sampled_from(["one", "half", "rest", "over"])),
    st.tuples(st.just("payout"), st.integers(0, 1), st.integers(1, 5_000)),
), max_size=60)
credits = st.lists(st.integers(0, 3_000), min_size=len(BUYERS), max_size=len(BUYERS))


class Sim:
    """Drives a ``Ledger`` the way the exchange does, checking the invariants after every step."""

    def __init__(self, credit: list[int]) -> None:
        self.ledger = Ledger()
        self.credit = dict(zip(BUYERS, credit))
        for b, c in self.credit.items():
            self.ledger.set_credit(postings.buyer_account(b), c)
        self.calls = 0
        self.open: dict[str, tuple[str, int, int]] = {}  # call -> (buyer, price, leg)
        self.charged: dict[str, tuple[Entry, int]] = {}  # call -> (charge, refunded so far)
        self.refunds = 0

    def room(self, buyer: str) -> int:
        a = postings.buyer_account(buyer)
        return self.ledger.balance(a) - self.ledger.held.get(a, 0) + self.credit[buyer]

    def step(self, op: tuple, at_ns: int) -> None:
        L = self.ledger
        kind = op[0]
        if kind == "deposit":
            L.post(postings.deposit(postings.buyer_account(BUYERS[op[1]]), op[2], f"dep-{at_ns}", at_ns))
        elif kind == "hold":
            buyer, price = BUYERS[op[1]], op[2]
            call = f"call-{self.calls}"
            self.calls += 1
            before = self.room(buyer)
            placed = L.hold(call, postings.buyer_account(buyer), price, 0, at_ns)
            assert placed == (before >= price), "a hold is placed exactly when balance - held + credit covers it"
            if placed:
                self.open[call] = (buyer, price, 0)
        elif kind in ("capture", "release", "fallback") and self.open:
            call = sorted(self.open)[op[1] % len(self.open)]
            buyer, price, leg = self.open.pop(call)
            if kind == "capture":
                entry = postings.charge(call, buyer, PUBLISHERS[op[2]], price, op[3], at_ns)
                L.capture(call, entry)
                self.charged[call] = (entry, 0)
            else:
                assert L.release(call, at_ns) == price
                if kind == "fallback":  # the next route of the same call takes it
                    assert L.hold(call, postings.buyer_account(buyer), price, leg + 1, at_ns)
                    self.open[call] = (buyer, price, leg + 1)
        elif kind == "refund" and self.charged:
            call = sorted(self.charged)[op[1] % len(self.charged)]
            entry, before = self.charged[call]
            price = -entry.legs[0].amount_cents
            rest = price - before
            amount = {"one": 1, "half": max(1, rest // 2), "rest": rest, "over": rest + 1}[op[2]]
            if amount <= 0 or before + amount > price:
                balances = dict(L.balances)
                with pytest.raises(ValueError):
                    postings.refund(call, f"r{self.refunds}", entry, before, amount, at_ns)
                assert L.balances == balances, "a refused refund moves no money"
            else:
                L.post(postings.refund(call, f"r{self.refunds}", entry, before, amount, at_ns))
                self.charged[call] = (entry, before + amount)
            self.refunds += 1
        elif kind == "payout":
            account = postings.publisher_account(PUBLISHERS[op[1]])
            amount = min(op[2], L.balance(account))
            if amount > 0:
                L.post(postings.payout(account, amount, f"po-{at_ns}", at_ns))
        self.check()

    def check(self) -> None:
        L = self.ledger
        assert L.total() == 0, "the balances must sum to zero"
        for b in BUYERS:
            assert self.room(b) >= 0, f"{b} is beyond its credit limit"
            a = postings.buyer_account(b)
            assert L.held.get(a, 0) == sum(p for (buyer, p, _) in self.open.values() if buyer == b)
        # refunds never exceed the charge, leg by leg
        refunded: dict[str, list[int]] = {}
        for r in (e for e in L.outbox if isinstance(e, Entry) and e.kind == "refund"):
            sums = refunded.setdefault(r.reference.split(":", 1)[0], [0, 0, 0])
            for i, leg in enumerate(r.legs):
                sums[i] += leg.amount_cents
        for call, sums in refunded.items():
            entry, total = self.charged[call]
            assert sums[0] == total <= -entry.legs[0].amount_cents
            assert 0 <= -sums[1] <= entry.legs[1].amount_cents and 0 <= -sums[2] <= entry.legs[2].amount_cents

    def run(self, sequence: list[tuple]) -> None:
        for i, op in enumerate(sequence):
            self.step(op, T0 + i)


@settings(max_examples=300)
@given(credits, ops)
def test_any_sequence_keeps_the_books_closed_buyers_within_credit_and_refunds_within_charges(credit, sequence):
    Sim(credit).run(sequence)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(credits, ops)
def test_the_same_sequence_through_the_writer_leaves_the_store_equal_to_the_ledger(credit, sequence):
    sim = Sim(credit)
    sim.run(sequence)
    ledger = sim.ledger

    async def durable(path: Path):
        store = open_store(f"sqlite:///{path}")
        await store.open()
        writer = Writer(store, max_batch=7)  # many small batches
        try:
            await writer.start()
            for record in ledger.drain():  # one put per record, as effects arrive
                writer.put([record])
            await writer.flush(10)
            stored = {a: int(b) for a, b in await store.fetch("SELECT account, balance_cents FROM balances")}
            holds = {(h.call_id, h.route_index, h.account, h.amount_cents) for h in await store.open_holds()}
            report = await reconcile(store, T0 + len(sequence), 3600 * 10**9)
            return stored, holds, report
        finally:
            await writer.close()
            await store.close()

    with tempfile.TemporaryDirectory() as tmp:
        stored, holds, report = asyncio.run(durable(Path(tmp) / "ledger.db"))
    assert stored == ledger.balances
    assert holds == {(call, leg, account, amount) for call, (account, amount, leg) in ledger.holds.items()}
    for name in ("entries balance", "balances equal legs", "ledger sums to zero", "refunds within charge",
                 "holds resolved", "captures match charges"):
        assert report.section(name).ok, report.text()
