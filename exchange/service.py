"""The exchange, assembled: the pure core and the owners around it, started and stopped.

- ``core``: book, ledger, gate, dedupe index and calls (pure, synchronous);
- ``desk`` (``CallDesk``): publishers' calls and events, idempotency;
- ``rtb`` (``RtbDesk``): buyers' sockets, bid requests, rounds, notices;
- ``pings`` (``HttpBidders``): campaigns priced over HTTP, their pool and counts;
- ``treasury`` (``Treasury``): accounts, deposits, payouts, refunds;
- ``journal`` (``Journal``): the durable writer and the waits on it;
- ``compliance``: the gate's stores and shared counters.

Built once in the app's lifespan (``exchange.app``); the edges (HTTP, WebSocket) talk to
the owners and map their ``Refused`` errors to the wire.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Callable

from compliance.runtime import ComplianceRuntime

from . import gcpolicy
from .watchdog import Watchdog
from .accounts import Account, Accounts, bearer, digest
from .errors import Refused
from .ids import BuyerId
from .bookstore import BookStore
from .calldesk import CallDesk
from .clock import WallClock
from .core import Core
from .httpbid import HttpBidders
from .journal import Journal
from .lifecycle import expire_due
from .metrics import Metrics
from .market import MarketLink
from .messages import NoBid, RtbBid
from .linkserver import LinkServer
from .nodes import ADOPT_ENV, Node, refuse_beside_nodes
from .recovery import recount, restore, retake
from .privacy import Privacy, Sealer, scrub_call
from .relay import Relay
from .webhook_registry import WebhookRegistry
from .rtb import RtbDesk
from .settings import Settings, nats_names
from .tally import SEAL_EVERY_S, sliced
from .tallyreplay import relog, replay_audit
from .treasury import Treasury

NS = 1_000_000_000

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
        self.pings = HttpBidders(settings, self.metrics)
        self.rtb = RtbDesk(self.metrics, self.core.book.next_seq, self.pings)
        self.desk = CallDesk(self.core, self.compliance, self.rtb, self.journal, self.metrics, self.clock)
        self.privacy = Privacy(settings, self.journal, self._forget_number)
        self.treasury = Treasury(self.accounts, self.core.ledger, self.journal, self.clock, self.core.calls.__contains__)
        # one node of a market (adopting the leases of the edge this process replaces, if it does: exchange.server)
        self.node = Node(settings, self.journal.store, os.environ.pop(ADOPT_ENV, None)) if settings.node_id else None
        self.desk.node = self.node
        self.restored = (0, 0, 0)  # (accounts, calls in flight recovered, holds released) at start
        save_ms = settings.book_save_ms or 1_000
        round_ms = min(settings.book_notice_ms, save_ms) if settings.node_id else save_ms
        self.bookstore = BookStore(self.journal.store, self.core, self.clock.now_ns, round_ms, track=bool(settings.node_id),
                                   save_every=max(1, save_ms // round_ms))
        self.link: MarketLink | None = None  # the links to the other nodes of the market (made once the node joined)
        self.link_server: LinkServer | None = None  # a node's listener for its edges' calls (exchange.nodelink; set by the app)
        self.campaigns_restored = (0, 0)  # (restored, skipped) at start
        self.ready = False
        # an edge that took the vacant seller's lease: set to its leases' token; the server stops and
        # replaces this process with a seller adopting them (exchange.server.serve, ``on_handover``)
        self.handover: str | None = None
        self.on_handover: Callable[[], None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.watchdog: Watchdog | None = None
        self.relay: Relay | None = None
        writer = self.journal.writer
        self.webhooks: WebhookRegistry | None = WebhookRegistry(self.journal, lambda: writer.head[0], settings, self.clock.now_ns)
        if settings.nats_url:
            self.relay = Relay(self.journal.store, settings.nats_url, *nats_names(settings),
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
        if self.node is not None:
            await self.node.join()  # NodeRefused: another process holds this id, or the market uses another database
        else:
            await refuse_beside_nodes(self.journal.store, self.settings.node_lease_ms)
        await self.compliance.start()  # before the restore: recovered outbound calls are re-screened
        now = self.clock.now_ns()
        edge = self.node is not None and not self.node.selling
        self.core.book.indexed = not edge  # an edge decides no call (a seller's takeover is a new process)
        self.restored = await restore(self.journal.store, self.core, self.accounts, self.settings, now, vault, calls=not edge)
        if not edge:  # an edge forwards calls and reads to the seller: its keys and reports would be unused
            await self.desk.restore_keys(now, self.settings.call_retention_s * 1_000_000_000)
        self.campaigns_restored = await self.bookstore.restore(self.accounts.by_id.__contains__, now)
        if not edge:  # the current windows' delivered calls, into the restored campaigns' caps and budgets
            days = 32 if any(s.limits.monthly is not None for s in self.core.book.standing()) else 2
            with self.journal.reading():
                recount(self.core, await self.journal.store.delivered_legs(now - days * 86_400 * 1_000_000_000), now)
        retake(self.core, now)  # the recovered legs' concurrency slots, on their restored campaigns
        st = self.settings
        if (st.report_days or st.quality_signals) and not edge:  # the report aggregate and the quality windows, from the audit trail
            with self.journal.reading():
                await replay_audit(self.journal.store, self.desk.tally, now - st.report_days * 86_400 * NS if st.report_days else now,
                                   st.min_floor_cents, self.core.quality if st.quality_signals else None,
                                   now - st.quality_window_s * NS, now - st.quality_outcome_window_s * NS, vault)
        relog(self.desk.log, self.core.calls)
        await self.journal.start()
        self._tasks.append(asyncio.create_task(self._sweeper(), name="sweeper"))
        if st.report_days and not edge:
            self._tasks.append(asyncio.create_task(self._sealer(), name="report-sealer"))
        self.bookstore.start()
        if self.node is not None and self.settings.redis_url:
            self.link = MarketLink(self, self.node, self.settings.redis_url)
            if not self.node.selling:
                self.bookstore.on_saved = self.link.book_saved
            await self.link.start()
        if self.node is not None:
            self.node.on_vacant = self.node.on_lost = self._replace
        if self.node is not None and not self.node.selling:  # an edge: the seller relays events and delivers webhooks
            self.relay = self.webhooks = None
        if self.settings.retention_days and vault is not None:
            self._tasks.append(asyncio.create_task(self.privacy.sweeper(self.clock.now_ns), name="retention"))
        if self.relay is not None:
            self.relay.start()
        if self.webhooks is not None:
            await self.webhooks.start()  # the delivery worker (exchange.deliver), or the engine in this loop
        if self.settings.stall_log_ms:  # after the restore: its start-up work is not a stall
            self.watchdog = Watchdog(self.settings.stall_log_ms, self.metrics)
            self.watchdog.start()
        self.ready = True

    async def drain(self, timeout_s: float = 5.0) -> int:
        """Stop taking calls (503 ``draining``) and wait for the decisions in flight; returns
        how many were still running at the deadline."""
        self.ready = False
        return await self.desk.drain(timeout_s)

    async def stop(self) -> None:
        self.ready = False
        if self.watchdog is not None:
            self.watchdog.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.link is not None:
            await self.bookstore.stop()  # an edge's last changes saved and announced before the link closes
            await self.link.stop()
        if self.relay is not None:
            await self.relay.stop()
        if self.webhooks is not None:
            await self.webhooks.stop()
        await self.pings.close()
        await self.bookstore.stop()
        await self.journal.close()
        await self.compliance.stop()
        if self.node is not None:
            await self.node.leave()

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
                self.core.quality.expire(now)  # the quality windows' oldest calls, a little at a time
                if ticks % 60 == 0:  # every 30 s: forgotten calls leave the heads of the call logs
                    self.desk.log.prune(self.core.calls)
            except Exception:  # the sweeper must outlive a bad record; the bug is logged
                log.exception("sweeper_failed")

    def _replace(self) -> None:
        """This node's role changed under it: an edge took the lease of a seller that vanished
        (killed, cut off past its lease), or this seller's lease was taken by another process
        (Redis restarted, a stall past its TTL; its writer is fenced out by the new seller's epoch).
        Its process is replaced by one that joins the market again with its leases: the new seller
        rebuilds the market from the database (accounts, balances, calls in flight, the book) as a
        restarted seller does; a former seller comes back as an edge. Buyers' sockets close with
        the old process; they reconnect to any node."""
        assert self.node is not None
        self.handover = self.node.token
        self.ready = False
        if self.on_handover is not None:
            self.on_handover()

    async def _sealer(self) -> None:
        """The report aggregate's closed hours and days grouped for the operator in the background
        (``Tally.seal``, a slice at a time): at start, after the rebuild, then every minute."""
        while True:
            try:
                await sliced(self.desk.tally.seal(self.clock.now_ns()))
            except Exception:
                log.exception("report_seal_failed")
            await asyncio.sleep(SEAL_EVERY_S)

    def buyer_joined(self, buyer: str) -> None:
        """A buyer socket opened: on its first, its ``cancel_on_disconnect`` campaigns come back
        (an edge tells the seller, whose RTB desk counts it as one more socket of the buyer)."""
        n = len(self.rtb.buyers.get(buyer, ()))
        if n == 1:
            self.core.book.set_away(buyer, False)
        if self.link is not None and self.node is not None and not self.node.selling:
            self.link.presence(buyer, n)

    def buyer_left(self, buyer: str) -> None:
        """A buyer socket closed: with its last, its ``cancel_on_disconnect`` campaigns are held out."""
        if buyer not in self.rtb.buyers:
            self.core.book.set_away(buyer, True)
        if self.link is not None and self.node is not None and not self.node.selling:
            self.link.presence(buyer, len(self.rtb.buyers.get(buyer, ())))

    def answer(self, buyer: str, msg: RtbBid | NoBid) -> Refused | None:
        """A buyer's answer to a bid request: to this node's round, or (an edge) to the seller's."""
        if self.link is not None and self.node is not None and not self.node.selling:
            self.link.answer(buyer, msg)
            return None
        return self.rtb.answer(BuyerId(buyer), msg)

    async def account_of_key(self, authorization: str | None) -> Account | None:
        """A node of a market: a key unknown here may belong to an account made at the seller
        since this node started; read it from the store (None: no such key)."""
        key = bearer(authorization)
        if self.node is None or not key:
            return None
        rows = await self.journal.store.fetch(
            "SELECT id, kind, name, key_digest, credit_limit_cents FROM accounts WHERE key_digest = ?", digest(key))
        if not rows:
            return None
        a = rows[0]
        return self.accounts.restore(a[0], a[1], a[2], a[3], int(a[4]))

    def node_fields(self) -> dict[str, str]:
        """What ``/readyz`` says of this node's place in its market (nothing for a lone process)."""
        node = self.node
        return {} if node is None else {"node": node.id, "market": node.market, "role": node.role}

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
            "quality_window_calls": len(core.quality.events),  # calls in the quality signals' window (exchange/quality.py)
            "quality_window_evicted": core.quality.evicted,  # ... that left it early, past EXCHANGE_QUALITY_MAX_EVENTS
            "book_rows_saved": self.bookstore.saved,
            "book_save_failures": self.bookstore.failures,
            "privacy_erasures": self.privacy.erasures,
            "privacy_keys_destroyed": self.privacy.keys_destroyed + self.privacy.keys_expired,
            "privacy_keys_made": self.journal.vault.keys_made if self.journal.vault is not None else 0,
            **(self.relay.gauges() if self.relay is not None else {}),
            **(self.link.gauges() if self.link is not None else {}),
            **(self.webhooks.gauges() if self.webhooks is not None else {}),
            **self.pings.gauges(),
        }
