"""Monthly invoices (buyers) and payout reports (publishers), as CSV and readable HTML.

``write_month(store, "2026-11", out_dir)`` writes, for the calendar month in UTC:

- ``invoice-2026-11-<buyer id>.csv`` / ``.html``: the buyer's opening balance, every charge
  (date, call id, campaign, amount), refund and deposit of the month, and the closing balance;
- ``payout-2026-11-<publisher id>.csv`` / ``.html``: the publisher's opening balance, its credit
  for every billable call, refund claw-backs, payouts made, and the net payable at month end;
- ``summary-2026-11.csv``: one row of totals per party.

Every amount in a CSV is signed as it moves the party's own balance (a buyer's charge is
negative, a publisher's credit positive), so ``opening + sum(lines) == closing`` holds in every
file; the HTML shows the same signed figures as a summary that adds up to the closing balance and
one table per kind. Text cells that a spreadsheet would run as a formula are quoted. A party gets files
when it had activity in the month or holds a non-zero balance. Names come from ``accounts``;
legs name accounts ``buyer:<id>`` / ``publisher:<id>``. Queries run per party, so memory is
bounded by one party's month.
"""

from __future__ import annotations

import csv
import hashlib
import html
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from .store import Store

NS = 1_000_000_000
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")

# How each entry kind reads on each party's report.
_BUYER_KINDS = {"charge": "charge", "refund": "refund", "deposit": "deposit", "payout": "payout"}
_PUBLISHER_KINDS = {"charge": "credit", "refund": "clawback", "payout": "payout", "deposit": "deposit"}

LINES_SQL = """
SELECT e.at_ns, e.kind, e.reference, e.memo, l.amount_cents, o.campaign
FROM legs l JOIN entries e ON e.id = l.entry_id
LEFT JOIN call_outcomes o ON e.kind = 'charge' AND o.call_id = e.reference
WHERE l.account = ? AND e.at_ns >= ? AND e.at_ns < ?
ORDER BY e.at_ns, e.id
"""
OPENING_SQL = """
SELECT coalesce(sum(l.amount_cents), 0) FROM legs l JOIN entries e ON e.id = l.entry_id
WHERE l.account = ? AND e.at_ns < ?
"""
PARTIES_SQL = """
SELECT account FROM balances WHERE account LIKE 'buyer:%' OR account LIKE 'publisher:%'
UNION
SELECT kind || ':' || id FROM accounts
"""


class BadMonth(ValueError):
    pass


def month_bounds(month: str) -> tuple[int, int]:
    """``YYYY-MM`` -> [first instant, first instant of the next month) in UTC nanoseconds."""
    m = _MONTH.match(month)
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise BadMonth(f"expected a month as YYYY-MM, got {month!r}")
    y, mo = int(m.group(1)), int(m.group(2))
    lo = datetime(y, mo, 1, tzinfo=UTC)
    hi = datetime(y + mo // 12, mo % 12 + 1, 1, tzinfo=UTC)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return (lo - epoch) // _SECOND * NS, (hi - epoch) // _SECOND * NS


_SECOND = datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)


def iso(at_ns: int) -> str:
    return datetime.fromtimestamp(at_ns // NS, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def money(cents: int, grouping: bool = True) -> str:
    """Integer cents as a decimal string with two places (no float anywhere): 1,234.05."""
    sign = "-" if cents < 0 else ""
    whole = f"{abs(cents) // 100:,}" if grouping else str(abs(cents) // 100)
    return f"{sign}{whole}.{abs(cents) % 100:02d}"


def _text(value: str) -> str:
    """A CSV text cell that a spreadsheet will not run as a formula (memos come from operators)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


@dataclass
class Line:
    at_ns: int
    kind: str  # as the party reads it: charge/refund/deposit (buyer), credit/clawback/payout (publisher)
    call_id: str
    campaign: str
    reference: str
    memo: str
    amount_cents: int  # signed: how it moves the party's balance


@dataclass
class Statement:
    party: str  # "buyer" | "publisher"
    party_id: str
    name: str
    month: str
    opening_cents: int
    lines: list[Line] = field(default_factory=list)

    @property
    def account(self) -> str:
        return f"{self.party}:{self.party_id}"

    @property
    def closing_cents(self) -> int:
        return self.opening_cents + sum(line.amount_cents for line in self.lines)

    def total(self, kind: str) -> int:
        return sum(line.amount_cents for line in self.lines if line.kind == kind)

    def of(self, kind: str) -> list[Line]:
        return [line for line in self.lines if line.kind == kind]

    @property
    def other_kinds(self) -> list[str]:
        known = _BUYER_KINDS.values() if self.party == "buyer" else _PUBLISHER_KINDS.values()
        return sorted({line.kind for line in self.lines} - set(known))


async def statement(store: Store, party: str, party_id: str, name: str, month: str) -> Statement:
    lo, hi = month_bounds(month)
    account = f"{party}:{party_id}"
    opening = int((await store.fetch(OPENING_SQL, account, lo))[0][0])
    kinds = _BUYER_KINDS if party == "buyer" else _PUBLISHER_KINDS
    st = Statement(party, party_id, name, month, opening)
    refund_calls: set[str] = set()
    for at_ns, kind, reference, memo, amount, campaign in await store.fetch(LINES_SQL, account, lo, hi):
        call_id = reference if kind == "charge" else reference.split(":", 1)[0] if kind == "refund" else ""
        if kind == "refund":
            refund_calls.add(call_id)
        st.lines.append(Line(at_ns, kinds.get(kind, kind), call_id, campaign or "", reference, memo, int(amount)))
    if refund_calls:  # a refund's campaign is its call's
        ids = sorted(refund_calls)
        campaigns: dict[str, str] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            campaigns.update(await store.fetch(
                f"SELECT call_id, campaign FROM call_outcomes WHERE call_id IN ({','.join('?' * len(chunk))})", *chunk))
        for line in st.lines:
            if line.kind == kinds["refund"] and not line.campaign:
                line.campaign = campaigns.get(line.call_id, "")
    return st


# ---------------------------------------------------------------------- files
def _safe(party_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", party_id)
    if safe != party_id or not safe:
        safe += "-" + hashlib.sha256(party_id.encode()).hexdigest()[:8]
    return safe


def write_csv(st: Statement, path: Path) -> None:
    lo, hi = month_bounds(st.month)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["date", "kind", "call_id", "campaign", "reference", "memo", "amount_cents", "amount"])
        w.writerow([iso(lo), "opening_balance", "", "", "", "", st.opening_cents, money(st.opening_cents, False)])
        for line in st.lines:
            w.writerow([iso(line.at_ns), line.kind, _text(line.call_id), _text(line.campaign), _text(line.reference),
                        _text(line.memo), line.amount_cents, money(line.amount_cents, False)])
        w.writerow([iso(hi), "closing_balance", "", "", "", "", st.closing_cents, money(st.closing_cents, False)])


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}h1{font-size:1.4em}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}tr.total td{font-weight:bold;border-top:2px solid #222}"""
_NUM = ' class="n"'
_TOTAL = ' class="total"'


def _table(headers: list[str], rows: list[list[str]], numeric_from: int) -> str:
    def cells(tag: str, values: list[str]) -> str:
        return "".join(f"<{tag}{_NUM if i >= numeric_from else ''}>{html.escape(v)}</{tag}>" for i, v in enumerate(values))

    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows) or f'<tr><td colspan="{len(headers)}">none</td></tr>'
    return f"<table><tr>{cells('th', headers)}</tr>{body}</table>"


def _summary(rows: list[tuple[str, int]]) -> str:
    body = "".join(
        f'<tr{_TOTAL if i == len(rows) - 1 else ""}><td>{html.escape(k)}</td><td class="n">{money(v)}</td></tr>'
        for i, (k, v) in enumerate(rows))
    return f"<table>{body}</table>"


def _lines_table(lines: list[Line], with_call: bool = True) -> str:
    rows = [[iso(x.at_ns)[:10], x.call_id, x.campaign, x.reference, x.memo, money(x.amount_cents)] for x in lines]
    headers = ["Date", "Call", "Campaign", "Reference", "Memo", "Amount"]
    if not with_call:
        rows = [[r[0], r[3], r[4], r[5]] for r in rows]
        headers = ["Date", "Reference", "Memo", "Amount"]
    return _table(headers, rows, len(headers) - 1)


# per party: opening label, the summary's (label, kind) rows, the kind that is unusual for the
# party (shown only if present), closing label, and the sections (heading, kind, with call column)
_LAYOUT = {
    "buyer": ("Opening balance", [("Deposits", "deposit"), ("Charges", "charge"), ("Refunds", "refund")], "payout",
              "Closing balance",
              [("Charges ({n} calls)", "charge", True), ("Refunds", "refund", True), ("Deposits", "deposit", False)]),
    "publisher": ("Opening balance payable", [("Credits for billable calls", "credit"), ("Refund claw-backs", "clawback"),
                                              ("Payouts made", "payout")], "deposit", "Net payable at month end",
                  [("Credits ({n} billable calls)", "credit", True), ("Refund claw-backs", "clawback", True),
                   ("Payouts made", "payout", False)]),
}


def write_html(st: Statement, path: Path) -> None:
    month_name = datetime.fromtimestamp(month_bounds(st.month)[0] // NS, UTC).strftime("%B %Y")
    title = ("Invoice" if st.party == "buyer" else "Payout report") + f" — {st.name} ({st.party_id}) — {month_name}"
    parts = [f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>Account <code>{html.escape(st.account)}</code>; period {iso(month_bounds(st.month)[0])} to "
             f"{iso(month_bounds(st.month)[1])} (UTC). Amounts in dollars, signed as they move this balance.</p>"]
    opening, totals, unusual, closing, sections = _LAYOUT[st.party]
    parts.append(_summary([
        (opening, st.opening_cents), *((label, st.total(kind)) for label, kind in totals),
        *((f"Other ({k})", st.total(k)) for k in [unusual, *st.other_kinds] if st.of(k)),
        (closing, st.closing_cents)]))
    for heading, kind, with_call in sections:
        parts.append(f"<h2>{heading.format(n=len(st.of(kind)))}</h2>" + _lines_table(st.of(kind), with_call=with_call))
    shown = {kind for _, kind, _ in sections}
    others = [x for x in st.lines if x.kind not in shown]
    if others:
        parts.append("<h2>Other entries</h2>" + _lines_table(others))
    parts.append("</body></html>\n")
    path.write_text("".join(parts), encoding="utf-8")


SUMMARY_HEADERS = ["party", "party_id", "name", "opening_cents", "charges_or_credits_cents", "refunds_or_clawbacks_cents",
                   "deposits_cents", "payouts_cents", "other_cents", "closing_cents", "lines", "csv", "html"]


class Written(NamedTuple):
    party: str
    party_id: str
    name: str
    opening_cents: int
    closing_cents: int
    lines: int
    csv: Path
    html: Path


async def write_month(store: Store, month: str, out_dir: Path) -> list[Written]:
    """Write every invoice and payout report of ``month`` into ``out_dir``, plus the summary."""
    month_bounds(month)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = {f"{kind}:{id_}": name for id_, kind, name in await store.fetch("SELECT id, kind, name FROM accounts")}
    parties = sorted(a for (a,) in await store.fetch(PARTIES_SQL) if a.startswith(("buyer:", "publisher:")))
    written: list[Written] = []
    with (out_dir / f"summary-{month}.csv").open("w", newline="", encoding="utf-8") as f:
        summary = csv.writer(f)
        summary.writerow(SUMMARY_HEADERS)
        for account in parties:  # one party in memory at a time
            party, party_id = account.split(":", 1)
            st = await statement(store, party, party_id, names.get(account, party_id), month)
            if not st.lines and st.opening_cents == 0:
                continue
            stem = f"{'invoice' if party == 'buyer' else 'payout'}-{month}-{_safe(party_id)}"
            w = Written(party, party_id, st.name, st.opening_cents, st.closing_cents, len(st.lines),
                        out_dir / f"{stem}.csv", out_dir / f"{stem}.html")
            write_csv(st, w.csv)
            write_html(st, w.html)
            main, back = ("charge", "refund") if party == "buyer" else ("credit", "clawback")
            known = {main, back, "deposit", "payout"}
            summary.writerow([party, _text(party_id), _text(st.name), st.opening_cents, st.total(main), st.total(back),
                              st.total("deposit"), st.total("payout"),
                              sum(x.amount_cents for x in st.lines if x.kind not in known), st.closing_cents,
                              len(st.lines), w.csv.name, w.html.name])
            written.append(w)
    return written
