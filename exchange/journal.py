"""Durability: the core's pending effects handed to the ledger writer, and the waits on them.

The pure core appends what it changes (entries, holds, outcomes) to the ledger's outbox;
``record`` drains it, with any extra records (audit, accounts), into one writer batch and
returns the sequence number to wait for. ``ack`` waits for that number to be committed and
turns the store's failures into ``Unavailable`` with retry guidance (a record the database
refused for its data is ``Invalid("record_refused")`` to that caller alone). ``reading`` does
the same for the store's queries.

With a checkpoint key and file configured (``EXCHANGE_CHECKPOINT_KEY`` or ``_KEY_FILE``, and
``EXCHANGE_CHECKPOINT_FILE``), the journal signs the writer's last committed audit record every
``EXCHANGE_CHECKPOINT_EVERY_S`` and at shutdown (billing.checkpoint), and refuses to start on a
chain that the latest checkpoint contradicts (cut or rewritten): the writer would continue
from the cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

from billing import checkpoint
from billing.ledger import Ledger
from billing.records import Record
from billing.backends import open_store
from billing.vault import MasterKeyError, Vault
from billing.store import RecordRefused, Store, StoreRefused, StoreUnavailable
from billing.writer import Writer

from .errors import Invalid, Unavailable
from .settings import Settings, database_url

log = logging.getLogger("exchange")


class ChainContradicted(RuntimeError):
    """The stored audit chain disagrees with the latest signed checkpoint (cut or rewritten)."""


def checkpoint_config(settings: Settings) -> tuple[str, bytes] | None:
    """(file, key) when checkpoints are configured; None (logged) when they are not."""
    if not settings.checkpoint_file:
        if settings.checkpoint_key or settings.checkpoint_key_file:
            log.warning("audit_checkpoints_off", extra={"reason": "a checkpoint key but no EXCHANGE_CHECKPOINT_FILE"})
        return None
    env = {"EXCHANGE_CHECKPOINT_KEY": settings.checkpoint_key or "", "EXCHANGE_CHECKPOINT_KEY_FILE": settings.checkpoint_key_file or ""}
    return settings.checkpoint_file, checkpoint.key_from(env)  # NoKey: a file but no key is a configuration error


class Journal:
    __slots__ = ("store", "writer", "ledger", "ack_timeout_s", "checkpoints", "checkpoint_every_s", "_checkpointer", "_signed",
                 "settings", "vault")

    def __init__(self, settings: Settings, ledger: Ledger) -> None:
        self.store: Store = open_store(database_url(settings))
        self.writer = Writer(self.store, settings.writer_max_batch, settings.writer_max_pending,
                             linger_s=settings.writer_linger_ms / 1000)
        self.ledger = ledger
        self.settings = settings
        self.vault: Vault | None = None  # opened with the store (exchange.privacy): numbers are sealed by the writer
        self.ack_timeout_s = settings.ack_timeout_ms / 1000
        self.checkpoints = checkpoint_config(settings)
        self.checkpoint_every_s = settings.checkpoint_every_s
        self._checkpointer: asyncio.Task | None = None
        self._signed: tuple[int, bytes] | None = None  # the head of the last checkpoint taken

    async def open(self) -> None:
        await self.store.open()
        from .privacy import open_for

        try:
            self.vault = await open_for(self.settings, self.store, time.time_ns())
        except MasterKeyError as exc:
            log.critical("master_key_refused", extra={"error": str(exc)})
            await self.store.close()
            raise
        self.writer.vault = self.vault

    async def start(self) -> None:
        if self.checkpoints is not None:
            await self._check_chain(*self.checkpoints)
        await self.writer.start()
        self.record()
        if self.checkpoints is not None:
            self._checkpointer = asyncio.create_task(self._checkpoint_every(), name="audit-checkpoints")

    async def close(self) -> None:
        self.record()
        if not await self.writer.close(self.ack_timeout_s):
            log.error("ledger_not_flushed", extra={"pending": self.writer.enqueued - self.writer.committed})
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
            await self.checkpoint()  # the head at shutdown
        await self.store.close()

    # ------------------------------------------------------------------ checkpoints
    async def _check_chain(self, path: str, key: bytes) -> None:
        try:
            signed = await asyncio.to_thread(checkpoint.read, path, key)
        except FileNotFoundError:
            return  # none taken yet
        problems = await checkpoint.check(self.store, signed[-1:])
        if problems:
            log.critical("audit_chain_contradicts_checkpoint", extra={"problems": problems})
            raise ChainContradicted(f"the audit chain contradicts the latest checkpoint in {path}: {problems[0]}")

    async def checkpoint(self) -> bool:
        """Sign the writer's last committed audit record and append it to the checkpoint file
        (nothing if it is the one signed last); False if it could not be written."""
        if self.checkpoints is None or self.writer.head == self._signed or self.writer.head[0] == 0:
            return True
        path, key = self.checkpoints
        seq, digest = self.writer.head
        line = checkpoint.sign(checkpoint.Checkpoint(seq, digest, time.time_ns()), key)
        try:
            await asyncio.to_thread(checkpoint.append, path, line)
        except OSError as exc:
            log.error("audit_checkpoint_failed", extra={"error": str(exc), "path": path})
            return False
        self._signed = (seq, digest)
        return True

    async def _checkpoint_every(self) -> None:
        while True:
            await asyncio.sleep(self.checkpoint_every_s)
            await self.checkpoint()

    def record(self, *extra: Record) -> int:
        """Hand ``extra`` records and the core's pending effects to the writer (in that order: a
        call's decision is on the audit trail before its hold); returns the sequence number to
        wait for."""
        return self.record_taken(self.ledger.drain(), *extra)

    def record_taken(self, taken: list[Record], *extra: Record) -> int:
        """``record`` of the core's pending effects already taken from the ledger (``drain``,
        right after the step that made them: a frame's decisions are recorded after the last)."""
        if extra:
            taken[:0] = extra
        return self.writer.put(taken) if taken else self.writer.barrier()  # nothing of its own to be refused

    async def ack(self, seq: int) -> None:
        """Wait until record ``seq`` is committed; ``Unavailable`` with retry guidance if it cannot be."""
        try:
            await self.writer.wait(seq, self.ack_timeout_s)
        except StoreUnavailable as exc:
            raise Unavailable("ledger_unavailable", f"{exc}; the change is kept and will be written: "
                              "retry with the same Idempotency-Key or reference", retry_after_s=1) from None
        except RecordRefused as exc:  # this operation's records alone: the ledger goes on
            raise Invalid("record_refused", str(exc)) from None
        except StoreRefused as exc:
            raise Unavailable("ledger_stopped", f"the ledger writer stopped: {exc}", retry_after_s=30) from None

    async def room(self) -> None:
        """Back-pressure: wait while the writer is behind."""
        await self.writer.room()

    @property
    def has_room(self) -> bool:
        """Whether ``room`` would return at once (the writer is not behind)."""
        return self.writer.has_room

    @property
    def pending(self) -> int:
        return self.writer.enqueued - self.writer.committed

    @staticmethod
    @contextlib.contextmanager
    def reading() -> Iterator[None]:
        """Around a store query: the store down is ``Unavailable`` (503, retry in a second)."""
        try:
            yield
        except StoreUnavailable as exc:
            raise Unavailable("ledger_unavailable", str(exc), retry_after_s=1) from None
