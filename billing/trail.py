"""What the writer puts on the audit trail for each row it writes (``billing.evidence`` pairs
them back), and how a refusal names a record."""

from __future__ import annotations

import msgspec

from .postings import Entry
from .records import AccountRow, AuditEvent, CallOutcome, HoldEvent, Record


class _LegBody(msgspec.Struct):
    account: str
    amount_cents: int


class _EntryBody(msgspec.Struct):
    """An entry's audit body: the same canonical JSON as the dict {"entry_kind", "legs":
    [{"account", "amount_cents"}], "memo", "reference"}, built and encoded faster."""

    entry_kind: str
    legs: list[_LegBody]
    memo: str
    reference: str


def entry_audit(e: Entry) -> AuditEvent:
    kind = e.kind
    call_id = e.reference if kind == "charge" else e.reference.split(":", 1)[0] if kind == "refund" else None
    body = _EntryBody(kind, [_LegBody(a, c) for a, c in e.legs], e.memo, e.reference)
    return AuditEvent(e.at_ns, "entry", call_id, None, body)


def account_audit(a: AccountRow) -> AuditEvent:
    body = {"id": a.id, "account_kind": a.kind, "name": a.name, "credit_limit_cents": a.credit_limit_cents,
            "key_digest": a.key_digest}
    return AuditEvent(a.created_ns, "account", None, None, body)


def hold_audit(h: HoldEvent) -> AuditEvent:
    """A hold placed, captured or released (the audit kind is the hold's kind)."""
    return AuditEvent(h.at_ns, h.kind, h.call_id, None, {"route_index": h.route_index, "account": h.account,
                                                          "amount_cents": h.amount_cents})


def outcome_audit(o: CallOutcome) -> AuditEvent:
    body = {"publisher": o.publisher, "buyer": o.buyer, "campaign": o.campaign, "status": o.status, "billable": o.billable,
            "price_cents": o.price_cents, "charged_cents": o.charged_cents, "payout_cents": o.payout_cents,
            "margin_cents": o.margin_cents, "created_ns": o.created_ns}
    return AuditEvent(o.final_ns, "outcome", o.call_id, None, body)


def describe(r: Record) -> str:
    """A record named by its key, for a refusal's message."""
    if isinstance(r, Entry):
        return f"{r.kind} entry {r.reference!r}"
    if isinstance(r, HoldEvent):
        return f"{r.kind} of call {r.call_id!r} route {r.route_index}"
    if isinstance(r, CallOutcome):
        return f"outcome of call {r.call_id!r}"
    if isinstance(r, AccountRow):
        return f"account {r.id!r} named {r.name!r}"
    return f"audit {r.kind} record" + (f" of call {r.call_id!r}" if r.call_id else "")
