"""The exchange, assembled: the pure core and the owners around it, started and stopped.

- ``core``: book, ledger, gate, dedupe index and calls (pure, synchronous);
- ``desk`` (``CallDesk``): publishers' calls and events, idempotency;
- ``rtb`` (``RtbDesk``): buyers' sockets, bid requests, rounds, notices;
- ``treasury`` (``Treasury``): accounts, deposits, payouts, refunds;
- ``journal`` (``Journal``): the durable writer and the waits on it;
- ``compliance``: the gate's stores and shared counters.

Built once in the app's lifespan (``exchange.app``); the edges (HTTP, WebSocket) talk to
the owners and map their ``Refused`` errors to the wire.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from compliance.runtime import ComplianceRuntime

from . import gcpolicy
from .accounts import Accounts
from .calldesk import CallDesk
from .clock import WallClock
from .core import Core
from .journal import Journal
from .lifecycle import expire_due
from .metrics import Metrics
from .privacy import Privacy, Sealer, scrub_call
from .recovery import restore
from .relay import Relay
from .webhooks import Webhooks
from .rtb import RtbDesk
from .settings import Settings
from .tallyreplay import relog, replay_audit
from .treasury import Treasury

log = logging.getLogger("exchange")


class Exchange:
    def __init__(self, settings: Settings, clock: WallClock | None = None) -> None:
        self.settings = settings
        self.clock = clock or WallClock()
        self.core = Core(settings)
        self.compliance = ComplianceRuntime.from_settings(self.core.gate, settings)
        self.admin_key = settings.admin_key or "dce_admin_" + secrets.token_urlsafe(32)
        self.accounts = Accounts(self.admin_key)
        self.metrics = Metrics()
        self.journal = Journal(settings, self.core.ledger)
        self.rtb = RtbDesk(self.metrics, self.core.book.next_seq)
        self.desk = CallDesk(self.core, self.compliance, self.rtb, self.journal, self.metrics, self.clock)
        self.privacy = Privacy(settings, self.journal, self._forget_number)
        self.treasury = Treasury(self.accounts, self.core.ledger, self.journal, self.clock, self.core.calls.__contains__)
        self.restored = (0, 0, 0)  # (accounts, calls in flight recovered, holds released) at start
        self.ready = False
        self._tasks: list[asyncio.Task[None]] = []
        self.relay: Relay | None = None
        writer = self.journal.writer
        self.webhooks: Webhooks | None = Webhooks(self.journal.store, self.journal.record, lambda: writer.head[0], settings,
                                                  self.clock.now_ns)
        if settings.nats_url:
            self.relay = Relay(self.journal.store, settings.nats_url, settings.nats_stream, settings.nats_subject,
                               settings.relay_batch, settings.relay_inflight, settings.events_max_age_s,
                               head=lambda: writer.head[0], clock_ns=self.clock.now_ns)

    async def start(self) -> None:
        gcpolicy.tune()
        gcpolicy.watch(self.metrics)
        await self.journal.open()  # and the vault: a master key that cannot read the database refuses the start here
        vault = self.journal.vault
        if vault is not None:
            self.privacy.sealer = self.compliance.privacy = Sealer(vault, self.journal.store)
            self.core.gate.stores.suppressions.blinder = vault.blind
        await self.compliance.start()  # before the restore: recovered outbound calls are re-screened
        now = self.clock.now_ns()
        self.restored = await restore(self.journal.store, self.core, self.accounts, self.settings, now, vault)
        await self.desk.restore_keys(now, self.settings.call_retention_s * 1_000_000_000)
        if self.settings.report_days:  # the report aggregate, from the audit trail of its window
            with self.journal.reading():
                await replay_audit(self.journal.store, self.desk.tally, now - self.settings.report_days * 86_400 * 1_000_000_000,
                                   self.settings.min_floor_cents)
        relog(self.desk.log, self.core.calls)
        await self.journal.start()
        self._tasks.append(asyncio.create_task(self._sweeper(), name="sweeper"))
        if self.settings.retention_days and vault is not None:
            self._tasks.append(asyncio.create_task(self.privacy.sweeper(self.clock.now_ns), name="retention"))
        if self.relay is not None:
            self.relay.start()
        if self.webhooks is not None:
            await self.webhooks.start()
            self.journal.writer.on_commit.append(self.webhooks.committed)
        self.ready = True

    async def drain(self, timeout_s: float = 5.0) -> int:
        """Stop taking calls (503 ``draining``) and wait for the decisions in flight; returns
        how many were still running at the deadline."""
        self.ready = False
        return await self.desk.drain(timeout_s)

    async def stop(self) -> None:
        self.ready = False
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.relay is not None:
            await self.relay.stop()
        if self.webhooks is not None:
            await self.webhooks.stop()
        await self.journal.close()
        await self.compliance.stop()

    async def _sweeper(self) -> None:
        """Release legs whose ``expires_at`` passed and forget calls past retention."""
        ticks = 0
        while True:
            await asyncio.sleep(0.5)
            ticks += 1
            if ticks % (2 * gcpolicy.FREEZE_EVERY_S) == 0:
                gcpolicy.settle()
            if ticks % 7200 == 0:  # hourly: forget repeat-caller entries past any dedupe window
                self.core.dedupe.prune(self.clock.now_ns())
                self.desk.tally.prune(self.clock.now_ns())
            try:
                now = self.clock.now_ns()
                self.rtb.notify(expire_due(self.core, now))
                self.journal.record()
                self.core.forget_before(now - self.settings.call_retention_s * 1_000_000_000)
                self.desk.forget_keys(now)
                if ticks % 60 == 0:  # every 30 s: forgotten calls leave the heads of the call logs
                    self.desk.log.prune(self.core.calls)
            except Exception:  # the sweeper must outlive a bad record; the bug is logged
                log.exception("sweeper_failed")

    def _forget_number(self, e164: str, blind: str) -> None:
        """An erasure: the number leaves the exchange's memory (calls show "erased", the
        repeat-caller index and consents drop it) but its opt-outs, kept by blind index."""
        for rec in self.core.calls.values():
            scrub_call(rec, e164)
        self.core.dedupe.forget_caller(e164)
        stores = self.core.gate.stores
        stores.suppressions.seal(e164, blind)
        stores.consents.forget_phone(e164)

    def gauges(self) -> dict[str, int]:
        core, writer = self.core, self.journal.writer
        return {
            "book_campaigns": len(core.book),
            "book_campaigns_parked": core.book.parked,
            "book_listings_scanned": core.book.scanned,
            "calls_active": len(core.active),
            "calls_in_memory": len(core.calls),
            "rtb_rounds_open": len(self.rtb.rounds),
            "ledger_entries": core.ledger.posted,
            "ledger_writer_pending": writer.enqueued - writer.committed,
            "ledger_writer_batches": writer.batches,
            "ledger_writer_up": int(writer.state == "up"),
            "ledger_records_refused": writer.records_refused,  # records the database refused for their data
            "privacy_erasures": self.privacy.erasures,
            "privacy_keys_destroyed": self.privacy.keys_destroyed + self.privacy.keys_expired,
            "privacy_keys_made": self.journal.vault.keys_made if self.journal.vault is not None else 0,
            **(self.relay.gauges() if self.relay is not None else {}),
            **(self.webhooks.gauges() if self.webhooks is not None else {}),
        }
