"""What the exchange writes durably, as plain immutable values.

The synchronous core appends these to an outbox as it moves money or finishes a call; the
edge drains the outbox into the group-commit writer. Each kind has a natural key, so a
batch written twice (a retry after a dropped connection) writes each row once:

- ``Entry`` (billing.postings): (reference, kind)
- ``HoldEvent``: (call_id, route_index, kind): a hold placed, captured or released
- ``CallOutcome``: call_id: how a routed call ended, billable or not, and what it cost
- ``AccountRow``: id: an account and its key's digest (never the key)
- ``AuditEvent``: chained by the writer into a numbered, hashed audit record
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .postings import Entry


class HoldEvent(NamedTuple):
    call_id: str
    route_index: int
    kind: str  # "hold" | "capture" | "release"
    account: str
    amount_cents: int
    at_ns: int


class CallOutcome(NamedTuple):
    call_id: str
    publisher: str
    buyer: str
    campaign: str
    status: str  # "completed" | "failed" | "expired"
    billable: bool
    price_cents: int
    charged_cents: int
    payout_cents: int
    margin_cents: int
    created_ns: int
    final_ns: int


class AccountRow(NamedTuple):
    id: str
    kind: str  # "buyer" | "publisher"
    name: str
    key_digest: str
    credit_limit_cents: int
    created_ns: int


class AuditEvent(NamedTuple):
    """A fact to put on the audit trail; ``body`` is any msgspec-encodable value."""

    at_ns: int
    kind: str  # "decision" | "entry" | "hold" | "capture" | "release" | "outcome" | "account"
    call_id: str | None
    number: str | None
    body: Any


Record = Entry | HoldEvent | CallOutcome | AccountRow | AuditEvent

__all__ = ["Entry", "HoldEvent", "CallOutcome", "AccountRow", "AuditEvent", "Record"]
