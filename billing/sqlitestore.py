"""The SQLite store, the embedded default: the standard library's sqlite3 on one thread.

Every call runs on a single worker thread that owns the connection, so the event loop never
blocks on the file. WAL journal with ``synchronous=FULL``: a committed batch survives a crash
of the process or the machine. The schema's triggers give the same guarantees as PostgreSQL's
(see migrations/sqlite); entries get their ids here, legs are inserted before their entry.
A replayed row is skipped by ``ON CONFLICT DO NOTHING`` (a uniqueness clash only; ``INSERT OR
IGNORE`` would also drop a row that breaks a CHECK constraint, silently).
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from typing import Any, TypeVar, cast
from collections.abc import Callable, Iterator, Sequence

import msgspec

from .store import Batch, BatchRefused, CampaignRow, Store, StoreUnavailable, migrations

T = TypeVar("T")

# sqlite3 binds exact int, float, str and bytearray values directly; any other value goes through
# its adapter registry, and a miss there raises and clears an AttributeError on the way (~2,000
# instructions a value: an audit row binds two hashes and often a None or two, an outcome a bool).
# These adapters make each of those a registry hit that returns the value as it would be bound.
sqlite3.register_adapter(bytes, bytes)  # bytes(b) is b itself
sqlite3.register_adapter(bool, int)  # bound as 0/1 either way
sqlite3.register_adapter(type(None), cast("Callable[[None], None]", {}.get))  # a C callable answering None for any one argument


def _settle(fut: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if fut.cancelled():
        return
    if exc is None:
        fut.set_result(result)
    else:
        fut.set_exception(exc)


class _Thread:
    """The one thread that owns the connection: calls run on it in order, and each result
    comes back to the loop with a single ``call_soon_threadsafe`` (no executor future chained
    to an asyncio one: that bookkeeping was a tenth of an acknowledged event's loop time)."""

    def __init__(self) -> None:
        self.calls: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name="sqlite-store", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        calls = self.calls
        while True:
            item = calls.get()
            if item is None:
                return
            loop, fut, fn, args = item
            try:
                result, exc = fn(*args), None
            except BaseException as e:  # handed to the awaiting task
                result, exc = None, e
            try:
                loop.call_soon_threadsafe(_settle, fut, result, exc)
            except RuntimeError:  # the loop is closed: nobody awaits it any more
                pass

    def submit(self, fn: Callable[..., Any], args: tuple) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.calls.put((loop, fut, fn, args))
        return fut

    def stop(self) -> None:
        self.calls.put(None)
        self.thread.join()


# The book's rows go in as one JSON array bound to one parameter, unpacked by SQLite
# (``json_each``) with the GIL released: bound row by row with ``executemany``, this thread took
# the GIL back for every row (~95,000 a second under a 100,000 bids/s stream on 100,000 campaigns)
# and the event loop waited behind it each time (a switch interval, up to 5 ms, when it was busy).
_ROWS = msgspec.json.Encoder()
SAVE_SPECS = ("INSERT INTO campaigns (buyer, id, spec, bid_cents, paused, updated_ns) "
              "SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5 FROM json_each(?) WHERE true "
              "ON CONFLICT (buyer, id) DO UPDATE SET spec = excluded.spec, bid_cents = excluded.bid_cents, paused = excluded.paused, "
              "updated_ns = excluded.updated_ns WHERE excluded.updated_ns >= campaigns.updated_ns")
# No check that the campaign's message is stored and older (PostgreSQL's statement has one): here it
# read the campaign's row, message and all, for every price, ~7 of a row's ~15 µs of CPU at 100,000
# campaigns. A load joins prices onto stored messages and takes the newer of the two
# (``store.LOAD_CAMPAIGNS``), so a price row without its message, or older than it, is never read.
SAVE_PRICES = ("INSERT INTO campaign_prices (buyer, id, bid_cents, paused, updated_ns) "
               "SELECT j.value ->> 0, j.value ->> 1, j.value ->> 3, j.value ->> 4, j.value ->> 5 FROM json_each(?) AS j "
               "WHERE true ON CONFLICT (buyer, id) DO UPDATE SET bid_cents = excluded.bid_cents, paused = excluded.paused, "
               "updated_ns = excluded.updated_ns WHERE excluded.updated_ns >= campaign_prices.updated_ns")


# Rows per statement in a batch's inserts. ``executemany`` steps once per row, and ``sqlite3``
# releases the interpreter's lock around every step: with the event loop busy each re-acquisition
# waited up to a switch interval (5 ms), so under the load test's bid stream the ledger's commits
# fell seconds behind (calls with an idempotency key and events waiting for them). A multi-row
# ``VALUES`` is one step for up to ``ROWS`` rows; the sizes are fixed so the prepared statements are
# reused (``sqlite3`` caches them by text).
ROWS = (64, 8, 1)


def _chunks(rows: Sequence[Sequence[Any]]) -> Iterator[tuple[int, list[Any]]]:
    """(rows in it, their values flattened) for ``rows`` cut into chunks of the ``ROWS`` sizes."""
    i, n = 0, len(rows)
    for size in ROWS:
        while n - i >= size:
            yield size, [v for r in rows[i:i + size] for v in r]
            i += size


def _insert(cur: sqlite3.Cursor, head: str, width: int, tail: str, rows: Sequence[Sequence[Any]]) -> None:
    """``head VALUES (?, ...), ... tail`` for ``rows`` (each ``width`` values), ``ROWS`` at a time."""
    one = "(" + ", ".join("?" * width) + ")"
    for size, values in _chunks(rows):
        cur.execute(f"{head} VALUES {', '.join([one] * size)} {tail}", values)


def _existing(cur: sqlite3.Cursor, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of these (reference, kind) keys the ledger holds, ``ROWS`` keys a statement (a join on
    the unique index: a row-value ``IN (VALUES ...)`` scans the table)."""
    out: set[tuple[str, str]] = set()
    for size, values in _chunks(keys):
        out.update(cur.execute(f"SELECT e.reference, e.kind FROM (VALUES {', '.join(['(?, ?)'] * size)}) AS v "
                               "CROSS JOIN entries e ON e.reference = v.column1 AND e.kind = v.column2", values).fetchall())
    return out


class SqliteStore(Store):
    backend = "sqlite"

    def __init__(self, path: str, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous  # FULL: every commit is fsynced (acknowledged survives power loss)
        self.url = f"sqlite:///{path}"
        self.db: sqlite3.Connection | None = None
        self._thread: _Thread | None = None  # started on first use

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        thread = self._thread
        if thread is None:
            thread = self._thread = _Thread()
        return await thread.submit(fn, args)

    # ------------------------------------------------------------------ thread side
    def _open(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'NORMAL' if self.synchronous == 'NORMAL' else 'FULL'}")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA secure_delete=ON")  # a shredded data key's bytes are overwritten, not left in a free page
        db.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                   "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ns INTEGER NOT NULL)")
        done = {r[0] for r in db.execute("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations(self.backend):
            if version not in done:
                db.executescript(f"BEGIN IMMEDIATE;\n{sql}\nINSERT INTO schema_migrations VALUES "
                                 f"({version}, '{name}', {time.time_ns()});\nCOMMIT;")
        self.db = db

    def _write(self, batch: Batch) -> int:
        db = self.db
        assert db is not None
        cur = db.cursor()  # one cursor for the batch's statements (each Connection.execute* makes its own)
        cur.execute("BEGIN IMMEDIATE")
        try:
            if batch.accounts:
                _insert(cur, "INSERT INTO accounts", 6, "ON CONFLICT DO NOTHING", [tuple(a) for a in batch.accounts])
            new = 0
            if batch.entries:
                next_id = cur.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()[0] + 1
                seen: set[tuple[str, str]] = set()
                heads: list[tuple] = []
                legs: list[tuple] = []
                delta: dict[str, int] = {}
                seen = _existing(cur, list({e.key for e in batch.entries}))  # (an entry written before is not again)
                for e in batch.entries:
                    if e.key in seen:
                        continue
                    seen.add(e.key)
                    heads.append((next_id, e.reference, e.kind, e.at_ns, e.memo))
                    for leg in e.legs:
                        legs.append((next_id, leg.account, leg.amount_cents))
                        delta[leg.account] = delta.get(leg.account, 0) + leg.amount_cents
                    next_id += 1
                _insert(cur, "INSERT INTO legs", 3, "", legs)
                _insert(cur, "INSERT INTO entries", 5, "", heads)
                _insert(cur, "INSERT INTO balances", 2, "ON CONFLICT (account) DO UPDATE "
                        "SET balance_cents = balance_cents + excluded.balance_cents", list(delta.items()))
                new = len(heads)
            if batch.keys:
                _insert(cur, "INSERT INTO privacy_keys", 5, "ON CONFLICT DO NOTHING", [tuple(k) for k in batch.keys])
            if batch.holds:
                _insert(cur, "INSERT INTO holds", 6, "ON CONFLICT DO NOTHING", [tuple(h) for h in batch.holds])
            if batch.outcomes:
                _insert(cur, "INSERT INTO call_outcomes", 12, "ON CONFLICT DO NOTHING", [tuple(o) for o in batch.outcomes])
            if batch.audit:
                _insert(cur, "INSERT INTO audit", 8, "ON CONFLICT DO NOTHING", [tuple(a) for a in batch.audit])
            if batch.parties:
                _insert(cur, "INSERT INTO event_parties", 2, "ON CONFLICT DO NOTHING", batch.parties)
            cur.execute("COMMIT")
            return new
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _save_campaigns(self, specs: str | None, prices: str | None) -> None:
        """The rows as JSON arrays (``save_campaigns`` encodes them on the loop: this thread holds
        the GIL only to bind two strings, and runs SQLite without it)."""
        db = self.db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            if specs is not None:
                db.execute(SAVE_SPECS, (specs,))
            if prices is not None:
                db.execute(SAVE_PRICES, (prices,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _fetch(self, sql: str, args: tuple) -> list[tuple]:
        assert self.db is not None
        return self.db.execute(sql, args).fetchall()

    def _close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    # ------------------------------------------------------------------ async side
    async def open(self) -> None:
        try:
            await self._run(self._open)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self.path!r}: {exc}") from exc

    async def close(self) -> None:
        await self._run(self._close)
        if self._thread is not None:
            self._thread.stop()
            self._thread = None

    async def reconnect(self) -> None:
        await self._run(self._close)
        await self.open()

    async def write(self, batch: Batch) -> int:
        if self.db is None:
            raise StoreUnavailable("the store is not open")
        try:
            return await self._run(self._write, batch)
        except (sqlite3.IntegrityError, sqlite3.DataError, OverflowError, UnicodeError) as exc:
            # some record of the batch is at fault (a constraint, an integer over 64 bits, text
            # that cannot be encoded): the writer splits the batch to find it
            raise BatchRefused(f"SQLite refused the batch's data: {type(exc).__name__}: {exc}") from exc
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite: {exc}") from exc

    async def save_campaigns(self, rows: list[CampaignRow]) -> None:
        if self.db is None:
            raise StoreUnavailable("the store is not open")
        # Encoded here, on the loop, between its tasks: encoded in the store's thread, a chunk held the
        # GIL for a millisecond or two wherever the loop was, mid-decision included.
        specs = [r for r in rows if r.spec is not None]
        prices = [r for r in rows if r.spec is None] if len(specs) < len(rows) else []
        try:  # (a row: [buyer, id, spec, bid_cents, paused, updated_ns])
            await self._run(self._save_campaigns, _ROWS.encode(specs).decode() if specs else None,
                            _ROWS.encode(prices).decode() if prices else None)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite: {exc}") from exc

    async def fetch(self, sql: str, *args: Any) -> list[tuple]:
        if self.db is None:
            raise StoreUnavailable("the store is not open")
        try:
            return await self._run(self._fetch, sql, args)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite: {exc}") from exc

    async def execute_raw(self, sql: str, *args: Any) -> None:
        """Run one statement outside the writer (tests and the operator's tools)."""
        await self._run(self._fetch, sql, args)
