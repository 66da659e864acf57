"""Webhooks, the exchange's side: the API's operations on the store and the disabled notices.

The deliveries themselves run elsewhere (exchange.webhooks, the engine): by default in the
delivery worker, a child process that ``serve`` starts and stops with it (exchange.deliver,
``webhook_delivery=process``); in the exchange's own event loop with ``loop`` (and with an
in-memory SQLite store, which no other process can open); not at all with ``off`` (run
``python -m exchange deliver`` beside it). Either way the engine reads and writes only the
store, so an endpoint created here is seen by it within a second, and one it disables gets its
``webhook.disabled`` notice here: a record on the audit trail (which has one writer, this
process), written once the store says it is not yet noticed (``noticed_ns``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from billing.records import AuditEvent
from billing.store import StoreUnavailable
from billing.events import position

from . import ssrf
from .webhook_parts import COLS, OPERATOR, Hook
from .webhooks import Webhooks

log = logging.getLogger("exchange.webhooks")
NOTICE_S = 1.0  # how often the exchange looks for endpoints disabled without a notice yet


class WebhookRegistry:
    def __init__(self, journal: Any, head: Callable[[], int], settings: Any, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.journal, self.store, self.head, self.settings, self.clock = journal, journal.store, head, settings, clock_ns
        self.allow_loopback, self.max_per_account = settings.webhook_allow_loopback, settings.webhook_max_per_account
        self.own = (settings.host, settings.port)
        self.engine: Webhooks | None = None  # the deliveries, when they run in this loop
        self.worker: Any = None  # exchange.deliver.WorkerProcess, when they run in a child process
        self.noticed = 0
        self._task: asyncio.Task | None = None

    @property
    def mode(self) -> str:
        mode = self.settings.webhook_delivery
        return "loop" if mode == "process" and getattr(self.store, "path", None) == ":memory:" else mode

    async def start(self) -> None:
        if self.mode == "process":
            from .deliver import WorkerProcess

            self.worker = WorkerProcess(self.settings)
            await self.worker.start()
        elif self.mode == "loop":
            self.engine = Webhooks(self.store, self.settings, self.clock)
            await self.engine.start()
        self._task = asyncio.create_task(self._notices(), name="webhook-notices")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.worker is not None:
            await self.worker.stop()
        if self.engine is not None:
            await self.engine.stop()

    # ------------------------------------------------------------------ the API's operations
    async def create(self, account: str, url: str, events: list[str], secret: str | None) -> tuple[Hook, str]:
        target = ssrf.parse(url)
        await ssrf.resolve(target, self.allow_loopback, self.own)
        mine = await self.store.fetch("SELECT count(*) FROM webhooks WHERE account = ? AND disabled_ns IS NULL", account)
        if int(mine[0][0]) >= self.max_per_account:
            raise ssrf.UrlRefused(f"at most {self.max_per_account} webhooks per account")
        secret = secret or "whsec_" + secrets.token_urlsafe(32)
        wid = "wh_" + secrets.token_hex(8)
        row = (wid, account, url, ",".join(sorted(set(events))), secret, self.clock(), position(self.head()), 0, None, None)
        await self.store.fetch(f"INSERT INTO webhooks ({COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id", *row)
        return Hook(row), secret

    async def listed(self, account: str) -> list[Hook]:
        rows = await self.store.fetch(f"SELECT {COLS} FROM webhooks" + ("" if account == OPERATOR else " WHERE account = ?")
                                      + " ORDER BY created_ns, id", *(() if account == OPERATOR else (account,)))
        return [Hook(r) for r in rows]

    async def owned(self, account: str, wid: str) -> Hook | None:
        rows = await self.store.fetch(f"SELECT {COLS} FROM webhooks WHERE id = ?", wid)
        if not rows or (account != OPERATOR and rows[0][1] != account):
            return None
        return Hook(rows[0])

    async def delete(self, hook: Hook) -> None:
        """Gone from the store; the engine stops its task within a second (and drops retries it adds meanwhile)."""
        for sql in ("DELETE FROM webhook_retries WHERE webhook_id = ? RETURNING webhook_id", "DELETE FROM webhooks WHERE id = ? RETURNING id"):
            await self.store.fetch(sql, hook.id)

    async def deliveries(self, hook: Hook, limit: int) -> list[tuple]:
        return await self.store.fetch(
            "SELECT event_id, attempt, at_ns, ok, http_status, error, duration_ms, next_ns FROM webhook_deliveries "
            "WHERE webhook_id = ? ORDER BY at_ns DESC LIMIT ?", hook.id, limit)

    # ------------------------------------------------------------------ notices
    async def _notices(self) -> None:
        while True:
            await asyncio.sleep(NOTICE_S)
            try:
                await self.notice_disabled()
            except StoreUnavailable:
                pass
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - tried again next time
                log.exception("webhook_notice_failed")

    async def notice_disabled(self) -> int:
        """Record a ``webhook.disabled`` notice for each endpoint the engine disabled since the last look."""
        rows = await self.store.fetch("SELECT id, account, url, disabled_reason FROM webhooks "
                                      "WHERE disabled_ns IS NOT NULL AND noticed_ns IS NULL")
        for wid, account, url, reason in rows:
            seq = self.journal.record(AuditEvent(self.clock(), "webhook", None, None, {
                "account": account, "webhook_id": wid, "url": url, "state": "disabled", "reason": reason}))
            await self.journal.ack(seq)  # on the audit trail before it is marked (a crash between: noticed twice, never lost)
            await self.store.fetch("UPDATE webhooks SET noticed_ns = ? WHERE id = ? RETURNING id", self.clock(), wid)
            self.noticed += 1
        return len(rows)

    def gauges(self) -> dict[str, int]:
        out = {"webhook_notices": self.noticed}
        if self.worker is not None:
            out.update(self.worker.gauges())
        if self.engine is not None:
            out.update(self.engine.gauges())
        return out
