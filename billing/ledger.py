"""The in-memory ledger: balances, holds and the journal, as a synchronous state machine.

It is the exchange's source of truth for what a buyer can spend right now
(``balance - held + credit``). Every change goes through a balanced ``Entry``; entries are
append-only and idempotent by key. Holds reserve a routed call's price on the winning
buyer until the call is captured (billable) or released.

Every posted entry and every hold, capture and release is also appended to ``outbox``, the
effects the edge drains into the durable writer (billing.writer). Charge entries are keyed by
call id and guarded by the call's own state, so only the other kinds (deposits, payouts,
refunds: few, and replayable by their callers) are kept in memory for replay detection.
"""

from __future__ import annotations

from .postings import Entry, check_balanced
from .records import HoldEvent, Record


class DuplicateKey(ValueError):
    """The same entry key was posted before with different legs."""


class Ledger:
    __slots__ = ("balances", "held", "credit", "holds", "posted", "outbox", "_by_key", "freed")

    def __init__(self) -> None:
        self.balances: dict[str, int] = {}
        self.held: dict[str, int] = {}
        self.credit: dict[str, int] = {}
        self.holds: dict[str, tuple[str, int, int]] = {}  # reference -> (account, amount, leg)
        self.posted = 0
        self.outbox: list[Record] = []
        self._by_key: dict[tuple[str, str], Entry] = {}
        self.freed: set[str] = set()  # accounts whose spendable funds went up (read by the book's funds index)

    def restore(self, balances: dict[str, int], entries: list[Entry]) -> None:
        """Start from durable balances and the replayable entries (nothing goes to the outbox)."""
        self.balances.update(balances)
        for e in entries:
            self._by_key[e.key] = e

    # ------------------------------------------------------------------ journal
    def post(self, entry: Entry) -> tuple[Entry, bool]:
        """Post a balanced entry; returns (entry, created). A replay returns the original."""
        check_balanced(entry)
        prior = self._by_key.get(entry.key)
        if prior is not None:
            if prior.legs != entry.legs:
                raise DuplicateKey(f"entry {entry.key} already posted with different legs")
            return prior, False
        if entry.kind != "charge":
            self._by_key[entry.key] = entry
        self.posted += 1
        self.outbox.append(entry)
        for account, amount in entry.legs:
            self.balances[account] = self.balances.get(account, 0) + amount
            if amount > 0:
                self.freed.add(account)
        return entry, True

    def revert(self, entry: Entry) -> None:
        """Undo ``entry``, posted here but refused by the store (none of it was written)."""
        if self._by_key.get(entry.key) is entry:
            del self._by_key[entry.key]
        self.posted -= 1
        for account, amount in entry.legs:
            self.balances[account] = self.balances.get(account, 0) - amount

    def find(self, reference: str, kind: str) -> Entry | None:
        return self._by_key.get((reference, kind))

    def balance(self, account: str) -> int:
        return self.balances.get(account, 0)

    # ------------------------------------------------------------------ holds
    def set_credit(self, account: str, credit_limit_cents: int) -> None:
        self.credit[account] = credit_limit_cents
        self.freed.add(account)

    def spendable(self, account: str) -> int:
        """Balance less holds plus credit: the most a new hold may take."""
        return self.balances.get(account, 0) - self.held.get(account, 0) + self.credit.get(account, 0)

    def available(self, account: str) -> int:
        """Balance less holds (credit not included)."""
        return self.balances.get(account, 0) - self.held.get(account, 0)

    def can_cover(self, account: str, amount_cents: int) -> bool:
        return self.balances.get(account, 0) - self.held.get(account, 0) + self.credit.get(account, 0) >= amount_cents

    def hold(self, reference: str, account: str, amount_cents: int, leg: int = 0, at_ns: int = 0) -> bool:
        """Reserve ``amount_cents`` for leg ``leg`` of a call; False (nothing held) if balance
        plus credit cannot cover it."""
        if reference in self.holds:
            return self.holds[reference] == (account, amount_cents, leg)
        if not self.can_cover(account, amount_cents):
            return False
        self.holds[reference] = (account, amount_cents, leg)
        self.held[account] = self.held.get(account, 0) + amount_cents
        self.outbox.append(HoldEvent(reference, leg, "hold", account, amount_cents, at_ns))
        return True

    def release(self, reference: str, at_ns: int = 0, kind: str = "release") -> int:
        """Drop a hold; returns the amount released (0 if there was none)."""
        hold = self.holds.pop(reference, None)
        if hold is None:
            return 0
        account, amount, leg = hold
        self.held[account] -= amount
        self.freed.add(account)
        self.outbox.append(HoldEvent(reference, leg, kind, account, amount, at_ns))
        return amount

    def capture(self, reference: str, entry: Entry) -> tuple[Entry, bool]:
        """Post the charge for a held call and drop its hold, as one step."""
        posted = self.post(entry)
        self.release(reference, entry.at_ns, "capture")
        return posted

    def drain(self) -> list[Record]:
        """Hand the pending durable effects to the edge."""
        out, self.outbox = self.outbox, []
        return out

    def total(self) -> int:
        """Sum of every account balance: zero unless money was created or lost."""
        return sum(self.balances.values())
