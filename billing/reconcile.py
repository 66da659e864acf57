"""Reconciliation: prove from the durable store alone that the books are right.

``reconcile(store, now_ns, open_hold_grace_ns)`` runs one SQL statement per claim and returns
a ``Report`` of named sections, each with what it checked, its discrepancies and (where
timing matters) what is still in flight:

1. every entry balances: its legs sum to zero and it has at least two (and no leg lacks its entry);
2. every row of ``balances`` equals the sum of its account's legs, and every account with legs
   has a row;
3. the sum of all legs (and of all balances) is zero;
4. every billable call outcome has exactly one ``charge`` entry whose buyer leg is
   ``-charged_cents`` and whose publisher and exchange legs are ``payout_cents`` and
   ``margin_cents`` (and no other legs);
5. no non-billable call outcome has a charge;
6. every charge belongs to a call with an outcome (one that is not billable is reported by 5);
7. the refunds of a call (references ``<call_id>:<ref>``) never move more, on any account, than
   its charge did, and never refer to a call without a charge;
8. every ``hold`` row has exactly one resolution (a capture or a release) of the same account
   and amount, and no resolution lacks its hold;
9. a capture exists for exactly the calls with a charge (one each).

A hold younger than the grace with no resolution yet is a live call, listed as in flight, not a
discrepancy. So is the other half of a pair the writer may commit in two batches (an outcome or
charge, a charge or capture) when the half present is younger than the grace. Wrong amounts are
never in flight.

Every check aggregates in the database and brings back only the rows that disagree (at most
``limit`` of them, with the full count from a window function), so it stays one pass or one hash
join over the tables at millions of rows and the process holds only the report. Each check is a
single statement, so it reads one consistent snapshot even while the exchange keeps writing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from .postings import EXCHANGE_REVENUE
from .store import Store

NS = 1_000_000_000

# The call id of a refund, ``<call_id>:<ref>`` -> ``<call_id>`` (NULL if there is no colon).
# The one expression standard SQL does not share between the two backends.
_REFUND_CALL = {
    "postgres": "CASE WHEN strpos(e.reference, ':') > 0 THEN split_part(e.reference, ':', 1) END",
    "sqlite": "CASE WHEN instr(e.reference, ':') > 0 THEN substr(e.reference, 1, instr(e.reference, ':') - 1) END",
}


@dataclass
class Section:
    name: str
    claim: str
    checked: str  # what was looked at, e.g. "1204 entries, 3612 legs"
    discrepancies: list[str] = field(default_factory=list)
    discrepancy_count: int = 0
    in_flight: list[str] = field(default_factory=list)
    in_flight_count: int = 0

    @property
    def ok(self) -> bool:
        return self.discrepancy_count == 0


@dataclass
class Report:
    now_ns: int
    grace_ns: int
    sections: list[Section]

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.sections)

    @property
    def discrepancy_count(self) -> int:
        return sum(s.discrepancy_count for s in self.sections)

    def section(self, name: str) -> Section:
        for s in self.sections:
            if s.name == name:
                return s
        raise KeyError(name)

    def text(self) -> str:
        at = datetime.fromtimestamp(self.now_ns // NS, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        out = [f"Ledger reconciliation as of {at} (unresolved holds younger than {_duration(self.grace_ns)} are in flight)", ""]
        for s in self.sections:
            mark = "ok  " if s.ok else "FAIL"
            line = f"[{mark}] {s.name}: {s.checked}"
            if s.discrepancy_count:
                line += f"; {s.discrepancy_count} discrepanc{'y' if s.discrepancy_count == 1 else 'ies'}"
            if s.in_flight_count:
                line += f"; {s.in_flight_count} in flight"
            out.append(line)
            out.append(f"       {s.claim}")
            out.extend(f"       - {d}" for d in s.discrepancies)
            if s.discrepancy_count > len(s.discrepancies):
                out.append(f"       ... and {s.discrepancy_count - len(s.discrepancies)} more")
            out.extend(f"       ~ in flight: {d}" for d in s.in_flight)
            if s.in_flight_count > len(s.in_flight):
                out.append(f"       ~ ... and {s.in_flight_count - len(s.in_flight)} more in flight")
        out.append("")
        n = self.discrepancy_count
        out.append("RESULT: OK, the books reconcile" if n == 0 else f"RESULT: {n} discrepanc{'y' if n == 1 else 'ies'} found")
        return "\n".join(out)

    __str__ = text


def _duration(ns: int) -> str:
    s = ns // NS
    return f"{s // 3600}h {s % 3600 // 60:02d}m {s % 60:02d}s"


def _limited(sql: str, order: str) -> str:
    """Wrap a query whose first column is ``cls`` ('bad' | 'flight'): at most ``?`` rows of each
    class, each row carrying its class's full count (the last two columns: count, rank)."""
    return (f"SELECT * FROM (SELECT q.*, count(*) OVER (PARTITION BY q.cls) AS n_cls, "
            f"row_number() OVER (PARTITION BY q.cls ORDER BY {order}) AS rn_cls FROM ({sql}) q) w WHERE w.rn_cls <= ?")


async def _classes(store: Store, sql: str, order: str, args: tuple, limit: int) -> dict[str, tuple[int, list[tuple]]]:
    out: dict[str, tuple[int, list[tuple]]] = {"bad": (0, []), "flight": (0, [])}
    rows = await store.fetch(_limited(sql, order), *args, limit)
    for r in sorted(rows, key=lambda r: r[-1]):
        cls, body, n = r[0], r[1:-2], int(r[-2])
        out[cls] = (n, out[cls][1] + [body])
    return out


def _fill(section: Section, found: dict[str, tuple[int, list[tuple]]], bad, flight=None) -> Section:
    section.discrepancy_count, rows = found["bad"]
    section.discrepancies = [bad(*r) for r in rows]
    section.in_flight_count, rows = found["flight"]
    section.in_flight = [flight(*r) for r in rows] if flight else []
    return section


# ---------------------------------------------------------------------- the checks
ENTRIES_SQL = """
SELECT 'bad' AS cls, e.id AS entry_id, e.reference AS reference, e.kind AS kind,
       coalesce(s.n, 0) AS n_legs, coalesce(s.total, 0) AS total
FROM entries e LEFT JOIN (SELECT entry_id, count(*) AS n, sum(amount_cents) AS total FROM legs GROUP BY entry_id) s
  ON s.entry_id = e.id
WHERE s.entry_id IS NULL OR s.total <> 0 OR s.n < 2
UNION ALL
SELECT 'bad', o.entry_id, NULL, NULL, o.n, o.total
FROM (SELECT entry_id, count(*) AS n, sum(amount_cents) AS total FROM legs GROUP BY entry_id) o
WHERE NOT EXISTS (SELECT 1 FROM entries x WHERE x.id = o.entry_id)
"""


def _entry_problem(entry_id, reference, kind, n_legs, total) -> str:
    if reference is None:
        return f"{n_legs} leg(s) of entry id {entry_id} (sum {int(total)} cents) have no entry"
    return f"entry {entry_id} ({kind} {reference!r}) has {n_legs} leg(s) summing to {int(total)} cents"


BALANCES_SQL = """
SELECT 'bad' AS cls, u.account AS account, sum(u.legs_sum) AS legs_sum, sum(u.bal) AS bal, sum(u.has_bal) AS has_bal
FROM (SELECT account, sum(amount_cents) AS legs_sum, 0 AS bal, 0 AS has_bal FROM legs GROUP BY account
      UNION ALL
      SELECT account, 0, balance_cents, 1 FROM balances) u
GROUP BY u.account
HAVING sum(u.legs_sum) <> sum(u.bal) OR sum(u.has_bal) <> 1
"""


def _balance_problem(account, legs_sum, bal, has_bal) -> str:
    if not has_bal:
        return f"{account}: has legs summing to {int(legs_sum)} cents but no row in balances"
    return f"{account}: balance {int(bal)} cents, but its legs sum to {int(legs_sum)} cents"


BILLABLE_SQL = f"""
SELECT CASE WHEN g.entry_id IS NULL AND g.final_ns >= ? THEN 'flight' ELSE 'bad' END AS cls,
       g.call_id AS call_id, g.entry_id AS entry_id, g.charged_cents AS charged, g.payout_cents AS payout,
       g.margin_cents AS margin, g.buyer_leg AS buyer_leg, g.pub_leg AS pub_leg, g.exch_leg AS exch_leg,
       g.other_legs AS other_legs
FROM (
  SELECT o.call_id, o.final_ns, o.charged_cents, o.payout_cents, o.margin_cents, c.id AS entry_id,
         coalesce(sum(CASE WHEN l.account = 'buyer:' || o.buyer THEN l.amount_cents END), 0) AS buyer_leg,
         coalesce(sum(CASE WHEN l.account = 'publisher:' || o.publisher THEN l.amount_cents END), 0) AS pub_leg,
         coalesce(sum(CASE WHEN l.account = '{EXCHANGE_REVENUE}' THEN l.amount_cents END), 0) AS exch_leg,
         sum(CASE WHEN l.account IS NOT NULL AND l.account NOT IN ('buyer:' || o.buyer, 'publisher:' || o.publisher,
             '{EXCHANGE_REVENUE}') THEN 1 ELSE 0 END) AS other_legs
  FROM call_outcomes o
  LEFT JOIN entries c ON c.reference = o.call_id AND c.kind = 'charge'
  LEFT JOIN legs l ON l.entry_id = c.id
  WHERE o.billable
  GROUP BY o.call_id, o.final_ns, o.charged_cents, o.payout_cents, o.margin_cents, c.id
) g
WHERE g.entry_id IS NULL OR g.buyer_leg <> -g.charged_cents OR g.pub_leg <> g.payout_cents
   OR g.exch_leg <> g.margin_cents OR g.other_legs <> 0
"""


def _billable_problem(call_id, entry_id, charged, payout, margin, buyer_leg, pub_leg, exch_leg, other_legs) -> str:
    if entry_id is None:
        return f"billable call {call_id} ({charged} cents) has no charge entry"
    got = f"buyer {int(buyer_leg)}, publisher {int(pub_leg)}, exchange {int(exch_leg)}"
    extra = f", plus {int(other_legs)} leg(s) to other accounts" if other_legs else ""
    return f"charge of call {call_id} has legs {got}{extra}; the outcome says buyer {-charged}, publisher {payout}, exchange {margin}"


def _billable_flight(call_id, entry_id, charged, *_):
    return f"billable call {call_id} ({charged} cents), its charge not yet written"


NONBILLABLE_SQL = """
SELECT 'bad' AS cls, o.call_id AS call_id, o.status AS status, c.id AS entry_id
FROM call_outcomes o JOIN entries c ON c.reference = o.call_id AND c.kind = 'charge'
WHERE NOT o.billable
"""

ORPHAN_CHARGES_SQL = """
SELECT CASE WHEN c.at_ns >= ? THEN 'flight' ELSE 'bad' END AS cls, c.id AS entry_id, c.reference AS call_id
FROM entries c
WHERE c.kind = 'charge' AND NOT EXISTS (SELECT 1 FROM call_outcomes o WHERE o.call_id = c.reference)
"""

REFUNDS_SQL = """
SELECT 'bad' AS cls, r.call_id AS call_id, r.account AS account, r.refunded AS refunded, r.n_refunds AS n_refunds,
       count(c.id) AS n_charge, coalesce(sum(cl.amount_cents), 0) AS charged
FROM (SELECT {call} AS call_id, l.account AS account, sum(l.amount_cents) AS refunded, count(DISTINCT e.id) AS n_refunds
      FROM entries e JOIN legs l ON l.entry_id = e.id
      WHERE e.kind = 'refund'
      GROUP BY {call}, l.account) r
LEFT JOIN entries c ON c.reference = r.call_id AND c.kind = 'charge'
LEFT JOIN legs cl ON cl.entry_id = c.id AND cl.account = r.account
GROUP BY r.call_id, r.account, r.refunded, r.n_refunds
HAVING count(c.id) = 0
    OR NOT ((coalesce(sum(cl.amount_cents), 0) >= 0
             AND coalesce(sum(cl.amount_cents), 0) + r.refunded BETWEEN 0 AND coalesce(sum(cl.amount_cents), 0))
         OR (coalesce(sum(cl.amount_cents), 0) <= 0
             AND coalesce(sum(cl.amount_cents), 0) + r.refunded BETWEEN coalesce(sum(cl.amount_cents), 0) AND 0))
"""


def _refund_problem(call_id, account, refunded, n_refunds, n_charge, charged) -> str:
    if call_id is None:
        return f"{n_refunds} refund(s) moving {int(refunded)} cents on {account} have no <call_id>:<ref> reference"
    if not n_charge:
        return f"{n_refunds} refund(s) of call {call_id} move {int(refunded)} cents on {account}, but the call has no charge"
    return (f"refunds of call {call_id} move {int(refunded)} cents on {account}, "
            f"beyond the {int(charged)} cents its charge moved there")


HOLDS_SQL = """
SELECT CASE WHEN g.n_hold = 1 AND g.n_capture = 0 AND g.n_release = 0 AND g.hold_at >= ? THEN 'flight' ELSE 'bad' END AS cls,
       g.call_id AS call_id, g.route_index AS route_index, g.n_hold AS n_hold, g.n_capture AS n_capture,
       g.n_release AS n_release, g.n_accounts AS n_accounts, g.n_amounts AS n_amounts, g.account AS account,
       g.amount AS amount, g.hold_at AS hold_at
FROM (
  SELECT call_id, route_index,
         sum(CASE WHEN kind = 'hold' THEN 1 ELSE 0 END) AS n_hold,
         sum(CASE WHEN kind = 'capture' THEN 1 ELSE 0 END) AS n_capture,
         sum(CASE WHEN kind = 'release' THEN 1 ELSE 0 END) AS n_release,
         count(DISTINCT account) AS n_accounts, count(DISTINCT amount_cents) AS n_amounts,
         min(account) AS account, max(amount_cents) AS amount,
         max(CASE WHEN kind = 'hold' THEN at_ns END) AS hold_at
  FROM holds GROUP BY call_id, route_index
) g
WHERE NOT (g.n_hold = 1 AND g.n_capture + g.n_release = 1 AND g.n_accounts = 1 AND g.n_amounts = 1)
"""


def _hold_problem(call_id, route_index, n_hold, n_capture, n_release, n_accounts, n_amounts, account, amount, hold_at) -> str:
    what = f"hold of call {call_id} leg {route_index}"
    if not n_hold:
        return f"{what}: a {'capture' if n_capture else 'release'} without a hold"
    if n_capture + n_release == 0:
        return f"{what}: {amount} cents on {account} was never captured or released"
    if n_capture + n_release > 1:
        return f"{what}: both captured and released"
    return f"{what}: its resolution names a different account or amount than the hold ({n_accounts} accounts, {n_amounts} amounts)"


def _hold_flight(call_id, route_index, n_hold, n_capture, n_release, n_accounts, n_amounts, account, amount, hold_at) -> str:
    return f"call {call_id} leg {route_index}: {amount} cents held on {account}"


CAPTURES_SQL = """
SELECT CASE WHEN g.n_charge + g.n_capture = 1 AND g.last_at >= ? THEN 'flight' ELSE 'bad' END AS cls,
       g.call_id AS call_id, g.n_charge AS n_charge, g.n_capture AS n_capture
FROM (
  SELECT u.call_id AS call_id, sum(u.n_charge) AS n_charge, sum(u.n_capture) AS n_capture, max(u.at_ns) AS last_at
  FROM (SELECT reference AS call_id, 1 AS n_charge, 0 AS n_capture, at_ns FROM entries WHERE kind = 'charge'
        UNION ALL
        SELECT call_id, 0, 1, at_ns FROM holds WHERE kind = 'capture') u
  GROUP BY u.call_id
) g
WHERE g.n_charge <> 1 OR g.n_capture <> 1
"""


def _capture_problem(call_id, n_charge, n_capture) -> str:
    if not n_capture:
        return f"call {call_id} was charged but its hold was never captured"
    if not n_charge:
        return f"call {call_id} has {n_capture} capture(s) but no charge"
    return f"call {call_id} has {n_charge} charge(s) and {n_capture} captures"


def _capture_flight(call_id, n_charge, n_capture) -> str:
    return f"call {call_id}: {'charge' if n_charge else 'capture'} written, its {'capture' if n_charge else 'charge'} not yet"


COUNTS_SQL = """
SELECT (SELECT count(*) FROM entries), (SELECT count(*) FROM legs), (SELECT count(*) FROM balances),
       (SELECT coalesce(sum(amount_cents), 0) FROM legs), (SELECT coalesce(sum(balance_cents), 0) FROM balances),
       (SELECT count(*) FROM call_outcomes WHERE billable), (SELECT count(*) FROM call_outcomes WHERE NOT billable),
       (SELECT count(*) FROM entries WHERE kind = 'charge'), (SELECT count(*) FROM entries WHERE kind = 'refund'),
       (SELECT count(*) FROM holds WHERE kind = 'hold'), (SELECT count(*) FROM holds WHERE kind = 'capture')
"""


async def reconcile(store: Store, now_ns: int, open_hold_grace_ns: int, limit: int = 50) -> Report:
    """Check every claim above against ``store``; at most ``limit`` examples per section."""
    if store.backend not in _REFUND_CALL:
        raise ValueError(f"no reconciliation SQL for backend {store.backend!r}")
    cutoff = now_ns - open_hold_grace_ns
    (n_entries, n_legs, n_balances, legs_total, balances_total, n_billable, n_unbillable, n_charges, n_refunds,
     n_holds, n_captures) = (int(x) for x in (await store.fetch(COUNTS_SQL))[0])
    sections: list[Section] = []

    s = Section("entries balance", "every entry's legs sum to zero, with at least two legs per entry",
                f"{n_entries} entries, {n_legs} legs")
    sections.append(_fill(s, await _classes(store, ENTRIES_SQL, "q.entry_id", (), limit), _entry_problem))

    s = Section("balances equal legs", "every balance equals the sum of its account's legs; every account with legs has a balance",
                f"{n_balances} balances")
    sections.append(_fill(s, await _classes(store, BALANCES_SQL, "q.account", (), limit), _balance_problem))

    s = Section("ledger sums to zero", "the sum of all legs, and of all balances, is zero",
                f"legs sum to {legs_total} cents, balances to {balances_total} cents")
    zero = [f"the legs sum to {legs_total} cents"] * (legs_total != 0) + [f"the balances sum to {balances_total} cents"] * (balances_total != 0)
    s.discrepancies, s.discrepancy_count = zero, len(zero)
    sections.append(s)

    s = Section("billable calls charged once",
                "every billable call has one charge: buyer -charged, publisher +payout, exchange +margin, nothing else",
                f"{n_billable} billable calls")
    sections.append(_fill(s, await _classes(store, BILLABLE_SQL, "q.call_id", (cutoff,), limit), _billable_problem, _billable_flight))

    s = Section("non-billable calls not charged", "no call whose outcome is not billable has a charge",
                f"{n_unbillable} non-billable calls")
    sections.append(_fill(s, await _classes(store, NONBILLABLE_SQL, "q.call_id", (), limit),
                          lambda call_id, status, entry_id: f"non-billable call {call_id} ({status}) has charge entry {entry_id}"))

    s = Section("charges have a call", "every charge belongs to a call with an outcome", f"{n_charges} charges")
    sections.append(_fill(s, await _classes(store, ORPHAN_CHARGES_SQL, "q.entry_id", (cutoff,), limit),
                          lambda entry_id, call_id: f"charge entry {entry_id} of call {call_id} has no call outcome",
                          lambda entry_id, call_id: f"charge of call {call_id}, its outcome not yet written"))

    s = Section("refunds within charge", "the refunds of a call never move more on any account than its charge did",
                f"{n_refunds} refunds")
    sql = REFUNDS_SQL.format(call=_REFUND_CALL[store.backend])
    sections.append(_fill(s, await _classes(store, sql, "q.call_id, q.account", (), limit), _refund_problem))

    s = Section("holds resolved", "every hold is captured or released exactly once (same account and amount)",
                f"{n_holds} holds")
    sections.append(_fill(s, await _classes(store, HOLDS_SQL, "q.call_id, q.route_index", (cutoff,), limit),
                          _hold_problem, _hold_flight))

    s = Section("captures match charges", "a capture exists for exactly the calls with a charge, one each",
                f"{n_captures} captures, {n_charges} charges")
    sections.append(_fill(s, await _classes(store, CAPTURES_SQL, "q.call_id", (cutoff,), limit),
                          _capture_problem, _capture_flight))
    return Report(now_ns, open_hold_grace_ns, sections)
