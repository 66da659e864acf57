"""The PostgreSQL store (asyncpg): a batch is one statement, hence one round trip and one
(implicit) transaction.

Data-modifying CTEs insert the batch's accounts, entries, legs, holds, outcomes and audit
records and add the new legs to ``balances``. Entries get their ids here, from blocks of the
entries sequence this process reserves, so each leg is sent with its entry's id. The statement
first assumes every record is new (plain INSERTs, the cheap path); a unique violation means a
replay (a retry after a dropped connection whose commit went through, or records sent again
in a later batch), and the batch is written by the variant that skips what is stored: entries
``ON CONFLICT (reference, kind) DO NOTHING`` and legs only for the entries actually inserted,
so a batch written twice writes each row once and moves no balance twice. The deferred
constraint trigger checks each entry's legs sum to zero when the transaction commits.

The writer owns one connection; reads (statements, audit queries, reports) use a small pool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from .pgbook import save_campaigns
from .pgsql import FAST_SQL, FENCE_SQL, NUL, SAFE_SQL, SEP
from .store import Batch, BatchRefused, CampaignRow, Store, StoreRefused, StoreUnavailable, migrations

TRANSIENT = (
    OSError, ConnectionError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError, asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.InternalClientError,  # the protocol's state after a connection killed mid-operation
)

# Refusals that some record of the batch explains (the writer splits the batch to find it):
# data exceptions (22: a NUL byte in text, a number out of range), integrity constraint
# violations (23: an unbalanced entry, a CHECK) and program limits (54: a value too large).
DATA_CLASSES = ("22", "23", "54")
CLIENT_DATA = (asyncpg.exceptions._base.DataError, OverflowError, UnicodeError)


def refused_for_data(exc: asyncpg.PostgresError) -> bool:
    state = getattr(exc, "sqlstate", None) or ""
    if isinstance(exc, asyncpg.UniqueViolationError) and getattr(exc, "constraint_name", None) == "audit_pkey":
        return False  # another writer's audit record holds this seq: the chain forked, stop
    return state[:2] in DATA_CLASSES


RESERVE_SQL = "SELECT nextval('entries_id_seq') FROM generate_series(1, $1)"
ID_BLOCK_SQL = "SELECT seqincrement FROM pg_sequence WHERE seqrelid = 'entries_id_seq'::regclass"


def _columns(rows: Sequence[tuple], width: int) -> list:
    return list(zip(*rows)) if rows else [()] * width


def _text(col, out: list) -> None:
    """Append a text column's two parameters: (None, joined) or (the values, None)."""
    n, nones = len(col), col.count(None)
    try:
        joined = SEP.join([NUL if v is None else v for v in col] if nones else col)
    except TypeError:  # not all text: asyncpg encodes (and reports) the values themselves
        out += (list(col), None)
        return
    if joined.count(SEP) == n - 1 and joined.count(NUL) == nones and (n != 1 or joined != ""):
        out += (None, joined)
    else:  # a value holds \x1f or \x1e, or it is one empty string (which splits into nothing)
        out += (list(col), None)


def _digests(col) -> bytes | None:
    """A bytea column of 32-byte digests as one blob cut by position (None: send a bytea[])."""
    blob = b"".join(col)
    return blob if len(blob) == 32 * len(col) and all(len(d) == 32 for d in col) else None


def _placeholders(sql: str) -> str:
    out, n = [], 0
    for part in sql.split("?"):
        out.append(part)
        n += 1
        out.append(f"${n}")
    return "".join(out[:-1])


class PgStore(Store):
    backend = "postgres"

    def __init__(self, url: str, connect_timeout_s: float = 5.0, command_timeout_s: float = 30.0) -> None:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        self.schema = query.pop("schema", None)
        self.dsn = urlunsplit(parts._replace(query=urlencode(query)))
        self.url = url
        self._settings = {"search_path": self.schema} if self.schema else {}
        self._timeouts = (connect_timeout_s, command_timeout_s)
        self.conn: asyncpg.Connection | None = None
        self.pool: asyncpg.Pool | None = None
        self._sql: dict[str, str] = {}
        self._free: list[range] = []  # entry ids reserved from the sequence, not used yet
        self._free_n = 0
        self._id_block = 1
        self._prepared: tuple[Batch, list] | None = None

    async def _connect(self) -> asyncpg.Connection:
        try:
            return await asyncpg.connect(self.dsn, timeout=self._timeouts[0], command_timeout=self._timeouts[1],
                                         server_settings=self._settings)
        except TRANSIENT as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc

    async def open(self) -> None:
        if self.schema:
            boot = await self._connect()
            try:
                await boot.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            finally:
                await boot.close()
        self.conn = await self._connect()
        await self._migrate(self.conn)
        self._id_block = max(1, await self.conn.fetchval(ID_BLOCK_SQL))  # one nextval reserves this many ids
        self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4, command_timeout=self._timeouts[1],
                                              server_settings=self._settings)

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.dce_migrations'))")
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                               "(version int PRIMARY KEY, name text NOT NULL, applied_ns bigint NOT NULL)")
            done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in migrations(self.backend):
                if version not in done:
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2, $3)", version, name, time.time_ns())

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def reconnect(self) -> None:
        if self.conn is not None:
            self.conn.terminate()
        self.conn = None
        self.conn = await self._connect()

    async def session(self) -> asyncpg.Connection:
        """A connection of its own, for a session-level lock that must not go with the writer's
        connection when that one is replaced (``reconnect``): the caller closes it."""
        return await self._connect()

    def writer_pid(self) -> int | None:
        return self.conn.get_server_pid() if self.conn is not None else None

    # ------------------------------------------------------------------ the writer's batches
    async def _reserve(self, conn: asyncpg.Connection, n: int) -> None:
        """Make sure at least ``n`` entry ids are reserved (one nextval per block of ids)."""
        if self._free_n < n:
            block = self._id_block
            starts = await conn.fetch(RESERVE_SQL, -(-(n - self._free_n) // block))
            self._free.extend(range(r[0], r[0] + block) for r in starts)
            self._free_n += block * len(starts)

    def _fresh_ids(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            r = self._free[0]
            take = n - len(out)
            out.extend(r[:take])
            if take >= len(r):
                self._free.pop(0)
            else:
                self._free[0] = r[take:]
        self._free_n -= n
        return out

    def _params(self, batch: Batch) -> list | None:
        """The statement's parameters, in the order of its markers (None if not enough entry
        ids are reserved)."""
        ids: list[int] = []
        refs: list[str] = []
        kinds: list[str] = []
        ats: list[int] = []
        memos: list[str] = []
        leg_ids: list[int] = []
        accounts: list[str] = []
        amounts: list[int] = []
        if batch.entries:
            if self._free_n < len(batch.entries):
                return None
            fresh = iter(self._fresh_ids(len(batch.entries)))
            seen: set[tuple[str, str]] = set()
            for e in batch.entries:
                key = (e.reference, e.kind)
                if key in seen:
                    continue
                seen.add(key)
                eid = next(fresh)
                ids.append(eid)
                refs.append(e.reference)
                kinds.append(e.kind)
                ats.append(e.at_ns)
                memos.append(e.memo)
                for account, amount in e.legs:
                    leg_ids.append(eid)
                    accounts.append(account)
                    amounts.append(amount)
        out: list = []
        a_id, a_kind, a_name, a_digest, a_credit, a_created = _columns(batch.accounts, 6)
        for c in (a_id, a_kind, a_name, a_digest):
            _text(c, out)
        out += (a_credit, a_created, ids)
        _text(refs, out)
        _text(kinds, out)
        out.append(ats)
        _text(memos, out)
        out.append(leg_ids)
        _text(accounts, out)
        out.append(amounts)
        h_call, h_route, h_kind, h_account, h_amount, h_at = _columns(batch.holds, 6)
        _text(h_call, out)
        out.append(h_route)
        _text(h_kind, out)
        _text(h_account, out)
        out += (h_amount, h_at)
        o = _columns(batch.outcomes, 12)
        for c in o[:5]:
            _text(c, out)
        out += o[5:]
        seq, at, kind, call_id, number, body, prev_hash, hash_ = _columns(batch.audit, 8)
        blobs = _digests(prev_hash), _digests(hash_)
        whole = blobs[0] is not None and blobs[1] is not None
        out += (*(blobs if whole else (None, None)), seq, at)
        for c in (kind, call_id, number, body):
            _text(c, out)
        out += (None, None) if whole else (list(prev_hash), list(hash_))
        out += (seq[0], hash_[0]) if batch.audit else (None, None)
        p_account, p_seq = _columns(batch.parties, 2)
        _text(p_account, out)
        out.append(p_seq)
        k_id, k_blind, k_master, k_wrapped, k_created = _columns(batch.keys, 5)
        for c in (k_id, k_blind, k_master, k_wrapped):
            _text(c, out)
        out.append(k_created)
        return out

    def prepare(self, batch: Batch) -> None:
        """Build ``batch``'s parameters ahead of ``write`` (the writer calls this while the
        previous batch is being committed, so the work overlaps the database's)."""
        try:
            params = self._params(batch)
        except Exception:  # noqa: BLE001 - only an optimisation: write() builds them again and reports
            params = None
        self._prepared = (batch, params) if params is not None else None

    async def write(self, batch: Batch) -> int:
        if self.conn is None or self.conn.is_closed():
            raise StoreUnavailable("the writer's connection is closed")
        conn = self.conn
        prepared, self._prepared = self._prepared, None
        try:
            if prepared is not None and prepared[0] is batch:
                params = prepared[1]
            else:
                await self._reserve(conn, len(batch.entries))
                built = self._params(batch)
                assert built is not None
                params = built
            try:
                return await self._put(conn, FAST_SQL, params)
            except asyncpg.UniqueViolationError:  # a replay: write only what is not stored
                return await self._put(conn, SAFE_SQL, params)
        except CLIENT_DATA as exc:  # a value asyncpg cannot encode (before TRANSIENT: it is an InterfaceError)
            raise BatchRefused(f"PostgreSQL cannot take a value of the batch: {type(exc).__name__}: {exc}") from exc
        except TRANSIENT as exc:
            raise StoreUnavailable(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
        except asyncpg.PostgresError as exc:
            if refused_for_data(exc):
                raise BatchRefused(f"PostgreSQL refused the batch's data: {exc}") from exc
            raise StoreRefused(f"PostgreSQL refused the batch: {exc}") from exc

    async def _put(self, conn: asyncpg.Connection, sql: str, params: list) -> int:
        """One batch's statement; fenced (``Store.fence``): in a transaction that first holds the
        market's seller row at this node's epoch (a newer seller: ``StoreRefused``, the writer stops)."""
        if self.fence is None:
            return int(await conn.fetchval(sql, *params))
        async with conn.transaction():
            if await conn.fetchval(FENCE_SQL, *self.fence) is None:
                raise StoreRefused(f"fenced: another node became the seller of market {self.fence[0]!r} "
                                   f"(this node sold at epoch {self.fence[1]}); its writes would fork the audit chain")
            return int(await conn.fetchval(sql, *params))

    def _live(self) -> asyncpg.Pool:
        if self.pool is None:
            raise StoreUnavailable("the store is not open")
        return self.pool

    async def save_campaigns(self, rows: list[CampaignRow]) -> None:
        try:
            await save_campaigns(self._live(), rows)
        except TRANSIENT as exc:
            raise StoreUnavailable(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc

    async def fetch(self, sql: str, *args: Any) -> list[tuple]:
        pool = self._live()
        q = self._sql.get(sql)
        if q is None:
            q = self._sql[sql] = _placeholders(sql)
        try:
            return [tuple(r) for r in await pool.fetch(q, *args)]
        except TRANSIENT as exc:
            raise StoreUnavailable(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc

    async def execute_raw(self, sql: str, *args: Any) -> str:
        """Run one statement outside the writer (tests and the operator's tools)."""
        return await self._live().execute(sql, *args)
