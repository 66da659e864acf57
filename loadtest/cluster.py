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

import base64
import os
import secrets
from pathlib import Path

from .target import Target, start_exchange


def start_nodes(n: int, out: Path, env_extra: dict[str, str]) -> Target:
    db = env_extra.get("EXCHANGE_DATABASE_URL") or os.environ.get("EXCHANGE_DATABASE_URL", "")
    redis = env_extra.get("EXCHANGE_REDIS_URL") or os.environ.get("EXCHANGE_REDIS_URL", "")
    if not db.startswith(("postgres://", "postgresql://")) or not redis:
        raise SystemExit("--nodes needs EXCHANGE_DATABASE_URL on PostgreSQL and EXCHANGE_REDIS_URL (the market's shared stores)")
    tag = secrets.token_hex(4)
    db += ("&" if "?" in db else "?") + f"schema=loadtest_{tag}"
    admin_key = "loadtest_admin_" + secrets.token_urlsafe(18)
    common = {**env_extra, "EXCHANGE_DATABASE_URL": db, "EXCHANGE_REDIS_URL": redis, "EXCHANGE_MARKET": f"lt{tag}"}
    if not (os.environ.get("EXCHANGE_MASTER_KEY") or os.environ.get("EXCHANGE_MASTER_KEY_FILE") or "EXCHANGE_MASTER_KEY" in common):
        common["EXCHANGE_MASTER_KEY"] = base64.b64encode(os.urandom(32)).decode()  # one for the run's own schema
    seller = start_exchange(out / "node-1.log", {**common, "EXCHANGE_NODE_ID": "node-1"}, admin_key)
    try:
        for i in range(2, n + 1):
            seller.edges.append(start_exchange(out / f"node-{i}.log", {**common, "EXCHANGE_NODE_ID": f"node-{i}"}, admin_key, dnc=False))
    except BaseException:
        seller.stop()
        raise
    return seller
