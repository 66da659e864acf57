"""Operator commands on the durable store: invoices, reconciliation, audit verification.

    billing invoice --month 2026-11 [--out DIR]   invoices and payout reports (billing.reports)
    billing reconcile [--grace-s N]               prove the books (billing.reconcile); exit 1 on
                                                  any discrepancy
    audit verify [--page N] [--checkpoint FILE]   recompute the audit hash chain page by page and
                                                  cross-check every ledger row against its audit
                                                  record (both ways); with --checkpoint, check the
                                                  chain against signed checkpoints (a cut or
                                                  rewritten tail); exit 1 naming the first record
                                                  at fault
    audit checkpoint [--out FILE]                 sign the chain's head (seq, hash, time) with the
                                                  checkpoint key and append it to FILE (default
                                                  $EXCHANGE_CHECKPOINT_FILE, else standard output)

``python -m exchange billing ...`` and ``python -m exchange audit ...`` call ``main`` with the
group name first (``main(["billing", "reconcile"])``). Every command takes ``--database-url``;
without it the database is ``EXCHANGE_DATABASE_URL``, else the embedded default
``sqlite:///exchange.db`` (the same default as the exchange's settings; this module cannot import
``exchange.settings`` because billing must not depend on the edges). A SQLite file that does not
exist is an error here, not a new empty ledger. Exit status 2: bad arguments, no database, no
checkpoint key (``EXCHANGE_CHECKPOINT_KEY`` or ``EXCHANGE_CHECKPOINT_KEY_FILE``, or
``--key-file``) or an unreadable checkpoint file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from collections.abc import Awaitable, Callable, Mapping

from . import checkpoint
from .audit import GENESIS, verify
from .evidence import CrossCheck
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
    ver.add_argument("--checkpoint", default=None, help="a file of signed checkpoints (audit checkpoint) the chain must agree with")
    ver.add_argument("--key-file", default=None, help="the checkpoint key (default: $EXCHANGE_CHECKPOINT_KEY or _KEY_FILE)")
    ver.add_argument("--limit", type=int, default=50, help="discrepancies listed (default 50)")
    cp = asub.add_parser("checkpoint", parents=[common], help="sign the chain's head and append it to a file")
    cp.add_argument("--out", default=None, help="file to append to (default: $EXCHANGE_CHECKPOINT_FILE, else standard output)")
    cp.add_argument("--key-file", default=None, help="the checkpoint key (default: $EXCHANGE_CHECKPOINT_KEY or _KEY_FILE)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    url = database_url(args.database_url)
    command: Callable[[Store], Awaitable[int]]
    try:
        if args.group == "billing" and args.command == "invoice":
            command = lambda store: _invoice(store, args.month, Path(args.out or f"billing-{args.month}"))  # noqa: E731
        elif args.group == "billing":
            command = lambda store: _reconcile(store, args.grace_s * 1_000_000_000, args.limit)  # noqa: E731
        elif args.command == "checkpoint":
            out, key = args.out or os.environ.get("EXCHANGE_CHECKPOINT_FILE") or "-", checkpoint.key_from(key_file=args.key_file)
            command = lambda store: _checkpoint(store, out, key)  # noqa: E731
        else:
            vkey = checkpoint.key_from(key_file=args.key_file) if args.checkpoint else None
            command = lambda store: _verify(store, max(1, args.page), args.checkpoint, vkey, args.limit)  # noqa: E731
        return asyncio.run(_with_store(url, command))
    except (StoreUnavailable, BadMonth, OSError, ValueError) as exc:
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


async def _checkpoint(store: Store, out: str, key: bytes) -> int:
    seq, digest = await store.last_audit()
    line = checkpoint.sign(checkpoint.Checkpoint(seq, digest, time.time_ns()), key)
    if out == "-":
        print(line)
    else:
        checkpoint.append(out, line)
        print(f"checkpoint of record {seq} (hash {digest.hex()}) appended to {out}")
    return 0


async def _verify(store: Store, page: int, checkpoints: str | None = None, key: bytes | None = None, limit: int = 50) -> int:
    """Stream the chain in ``seq`` order, ``page`` records per query, carrying the last hash;
    pair every ledger row with its audit record; check the chain against signed checkpoints."""
    signed: list[checkpoint.Checkpoint] = []
    if checkpoints is not None:
        assert key is not None
        try:
            signed = checkpoint.read(checkpoints, key)
        except checkpoint.BadCheckpoint as exc:
            print(f"checkpoint REFUSED: {exc}")
            return 1
    cross = CrossCheck()
    await cross.load(store)
    seq, head, before, broken = 0, GENESIS, None, None
    good: tuple[int, bytes] = (0, GENESIS)
    after = 0
    while True:
        rows = await store.audit_query(None, None, None, None, limit=page, after_seq=after)
        if not rows:
            break
        cross.feed(rows)
        after = rows[-1].seq
        if broken is None:
            seq, head, broken = verify(rows, (seq, head), before)
            before = bytes(rows[-1].prev_hash)
            good = (seq, head)
        if len(rows) < page:
            break
    if broken is not None:
        print(f"audit chain BROKEN at record {broken.seq}: {broken.problem}")
        print(f"records 1..{good[0]} verify; the last good hash is {good[1].hex()}")
    else:
        print(f"audit chain intact: {seq} records, head hash {head.hex()}")
    problems = cross.finish()
    print(f"ledger cross-checked ({cross.checked()}): {len(problems)} discrepancies")
    for p in problems[:limit]:
        print(f"  {p.text}")
    if len(problems) > limit:
        print(f"  ... and {len(problems) - limit} more")
    cut = await checkpoint.check(store, signed) if signed else []
    if checkpoints is not None:
        latest = f"the latest of record {signed[-1].seq}" if signed else "none in the file"
        print(f"checkpoints: {len(signed)} in {checkpoints} ({latest}): " + ("agree" if not cut else f"{len(cut)} contradicted"))
        for c in cut:
            print(f"  {c}")
    return 0 if broken is None and not problems and not cut else 1
