"""Consumer privacy, the running exchange's side: the master key, erasure, legal holds,
retention and master key rotation (billing.vault and billing.keystore do the cryptography
and the SQL).

- The master key: ``EXCHANGE_MASTER_KEY`` (text) or ``EXCHANGE_MASTER_KEY_FILE``; with
  neither, the embedded SQLite default uses ``<database file>.master-key`` next to the
  database, generating it (and logging ``master_key_generated``) on a database that holds no
  keys yet. A database that holds keys the configured master key cannot unwrap, or keys but
  no master key at all, is a refusal to start (``MasterKeyError``), never unreadable data.
- ``erase``: every stored trace of a number becomes unreadable by destroying its data keys
  (after the writer has stored whatever it had queued), and the exchange's memory forgets it
  (calls in memory show ``"erased"``, the repeat-caller index drops it); an opt-out of that
  number stays in force by its blind index; an ``erasure`` record goes on the audit trail
  (its ``number`` column the blind index). A number under a legal hold is refused
  (``409 legal_hold``). A number never seen is erased all the same (nothing to destroy).
- Retention (``EXCHANGE_RETENTION_DAYS``): every hour, the data keys older than that (plus the
  one-day epoch a key seals for) are destroyed, but those of numbers under a legal hold.
- Rotation: the master key file may list several keys, the first seals and the others only
  unwrap; ``rotate`` re-reads it and re-wraps every key under the first, while calls go on.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import msgspec

from billing import keystore
from billing.records import AuditEvent
from billing.store import Store
from billing.vault import ERASED, MasterKey, MasterKeyError, Vault, kids_in, new_master_key_text, parse_master_keys

from .instants import rfc3339
from .settings import Settings, database_url

log = logging.getLogger("exchange.privacy")
NS = 1_000_000_000
DAY_NS = 86_400 * NS
SWEEP_EVERY_S = 3600


def default_key_path(settings: Settings) -> Path | None:
    """``<database file>.master-key`` for a SQLite file; None otherwise."""
    url = database_url(settings)
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):].partition("?")[0] + ".master-key")
    return None


def read_key_file(path: str | Path) -> list[MasterKey]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise MasterKeyError(f"cannot read the master key file {str(path)!r}: {exc.strerror}") from None
    return parse_master_keys(text)


async def resolve_masters(settings: Settings, store: Store) -> list[MasterKey]:
    """The configured master keys (see the module's docstring); MasterKeyError when none."""
    if settings.master_key:
        return parse_master_keys(settings.master_key)
    if settings.master_key_file:
        return read_key_file(settings.master_key_file)
    if database_url(settings) == "sqlite://:memory:":
        log.warning("master_key_generated", extra={"path": None, "note": "an in-memory database: a key for this process only"})
        return parse_master_keys(new_master_key_text())
    path = default_key_path(settings)
    if path is None:
        raise MasterKeyError("PostgreSQL needs a master key: set EXCHANGE_MASTER_KEY or EXCHANGE_MASTER_KEY_FILE "
                             "(python -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())')")
    if path.exists():
        return read_key_file(path)
    if await keystore.has_keys(store):
        raise MasterKeyError(f"the database holds encrypted consumer data but no master key is configured and "
                             f"{str(path)!r} is missing: set EXCHANGE_MASTER_KEY or EXCHANGE_MASTER_KEY_FILE")
    text = new_master_key_text()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (text + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    log.warning("master_key_generated", extra={"path": str(path), "note": "keep a copy: without it the consumer numbers "
                                               "in this database cannot be read; set EXCHANGE_MASTER_KEY_FILE in production"})
    return parse_master_keys(text)


async def open_for(settings: Settings, store: Store, now_ns: int) -> Vault:
    return await keystore.open_vault(store, await resolve_masters(settings, store), now_ns, settings.privacy_key_cache)


class Privacy:
    """Erasure, holds, retention and rotation over the journal's store, writer and vault;
    ``forget`` (optional) clears a number from the exchange's memory."""

    def __init__(self, settings: Settings, journal: Any, forget: Any = None) -> None:
        self.settings, self.journal, self.forget = settings, journal, forget
        self.sealer: Sealer | None = None
        self.erasures = self.keys_destroyed = self.keys_expired = 0

    @property
    def vault(self) -> Vault:
        v = self.journal.vault
        assert v is not None, "the vault opens with the journal"
        return v

    @property
    def store(self) -> Store:
        return self.journal.store

    async def erase(self, e164: str, now_ns: int) -> dict[str, Any]:
        vault, store = self.vault, self.store
        blind = vault.blind(e164)
        if await keystore.is_held(store, blind):
            raise HeldError(blind)
        writer = self.journal.writer
        await writer.flush(self.journal.ack_timeout_s)  # what was queued is sealed under the number's key and stored
        vault.forget(blind)  # (no await since the flush) from here on the number gets a new key, kept
        if self.forget is not None:
            self.forget(e164, blind)
        await writer.flush(self.journal.ack_timeout_s)  # a batch sealed before the forget is stored before the shredding
        if self.sealer is not None:
            await self.sealer.idle()
        destroyed = await keystore.shred_number(store, blind, keep=vault.sealing_kid(blind))
        seq = self.journal.record(AuditEvent(now_ns, "erasure", None, e164, {"keys_destroyed": destroyed}))
        await self.journal.ack(seq)
        self.erasures += 1
        self.keys_destroyed += destroyed
        log.info("number_erased", extra={"number_hash": blind, "keys_destroyed": destroyed})
        return {"number_hash": blind, "keys_destroyed": destroyed, "erased_at": rfc3339(now_ns)}

    async def hold(self, e164: str, reason: str, now_ns: int) -> tuple[dict[str, Any], bool]:
        blind = self.vault.blind(e164)
        created = await keystore.add_hold(self.store, blind, reason, now_ns)
        if created:
            self.journal.record(AuditEvent(now_ns, "legal_hold", None, e164, {"reason": reason}))
        held = next(h for h in await keystore.holds(self.store) if h.number_hash == blind)
        return hold_view(held), created

    async def release(self, number_hash: str, now_ns: int) -> bool:
        released = await keystore.release_hold(self.store, number_hash)
        if released:
            self.journal.record(AuditEvent(now_ns, "legal_hold_released", None, None, {"number_hash": number_hash}))
        return released

    async def holds(self) -> list[dict[str, Any]]:
        return [hold_view(h) for h in await keystore.holds(self.store)]

    async def retain(self, now_ns: int) -> int:
        """Destroy the data keys past ``EXCHANGE_RETENTION_DAYS`` (none without it)."""
        days = self.settings.retention_days
        if not days:
            return 0
        cutoff = now_ns - days * DAY_NS - self.vault.epoch_ns  # a key seals for one epoch after it was made
        kids = await keystore.shred_older(self.store, cutoff)
        if kids:
            self.vault.forget_kids(kids)
            self.keys_expired += len(kids)
            self.journal.record(AuditEvent(now_ns, "retention", None, None, {"keys_destroyed": len(kids), "before": rfc3339(cutoff)}))
            log.info("retention_shredded", extra={"keys_destroyed": len(kids), "before": rfc3339(cutoff)})
        return len(kids)

    async def rotate(self, now_ns: int) -> dict[str, Any]:
        """Adopt the key file's keys (the first seals from now on) and re-wrap every stored
        key under it. The configured key must be a file (an environment variable cannot
        change under a running process)."""
        s = self.settings
        if s.master_key_file:
            masters = read_key_file(s.master_key_file)
        elif not s.master_key and default_key_path(s) is not None:
            masters = read_key_file(default_key_path(s))  # type: ignore[arg-type]
        else:
            raise MasterKeyError("rotation while running reads EXCHANGE_MASTER_KEY_FILE; with EXCHANGE_MASTER_KEY, "
                                 "restart with the new key first and the old one after it (comma-separated), then rotate")
        self.vault.set_masters(masters)
        n = await keystore.rewrap(self.store, self.vault, now_ns)
        log.info("master_key_rotated", extra={"master_key_id": self.vault.current.kid, "rewrapped": n})
        return {"master_key_id": self.vault.current.kid, "rewrapped": n, "keys": await keystore.key_census(self.store)}

    async def sweeper(self, clock_ns: Any) -> None:
        """Retention, at start and every hour."""
        while True:
            try:
                await self.retain(clock_ns())
            except Exception:  # a failed sweep is retried next hour; the bug is logged
                log.exception("retention_failed")
            await asyncio.sleep(SWEEP_EVERY_S)


class Sealer:
    """What the compliance runtime keeps numbers out of its journal (and Redis) with."""

    def __init__(self, vault: Vault, store: Store) -> None:
        self.vault, self.store = vault, store
        self._saving: asyncio.Task | None = None

    def seal(self, e164: str, now_ns: int) -> tuple[str, str]:
        sealed = self.vault.seal(e164, now_ns)
        if self.vault.unsaved and (self._saving is None or self._saving.done()):
            self._saving = asyncio.get_running_loop().create_task(self._save())
        return sealed, self.vault.blind(e164)

    async def _save(self) -> None:
        """Store the new data keys now (the writer would with its next batch, if any came)."""
        try:
            await keystore.save_keys(self.store, self.vault)
        except Exception:  # the writer stores them with its next batch anyway
            log.exception("privacy_keys_not_saved")

    def blind(self, e164: str) -> str:
        return self.vault.blind(e164)

    @property
    def index_id(self) -> str:
        return self.vault.index_id

    async def idle(self) -> None:
        """Wait for the keys being stored now (an erasure then destroys them after)."""
        if self._saving is not None:
            await asyncio.gather(self._saving, return_exceptions=True)

    async def load(self, values: list[str]) -> None:
        await keystore.load_keys(self.store, self.vault, {k for v in values for k in kids_in(v)})

    def open(self, value: str) -> str | None:
        """The number (None: erased); a value not sealed (a line written before) as it is."""
        try:
            out = self.vault.open(value)
        except KeyError:
            return None
        return None if out == ERASED else out


class HeldError(Exception):
    """The number is under a legal hold: it cannot be erased until the hold is released."""


def hold_view(h: keystore.LegalHold) -> dict[str, Any]:
    return {"number_hash": h.number_hash, "reason": h.reason, "created_at": rfc3339(h.created_ns)}


def scrub_call(rec: Any, e164: str) -> bool:
    """Replace ``e164`` in a call kept in memory by ``"erased"``; True if it was there."""
    req = rec.request
    hit = False
    if req is not None:
        changes = {f: ERASED for f in ("caller", "callee") if getattr(req, f, None) == e164}
        if changes:
            rec.request = msgspec.structs.replace(req, **changes)
            hit = True
    if rec.caller == e164:
        rec.caller = ERASED
        hit = True
    if not rec.active and rec.consumer is not None and rec.consumer.e164 == e164:
        rec.consumer = None  # (a call in flight keeps its consumer until it ends: its fallbacks are screened with it)
        hit = True
    return hit


__all__ = ["Privacy", "Sealer", "HeldError", "MasterKeyError", "open_for", "resolve_masters", "default_key_path", "scrub_call"]
