"""The book store's rows on PostgreSQL (``exchange/bookstore.py``): one statement for the
campaigns created or replaced, one for those only repriced or paused (into ``campaign_prices``,
a small row each, so a price does not rewrite its campaign's message), the rows as arrays."""

from __future__ import annotations

import asyncpg

from .store import CampaignRow

SAVE_SPEC_SQL = """
INSERT INTO campaigns (buyer, id, spec, bid_cents, paused, updated_ns)
SELECT DISTINCT ON (b, i) b, i, sp, bc, p, u FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::bool[], $6::int8[])
    AS x (b, i, sp, bc, p, u) ORDER BY b, i, u DESC
ON CONFLICT (buyer, id) DO UPDATE SET spec = EXCLUDED.spec, bid_cents = EXCLUDED.bid_cents, paused = EXCLUDED.paused,
    updated_ns = EXCLUDED.updated_ns WHERE EXCLUDED.updated_ns >= campaigns.updated_ns
"""
SAVE_PRICE_SQL = """
INSERT INTO campaign_prices (buyer, id, bid_cents, paused, updated_ns)
SELECT DISTINCT ON (x.b, x.i) x.b, x.i, x.bc, x.p, x.u
FROM unnest($1::text[], $2::text[], $3::int8[], $4::bool[], $5::int8[]) AS x (b, i, bc, p, u)
WHERE EXISTS (SELECT 1 FROM campaigns c WHERE c.buyer = x.b AND c.id = x.i AND c.updated_ns <= x.u)
ORDER BY x.b, x.i, x.u DESC
ON CONFLICT (buyer, id) DO UPDATE SET bid_cents = EXCLUDED.bid_cents, paused = EXCLUDED.paused,
    updated_ns = EXCLUDED.updated_ns WHERE EXCLUDED.updated_ns >= campaign_prices.updated_ns
"""


async def save_campaigns(pool: asyncpg.Pool, rows: list[CampaignRow]) -> None:
    specs = [r for r in rows if r.spec is not None]
    prices = [r for r in rows if r.spec is None]
    async with pool.acquire() as conn, conn.transaction():
        if specs:
            await conn.execute(SAVE_SPEC_SQL, *(list(c) for c in zip(*specs)))
        if prices:
            b, i, _, bc, p, u = zip(*prices)
            await conn.execute(SAVE_PRICE_SQL, list(b), list(i), list(bc), list(p), list(u))
