"""The two durable stores, each test isolated: a PostgreSQL schema of its own (dropped after)
or a SQLite file in the test's temporary directory.

PostgreSQL is ``EXCHANGE_TEST_DATABASE_URL`` (default postgresql://postgres@127.0.0.1:5432/test,
a superuser: the tamper tests disable triggers). Under ``CI=true`` a missing server is a
failure, not a skip.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from typing import Iterator

import asyncpg
import pytest

PG_BASE = os.environ.get("EXCHANGE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
_pg_problem: list[str | None] = []  # checked once per session


async def _ping() -> None:
    conn = await asyncpg.connect(PG_BASE, timeout=3)
    await conn.close()


def require_pg() -> None:
    if not _pg_problem:
        try:
            asyncio.run(_ping())
            _pg_problem.append(None)
        except Exception as exc:  # noqa: BLE001 - any failure to reach it is the same verdict
            _pg_problem.append(f"{type(exc).__name__}: {exc}")
    problem = _pg_problem[0]
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required under CI=true ({PG_BASE}): {problem}")
        pytest.skip(f"no PostgreSQL at {PG_BASE}: {problem}")


def schema_url(schema: str) -> str:
    return f"{PG_BASE}{'&' if '?' in PG_BASE else '?'}schema={schema}"


async def _drop(schema: str) -> None:
    conn = await asyncpg.connect(PG_BASE, timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def pg_schema_url(prefix: str) -> Iterator[str]:
    """A PostgreSQL URL on a schema of its own (``prefix_<random>``), dropped afterwards; skips
    (or, under CI, fails) without a server. For fixtures: ``yield from pg_schema_url("x")``."""
    require_pg()
    schema = f"{prefix}_{secrets.token_hex(6)}"
    try:
        yield schema_url(schema)
    finally:
        asyncio.run(_drop(schema))


def _pg_url() -> Iterator[str]:
    return pg_schema_url("it")


@pytest.fixture(params=["postgres", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """The same test against both stores."""
    if request.param == "postgres":
        yield from _pg_url()
    else:
        yield f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """PostgreSQL only (connection kills, a server that goes away)."""
    yield from _pg_url()
