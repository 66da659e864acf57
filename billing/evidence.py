"""Every ledger row against its audit record, in both directions.

The writer puts each account, entry (with its legs), hold, capture, release and call outcome
on the audit chain in the same transaction as the row itself. ``CrossCheck`` loads the rows,
is fed the chain page by page (as ``audit verify`` walks it) and pairs them by natural key:

- an audit record whose row is missing, or differs from it (an amount, an account, a key's
  digest), is named by its ``seq``;
- a row no audit record speaks for (a deposit inserted behind the writer's back, balanced or
  not) is named by its key;
- a second audit record for the same row (a replay says the same again) is named if it differs.

Problems come back in chain order (the first record at fault first), then the rows without a
record. Accounts written before their audit body carried the key's digest are compared on the
fields their body has.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, NamedTuple

from .audit import AuditRow
from .store import Store

HOLD_KINDS = ("hold", "capture", "release")


class Problem(NamedTuple):
    seq: int | None  # the audit record at fault (None: a row without one)
    text: str


def _entry_name(reference: str, kind: str) -> str:
    return f"{kind} entry {reference!r}"


def _name(table: str, key: tuple) -> str:
    if table == "entries":
        return _entry_name(key[0], key[1])
    if table == "holds":
        return f"{key[2]} of call {key[0]!r} route {key[1]}"
    if table == "call_outcomes":
        return f"outcome of call {key[0]!r}"
    return f"account {key[0]!r}"


class CrossCheck:
    """Load with ``load``, ``feed`` each page of the chain in order, then ``finish``."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[tuple, tuple]] = {}
        self.seen: dict[tuple[str, tuple], tuple[int, tuple]] = {}  # (table, key) -> (the seq that matched it, the row)
        self.problems: list[Problem] = []
        self.records = 0

    async def load(self, store: Store) -> None:
        entries: dict[tuple, tuple] = {}
        legs: dict[int, list[tuple[str, int]]] = {}
        for entry_id, account, amount in await store.fetch("SELECT entry_id, account, amount_cents FROM legs"):
            legs.setdefault(int(entry_id), []).append((account, int(amount)))
        for entry_id, ref, kind, at_ns, memo in await store.fetch("SELECT id, reference, kind, at_ns, memo FROM entries"):
            entries[(ref, kind)] = (int(at_ns), memo, sorted(legs.pop(int(entry_id), [])))
        for entry_id, rows in legs.items():
            self.problems.append(Problem(None, f"{len(rows)} leg(s) of entry id {entry_id}, which does not exist"))
        self.rows["entries"] = entries
        self.rows["holds"] = {(c, int(i), k): (a, int(m), int(t)) for c, i, k, a, m, t in await store.fetch(
            "SELECT call_id, route_index, kind, account, amount_cents, at_ns FROM holds")}
        self.rows["call_outcomes"] = {(r[0],): tuple(bool(v) if i == 5 else v for i, v in enumerate(r[1:], 1)) for r in await store.fetch(
            "SELECT call_id, publisher, buyer, campaign, status, billable, price_cents, charged_cents, payout_cents, "
            "margin_cents, created_ns, final_ns FROM call_outcomes")}
        self.rows["accounts"] = {(r[0],): tuple(r[1:]) for r in await store.fetch(
            "SELECT id, kind, name, key_digest, credit_limit_cents, created_ns FROM accounts")}

    def _match(self, seq: int, table: str, key: tuple, expected: tuple, got_of: Any) -> None:
        name = _name(table, key)
        prior = self.seen.get((table, key))
        if prior is not None:  # a replayed record says the same again; one that says otherwise is at fault
            if got_of(prior[1]) != expected:
                self.problems.append(Problem(seq, f"audit record {seq} ({name}): a second record for it that "
                                                  f"differs from the first ({prior[0]})"))
            return
        row = self.rows[table].pop(key, None)
        if row is None:
            self.problems.append(Problem(seq, f"audit record {seq} ({name}): no such row in {table} (deleted or never written)"))
            return
        self.seen[(table, key)] = (seq, row)
        got = got_of(row)
        if got != expected:
            self.problems.append(Problem(seq, f"audit record {seq} ({name}): the row differs from its audit record: "
                                              f"stored {got!r}, audited {expected!r}"))

    def feed(self, records: Iterable[AuditRow]) -> None:
        for r in records:
            self.records += 1
            kind = r.kind
            if kind not in ("entry", "account", "outcome") and kind not in HOLD_KINDS:
                continue
            try:
                b = json.loads(r.body)
                if kind == "entry":
                    legs = sorted((leg["account"], leg["amount_cents"]) for leg in b["legs"])
                    self._match(r.seq, "entries", (b["reference"], b["entry_kind"]), (r.at_ns, b["memo"], legs), lambda row: row)
                elif kind == "account":
                    fields = ["account_kind", "name", "credit_limit_cents"] + (["key_digest"] if "key_digest" in b else [])
                    expected = tuple(b[f] for f in fields) + (r.at_ns,)
                    cols = {"account_kind": 0, "name": 1, "key_digest": 2, "credit_limit_cents": 3}

                    def pick(row: tuple, fields: list[str] = fields, cols: dict[str, int] = cols) -> tuple:
                        return tuple(row[cols[f]] for f in fields) + (row[4],)
                    self._match(r.seq, "accounts", (b["id"],), expected, pick)
                elif kind == "outcome":
                    expected = (b["publisher"], b["buyer"], b["campaign"], b["status"], b["billable"], b["price_cents"],
                                b["charged_cents"], b["payout_cents"], b["margin_cents"], b["created_ns"], r.at_ns)
                    self._match(r.seq, "call_outcomes", (r.call_id,), expected, lambda row: row)
                else:
                    self._match(r.seq, "holds", (r.call_id, b["route_index"], kind),
                                (b["account"], b["amount_cents"], r.at_ns), lambda row: row)
            except (ValueError, KeyError, TypeError) as exc:
                self.problems.append(Problem(r.seq, f"audit record {r.seq} ({kind}): its body is not what the writer "
                                                    f"writes: {type(exc).__name__}: {exc}"))

    def finish(self) -> list[Problem]:
        """Every problem: the audit records at fault in chain order, then rows without a record."""
        out = sorted((p for p in self.problems if p.seq is not None), key=lambda p: p.seq or 0)
        out += [p for p in self.problems if p.seq is None]
        for table, rows in self.rows.items():
            for key in sorted(rows):
                out.append(Problem(None, f"{_name(table, key)}: a row in {table} with no audit record"))
        return out

    def checked(self) -> str:
        return f"{self.records} audit records against {len(self.seen) + sum(len(r) for r in self.rows.values())} ledger rows"
