"""The vault's keys in the store: opening (and the refusal of a wrong master key), loading
data keys to read sealed values, crypto-shredding (erasure, retention), legal holds and the
re-wrapping of every key under a new master key. Async, at the edges; the SQL is written
once with ``?`` placeholders and run by either backend.
"""

from __future__ import annotations

import hmac
from typing import Any, NamedTuple
from collections.abc import Iterable

import msgspec

from .audit import AuditRow, canonical_body
from .store import Store
from .vault import ERASED, INDEX_NAME, MasterKey, MasterKeyError, Vault, is_sealed, kids_in

CHUNK = 500


async def has_keys(store: Store) -> bool:
    """Whether the database holds an index key or data keys (sealed data may exist)."""
    return bool(await store.fetch("SELECT 1 FROM privacy_meta WHERE name = ?", INDEX_NAME)
                or await store.fetch("SELECT 1 FROM privacy_keys LIMIT 1"))


async def open_vault(store: Store, masters: list[MasterKey], now_ns: int, cache_size: int = 100_000) -> Vault:
    """The vault for this database: its index key unwrapped with the configured master keys
    (made and stored on first use), after checking that every master key the stored data
    keys name is configured and unwraps one of them. ``MasterKeyError`` otherwise: the caller
    refuses to start."""
    probe = Vault(masters, b"")
    rows = await store.fetch("SELECT master_kid, wrapped FROM privacy_meta WHERE name = ?", INDEX_NAME)
    if not rows:
        if await store.fetch("SELECT 1 FROM privacy_keys LIMIT 1"):
            raise MasterKeyError("the database holds data keys but no index key (privacy_meta): refusing to start")
        # derived from the master key (exchanges given one master key compute the same blind
        # indexes: a Redis counter they share), then stored wrapped: a rotation leaves it as it is
        index = hmac.digest(masters[0].key, b"dce-index-key", "sha256")
        mkid, wrapped = probe.wrap(INDEX_NAME, INDEX_NAME, index)
        await store.fetch("INSERT INTO privacy_meta (name, master_kid, wrapped, updated_ns) VALUES (?, ?, ?, ?) "
                          "ON CONFLICT (name) DO NOTHING RETURNING name", INDEX_NAME, mkid, wrapped, now_ns)
        rows = await store.fetch("SELECT master_kid, wrapped FROM privacy_meta WHERE name = ?", INDEX_NAME)
    mkid, wrapped = rows[0]
    if mkid not in {m.kid for m in masters}:
        raise MasterKeyError(f"the database's keys are wrapped by master key {mkid}, but the configured key is "
                             f"{', '.join(m.kid for m in masters)}: set EXCHANGE_MASTER_KEY (or _FILE) to the key "
                             "this database was written with (refusing to start rather than write data nobody can read)")
    index = probe.unwrap(INDEX_NAME, INDEX_NAME, mkid, wrapped)
    vault = Vault(masters, index, cache_size)
    for mk, kid in await store.fetch("SELECT master_kid, min(kid) FROM privacy_keys GROUP BY master_kid"):
        row = await store.fetch("SELECT kid, blind, master_kid, wrapped FROM privacy_keys WHERE kid = ?", kid)
        if row:
            vault.unwrap(row[0][0], row[0][1], mk, row[0][3])  # MasterKeyError: not configured, or not this key
    return vault


async def load_keys(store: Store, vault: Vault, kids: Iterable[str]) -> None:
    """Fetch (and unwrap) the data keys of ``kids`` not in the vault's cache."""
    need = vault.missing(set(kids))
    for i in range(0, len(need), CHUNK):
        chunk = need[i:i + CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = await store.fetch(f"SELECT kid, blind, master_kid, wrapped FROM privacy_keys WHERE kid IN ({marks})", *chunk)
        vault.learn(rows, chunk)


def open_all(vault: Vault, value: Any) -> Any:
    """``value`` (decoded JSON) with every sealed string opened (``"erased"`` if shredded)."""
    if isinstance(value, str):
        return vault.open(value) if is_sealed(value) else value
    if isinstance(value, dict):
        return {k: open_all(vault, v) for k, v in value.items()}
    if isinstance(value, list):
        return [open_all(vault, v) for v in value]
    return value


async def open_values(store: Store, vault: Vault | None, values: list[str | None]) -> list[str | None]:
    """Sealed values opened (keys loaded as needed); without a vault, as they are."""
    if vault is None:
        return values
    await load_keys(store, vault, {k for v in values if v for k in kids_in(v)})
    return [vault.open(v) if v else v for v in values]


async def reveal(store: Store, vault: Vault | None, rows: list[AuditRow]) -> list[AuditRow]:
    """Audit rows as a reader wants them: every sealed value in a body opened and ``number``
    the consumer's number (``"erased"`` when its key is gone) instead of its blind index. The
    stored rows (and their hashes) are untouched; a revealed row does not verify."""
    if vault is None:
        return rows
    await load_keys(store, vault, {k for r in rows if "enc1:" in r.body for k in kids_in(r.body)})
    out = []
    for r in rows:
        if "enc1:" not in r.body:
            out.append(r)
            continue
        body = open_all(vault, msgspec.json.decode(r.body))
        number = body.get("consumer") if isinstance(body, dict) else None
        out.append(r._replace(body=canonical_body(body), number=number if r.number is not None else None))
    return out


async def save_keys(store: Store, vault: Vault) -> int:
    """Store the vault's keys not stored yet outside the writer (ON CONFLICT: the writer may
    store them too); how many."""
    rows = list(vault.unsaved.values())
    for r in rows:
        await store.fetch("INSERT INTO privacy_keys (kid, blind, master_kid, wrapped, created_ns) VALUES (?, ?, ?, ?, ?) "
                          "ON CONFLICT (kid) DO NOTHING RETURNING kid", *r)
    vault.saved(rows)
    return len(rows)


# ------------------------------------------------------------------ shredding
async def shred_number(store: Store, blind: str, keep: str | None = None) -> int:
    """Delete every data key of ``blind`` (but ``keep``, one made after the erasure began);
    how many were destroyed."""
    rows = await store.fetch("DELETE FROM privacy_keys WHERE blind = ? AND kid <> ? RETURNING kid", blind, keep or "")
    await _scrub(store)
    return len(rows)


async def shred_older(store: Store, cutoff_ns: int) -> list[str]:
    """Retention: delete the data keys made before ``cutoff_ns``, but those of numbers under a
    legal hold; the kids destroyed."""
    rows = await store.fetch(
        "DELETE FROM privacy_keys WHERE created_ns < ? AND blind NOT IN (SELECT blind FROM privacy_holds) RETURNING kid",
        cutoff_ns)
    if rows:
        await _scrub(store)
    return [r[0] for r in rows]


async def _scrub(store: Store) -> None:
    """Leave no copy of a deleted key behind: SQLite (``secure_delete`` zeroes the rows) moves
    its write-ahead log into the file and truncates it; PostgreSQL vacuums the table."""
    if store.backend == "sqlite":
        await store.fetch("PRAGMA wal_checkpoint(TRUNCATE)")
    else:
        await store.fetch("VACUUM privacy_keys")


# ------------------------------------------------------------------ legal holds
class LegalHold(NamedTuple):
    number_hash: str
    reason: str
    created_ns: int


async def add_hold(store: Store, blind: str, reason: str, now_ns: int) -> bool:
    """True if the hold is new (an existing one is kept as it was)."""
    rows = await store.fetch("INSERT INTO privacy_holds (blind, reason, created_ns) VALUES (?, ?, ?) "
                             "ON CONFLICT (blind) DO NOTHING RETURNING blind", blind, reason, now_ns)
    return bool(rows)


async def release_hold(store: Store, blind: str) -> bool:
    return bool(await store.fetch("DELETE FROM privacy_holds WHERE blind = ? RETURNING blind", blind))


async def holds(store: Store) -> list[LegalHold]:
    return [LegalHold(*r) for r in await store.fetch("SELECT blind, reason, created_ns FROM privacy_holds ORDER BY created_ns, blind")]


async def is_held(store: Store, blind: str) -> bool:
    return bool(await store.fetch("SELECT 1 FROM privacy_holds WHERE blind = ?", blind))


# ------------------------------------------------------------------ master key rotation
async def rewrap(store: Store, vault: Vault, now_ns: int, page: int = 1000) -> int:
    """Re-wrap the index key and every data key under the vault's current master key (the
    others must still be configured to unwrap them); how many keys were re-wrapped. Safe while
    the exchange runs: each row is updated only if it is still wrapped by the key it was read
    with, and readers unwrap with whichever configured key a row names."""
    cur = vault.current
    n = 0
    meta = await store.fetch("SELECT master_kid, wrapped FROM privacy_meta WHERE name = ?", INDEX_NAME)
    if meta and meta[0][0] != cur.kid:
        key = vault.unwrap(INDEX_NAME, INDEX_NAME, meta[0][0], meta[0][1])
        mkid, wrapped = vault.wrap(INDEX_NAME, INDEX_NAME, key)
        n += len(await store.fetch("UPDATE privacy_meta SET master_kid = ?, wrapped = ?, updated_ns = ? "
                                   "WHERE name = ? AND master_kid = ? RETURNING name", mkid, wrapped, now_ns, INDEX_NAME, meta[0][0]))
    while True:
        rows = await store.fetch("SELECT kid, blind, master_kid, wrapped FROM privacy_keys WHERE master_kid <> ? "
                                 "ORDER BY kid LIMIT ?", cur.kid, page)
        if not rows:
            return n
        for kid, blind, mk, wrapped in rows:
            key = vault.unwrap(kid, blind, mk, wrapped)
            mkid, new = vault.wrap(kid, blind, key)
            n += len(await store.fetch("UPDATE privacy_keys SET master_kid = ?, wrapped = ? WHERE kid = ? AND master_kid = ? "
                                       "RETURNING kid", mkid, new, kid, mk))


async def key_census(store: Store) -> dict[str, int]:
    """Data keys per master key id (and the index key's), for the operator."""
    out = {f"data:{mk}": int(c) for mk, c in await store.fetch("SELECT master_kid, count(*) FROM privacy_keys GROUP BY master_kid")}
    for (mk,) in await store.fetch("SELECT master_kid FROM privacy_meta WHERE name = ?", INDEX_NAME):
        out[f"index:{mk}"] = 1
    return out


__all__ = ["ERASED", "MasterKeyError", "open_vault", "load_keys", "save_keys", "open_values", "reveal", "shred_number",
           "shred_older", "add_hold", "release_hold", "holds", "is_held", "rewrap", "key_census", "LegalHold"]
