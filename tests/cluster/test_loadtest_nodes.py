"""``python -m loadtest run --nodes N`` starts its nodes on a PostgreSQL schema and a Redis market
prefix of the run's own, and leaves neither behind when it stops."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import redis

from loadtest.cluster import start_nodes
from tests.cluster.conftest import REDIS_URL
from tests.integration.conftest import PG_BASE, require_pg


async def _schemas() -> set[str]:
    conn = await asyncpg.connect(PG_BASE.split("?", 1)[0], timeout=5)
    try:
        return {r[0] for r in await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'loadtest_%'")}
    finally:
        await conn.close()


def test_a_load_tests_nodes_leave_no_schema_and_no_keys_behind(tmp_path: Path) -> None:
    require_pg()
    before = asyncio.run(_schemas())
    seller = start_nodes(2, tmp_path, {"EXCHANGE_DATABASE_URL": PG_BASE, "EXCHANGE_REDIS_URL": REDIS_URL})
    try:
        assert len(seller.edges) == 1 and seller.alive()
        made = asyncio.run(_schemas()) - before
        assert len(made) == 1, made  # the run's own schema
        tag = next(iter(made)).removeprefix("loadtest_")
        client = redis.Redis.from_url(REDIS_URL)
        assert any(client.scan_iter(match=f"lt{tag}:*")), "the nodes keep their leases under the run's market prefix"
    finally:
        seller.stop()
    assert not (asyncio.run(_schemas()) & made)
    assert not any(client.scan_iter(match=f"lt{tag}:*"))
    client.close()
