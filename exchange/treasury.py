"""The treasury: accounts and the money that moves outside calls (deposits, payouts, refunds).

Each operation posts one balanced entry to the in-memory ledger and answers once it is
durable; a reference makes it idempotent (the same reference and amount: the same answer;
another amount: ``Conflict``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from billing.ledger import DuplicateKey, Ledger
from billing.postings import Entry, buyer_account, deposit, payout, publisher_account, refund
from billing.records import AccountRow

from .accounts import Account, Accounts, TenantKind, digest
from .clock import WallClock
from .errors import Conflict, Invalid, NotFound
from .ids import CallId
from .journal import Journal


class Treasury:
    __slots__ = ("accounts", "ledger", "journal", "clock", "live_call", "_refunds")

    def __init__(self, accounts: Accounts, ledger: Ledger, journal: Journal, clock: WallClock, live_call: Callable[[str], bool]) -> None:
        self.accounts, self.ledger, self.journal, self.clock = accounts, ledger, journal, clock
        self.live_call = live_call  # whether a call id is still in memory (a refund of it is too early)
        self._refunds = asyncio.Lock()

    async def create_account(self, kind: TenantKind, name: str, credit_limit_cents: int) -> tuple[Account, str]:
        acct, key = self.accounts.create(kind, name, credit_limit_cents)
        if kind == "buyer":
            self.ledger.set_credit(buyer_account(acct.id), credit_limit_cents)
        try:
            await self.journal.ack(self.journal.record(AccountRow(acct.id, kind, name, digest(key), credit_limit_cents, self.clock.now_ns())))
        except Invalid:  # the store refused the account (record_refused): it does not exist
            self.accounts.forget(acct.id, key)
            raise
        return acct, key

    @staticmethod
    def ledger_account(acct: Account) -> str:
        return buyer_account(acct.id) if acct.kind == "buyer" else publisher_account(acct.id)

    def balance(self, acct: Account) -> tuple[int, int, int]:
        """(balance, held, credit limit) in cents."""
        name = self.ledger_account(acct)
        return self.ledger.balance(name), self.ledger.held.get(name, 0), self.ledger.credit.get(name, 0)

    async def _post(self, entry: Entry) -> bool:
        """Post a non-call entry and wait until it is durable; False if it was a replay."""
        try:
            _, created = self.ledger.post(entry)
        except DuplicateKey:
            raise Conflict("idempotency_conflict", "this reference was used with a different amount", "$.reference") from None
        try:
            await self.journal.ack(self.journal.record())
        except Invalid:  # the store refused the entry (record_refused): take it back here too
            if created:
                self.ledger.revert(entry)
            raise
        return created

    async def deposit(self, acct: Account, amount_cents: int, reference: str) -> bool:
        """Post a deposit; False if the same reference was already posted (a replay)."""
        return await self._post(deposit(self.ledger_account(acct), amount_cents, f"{acct.id}:{reference}", self.clock.now_ns()))

    async def payout(self, acct: Account, amount_cents: int, reference: str) -> bool:
        """Record money paid out to a publisher; never more than it is owed."""
        entry = payout(self.ledger_account(acct), amount_cents, f"{acct.id}:{reference}", self.clock.now_ns())
        owed = self.ledger.available(entry.legs[0].account)
        if self.ledger.find(entry.reference, "payout") is None and owed < amount_cents:
            raise Invalid("insufficient_balance", f"{acct.id} is owed {owed} cents", "$.amount_cents")
        return await self._post(entry)

    async def refund(self, call_id: CallId, amount_cents: int | None, reference: str, reason: str) -> tuple[Entry, bool, int, int]:
        """Reverse part or all of a call's charge. Returns (entry, created, refunded total, charged)."""
        async with self._refunds:  # one refund at a time: each reads what was refunded before
            journal = self.journal
            await journal.ack(journal.record())  # everything posted so far is in the store
            with journal.reading():
                entries = await journal.store.call_entries(call_id)
                charged = next((e for e in entries if e.kind == "charge"), None)
                if charged is None:
                    if self.live_call(call_id) or await journal.store.has_outcome(call_id):
                        raise Conflict("call_not_billed", f"call {call_id} was not charged; there is nothing to refund")
                    raise NotFound("unknown_call", f"no call {call_id!r}")
            price = -charged.legs[0].amount_cents
            refunds = [e for e in entries if e.kind == "refund"]
            done = sum(e.legs[0].amount_cents for e in refunds)
            prior = next((e for e in refunds if e.reference == f"{call_id}:{reference}"), None)
            if prior is not None:
                if amount_cents is not None and prior.legs[0].amount_cents != amount_cents:
                    raise Conflict("idempotency_conflict", "this reference was used with a different amount", "$.reference")
                return prior, False, done, price
            amount = price - done if amount_cents is None else amount_cents
            if amount <= 0:
                raise Conflict("already_refunded", f"the {price} cents charged were already refunded")
            if done + amount > price:
                raise Invalid("refund_exceeds_charge",
                              f"{amount} cents would bring refunds to {done + amount}, over the {price} charged", "$.amount_cents")
            entry = refund(call_id, reference, charged, done, amount, self.clock.now_ns(), reason)
            await self._post(entry)
            return entry, True, done + amount, price
