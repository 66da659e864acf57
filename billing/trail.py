"""What the writer puts on the audit trail for each row it writes (``billing.evidence`` pairs
them back), and how a refusal names a record."""

from __future__ import annotations

import msgspec

from collections.abc import Callable, Collection

from compliance.numbers import parse_number

from .audit import AuditRow
from .events import parties
from .postings import Entry
from .records import AccountRow, AuditEvent, CallOutcome, HoldEvent, Record
from .store import Batch
from .vault import KeyRow, Vault

PHONE_FIELDS = ("caller", "callee")  # a request's numbers, sealed in a decision's body


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


class _HoldBody(msgspec.Struct):
    """A hold's, capture's or release's audit body (canonical JSON as the dict of these keys)."""

    account: str
    amount_cents: int
    route_index: int


class _OutcomeBody(msgspec.Struct):
    """A call outcome's audit body (canonical JSON as the dict of these keys); its time is the
    record's ``at_ns`` (the outcome's ``final_ns``) and its call the record's ``call_id``."""

    billable: bool
    buyer: str
    campaign: str
    charged_cents: int
    created_ns: int
    margin_cents: int
    payout_cents: int
    price_cents: int
    publisher: str
    status: str


def hold_audit(h: HoldEvent) -> AuditEvent:
    """A hold placed, captured or released (the audit kind is the hold's kind)."""
    return AuditEvent(h.at_ns, h.kind, h.call_id, None, _HoldBody(h.account, h.amount_cents, h.route_index))


def outcome_audit(o: CallOutcome) -> AuditEvent:
    body = _OutcomeBody(o.billable, o.buyer, o.campaign, o.charged_cents, o.created_ns, o.margin_cents, o.payout_cents,
                        o.price_cents, o.publisher, o.status)
    return AuditEvent(o.final_ns, "outcome", o.call_id, None, body)


def seal_audit(ev: AuditEvent, vault: Vault) -> AuditEvent:
    """``ev`` as stored: its ``number`` (the consumer's) replaced by the number's blind index,
    and in its body the request's ``caller`` and ``callee`` sealed under their numbers' data
    keys, plus ``consumer`` (the consumer's number, sealed) and ``consumer_state`` (the state
    of its area code, for the reports rebuilt at start: a state is not a number). Records
    without a number or a request are stored as they are."""
    number, body = ev.number, ev.body
    if number is None and not (isinstance(body, dict) and "request" in body):
        return ev
    at = ev.at_ns
    if isinstance(body, dict) and "request" in body:
        req = body["request"]
        as_dict = isinstance(req, dict)
        changes: dict[str, str] = {}
        plain: dict[str, str] = {}
        for f in PHONE_FIELDS:
            v = req.get(f) if as_dict else getattr(req, f, None)
            if isinstance(v, str) and v:
                changes[f] = vault.seal(v, at)
                plain[v] = changes[f]
        if changes:
            req = {**req, **changes} if as_dict else msgspec.structs.replace(req, **changes)
        body = {**body, "request": req}
        if number is not None:
            info = parse_number(number)
            body["consumer"] = plain.get(number) or vault.seal(number, at)  # (the caller's or callee's sealed value)
            body["consumer_state"] = info.state if info is not None else None
    return AuditEvent(ev.at_ns, ev.kind, ev.call_id, vault.blind(number) if number is not None else None, body)


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


def fill(batch: Batch, records: list[Record], chain: Callable[[AuditEvent], AuditRow], vault: Vault | None = None,
         stored: Collection[KeyRow] = ()) -> None:
    """Sort ``records`` into ``batch``, putting each row on the audit chain with it, and
    address each audit record's domain events (``batch.parties``: (account, seq)). With a
    ``vault``, numbers are sealed before they are chained (the chain covers the ciphertext)
    and the rows of data keys not stored yet ride in the same batch (``batch.keys``), but those
    in ``stored`` (the rows of the batch committing before this one)."""
    entries, holds, outcomes, audit, party = batch.entries, batch.holds, batch.outcomes, batch.audit, batch.parties
    for r in records:
        ev: AuditEvent
        if isinstance(r, HoldEvent):
            holds.append(r)
            ev = hold_audit(r)
        elif isinstance(r, Entry):
            entries.append(r)
            ev = entry_audit(r)
        elif isinstance(r, AuditEvent):
            ev = r if vault is None else seal_audit(r, vault)
        elif isinstance(r, CallOutcome):
            outcomes.append(r)
            ev = outcome_audit(r)
        elif isinstance(r, AccountRow):
            batch.accounts.append(r)
            ev = account_audit(r)
        else:
            continue
        row = chain(ev)
        audit.append(row)
        for p in parties(ev):
            party.append((p, row.seq))
    if vault is not None and vault.unsaved:
        if stored:
            skip = {r.kid for r in stored}
            batch.keys.extend(r for kid, r in vault.unsaved.items() if kid not in skip)
        else:
            batch.keys.extend(vault.unsaved.values())
