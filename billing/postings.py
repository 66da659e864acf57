"""Posting rules, pure: each business event becomes one balanced ``Entry``.

Accounts are strings: ``buyer:<id>`` (the buyer's prepaid funds), ``publisher:<id>`` (what
the exchange owes the publisher), ``exchange:revenue`` (the margin) and ``world:deposits``
/ ``world:payouts`` (money entering and leaving the exchange). A positive balance on a
buyer or publisher account is money the exchange holds for that party. Every entry's legs
sum to zero; that is checked here and again by the durable store.
"""

from __future__ import annotations

from typing import NamedTuple

from .money import split

EXCHANGE_REVENUE = "exchange:revenue"
WORLD_DEPOSITS = "world:deposits"
WORLD_PAYOUTS = "world:payouts"


def buyer_account(buyer_id: str) -> str:
    return f"buyer:{buyer_id}"


def publisher_account(publisher_id: str) -> str:
    return f"publisher:{publisher_id}"


class Leg(NamedTuple):
    account: str
    amount_cents: int


class Entry(NamedTuple):
    """One balanced journal entry; ``key`` = (reference, kind) makes a replay a no-op."""

    reference: str
    kind: str  # "charge" | "deposit" | "payout" | "refund"
    legs: tuple[Leg, ...]
    at_ns: int
    memo: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.reference, self.kind)


class UnbalancedEntry(ValueError):
    """A broken invariant: an entry whose legs do not sum to zero. Never posted."""


def check_balanced(entry: Entry) -> Entry:
    total = sum(leg.amount_cents for leg in entry.legs)
    if total != 0 or not entry.legs:
        raise UnbalancedEntry(f"entry {entry.key} sums to {total} cents")
    return entry


def charge(call_id: str, buyer_id: str, publisher_id: str, price_cents: int, take_rate_bps: int, at_ns: int) -> Entry:
    """A billable call: buyer -price, publisher +payout, exchange +margin."""
    payout, margin = split(price_cents, take_rate_bps)
    return check_balanced(
        Entry(
            call_id,
            "charge",
            (
                Leg(buyer_account(buyer_id), -price_cents),
                Leg(publisher_account(publisher_id), payout),
                Leg(EXCHANGE_REVENUE, margin),
            ),
            at_ns,
        )
    )


def deposit(account: str, amount_cents: int, reference: str, at_ns: int) -> Entry:
    if amount_cents <= 0:
        raise ValueError("a deposit must be positive")
    return check_balanced(
        Entry(reference, "deposit", (Leg(WORLD_DEPOSITS, -amount_cents), Leg(account, amount_cents)), at_ns)
    )


def refund(call_id: str, reference: str, charge_entry: Entry, refunded_before_cents: int, amount_cents: int, at_ns: int, memo: str = "") -> Entry:
    """A reversing entry for part or all of a call's charge: buyer +amount, publisher and
    exchange back in the charge's own proportion. Splitting on the cumulative amount refunded
    makes a series of partial refunds add up to exactly the original legs."""
    buyer, publisher, exchange = charge_entry.legs
    price, payout = -buyer.amount_cents, publisher.amount_cents
    if amount_cents <= 0:
        raise ValueError("a refund must be positive")
    if refunded_before_cents + amount_cents > price:
        raise ValueError(f"refunds would total {refunded_before_cents + amount_cents} cents, more than the {price} charged")
    after = refunded_before_cents + amount_cents
    publisher_part = after * payout // price - refunded_before_cents * payout // price
    return check_balanced(
        Entry(
            f"{call_id}:{reference}",
            "refund",
            (
                Leg(buyer.account, amount_cents),
                Leg(publisher.account, -publisher_part),
                Leg(exchange.account, -(amount_cents - publisher_part)),
            ),
            at_ns,
            memo,
        )
    )


def payout(account: str, amount_cents: int, reference: str, at_ns: int) -> Entry:
    """Money paid out to a publisher: publisher -amount, world:payouts +amount."""
    if amount_cents <= 0:
        raise ValueError("a payout must be positive")
    return check_balanced(
        Entry(reference, "payout", (Leg(account, -amount_cents), Leg(WORLD_PAYOUTS, amount_cents)), at_ns)
    )
