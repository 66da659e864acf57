"""The delivery worker: signed webhooks delivered in a process of their own.

``python -m exchange deliver`` runs the delivery engine (exchange.webhooks) on the store named
by the settings, beside an exchange on the same store. ``python -m exchange serve`` starts one
as its child (``webhook_delivery=process``, the default) with its own settings on the child's
stdin, starts it again a second after it dies (``kill -9`` included: nothing is lost, the
engine goes on from the positions and retries in the store) and stops it when it stops; a child
whose parent is gone stops too. So the deliveries' HTTP requests, signatures and delivery-log
writes take no time from the decisions' event loop; the worker runs ``webhook_worker_nice``
steps nicer, so on a busy host the decisions get the CPU first.

One worker at a time per store: it holds a lock while it delivers (an ``flock`` on
``<database file>.webhooks.lock`` for SQLite, a session advisory lock for PostgreSQL); a
second one waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec

from billing.backends import open_store
from billing.store import Store, StoreUnavailable

from .settings import Settings, database_url
from .webhooks import Webhooks

log = logging.getLogger("exchange.deliver")
RESTART_S = 1.0
STATS_S = 60.0


class WorkerProcess:
    """The exchange's side: the child process, started again when it dies."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self._spawn()
        self._task = asyncio.create_task(self._watch(), name="webhook-worker")

    async def _spawn(self) -> None:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "exchange", "deliver", "--settings-stdin",
                                                    "--parent", str(os.getpid()), stdin=asyncio.subprocess.PIPE)
        assert proc.stdin is not None
        proc.stdin.write(msgspec.json.encode(self.settings))
        await proc.stdin.drain()
        proc.stdin.close()
        self.proc = proc
        self.starts += 1

    async def _watch(self) -> None:
        while True:
            assert self.proc is not None
            rc = await self.proc.wait()
            log.warning("webhook_worker_exited", extra={"rc": rc, "pid": self.proc.pid})
            await asyncio.sleep(RESTART_S)
            try:
                await self._spawn()
            except OSError:
                log.exception("webhook_worker_start_failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    def gauges(self) -> dict[str, int]:
        up = self.proc is not None and self.proc.returncode is None
        return {"webhook_worker_up": int(up), "webhook_worker_starts": self.starts}


# ---------------------------------------------------------------------- the worker's side
def read_settings(raw: bytes) -> Settings:
    return msgspec.json.decode(raw, type=Settings)


def run_worker(settings: Settings, parent: int | None = None) -> int:
    """The worker's main (logging configured by the caller, exchange.__main__)."""
    if settings.webhook_worker_nice:
        with contextlib.suppress(OSError):
            os.nice(settings.webhook_worker_nice)
    if settings.webhook_worker_idle and hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    import uvloop

    return uvloop.run(_main(settings, parent))


async def _main(settings: Settings, parent: int | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def orphaned() -> bool:
        return parent is not None and os.getppid() != parent

    store = open_store(database_url(settings))
    while True:
        try:
            await store.open()
            break
        except StoreUnavailable as exc:
            log.warning("webhook_worker_store_unavailable", extra={"error": str(exc)})
            if await _stopped(stop, 1.0) or orphaned():
                return 0
    try:
        while (lock := await _exclusive(store, stop, orphaned)) is not None:
            if not await _deliver(store, settings, lock, stop, orphaned):
                break
            log.warning("webhook_worker_lock_lost", extra={"reason": "the store's delivery lock went with its session: waiting for it again"})
    finally:
        await store.close()
    return 0


async def _deliver(store: Store, settings: Settings, lock: Exclusive, stop: asyncio.Event, orphaned: Callable[[], bool]) -> bool:
    """Deliver while the lock is held; True if it was lost (another worker may have it now)."""
    engine = Webhooks(store, settings)
    try:
        while True:
            try:
                await engine.start()
                break
            except StoreUnavailable as exc:
                log.warning("webhook_worker_store_unavailable", extra={"error": str(exc)})
                if await _stopped(stop, 1.0) or orphaned():
                    return False
        log.info("webhook_worker_started", extra={"pid": os.getpid(), **engine.gauges()})
        stats = time.monotonic()
        while not await _stopped(stop, 1.0) and not orphaned():
            if await lock.lost():
                return True
            if time.monotonic() - stats >= STATS_S:
                stats = time.monotonic()
                log.info("webhook_worker_stats", extra=engine.gauges())
        return False
    finally:
        await engine.stop()
        log.info("webhook_worker_stopped", extra=engine.gauges())
        await lock.release()


async def _stopped(stop: asyncio.Event, wait_s: float) -> bool:
    try:
        await asyncio.wait_for(stop.wait(), wait_s)
    except TimeoutError:
        pass
    return stop.is_set()


class Exclusive:
    """The store's delivery lock, held: an ``flock`` (SQLite), or a PostgreSQL session advisory lock
    on a connection of its own (on the writer's, it went unnoticed with that connection when the
    store reconnected after a database restart, and two workers delivered side by side)."""

    def __init__(self, file: Any = None, session: Any = None) -> None:
        self.file, self.session = file, session

    async def lost(self) -> bool:
        """Whether the lock is gone (its session ended): looked at once a second by the worker."""
        if self.session is None:
            return False
        try:
            return await asyncio.wait_for(self.session.fetchval("SELECT 1"), 5.0) != 1
        except Exception:  # noqa: BLE001 - any failure of the session is the lock's end
            return True

    async def release(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.session is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.session.close(), 5.0)


async def _exclusive(store: Store, stop: asyncio.Event, orphaned: Callable[[], bool]) -> Exclusive | None:
    """Wait for the store's delivery lock (None: told to stop first)."""
    said = False
    path = getattr(store, "path", None)
    lock: Any = open(f"{path}.webhooks.lock", "a+") if path is not None else None  # noqa: SIM115 - held while delivering
    while True:
        if lock is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return Exclusive(file=lock)
            except BlockingIOError:
                pass
        else:
            session = None
            with contextlib.suppress(Exception):
                session = await store.session()  # type: ignore[attr-defined]
                if await session.fetchval("SELECT pg_try_advisory_lock(hashtext(current_schema() || '.dce_webhooks'))"):
                    return Exclusive(session=session)
            if session is not None:
                with contextlib.suppress(Exception):
                    await session.close()
        if not said:
            said = True
            log.warning("webhook_worker_waiting", extra={"reason": "another delivery worker holds this store's lock"})
        if await _stopped(stop, 1.0) or orphaned():
            if lock is not None:
                lock.close()
            return None
