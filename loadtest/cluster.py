"""``python -m loadtest run --nodes N``: the exchange under test as N nodes of one market.

The nodes are ``python -m exchange serve`` processes with ``EXCHANGE_NODE_ID`` node-1..node-N,
one operator key, a market prefix of their own (``EXCHANGE_MARKET``) and a PostgreSQL schema of
their own on ``EXCHANGE_DATABASE_URL`` (``?schema=``; a master key made for it unless one is set),
with ``EXCHANGE_REDIS_URL``; node-1 is
started first, so it is the seller. The returned target is the seller (accounts are made, and
``/metrics`` read, there); its ``edges`` are the others. Locust's users spread over every node
(``Plan.edges``): a buyer's socket and a publisher's calls land on node ``slot mod N``.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
from pathlib import Path

import asyncpg
import redis as redis_lib

from .target import Target, start_exchange


def start_nodes(n: int, out: Path, env_extra: dict[str, str]) -> Target:
    db = env_extra.get("EXCHANGE_DATABASE_URL") or os.environ.get("EXCHANGE_DATABASE_URL", "")
    redis = env_extra.get("EXCHANGE_REDIS_URL") or os.environ.get("EXCHANGE_REDIS_URL", "")
    if not db.startswith(("postgres://", "postgresql://")) or not redis:
        raise SystemExit("--nodes needs EXCHANGE_DATABASE_URL on PostgreSQL and EXCHANGE_REDIS_URL (the market's shared stores)")
    tag = secrets.token_hex(4)
    base_db = db
    db += ("&" if "?" in db else "?") + f"schema=loadtest_{tag}"
    admin_key = "loadtest_admin_" + secrets.token_urlsafe(18)
    common = {**env_extra, "EXCHANGE_DATABASE_URL": db, "EXCHANGE_REDIS_URL": redis, "EXCHANGE_MARKET": f"lt{tag}"}
    if not (os.environ.get("EXCHANGE_MASTER_KEY") or os.environ.get("EXCHANGE_MASTER_KEY_FILE") or "EXCHANGE_MASTER_KEY" in common):
        common["EXCHANGE_MASTER_KEY"] = base64.b64encode(os.urandom(32)).decode()  # one for the run's own schema
    seller = start_exchange(out / "node-1.log", {**common, "EXCHANGE_NODE_ID": "node-1"}, admin_key)
    if os.environ.get("LOADTEST_KEEP_MARKET") != "1":
        seller.cleanup.append(lambda: drop_market(base_db, redis, tag))
    try:
        for i in range(2, n + 1):
            seller.edges.append(start_exchange(out / f"node-{i}.log", {**common, "EXCHANGE_NODE_ID": f"node-{i}"}, admin_key, dnc=False))
    except BaseException:
        seller.stop()
        raise
    return seller


def drop_market(db: str, redis_url: str, tag: str) -> None:
    """The run's PostgreSQL schema and Redis keys, gone (``LOADTEST_KEEP_MARKET=1`` keeps them,
    to inspect with ``billing reconcile`` or ``audit verify``)."""
    async def drop() -> None:
        conn = await asyncpg.connect(db.split("?", 1)[0], timeout=10)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "loadtest_{tag}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())
    client = redis_lib.Redis.from_url(redis_url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"lt{tag}:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i:i + 1000])
    finally:
        client.close()
