"""Domain events, pure: a view of the audit trail, addressed to the tenants they concern.

The audit trail is the outbox. Every fact of a call's life and of money is an audit record
written by the group-commit writer in the same transaction as the ledger rows it belongs to
(decision, publisher event, hold/capture/release, entry, call outcome, account), numbered
``seq`` in one total order. An event is not a second copy of that record: ``derive`` turns
one stored record into its events, deterministically, so an event exists if and only if its
record is durable, and the same id always carries the same body.

Ids: ``evt_<seq, 16 digits>_<index, 3 digits>`` (the index within the record's events):
unique, and their string order is the market's total order. A position (``after=``) is any
such id; ``position(seq)`` is the position just past a whole record.

Each event has one addressee (``account``, a buyer or publisher id; the operator sees all),
and its ``data`` is what that addressee may see (a buyer never learns the publisher's payout,
a publisher never the buyer's price). ``parties`` names, from a record before it is encoded,
every account ``derive`` will address: the writer indexes (account, seq) with it in the same
transaction, so a tenant's replay reads its own records only.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import msgspec

from compliance.instants import rfc3339

from .audit import AuditRow
from .records import AuditEvent

ID_RE = re.compile(r"^evt_(\d{16})_(\d{3})$")
MAX_PER_RECORD = 1000

TYPES = (
    "account.created",
    "call.decided", "call.connected", "call.completed", "call.failed", "call.expired", "call.billable",
    "money.held", "money.captured", "money.released",
    "money.charged", "money.payout", "money.refunded", "money.deposited", "money.withdrawn",
    "webhook.disabled",
)


class DomainEvent(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    type: str
    at: str
    call_id: str | None = None
    account: str | None = None
    data: dict[str, Any] = {}


class Addressed(NamedTuple):
    """An event before it is numbered: (type, addressee, data)."""

    type: str
    account: str | None
    data: dict[str, Any]


def event_id(seq: int, index: int) -> str:
    return f"evt_{seq:016d}_{index:03d}"


def position(seq: int) -> str:
    """The position just past every event of record ``seq`` (``after=`` it starts at seq + 1)."""
    return event_id(seq, MAX_PER_RECORD - 1)


def parse_position(raw: str) -> tuple[int, int]:
    """(seq, index) of an event id; ``"0"`` or ``""`` is the start. ValueError if malformed."""
    if raw in ("", "0"):
        return (0, MAX_PER_RECORD - 1)
    m = ID_RE.match(raw)
    if m is None:
        raise ValueError(f"{raw!r} is not an event id (evt_<16 digits>_<3 digits>)")
    return int(m.group(1)), int(m.group(2))


def tenant(ledger_account: str) -> str | None:
    """The buyer or publisher id behind a ledger account (``buyer:<id>``); None for the
    exchange's own accounts (revenue, the world)."""
    kind, _, rest = ledger_account.partition(":")
    return rest if kind in ("buyer", "publisher") and rest else None


# ------------------------------------------------------------------ write side
def parties(ev: AuditEvent) -> tuple[str, ...]:
    """Every account the events of ``ev`` are addressed to (from the unencoded body); a body
    of another shape (none the exchange writes) addresses nobody rather than fail the write."""
    try:
        return _parties(ev.kind, ev.body)
    except (AttributeError, KeyError, TypeError):
        return ()


def _parties(kind: str, b: Any) -> tuple[str, ...]:
    if kind in ("hold", "capture", "release"):
        t = tenant(b.account)
        return (t,) if t else ()
    if kind == "entry":
        return tuple(dict.fromkeys(t for t in (tenant(leg.account) for leg in b.legs) if t))
    if kind == "outcome":
        if b.status != "expired" and not b.billable:
            return ()
        return (b.publisher, b.buyer)
    if kind == "account":
        return (b["id"],)
    if kind == "decision":
        return tuple(dict.fromkeys([b["publisher"], *(r["buyer"] for r in b.get("routes", ()))]))
    if kind == "event":
        return tuple(p for p in (b.get("publisher"), b.get("buyer")) if p)
    if kind == "webhook":
        return (b["account"],) if b["account"] != "operator" else ()
    return ()


# ------------------------------------------------------------------ read side
def _decision(b: dict[str, Any]) -> list[Addressed]:
    d = b.get("decision") or {}
    pub = {"decision": d.get("decision"), "reason": d.get("reason"), "route": d.get("route"),
           "fallbacks": d.get("fallbacks", [])}
    out = [Addressed("call.decided", b["publisher"], pub)]
    for i, r in enumerate(b.get("routes", ())):
        out.append(Addressed("call.decided", r["buyer"], {
            "decision": "routed", "route_index": i, "campaign": r["campaign"], "price_cents": r["price_cents"],
            "destination": r["destination"], "min_duration_s": r["min_duration_s"]}))
    return out


def _event(b: dict[str, Any]) -> list[Addressed]:
    ev = b.get("event") or {}
    kind = "call." + str(ev.get("event"))
    common = {"route_index": b.get("event_route", ev.get("route_index")), "duration_s": ev.get("duration_s"),
              "status": b.get("status"), "billable": b.get("billable")}
    resp = b.get("response") or {}
    out = []
    if b.get("publisher"):
        out.append(Addressed(kind, b["publisher"], {**common, "payout_cents": resp.get("payout_cents", 0)}))
    if b.get("buyer"):
        out.append(Addressed(kind, b["buyer"], {**common, "charged_cents": b.get("charged_cents", 0)}))
    return out


def _outcome(b: dict[str, Any]) -> list[Addressed]:
    if b["status"] == "expired":
        kind = "call.expired"
    elif b["billable"]:
        kind = "call.billable"
    else:
        return []
    return [
        Addressed(kind, b["publisher"], {"status": b["status"], "billable": b["billable"], "payout_cents": b["payout_cents"]}),
        Addressed(kind, b["buyer"], {"status": b["status"], "billable": b["billable"], "campaign": b["campaign"],
                                     "charged_cents": b["charged_cents"]}),
    ]


_ENTRY_TYPES = {"deposit": "money.deposited", "payout": "money.withdrawn", "refund": "money.refunded"}


def _entry(b: dict[str, Any]) -> list[Addressed]:
    kind, out = b["entry_kind"], []
    for leg in b["legs"]:
        t = tenant(leg["account"])
        if t is None:
            continue
        amount = leg["amount_cents"]
        if kind == "charge":
            name, amount = ("money.charged", -amount) if leg["account"].startswith("buyer:") else ("money.payout", amount)
        else:
            name = _ENTRY_TYPES.get(kind, "money." + kind)
        out.append(Addressed(name, t, {"amount_cents": amount, "reference": b["reference"], "memo": b.get("memo", "")}))
    return out


def _hold(kind: str, b: dict[str, Any]) -> list[Addressed]:
    t = tenant(b["account"])
    name = {"hold": "money.held", "capture": "money.captured", "release": "money.released"}[kind]
    return [Addressed(name, t, {"amount_cents": b["amount_cents"], "route_index": b["route_index"]})] if t else []


def _account(b: dict[str, Any]) -> list[Addressed]:
    return [Addressed("account.created", b["id"], {"kind": b["account_kind"], "name": b["name"],
                                                   "credit_limit_cents": b["credit_limit_cents"]})]


def addressed(kind: str, body: dict[str, Any]) -> list[Addressed]:
    """The events of one audit record, before numbering (the order is part of their ids)."""
    if kind == "decision":
        return _decision(body)
    if kind == "event":
        return _event(body)
    if kind == "outcome":
        return _outcome(body)
    if kind == "entry":
        return _entry(body)
    if kind in ("hold", "capture", "release"):
        return _hold(kind, body)
    if kind == "account":
        return _account(body)
    if kind == "webhook":  # a notice: an endpoint was disabled after repeated failures
        owner = body["account"]
        return [Addressed("webhook." + body["state"], None if owner == "operator" else owner,
                          {k: body[k] for k in ("webhook_id", "url", "reason")})]
    return []


def derive(row: AuditRow) -> list[DomainEvent]:
    """Every event of one stored audit record, numbered."""
    body = msgspec.json.decode(row.body)
    at = rfc3339(row.at_ns)
    return [DomainEvent(id=event_id(row.seq, i), type=a.type, at=at, call_id=row.call_id, account=a.account, data=a.data)
            for i, a in enumerate(addressed(row.kind, body)[:MAX_PER_RECORD])]


def select(rows: list[AuditRow], viewer: str | None, after: tuple[int, int], types: frozenset[str] | None,
           limit: int) -> list[DomainEvent]:
    """The events of ``rows`` (seq order) past ``after`` that ``viewer`` may see (None: the
    operator, all), of ``types`` if given, at most ``limit``."""
    out: list[DomainEvent] = []
    for row in rows:
        for i, ev in enumerate(derive(row)):
            if (row.seq, i) <= after:
                continue
            if viewer is not None and ev.account != viewer:
                continue
            if types is not None and ev.type not in types:
                continue
            out.append(ev)
            if len(out) >= limit:
                return out
    return out
