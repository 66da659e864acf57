"""Operator commands on the durable store: invoices, reconciliation, audit verification.

    billing invoice --month 2026-11 [--out DIR]   invoices and payout reports (billing.reports)
    billing reconcile [--grace-s N]               prove the books (billing.reconcile); exit 1 on
                                                  any discrepancy
    audit verify [--page N]                       recompute the audit hash chain page by page;
                                                  exit 1 naming the first broken record

``python -m exchange billing ...`` and ``python -m exchange audit ...`` call ``main`` with the
group name first (``main(["billing", "reconcile"])``). Every command takes ``--database-url``;
without it the database is ``EXCHANGE_DATABASE_URL``, else the embedded default
``sqlite:///exchange.db`` (the same default as the exchange's settings; this module cannot import
``exchange.settings`` because billing must not depend on the edges). A SQLite file that does not
exist is an error here, not a new empty ledger. Exit status 2: bad arguments or no database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from collections.abc import Awaitable, Callable, Mapping

from .audit import GENESIS, verify
from .reconcile import reconcile
from .reports import BadMonth, write_month
from .backends import open_store
from .store import Store, StoreUnavailable

DEFAULT_DATABASE_URL = "sqlite:///exchange.db"
# A hold stays open for the whole call, so the default grace outlasts the longest call the
# settings allow (max_call_s <= 24 h) plus an hour for routing and the writer's retries.
DEFAULT_GRACE_S = 25 * 3600


def database_url(explicit: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """``--database-url``, else ``EXCHANGE_DATABASE_URL`` (empty counts as unset), else the default."""
    source: Mapping[str, str] = os.environ if env is None else env
    return explicit or source.get("EXCHANGE_DATABASE_URL") or DEFAULT_DATABASE_URL


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database-url", default=None,
                        help=f"postgresql://... or sqlite:///path (default: $EXCHANGE_DATABASE_URL or {DEFAULT_DATABASE_URL})")
    parser = argparse.ArgumentParser(prog="python -m exchange", description="Billing and audit operator commands")
    groups = parser.add_subparsers(dest="group", required=True)
    billing = groups.add_parser("billing", help="invoices and reconciliation")
    bsub = billing.add_subparsers(dest="command", required=True)
    inv = bsub.add_parser("invoice", parents=[common], help="write a month's invoices and payout reports (CSV and HTML)")
    inv.add_argument("--month", required=True, help="YYYY-MM, a calendar month in UTC")
    inv.add_argument("--out", default=None, help="output directory (default: ./billing-YYYY-MM)")
    rec = bsub.add_parser("reconcile", parents=[common], help="prove the ledger; exit 1 on any discrepancy")
    rec.add_argument("--grace-s", type=int, default=DEFAULT_GRACE_S,
                     help=f"an unresolved hold younger than this is in flight, not a discrepancy (default {DEFAULT_GRACE_S})")
    rec.add_argument("--limit", type=int, default=50, help="examples listed per section (default 50)")
    audit = groups.add_parser("audit", help="the audit trail")
    asub = audit.add_subparsers(dest="command", required=True)
    ver = asub.add_parser("verify", parents=[common], help="recompute the hash chain; exit 1 naming the first broken record")
    ver.add_argument("--page", type=int, default=5000, help="records read per query (default 5000)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    url = database_url(args.database_url)
    command: Callable[[Store], Awaitable[int]]
    if args.group == "billing" and args.command == "invoice":
        command = lambda store: _invoice(store, args.month, Path(args.out or f"billing-{args.month}"))  # noqa: E731
    elif args.group == "billing":
        command = lambda store: _reconcile(store, args.grace_s * 1_000_000_000, args.limit)  # noqa: E731
    else:
        command = lambda store: _verify(store, max(1, args.page))  # noqa: E731
    try:
        return asyncio.run(_with_store(url, command))
    except (StoreUnavailable, BadMonth, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


async def _with_store(url: str, command: Callable[[Store], Awaitable[int]]) -> int:
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        raise StoreUnavailable(f"no SQLite database at {url[len('sqlite:///'):]!r} (set --database-url or EXCHANGE_DATABASE_URL)")
    store = open_store(url)
    await store.open()
    try:
        return await command(store)
    finally:
        await store.close()


async def _invoice(store: Store, month: str, out: Path) -> int:
    written = await write_month(store, month, out)
    buyers = sum(1 for w in written if w.party == "buyer")
    print(f"{month}: wrote {buyers} invoice(s) and {len(written) - buyers} payout report(s) to {out} "
          f"(CSV and HTML; totals in summary-{month}.csv)")
    for w in written:
        print(f"  {w.party:9} {w.party_id:24} opening {w.opening_cents:>12} closing {w.closing_cents:>12} cents  {w.csv.name}")
    return 0


async def _reconcile(store: Store, grace_ns: int, limit: int) -> int:
    report = await reconcile(store, time.time_ns(), grace_ns, limit=limit)
    print(report.text())
    return 0 if report.ok else 1


async def _verify(store: Store, page: int) -> int:
    """Stream the chain in ``seq`` order, ``page`` records per query, carrying the last hash."""
    seq, head = 0, GENESIS
    while True:
        rows = await store.audit_query(None, None, None, None, limit=page, after_seq=seq)
        if not rows:
            break
        seq, head, broken = verify(rows, (seq, head))
        if broken is not None:
            print(f"audit chain BROKEN at record {broken.seq}: {broken.problem}")
            print(f"records 1..{seq} verify; the last good hash is {head.hex()}")
            return 1
        if len(rows) < page:
            break
    print(f"audit chain intact: {seq} records, head hash {head.hex()}")
    return 0
