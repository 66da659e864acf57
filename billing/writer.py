"""The group-commit writer: one task drains a queue of durable records into the store.

Callers ``put`` records (never blocking: the hot path only appends) and get a sequence
number; ``wait(seq)`` returns once every record up to ``seq`` is committed. The task takes
whatever is queued (at most ``max_batch``) as one batch, numbers and hashes its audit events,
writes it in one transaction and wakes the waiters, so many completions share one commit.

When the database is unreachable the batch is kept and retried with backoff after a
reconnect; the store's natural keys make the retry write each row once even if the lost
commit had in fact succeeded. ``wait`` gives up after its timeout with ``StoreUnavailable``
(the edge answers 503 and the caller retries), and acknowledged means committed. If the
database refuses a batch (an unbalanced entry: a bug), the writer stops: money is not
written wrongly, and every waiter gets ``StoreRefused``.

Besides what it is given, the writer puts every entry (money movement) on the audit trail.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import deque
from time import monotonic
from typing import Iterable

from .audit import Chain
from .postings import Entry
from .records import AccountRow, AuditEvent, CallOutcome, HoldEvent, Record
from .store import Batch, Store, StoreRefused, StoreUnavailable

log = logging.getLogger("exchange.writer")


def entry_audit(e: Entry) -> AuditEvent:
    call_id = e.reference if e.kind == "charge" else e.reference.split(":", 1)[0] if e.kind == "refund" else None
    body = {"reference": e.reference, "entry_kind": e.kind, "memo": e.memo,
            "legs": [{"account": a, "amount_cents": c} for a, c in e.legs]}
    return AuditEvent(e.at_ns, "entry", call_id, None, body)


def account_audit(a: AccountRow) -> AuditEvent:
    body = {"id": a.id, "account_kind": a.kind, "name": a.name, "credit_limit_cents": a.credit_limit_cents}
    return AuditEvent(a.created_ns, "account", None, None, body)


class Writer:
    def __init__(self, store: Store, max_batch: int = 5000, max_pending: int = 200_000, retry_max_s: float = 2.0) -> None:
        self.store = store
        self.max_batch, self.max_pending, self.retry_max_s = max_batch, max_pending, retry_max_s
        self.chain = Chain()
        self.pending: deque[Record] = deque()
        self.enqueued = 0  # sequence number of the last record put
        self.committed = 0  # every record up to this one is durable
        self.state = "starting"  # starting | up | down | stopped (refused)
        self.error: str | None = None
        self.batches = self.records_written = self.retries = 0
        self.commit_s_total = 0.0
        self._waiters: list[tuple[int, int, asyncio.Future]] = []
        self._n = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self.chain = Chain(*await self.store.last_audit())
        self.state = "up"
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    # ------------------------------------------------------------------ producers
    def put(self, records: Iterable[Record]) -> int:
        n = 0
        for r in records:
            self.pending.append(r)
            n += 1
        if n:
            self.enqueued += n
            self._wake.set()
            if len(self.pending) >= self.max_pending:
                self._room.clear()
        return self.enqueued

    async def room(self) -> None:
        """Wait while the queue is over its bound (back-pressure for new work)."""
        if not self._room.is_set():
            await self._room.wait()

    async def wait(self, seq: int, timeout_s: float) -> None:
        """Return once record ``seq`` is committed; StoreUnavailable after ``timeout_s``."""
        if seq <= self.committed:
            return
        if self.state == "stopped":
            raise StoreRefused(self.error or "the ledger writer stopped")
        fut = asyncio.get_running_loop().create_future()
        self._n += 1
        heapq.heappush(self._waiters, (seq, self._n, fut))
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        except TimeoutError:
            raise StoreUnavailable(self.error or "the ledger is not durable yet") from None

    async def flush(self, timeout_s: float) -> None:
        await self.wait(self.enqueued, timeout_s)

    # ------------------------------------------------------------------ the task
    def _take(self) -> tuple[Batch, int]:
        batch = Batch()
        n = 0
        chain = self.chain
        while self.pending and n < self.max_batch:
            r = self.pending.popleft()
            n += 1
            if isinstance(r, Entry):
                batch.entries.append(r)
                batch.audit.append(chain.append(entry_audit(r)))
            elif isinstance(r, HoldEvent):
                batch.holds.append(r)
            elif isinstance(r, AuditEvent):
                batch.audit.append(chain.append(r))
            elif isinstance(r, CallOutcome):
                batch.outcomes.append(r)
            elif isinstance(r, AccountRow):
                batch.accounts.append(r)
                batch.audit.append(chain.append(account_audit(r)))
        if len(self.pending) < self.max_pending:
            self._room.set()
        return batch, self.committed + n

    async def _run(self) -> None:
        while True:
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
            batch, upto = self._take()
            if not await self._commit(batch):
                return
            self.committed = upto
            self.batches += 1
            self.records_written += len(batch)
            while self._waiters and self._waiters[0][0] <= upto:
                fut = heapq.heappop(self._waiters)[2]
                if not fut.done():
                    fut.set_result(None)

    async def _commit(self, batch: Batch) -> bool:
        delay = 0.02
        while True:
            t0 = monotonic()
            try:
                await self.store.write(batch)
                self.commit_s_total += monotonic() - t0
                if self.state != "up":
                    log.warning('{"event":"ledger_writer_recovered","retries":%d}', self.retries)
                self.state, self.error = "up", None
                return True
            except StoreUnavailable as exc:
                self.retries += 1
                if self.state != "down":
                    log.error('{"event":"ledger_writer_down","error":"%s"}', str(exc).replace('"', "'"))
                self.state, self.error = "down", f"the ledger database is unreachable: {exc}"
            except StoreRefused as exc:
                self.state, self.error = "stopped", str(exc)
                log.critical('{"event":"ledger_writer_stopped","error":"%s"}', str(exc).replace('"', "'"))
                for _, _, fut in self._waiters:
                    if not fut.done():
                        fut.set_exception(StoreRefused(str(exc)))
                self._waiters.clear()
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max_s)
            try:
                await self.store.reconnect()
            except StoreUnavailable:
                pass

    async def close(self, timeout_s: float = 10.0) -> bool:
        """Flush what is queued (up to ``timeout_s``), then stop; True if everything is durable."""
        ok = True
        if self.state in ("up", "down") and self.enqueued > self.committed:
            try:
                await self.flush(timeout_s)
            except (StoreUnavailable, StoreRefused):
                ok = False
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return ok and self.committed == self.enqueued
