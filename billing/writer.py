"""The group-commit writer: one task drains a queue of durable records into the store.

Callers ``put`` records (never blocking: the hot path only appends) and get a sequence
number; ``wait(seq)`` returns once every record up to ``seq`` is committed. The task takes
whatever is queued (at most ``max_batch``) as one batch, numbers and hashes its audit events,
writes it in one transaction and wakes the waiters, so many completions share one commit.

When the database is unreachable the batch is kept and retried with backoff after a
reconnect; the store's natural keys make the retry write each row once even if the lost
commit had in fact succeeded. ``wait`` gives up after its timeout with ``StoreUnavailable``
(the edge answers 503 and the caller retries), and acknowledged means committed.

A batch is made of whole ``put`` units (one operation's records). If the database refuses a
batch for its data (``BatchRefused``: a NUL byte in a name, an unbalanced entry), the writer
splits it by unit, halving until the unit at fault is alone: that operation's waiter gets
``RecordRefused`` naming its records, it takes no place on the audit chain, and every other
unit commits; the writer keeps running. Any other refusal (the audit chain forked by a second
writer) stops the writer: every waiter gets ``StoreRefused``.

Besides what it is given, the writer puts every row it writes (account, entry, hold, capture,
release, call outcome) on the audit trail in the same transaction; ``audit verify`` pairs them.
The audit trail is also the outbox of domain events (billing.events): each batch carries the
(account, seq) pairs that address them, written in the same transaction.

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
from collections.abc import Callable, Iterable
from typing import NamedTuple

from .audit import Chain
from .trail import describe, fill as _fill
from .records import Record
from .vault import Vault
from .store import Batch, BatchRefused, RecordRefused, Store, StoreRefused, StoreUnavailable

log = logging.getLogger("exchange.writer")


class _Taken(NamedTuple):
    """A batch taken from the queue, with what rebuilding it (or any part of it) takes."""

    batch: Batch
    upto: int  # the sequence number of its last record
    start: tuple[int, bytes]  # the audit chain's head before it
    first: int  # the sequence number before its first record
    records: list[Record]
    ends: list[int]  # the last sequence number of each put() (an operation) in it


def _split(records: list[Record], first: int, ends: list[int]) -> list[tuple[int, list[Record]]]:
    """(end, records) of each put() unit of a batch."""
    out, lo = [], first
    for end in ends:
        out.append((end, records[lo - first:end - first]))
        lo = end
    return out


class _Expired(Exception):
    """A waiter's timeout (raised into its own future only)."""


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(_Expired())


class Writer:
    def __init__(self, store: Store, max_batch: int = 5000, max_pending: int = 200_000, retry_max_s: float = 2.0,
                 linger_s: float = 0.0, vault: Vault | None = None) -> None:
        self.store = store
        self.vault = vault  # seals consumer numbers as records are taken (billing.vault); None: stored as given
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
        self._units: deque[int] = deque()  # the last sequence number of each put() not yet taken
        self._refused: dict[int, str] = {}  # put()'s sequence number -> why its records were refused
        self._refusal: BatchRefused | None = None
        self.records_refused = 0
        self.head: tuple[int, bytes] = (0, bytes(32))  # the last committed audit record (seq, hash)
        # Optional: a store that can build a batch's parameters before its connection is free.
        self._prepare = getattr(store, "prepare", None)
        # Called with each committed batch (e.g. to wake the webhooks of the accounts it addresses).
        self.on_commit: list[Callable[[Batch], None]] = []

    async def start(self) -> None:
        self.head = await self.store.last_audit()
        self.chain = Chain(*self.head)
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
            self._units.append(self.enqueued)
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

    @property
    def has_room(self) -> bool:
        """Whether ``room`` would return at once."""
        return self._room.is_set()

    def barrier(self) -> int:
        """A number for ``wait`` that returns once everything put so far is committed or refused,
        without taking on another operation's refusal (for a caller that put nothing)."""
        return -self.enqueued

    async def wait(self, seq: int, timeout_s: float) -> None:
        """Return once record ``seq`` is committed; StoreUnavailable after ``timeout_s``;
        RecordRefused if the put() that ``seq`` ended was refused (a ``barrier`` never is)."""
        if seq < 0:
            try:
                await self.wait(-seq, timeout_s)
            except RecordRefused:
                pass
            return
        if seq <= self.committed:
            if seq in self._refused:
                raise RecordRefused(self._refused[seq])
            return
        if self.state == "stopped":
            raise StoreRefused(self.error or "the ledger writer stopped")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._n += 1
        heapq.heappush(self._waiters, (seq, self._n, fut))
        self._urgent.set()
        timer = loop.call_later(timeout_s, _expire, fut)  # (cheaper than wait_for + shield, on every acknowledged write)
        try:
            await fut
        except _Expired:
            raise StoreUnavailable(self.error or "the ledger is not durable yet") from None
        finally:
            timer.cancel()

    async def flush(self, timeout_s: float) -> None:
        """Return once everything put is committed or refused (refusals went to their callers)."""
        await self.wait(self.barrier(), timeout_s)

    # ------------------------------------------------------------------ the task
    def _take(self, stored: Batch | None = None) -> _Taken:
        """The next batch: whole put() units, at least one, up to about ``max_batch`` records.
        ``stored``: the batch committing meanwhile; the rows of data keys it carries are left out
        (it commits first, or this batch is rebuilt with every key not stored)."""
        pending, units = self.pending, self._units
        first = self._taken
        want = first + min(len(pending), self.max_batch)
        ends: list[int] = []
        end = first
        while end < want:
            end = units.popleft()
            ends.append(end)
        popleft = pending.popleft
        records = [popleft() for _ in range(end - first)]
        if len(pending) < self.max_pending:
            self._room.set()
        self._taken = end
        start = (self.chain.seq, self.chain.last_hash)
        batch = Batch()
        try:
            _fill(batch, records, self.chain.append, self.vault, stored.keys if stored is not None else ())
        except Exception:  # noqa: BLE001 - a record that cannot be put on the chain: find it, unit by unit
            self.chain = Chain(*start)
            batch = self._build(_split(records, first, ends))
        return _Taken(batch, end, start, first, records, ends)

    def _build(self, units: list[tuple[int, list[Record]]]) -> Batch:
        """A batch of ``units`` chained from the chain's head, refusing any unit that cannot be."""
        batch = Batch()
        for end, records in units:
            if end in self._refused:
                continue
            state = (self.chain.seq, self.chain.last_hash)
            part = Batch()
            try:
                _fill(part, records, self.chain.append, self.vault)
            except Exception as exc:  # noqa: BLE001 - e.g. a body the canonical encoder refuses
                self.chain = Chain(*state)
                self._refuse(end, records, f"{type(exc).__name__}: {exc}")
                continue
            for name in ("entries", "holds", "outcomes", "accounts", "audit", "parties"):
                getattr(batch, name).extend(getattr(part, name))
            if part.keys:
                batch.keys[:] = part.keys  # every key not stored yet (the last part's list holds them all)
        return batch

    def _refuse(self, end: int, records: list[Record], why: object) -> None:
        what = ", ".join(describe(r) for r in records[:4]) + (f" and {len(records) - 4} more" if len(records) > 4 else "")
        self._refused[end] = f"the ledger database refused this operation's records ({what}): {why}"
        if len(self._refused) > 10_000:  # callers wait within seconds; keep the recent verdicts only
            del self._refused[next(iter(self._refused))]
        self.records_refused += len(records)
        log.error("ledger_record_refused", extra={"records": what, "error": str(why)})

    async def _settle(self, units: list[tuple[int, list[Record]]]) -> bool:
        """The batch of ``units`` (chained from the chain's head) was refused for its data: write
        each half on its own, splitting any half refused again, until the unit at fault is
        alone; it is refused and takes no place on the chain. False if the writer stopped."""
        units = [u for u in units if u[0] not in self._refused]
        if len(units) == 1:
            self._refuse(units[0][0], units[0][1], self._refusal)
            return True
        mid = len(units) // 2
        for half in (units[:mid], units[mid:]):
            state = (self.chain.seq, self.chain.last_hash)
            batch = self._build(half)
            if not len(batch):
                continue
            result = await self._commit(batch)
            if result == "stopped":
                return False
            if result == "refused":
                self.chain = Chain(*state)
                if not await self._settle(half):
                    return False
            else:
                self._written(batch)
        return True

    async def _run(self) -> None:
        ready: _Taken | None = None  # taken while the previous batch committed
        while True:
            if ready is None:
                if not self.pending:
                    self._wake.clear()
                    await self._wake.wait()
                if self.linger_s > 0 and not self._waiters and len(self.pending) < self.max_batch:
                    await self._linger()
                ready = self._take()
            taken, ready = ready, None
            if len(self.pending) >= self.max_batch:
                # A backlog: prepare the next batch while the database writes this one.
                commit = asyncio.ensure_future(self._commit(taken.batch))
                try:
                    await asyncio.sleep(0)  # the commit sends its statement first
                    if not commit.done():
                        ready = self._take(taken.batch)
                        if self._prepare is not None:
                            self._prepare(ready.batch)
                    result = await commit
                except asyncio.CancelledError:
                    commit.cancel()
                    raise
            else:
                result = await self._commit(taken.batch)
            if result == "stopped":
                return
            if result == "refused":
                self.chain = Chain(*taken.start)
                if not await self._settle(_split(taken.records, taken.first, taken.ends)):
                    return
                if ready is not None:  # it was chained after records that were dropped: chain it again
                    head = (self.chain.seq, self.chain.last_hash)
                    ready = ready._replace(start=head, batch=self._build(_split(ready.records, ready.first, ready.ends)))
            else:
                self._written(taken.batch)
            self._resolve(taken.upto)

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

    def _written(self, batch: Batch) -> None:
        self.batches += 1
        self.records_written += len(batch)
        if batch.keys and self.vault is not None:
            self.vault.saved(batch.keys)
        if batch.audit:
            last = batch.audit[-1]
            self.head = (last.seq, last.hash)
        for listener in self.on_commit:
            listener(batch)

    def _resolve(self, upto: int) -> None:
        self.committed = upto
        waiters, refused = self._waiters, self._refused
        while waiters and waiters[0][0] <= upto:
            seq, _, fut = heapq.heappop(waiters)
            if not fut.done():
                why = refused.get(seq) if refused else None
                if why is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(RecordRefused(why))

    async def _commit(self, batch: Batch) -> str:
        """Write ``batch``, retrying while the database is unreachable: "ok", "refused" (its
        data: the caller splits it) or "stopped" (the writer stops)."""
        if not len(batch):
            return "ok"
        delay = 0.02
        while True:
            t0 = monotonic()
            try:
                await self.store.write(batch)
                self.commit_s_total += monotonic() - t0
                if self.state != "up":
                    log.warning("ledger_writer_recovered", extra={"retries": self.retries})
                self.state, self.error = "up", None
                return "ok"
            except StoreUnavailable as exc:
                self.retries += 1
                if self.state != "down":
                    log.error("ledger_writer_down", extra={"error": str(exc)})
                self.state, self.error = "down", f"the ledger database is unreachable: {exc}"
            except BatchRefused as exc:
                self._refusal = exc
                return "refused"
            except StoreRefused as exc:
                self.state, self.error = "stopped", str(exc)
                log.critical("ledger_writer_stopped", extra={"error": str(exc)})
                for _, _, fut in self._waiters:
                    if not fut.done():
                        fut.set_exception(StoreRefused(str(exc)))
                self._waiters.clear()
                return "stopped"
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
