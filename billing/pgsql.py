"""The PostgreSQL store's statements (billing.pgstore): the batch statement in its two variants,
and the seller's fence (migration 0006)."""

from __future__ import annotations

import re

# The batch statement (see billing.pgstore's docstring); {entries_conflict}, {legs_filter} and
# {conflict} tell FAST_SQL (plain INSERTs) from SAFE_SQL (skip what is stored).
#
# Columns travel as arrays. asyncpg encodes a text[] element by element (~250 ns each, most
# of the client's time per batch), so a text column is sent as ONE string joined with \x1f
# (None as \x1e) that the server splits, or as a text[] when a value contains those
# characters; the SQL takes whichever is not NULL. The audit hashes travel as two blobs of
# 32-byte digests cut by position. "@type" marks a column and is numbered by _numbered().
_WRITE_SQL = """
WITH a AS (
    INSERT INTO accounts (id, kind, name, key_digest, credit_limit_cents, created_ns)
    SELECT * FROM unnest(@text, @text, @text, @text, @int8, @int8)
    ON CONFLICT DO NOTHING
), e AS (
    INSERT INTO entries (id, reference, kind, at_ns, memo)
    SELECT * FROM unnest(@int8, @text, @text, @int8, @text)
    {entries_conflict}
    RETURNING id
), l AS (
    INSERT INTO legs (entry_id, account, amount_cents)
    SELECT x.entry_id, x.account, x.amount_cents
    FROM unnest(@int8, @text, @int8) AS x (entry_id, account, amount_cents)
    {legs_filter}
    RETURNING account, amount_cents
), b AS (
    INSERT INTO balances (account, balance_cents)
    SELECT account, sum(amount_cents) FROM l GROUP BY account
    ON CONFLICT (account) DO UPDATE SET balance_cents = balances.balance_cents + EXCLUDED.balance_cents
), h AS (
    INSERT INTO holds (call_id, route_index, kind, account, amount_cents, at_ns)
    SELECT * FROM unnest(@text, @int4, @text, @text, @int8, @int8)
    {conflict}
), o AS (
    INSERT INTO call_outcomes (call_id, publisher, buyer, campaign, status, billable, price_cents, charged_cents,
                               payout_cents, margin_cents, created_ns, final_ns)
    SELECT * FROM unnest(@text, @text, @text, @text, @text, @bool, @int8, @int8, @int8, @int8, @int8, @int8)
    {conflict}
), au AS (
    -- No ON CONFLICT: the writer numbers audit records itself and a batch is all or nothing,
    -- so a batch whose first record is stored (same seq, same hash) is a replay and adds none;
    -- any other clash on seq (a second writer forking the chain) fails the batch loudly.
    INSERT INTO audit (seq, at_ns, kind, call_id, number, body, prev_hash, hash)
    SELECT x.seq, x.at_ns, x.kind, x.call_id, x.number, x.body,
           coalesce(x.prev_hash, substr(@blob, (x.i * 32 - 31)::int4, 32)),
           coalesce(x.hash, substr(@blob, (x.i * 32 - 31)::int4, 32))
    FROM unnest(@int8, @int8, @text, @text, @text, @text, @bytea, @bytea) WITH ORDINALITY
         AS x (seq, at_ns, kind, call_id, number, body, prev_hash, hash, i)
    WHERE NOT EXISTS (SELECT 1 FROM audit WHERE seq = @scalar_int8 AND hash = @scalar_bytea)
), ep AS (
    -- who each audit record's domain events address (billing.events)
    INSERT INTO event_parties (account, seq)
    SELECT * FROM unnest(@text, @int8)
    {conflict}
), pk AS (
    -- data keys first used by this batch (billing.vault); a key may ride in two batches
    INSERT INTO privacy_keys (kid, blind, master_kid, wrapped, created_ns)
    SELECT * FROM unnest(@text, @text, @text, @text, @int8)
    ON CONFLICT DO NOTHING
)
SELECT count(*) FROM e
"""
SEP, NUL = "\x1f", "\x1e"  # the separator of a joined text column, and its NULL


FENCE_SQL = "SELECT epoch FROM market_seller WHERE market = $1 AND epoch = $2 FOR SHARE"


def _numbered(sql: str) -> str:
    """Number the ``@type`` markers in order: ``@text`` takes two parameters (see above),
    ``@blob`` and ``@scalar_<type>`` one value, any other ``@<type>`` one ``<type>[]``."""
    n = 0

    def number(m: re.Match) -> str:
        nonlocal n
        kind = m.group(1)
        n += 1
        if kind == "text":
            n += 1
            return f"coalesce(${n - 1}::text[], string_to_array(${n}, E'\\x1f', E'\\x1e'))"
        if kind == "blob":
            return f"${n}::bytea"
        if kind.startswith("scalar_"):
            return f"${n}::{kind[7:]}"
        return f"${n}::{kind}[]"

    return re.sub(r"@(\w+)", number, sql)


# FAST_SQL assumes every record is new (plain INSERTs: one index descent per unique key, no
# speculative insertion); a unique violation, i.e. a replay, falls back to SAFE_SQL, which
# skips what is stored. Both take the same parameters.
FAST_SQL = _numbered(_WRITE_SQL.format(entries_conflict="", legs_filter="", conflict=""))
SAFE_SQL = _numbered(_WRITE_SQL.format(
    entries_conflict="ON CONFLICT (reference, kind) DO NOTHING",
    legs_filter="WHERE x.entry_id IN (SELECT id FROM e)",
    conflict="ON CONFLICT DO NOTHING",
))

__all__ = ["FAST_SQL", "SAFE_SQL", "FENCE_SQL", "SEP", "NUL"]
