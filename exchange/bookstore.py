"""The book, durable: standing campaigns saved off the hot path and restored at start.

The book marks what changes (``Book.dirty_specs``: a campaign created or replaced;
``Book.dirty_prices``: repriced, paused or resumed) with one set insert; nothing on the
ingest path awaits or encodes. Every ``EXCHANGE_BOOK_SAVE_MS`` (1,000) this task takes the
marks and saves them (``Store.save_campaigns``): a campaign's message as JSON once per
create/replace, its live price and pause as three columns otherwise, so a bid stream of any
rate costs at most one row per campaign per interval. On a node of a market a round is
``EXCHANGE_BOOK_NOTICE_MS`` (100): each round announces the prices to the seller
(``on_saved``) and saves new messages (the seller reads them back), and the prices are saved
every ``EXCHANGE_BOOK_SAVE_MS``. At shutdown the last marks
are saved. A store that cannot be reached keeps the marks for the next round (nothing is
lost while the process lives).

At start (``restore``) the saved campaigns go back into the book with their saved price and
pause, in the order they last changed; a campaign past its ``expires_at``, of an unknown
account, or that the book refuses now (a lower ``EXCHANGE_MAX_CAMPAIGNS_PER_BUYER``) is
skipped and counted. A campaign with ``cancel_on_disconnect`` comes back held out (its buyer
has no socket yet) until its buyer connects.

What a crash loses: the changes of the last interval (a price, a pause, a campaign sent
within it). The buyer's own ``seq``/``ack`` says a campaign is in the book, not that it is
saved; a buyer re-sending its campaigns on reconnect (as before) is always exact.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import msgspec

from billing.store import CampaignRow, Store, StoreUnavailable
from routing.standing import CampaignError, Standing

from . import gcpolicy
from .core import Core
from .messages import Campaign

CHUNK = 2048  # campaigns per save statement: the rows of one are built on the loop while nothing else runs

log = logging.getLogger("exchange.bookstore")
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Campaign).decode


def rows_of(specs: list[Standing], prices: list[Standing], now_ns: int) -> list[CampaignRow]:
    """The store's rows for what changed: the message (with the live price and pause) of a
    created or replaced campaign, the price and pause alone of the others."""
    with gcpolicy.bulk():  # thousands of rows a round under a bid stream: no young collection walks them
        out = [CampaignRow(s.buyer, s.id, _encode(s.spec).decode(), s.bid_cents, s.paused, now_ns) for s in specs if s.live]
        out += [CampaignRow(s.buyer, s.id, None, s.bid_cents, s.paused, now_ns) for s in prices if s.live]
    return out


def campaign_of(row: CampaignRow) -> Campaign:
    """A saved campaign as the message the book takes (the live price and pause applied)."""
    assert row.spec is not None
    msg = _decode(row.spec)
    return msgspec.structs.replace(msg, bid_cents=row.bid_cents, paused=row.paused, seq=None)


class BookStore:
    __slots__ = ("store", "core", "clock_ns", "every_s", "saved", "failures", "_task", "seen", "high_ns", "on_saved", "track",
                 "save_every", "rounds", "unsaved")

    def __init__(self, store: Store, core: Core, clock_ns: Callable[[], int], every_ms: int, track: bool = False,
                 save_every: int = 1) -> None:
        self.store, self.core, self.clock_ns = store, core, clock_ns
        self.every_s = every_ms / 1000  # a round: campaigns created or replaced are saved, prices announced (``on_saved``)
        # rounds between two saves of price-only changes: a node of a market announces prices every
        # round (the seller applies them from the notice) and saves them less often, so a campaign
        # repriced many times between two saves is written once
        self.save_every = save_every
        self.rounds = 0
        self.unsaved: set[int] = set()  # slots repriced or paused, announced, not saved yet
        self.track = track  # a node of a market: remember the version of each campaign (``seen``)
        # (buyer, campaign) -> [hash of its stored spec, updated_ns of the change this node holds] (``track`` only):
        # the seller applies another node's change only when it is newer (exchange.market)
        self.seen: dict[tuple[str, str], list[int]] = {}
        self.high_ns = 0  # the newest change restored at start
        self.on_saved: Callable[[list[tuple[str, str]], list[tuple[str, str, int, bool]], int], None] | None = None
        self.saved = 0  # rows saved since start
        self.failures = 0  # rounds the store refused or could not be reached
        self._task: asyncio.Task[None] | None = None

    async def restore(self, known: Callable[[str], bool], now_ns: int) -> tuple[int, int]:
        """Put the saved campaigns back into the book; (restored, skipped)."""
        rows = await self.store.load_campaigns()
        restored = skipped = 0
        for row in rows:
            try:
                msg = campaign_of(row)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:  # a row an older build wrote differently
                log.warning("campaign_not_restored", extra={"buyer": row.buyer, "campaign": row.id, "reason": str(exc)})
                skipped += 1
                continue
            expired = msg.expires_at is not None and msg.expires_at.timestamp() * 1e9 <= now_ns
            if expired or not known(row.buyer):
                skipped += 1
                continue
            try:
                self.core.upsert_campaign(row.buyer, msg, now_ns, away=True)
            except CampaignError as exc:
                log.warning("campaign_not_restored", extra={"buyer": row.buyer, "campaign": row.id, "reason": str(exc)})
                skipped += 1
                continue
            restored += 1
            self.high_ns = max(self.high_ns, row.updated_ns)
            if self.track:
                self.seen[(row.buyer, row.id)] = [hash(row.spec), row.updated_ns]
        self.core.book.take_dirty()  # what was just loaded is what is stored
        return restored, skipped

    async def flush(self, final: bool = False) -> int:
        """Save what changed since the last round; returns how many rows (0: nothing changed).
        Raises ``StoreUnavailable`` (the marks of what was not saved are kept for the next round).
        Price-only changes are announced at once and saved every ``save_every`` rounds (and when
        ``final``: at shutdown).

        A round is saved ``CHUNK`` campaigns at a time, each chunk's rows built just before it is
        written: at 100,000 bids/s over 100,000 campaigns a round is ~60,000 rows, and building them
        at once held the event loop for tens of milliseconds every round (RTB answers missed their
        deadline behind it); between chunks the loop runs while the store writes."""
        book = self.core.book
        specs, prices = book.take_dirty()
        self.rounds += 1
        if self.on_saved is not None and prices:
            self.on_saved([], [(s.buyer, s.id, s.bid_cents, s.paused) for s in prices if s.live], self.clock_ns())
        if self.save_every > 1:
            self.unsaved.update(s.slot for s in prices)
            if not final and self.rounds % self.save_every:
                prices = []
            else:
                slots, fresh = book._slots, {s.slot for s in specs}
                prices = [slots[i] for i in self.unsaved if i not in fresh]
                self.unsaved.clear()
        saved = 0
        i = j = 0  # specs and prices saved so far
        try:
            while i < len(specs) or j < len(prices):
                chunk_specs = specs[i:i + CHUNK]
                chunk_prices = prices[j:j + CHUNK - len(chunk_specs)]
                saved += await self._save(chunk_specs, chunk_prices)
                i, j = i + len(chunk_specs), j + len(chunk_prices)
        except BaseException:
            book.dirty_specs.update(s.slot for s in specs[i:])  # saved next round (a newer change is marked already)
            book.dirty_prices.update(s.slot for s in prices[j:])
            raise
        return saved

    async def _save(self, specs: list[Standing], prices: list[Standing]) -> int:
        now = self.clock_ns()
        rows = rows_of(specs, prices, now)
        if rows:
            await self.store.save_campaigns(rows)
        self.saved += len(rows)
        if self.track:
            seen = self.seen
            for r in rows:
                v = seen.get((r.buyer, r.id))
                if r.spec is not None or v is None:
                    seen[(r.buyer, r.id)] = [hash(r.spec), now]
                else:
                    v[1] = now
        if self.on_saved is not None and specs:  # (prices were announced as the round began)
            self.on_saved([(r.buyer, r.id) for r in rows if r.spec is not None], [], now)
        return len(rows)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bookstore")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.flush()
            except StoreUnavailable as exc:
                self.failures += 1
                log.warning("book_save_failed", extra={"error": str(exc)})
            except Exception:  # a bug: logged, the marks kept, the task goes on
                self.failures += 1
                log.exception("book_save_failed")

    async def stop(self) -> None:
        """Stop the task and save the last changes (a store down at shutdown: logged)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await self.flush(final=True)
        except Exception as exc:  # noqa: BLE001 - shutting down: report and go on
            log.warning("book_save_failed", extra={"error": str(exc), "at": "shutdown"})
