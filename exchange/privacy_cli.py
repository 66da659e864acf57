"""``python -m exchange privacy erase|hold|release|holds|retention|rotate-key|keys``: the
operator's privacy tools on the database named by ``EXCHANGE_DATABASE_URL`` (the master key
as the exchange reads it: ``EXCHANGE_MASTER_KEY``, ``EXCHANGE_MASTER_KEY_FILE`` or SQLite's
``<database file>.master-key``).

They act on the database, not on a running exchange's memory: with the exchange running, use
``POST /v1/privacy/...`` (which also clears the number from its memory). Every change that
the audit trail records (an erasure, a hold, a retention run) is written by a writer of this
process, so run them while the exchange is stopped (one writer per chain); ``holds`` and
``keys`` only read, and ``rotate-key`` touches the key tables only (safe while it runs, when
it was started with the old key still listed).

Exit status: 0 done, 1 refused (a legal hold, a key that cannot unwrap), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from billing import keystore
from billing.backends import open_store
from billing.records import Record
from billing.store import Store
from billing.vault import MasterKeyError, Vault
from billing.writer import Writer
from compliance.numbers import parse_number

from .privacy import HeldError, Privacy, open_for
from .settings import Settings, SettingsError, database_url, load


class ToolJournal:
    """What ``Privacy`` needs of the exchange's journal, for one command."""

    def __init__(self, store: Store, vault: Vault) -> None:
        self.store, self.vault = store, vault
        self.writer = Writer(store, vault=vault)
        self.ack_timeout_s = 30.0

    def record(self, *records: Record) -> int:
        return self.writer.put(records)

    async def ack(self, seq: int) -> None:
        await self.writer.wait(seq, self.ack_timeout_s)


def _number(raw: str) -> str:
    info = parse_number(raw)
    if info is None:
        raise SystemExit(f"{raw!r} is not a valid phone number")
    return info.e164


async def _run(settings: Settings, args: argparse.Namespace) -> tuple[int, Any]:
    store = open_store(database_url(settings))
    await store.open()
    try:
        vault = await open_for(settings, store, time.time_ns())
        j = ToolJournal(store, vault)
        await j.writer.start()
        p = Privacy(settings, j)
        now = time.time_ns()
        try:
            if args.cmd == "erase":
                return 0, await p.erase(_number(args.number), now)
            if args.cmd == "hold":
                view, created = await p.hold(_number(args.number), args.reason, now)
                return 0, {**view, "created": created}
            if args.cmd == "release":
                target = args.number if args.number.startswith("h1:") else vault.blind(_number(args.number))
                released = await p.release(target, now)
                return (0 if released else 1), {"released": released, "number_hash": target}
            if args.cmd == "holds":
                return 0, {"holds": await p.holds()}
            if args.cmd == "retention":
                days = args.days if args.days is not None else settings.retention_days
                if not days:
                    return 2, {"error": "no retention: give --days N or set EXCHANGE_RETENTION_DAYS"}
                p.settings = settings.__class__(**{**{f: getattr(settings, f) for f in settings.__struct_fields__}, "retention_days": days})
                return 0, {"keys_destroyed": await p.retain(now), "retention_days": days}
            if args.cmd == "rotate-key":
                n = await keystore.rewrap(store, vault, now)
                return 0, {"master_key_id": vault.current.kid, "rewrapped": n, "keys": await keystore.key_census(store)}
            return 0, {"master_key_id": vault.current.kid, "keys": await keystore.key_census(store)}
        finally:
            await j.writer.close()
    finally:
        await store.close()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m exchange privacy", description="consumer privacy: erasure, legal holds, retention, keys")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("erase", help="destroy a number's data keys: every stored trace of it becomes unreadable").add_argument("number")
    h = sub.add_parser("hold", help="put a number under a legal hold (retention and erasure spare it)")
    h.add_argument("number")
    h.add_argument("--reason", default="")
    sub.add_parser("release", help="release a legal hold (a number or its h1: hash)").add_argument("number")
    sub.add_parser("holds", help="list the legal holds")
    r = sub.add_parser("retention", help="destroy the data keys older than --days (default EXCHANGE_RETENTION_DAYS), once")
    r.add_argument("--days", type=int, default=None)
    sub.add_parser("rotate-key", help="re-wrap every key under the first configured master key (the old one listed after it)")
    sub.add_parser("keys", help="how many keys each master key wraps")
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) and 2
    try:
        settings = load()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        code, out = asyncio.run(_run(settings, args))
    except MasterKeyError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    except HeldError:
        print("refused: the number is under a legal hold (privacy release it first)", file=sys.stderr)
        return 1
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    print(json.dumps(out))
    return code
