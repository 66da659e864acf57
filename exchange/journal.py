"""Durability: the core's pending effects handed to the ledger writer, and the waits on them.

The pure core appends what it changes (entries, holds, outcomes) to the ledger's outbox;
``record`` drains it, with any extra records (audit, accounts), into one writer batch and
returns the sequence number to wait for. ``ack`` waits for that number to be committed and
turns the store's failures into ``Unavailable`` with retry guidance. ``reading`` does the same
for the store's queries.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from billing.ledger import Ledger
from billing.records import Record
from billing.backends import open_store
from billing.store import RecordRefused, Store, StoreRefused, StoreUnavailable
from billing.writer import Writer

from .errors import Invalid, Unavailable
from .settings import Settings, database_url

log = logging.getLogger("exchange")


class Journal:
    __slots__ = ("store", "writer", "ledger", "ack_timeout_s")

    def __init__(self, settings: Settings, ledger: Ledger) -> None:
        self.store: Store = open_store(database_url(settings))
        self.writer = Writer(self.store, settings.writer_max_batch, settings.writer_max_pending)
        self.ledger = ledger
        self.ack_timeout_s = settings.ack_timeout_ms / 1000

    async def open(self) -> None:
        await self.store.open()

    async def start(self) -> None:
        await self.writer.start()
        self.record()

    async def close(self) -> None:
        self.record()
        if not await self.writer.close(self.ack_timeout_s):
            log.error("ledger_not_flushed", extra={"pending": self.writer.enqueued - self.writer.committed})
        await self.store.close()

    def record(self, *extra: Record) -> int:
        """Hand the core's pending effects (and ``extra`` records) to the writer; returns the
        sequence number to wait for."""
        out = self.ledger.drain()
        if extra:
            out.extend(extra)
        return self.writer.put(out) if out else self.writer.barrier()  # nothing of its own to be refused

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
