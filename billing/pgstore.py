"""The PostgreSQL store (asyncpg): one statement per record kind per batch, in one transaction.

Ledger entries go in as one statement built from data-modifying CTEs: insert the batch's
entries (``ON CONFLICT DO NOTHING`` on (reference, kind)), insert the legs of the entries that
were actually new, and add those legs to ``balances``. A batch replayed after a dropped
connection therefore inserts nothing twice and moves no balance twice. The deferred constraint
trigger checks each entry's legs sum to zero when the transaction commits.

The writer owns one connection; reads (statements, audit queries, reports) use a small pool.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from .store import Batch, Store, StoreRefused, StoreUnavailable, migrations

TRANSIENT = (
    OSError, ConnectionError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError, asyncpg.exceptions.InsufficientResourcesError,
)

ENTRIES_SQL = """
WITH e AS (
    INSERT INTO entries (reference, kind, at_ns, memo)
    SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[])
    ON CONFLICT (reference, kind) DO NOTHING
    RETURNING id, reference, kind
), l AS (
    INSERT INTO legs (entry_id, account, amount_cents)
    SELECT e.id, x.account, x.amount FROM e
    JOIN unnest($5::text[], $6::text[], $7::text[], $8::int8[]) AS x (reference, kind, account, amount)
      ON x.reference = e.reference AND x.kind = e.kind
    RETURNING account, amount_cents
), b AS (
    INSERT INTO balances (account, balance_cents)
    SELECT account, sum(amount_cents) FROM l GROUP BY account
    ON CONFLICT (account) DO UPDATE SET balance_cents = balances.balance_cents + EXCLUDED.balance_cents
)
SELECT count(*) FROM e
"""
HOLDS_SQL = """
INSERT INTO holds (call_id, route_index, kind, account, amount_cents, at_ns)
SELECT * FROM unnest($1::text[], $2::int4[], $3::text[], $4::text[], $5::int8[], $6::int8[])
ON CONFLICT DO NOTHING
"""
OUTCOMES_SQL = """
INSERT INTO call_outcomes (call_id, publisher, buyer, campaign, status, billable, price_cents, charged_cents,
                           payout_cents, margin_cents, created_ns, final_ns)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bool[], $7::int8[], $8::int8[],
                     $9::int8[], $10::int8[], $11::int8[], $12::int8[])
ON CONFLICT DO NOTHING
"""
ACCOUNTS_SQL = """
INSERT INTO accounts (id, kind, name, key_digest, credit_limit_cents, created_ns)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[])
ON CONFLICT DO NOTHING
"""
AUDIT_SQL = """
INSERT INTO audit (seq, at_ns, kind, call_id, number, body, prev_hash, hash)
SELECT * FROM unnest($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[], $8::bytea[])
ON CONFLICT DO NOTHING
"""


def _columns(rows: list[tuple]) -> list[list]:
    return [list(c) for c in zip(*rows)]


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

    def writer_pid(self) -> int | None:
        return self.conn.get_server_pid() if self.conn is not None else None

    async def write(self, batch: Batch) -> int:
        if self.conn is None or self.conn.is_closed():
            raise StoreUnavailable("the writer's connection is closed")
        conn = self.conn
        try:
            async with conn.transaction():
                new = 0
                if batch.accounts:
                    await conn.execute(ACCOUNTS_SQL, *_columns(batch.accounts))
                if batch.entries:
                    seen: set[tuple[str, str]] = set()
                    heads, legs = [], []
                    for e in batch.entries:
                        if e.key in seen:
                            continue
                        seen.add(e.key)
                        heads.append((e.reference, e.kind, e.at_ns, e.memo))
                        legs.extend((e.reference, e.kind, leg.account, leg.amount_cents) for leg in e.legs)
                    new = await conn.fetchval(ENTRIES_SQL, *_columns(heads), *(_columns(legs) or [[], [], [], []]))
                if batch.holds:
                    await conn.execute(HOLDS_SQL, *_columns(batch.holds))
                if batch.outcomes:
                    await conn.execute(OUTCOMES_SQL, *_columns(batch.outcomes))
                if batch.audit:
                    await conn.execute(AUDIT_SQL, *_columns(batch.audit))
            return new
        except TRANSIENT as exc:
            raise StoreUnavailable(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise StoreRefused(f"PostgreSQL refused the batch: {exc}") from exc

    async def fetch(self, sql: str, *args: Any) -> list[tuple]:
        if self.pool is None:
            raise StoreUnavailable("the store is not open")
        q = self._sql.get(sql)
        if q is None:
            q = self._sql[sql] = _placeholders(sql)
        try:
            return [tuple(r) for r in await self.pool.fetch(q, *args)]
        except TRANSIENT as exc:
            raise StoreUnavailable(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc

    async def execute_raw(self, sql: str, *args: Any) -> str:
        """Run one statement outside the writer (tests and the operator's tools)."""
        if self.pool is None:
            raise StoreUnavailable("the store is not open")
        return await self.pool.execute(sql, *args)
