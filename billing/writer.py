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

Under a backlog (a full batch already waiting) the writer numbers and hashes the next batch
while the current one commits, so the database and this process work at the same time; at
lower rates it takes whatever arrived during the last commit, as before.

With ``linger_s`` set, records nobody waits for yet (a decision's audit record and its hold)
wait up to that long for company, so a slow trickle of calls does not pay one commit (one
fsync, ~90 µs of kernel CPU on SQLite) each; the first ``wait`` or a full batch ends the
linger, so acknowledged writes are never delayed by it.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import deque
from time import monotonic
from collections.abc import Iterable

import msgspec

from .audit import Chain
from .postings import Entry
from .records import AccountRow, AuditEvent, CallOutcome, HoldEvent, Record
from .store import Batch, Store, StoreRefused, StoreUnavailable

log = logging.getLogger("exchange.writer")


class _LegBody(msgspec.Struct):
    account: str
    amount_cents: int


class _EntryBody(msgspec.Struct):
    """An entry's audit body: the same canonical JSON as the dict {"entry_kind", "legs":
    [{"account", "amount_cents"}], "memo", "reference"}, built and encoded faster."""

    entry_kind: str
    legs: list[_LegBody]
    memo: str
    reference: str


def entry_audit(e: Entry) -> AuditEvent:
    kind = e.kind
    call_id = e.reference if kind == "charge" else e.reference.split(":", 1)[0] if kind == "refund" else None
    body = _EntryBody(kind, [_LegBody(a, c) for a, c in e.legs], e.memo, e.reference)
    return AuditEvent(e.at_ns, "entry", call_id, None, body)


def account_audit(a: AccountRow) -> AuditEvent:
    body = {"id": a.id, "account_kind": a.kind, "name": a.name, "credit_limit_cents": a.credit_limit_cents}
    return AuditEvent(a.created_ns, "account", None, None, body)


class Writer:
    def __init__(self, store: Store, max_batch: int = 5000, max_pending: int = 200_000, retry_max_s: float = 2.0,
                 linger_s: float = 0.0) -> None:
        self.store = store
        self.max_batch, self.max_pending, self.retry_max_s = max_batch, max_pending, retry_max_s
        self.linger_s = linger_s
        self.chain = Chain()
        self.pending: deque[Record] = deque()
        self.enqueued = 0  # sequence number of the last record put
        self.committed = 0  # every record up to this one is durable
        self._taken = 0  # every record up to this one is in a batch (committed or being committed)
        self.state = "starting"  # starting | up | down | stopped (refused)
        self.error: str | None = None
        self.batches = self.records_written = self.retries = 0
        self.commit_s_total = 0.0
        self._waiters: list[tuple[int, int, asyncio.Future]] = []
        self._n = 0
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()  # someone waits for a queued record, or a batch is full: no lingering
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task | None = None
        # Optional: a store that can build a batch's parameters before its connection is free.
        self._prepare = getattr(store, "prepare", None)

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
            if len(self.pending) >= self.max_batch:
                self._urgent.set()
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
        self._urgent.set()
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        except TimeoutError:
            raise StoreUnavailable(self.error or "the ledger is not durable yet") from None

    async def flush(self, timeout_s: float) -> None:
        await self.wait(self.enqueued, timeout_s)

    # ------------------------------------------------------------------ the task
    def _take(self) -> tuple[Batch, int]:
        batch = Batch()
        entries, holds, outcomes, audit = batch.entries, batch.holds, batch.outcomes, batch.audit
        chain = self.chain.append
        pending = self.pending
        popleft = pending.popleft
        n = min(len(pending), self.max_batch)
        for _ in range(n):
            r = popleft()
            t = type(r)
            if t is HoldEvent:
                holds.append(r)
            elif t is Entry:
                entries.append(r)
                audit.append(chain(entry_audit(r)))
            elif t is CallOutcome:
                outcomes.append(r)
            elif t is AuditEvent:
                audit.append(chain(r))
            elif isinstance(r, Entry):
                entries.append(r)
                audit.append(chain(entry_audit(r)))
            elif isinstance(r, HoldEvent):
                holds.append(r)
            elif isinstance(r, AuditEvent):
                audit.append(chain(r))
            elif isinstance(r, CallOutcome):
                outcomes.append(r)
            elif isinstance(r, AccountRow):
                batch.accounts.append(r)
                audit.append(chain(account_audit(r)))
        if len(pending) < self.max_pending:
            self._room.set()
        self._taken += n
        return batch, self._taken

    async def _run(self) -> None:
        ready: tuple[Batch, int] | None = None  # taken while the previous batch committed
        while True:
            if ready is None:
                if not self.pending:
                    self._wake.clear()
                    await self._wake.wait()
                if self.linger_s > 0 and not self._waiters and len(self.pending) < self.max_batch:
                    await self._linger()
                ready = self._take()
            batch, upto = ready
            ready = None
            if len(self.pending) >= self.max_batch:
                # A backlog: prepare the next batch while the database writes this one.
                commit = asyncio.ensure_future(self._commit(batch))
                try:
                    await asyncio.sleep(0)  # the commit sends its statement first
                    if not commit.done():
                        ready = self._take()
                        if self._prepare is not None:
                            self._prepare(ready[0])
                    ok = await commit
                except asyncio.CancelledError:
                    commit.cancel()
                    raise
            else:
                ok = await self._commit(batch)
            if not ok:
                return
            self.committed = upto
            self.batches += 1
            self.records_written += len(batch)
            waiters = self._waiters
            while waiters and waiters[0][0] <= upto:
                fut = heapq.heappop(waiters)[2]
                if not fut.done():
                    fut.set_result(None)

    async def _linger(self) -> None:
        """Nobody waits for what is queued (decisions, holds): let more arrive for up to
        ``linger_s`` so that one commit (one fsync) carries many, unless a waiter comes or a
        batch fills first."""
        self._urgent.clear()
        timer = asyncio.get_running_loop().call_later(self.linger_s, self._urgent.set)
        try:
            await self._urgent.wait()
        finally:
            timer.cancel()

    async def _commit(self, batch: Batch) -> bool:
        delay = 0.02
        while True:
            t0 = monotonic()
            try:
                await self.store.write(batch)
                self.commit_s_total += monotonic() - t0
                if self.state != "up":
                    log.warning("ledger_writer_recovered", extra={"retries": self.retries})
                self.state, self.error = "up", None
                return True
            except StoreUnavailable as exc:
                self.retries += 1
                if self.state != "down":
                    log.error("ledger_writer_down", extra={"error": str(exc)})
                self.state, self.error = "down", f"the ledger database is unreachable: {exc}"
            except StoreRefused as exc:
                self.state, self.error = "stopped", str(exc)
                log.critical("ledger_writer_stopped", extra={"error": str(exc)})
                for _, _, fut in self._waiters:
                    if not fut.done():
                        fut.set_exception(StoreRefused(str(exc)))
                self._waiters.clear()
                return False
            except Exception as exc:  # unforeseen (a driver state error, a bug): keep the batch, retry loudly
                self.retries += 1
                log.exception("ledger_writer_error", extra={"error": type(exc).__name__})
                self.state, self.error = "down", f"the ledger writer failed: {type(exc).__name__}: {exc}"
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
