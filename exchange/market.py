"""The links between the nodes of one market: Redis pub/sub channels under ``<market>:``.

The seller (``exchange.nodes``) decides every call, so what it must learn from the edges is
the book and where each buyer's sockets are; what the edges must learn from it is what to
send those sockets. Four channels, each a fire-and-forget transport over a durable or
self-repairing source:

- ``<market>:book`` (edge -> seller): each round of an edge's book store (``exchange.bookstore``,
  every ``EXCHANGE_BOOK_NOTICE_MS``, 100 ms): the new prices and pauses inline (in notices of at
  most ``INLINE_PRICES``), announced as the round begins (they are saved every
  ``EXCHANGE_BOOK_SAVE_MS``), and, once saved, the (buyer, campaign) keys whose message changed,
  read back by the seller from PostgreSQL. The seller applies a change only if it is newer than
  the one it holds (``BookStore.seen``). A lost notice is repaired by the seller's catch-up
  read of every campaign saved since its last one (at each (re)subscription and every
  ``CATCH_UP_LEASES`` lease periods).
- ``<market>:presence`` (edge -> seller): ``<node> <buyer> <open sockets>`` when a buyer's
  socket count on an edge changes; the edge also keeps the counts in the hash
  ``<market>:presence:<node>`` (expiring with two leases unless refreshed), which the seller
  reads each lease period: an edge that died takes its buyers' presence with it. The seller
  shows each (buyer, edge) pair to its RTB desk as one more connection of that buyer
  (``RemoteSocket``), so bid requests, ``win``/``loss`` notices and ``cancel_on_disconnect``
  need no other code.
- ``<market>:to:<node>`` (seller -> one edge): ``<buyer> <message JSON>``: a notice or bid
  request for that buyer's oldest socket there.
- ``<market>:answers`` (edge -> seller): ``<node> <buyer> <rtb_bid|no_bid JSON>``; a refusal
  (``late_answer``) travels back like a notice.

Why Redis and not NATS here: the leases already need Redis; one PUBLISH costs a round trip
of ~0.2 ms (SCALE.md, ``XADD`` one at a time p50 0.20 ms) against 0.36 ms for a JetStream
publish awaiting its ack, and none of these messages is a record (the book is in PostgreSQL,
presence is re-read, a lost notice costs a buyer a ``win`` message, not money: the call and
its charge are the seller's). Outgoing messages leave through one queue (bounded:
``MAX_QUEUED``, then dropped and counted) drained in pipelines, so nothing on the call path
awaits Redis.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

import msgspec
import redis.asyncio as aioredis

from billing.store import CampaignRow

from .accounts import Account
from .bookstore import campaign_of
from .ids import BuyerId
from .messages import Error, NoBid, RtbBid, exchange_json, json_encoder
from .edgelink import EdgeLink
from .nodes import Node

if TYPE_CHECKING:
    from .service import Exchange

log = logging.getLogger("exchange.market")
INLINE_PRICES = 2_000
CATCH_UP_LEASES = 10
MAX_QUEUED = 100_000
CATCH_UP_SLACK_NS = 5_000_000_000  # clocks of the nodes may differ: re-read this much before the last catch-up
_answer = msgspec.json.Decoder(RtbBid | NoBid).decode


class BookNotice(msgspec.Struct, frozen=True):
    node: str
    at_ns: int
    specs: list[tuple[str, str]]
    prices: list[tuple[str, str, int, bool]]


class RemoteSocket:
    """A buyer's sockets on an edge, as the seller's RTB desk sees them: ``send`` publishes."""

    __slots__ = ("account", "node", "link")

    def __init__(self, account: Account, node: str, link: MarketLink) -> None:
        self.account, self.node, self.link = account, node, link

    def send(self, msg: object) -> bool:
        return self.link.to_edge(self.node, self.account.id, msg)


class MarketLink:
    def __init__(self, exchange: Exchange, node: Node, redis_url: str) -> None:
        self.ex, self.node = exchange, node
        self.client = aioredis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=1.0)
        self.out: deque[tuple[str, str, bytes]] = deque()  # (operation, channel or key, payload)
        self._wake = asyncio.Event()
        self.remote: dict[tuple[str, str], RemoteSocket] = {}  # (buyer, edge) -> its sockets there
        self.caught_up_ns = 0  # the seller's last catch-up read of the saved book
        self.dropped = self.published = self.received = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._sub: aioredis.client.PubSub | None = None
        self.calls: EdgeLink | None = None  # an edge's call link to the seller (exchange.nodelink), notices both ways too

    def key(self, *parts: str) -> str:
        return self.node.key(*parts)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        sub = self._sub = self.client.pubsub(ignore_subscribe_messages=True)
        if self.node.selling:
            await sub.subscribe(self.key("book"), self.key("presence"), self.key("answers"))
            self.caught_up_ns = self.ex.bookstore.high_ns
            await self._refresh()
        else:
            await self.client.delete(self.key("presence", self.node.id))  # counts of an earlier run of this id
            await sub.subscribe(self.key("to", self.node.id))
        self._tasks = [asyncio.create_task(self._read(sub), name="market-read"),
                       asyncio.create_task(self._write(), name="market-write"),
                       asyncio.create_task(self._keep(), name="market-keep")]
        if not self.node.selling:
            self.calls = EdgeLink(self.ex, self.deliver)
            self._tasks.append(asyncio.create_task(self.calls.keep(), name="node-link-keep"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.calls is not None:
            await self.calls.close()
        if not self.node.selling:
            try:
                await self.client.delete(self.key("presence", self.node.id))
                await self.client.publish(self.key("presence"), f"{self.node.id} * 0".encode())
            except (aioredis.RedisError, OSError):
                pass
        if self._sub is not None:
            await self._sub.aclose()
        await self.client.aclose()

    # ------------------------------------------------------------------ sending (never awaits)
    def _put(self, channel: str, payload: bytes, op: str = "publish") -> bool:
        if len(self.out) >= MAX_QUEUED:
            self.dropped += 1
            return False
        self.out.append((op, channel, payload))
        self._wake.set()
        return True

    def to_edge(self, node: str, buyer: str, msg: object) -> bool:
        raw = json_encoder.encode(msg)
        server = self.ex.link_server  # the edge's call link when it is open, else Redis
        if server is not None and server.to_edge(node, buyer, raw):
            return True
        return self._put(self.key("to", node), buyer.encode() + b" " + raw)

    def presence(self, buyer: str, sockets: int) -> None:
        """An edge: its count of ``buyer``'s open sockets changed (the hash first, then the notice)."""
        self._put(self.key("presence", self.node.id), f"{buyer} {sockets}".encode(), "count")
        self._put(self.key("presence"), f"{self.node.id} {buyer} {sockets}".encode())

    def answer(self, buyer: str, msg: RtbBid | NoBid) -> None:
        """An edge: a buyer's answer to a bid request, for the seller's round (on the call link when open)."""
        raw = json_encoder.encode(msg)
        if self.calls is None or not self.calls.answer(buyer, raw):
            self._put(self.key("answers"), f"{self.node.id} {buyer} ".encode() + raw)

    def book_saved(self, specs: list[tuple[str, str]], prices: list[tuple[str, str, int, bool]], at_ns: int) -> None:
        """An edge: its book store saved these changes."""
        for k in range(0, max(len(prices), 1), INLINE_PRICES):
            if specs or prices:
                self._put(self.key("book"), json_encoder.encode(BookNotice(self.node.id, at_ns, specs, prices[k:k + INLINE_PRICES])))
                specs = []

    async def _write(self) -> None:
        out = self.out
        while True:
            if not out:
                self._wake.clear()
                await self._wake.wait()
                continue
            pipe = self.client.pipeline(transaction=False)
            n = 0
            while out and n < 500:
                op, channel, payload = out.popleft()
                if op == "publish":
                    pipe.publish(channel, payload)
                else:  # "count": a buyer's sockets on this edge, in its presence hash
                    buyer, count = payload.decode().split(" ")
                    if count == "0":
                        pipe.hdel(channel, buyer)
                    else:
                        pipe.hset(channel, buyer, count)
                        pipe.pexpire(channel, 2 * self.node.lease.ttl_ms)
                n += 1
            try:
                await pipe.execute()
                self.published += n
            except (aioredis.RedisError, OSError) as exc:
                self.dropped += n
                log.warning("market_publish_failed", extra={"count": n, "error": str(exc)})
                await asyncio.sleep(0.1)

    # ------------------------------------------------------------------ receiving
    async def _read(self, sub: aioredis.client.PubSub) -> None:
        while True:
            try:
                async for m in sub.listen():
                    self.received += 1
                    try:
                        await self._on(m["channel"].decode(), m["data"])
                    except Exception:  # a bad message must not stop the link
                        log.exception("market_message_failed")
            except (aioredis.RedisError, OSError) as exc:
                log.warning("market_subscription_lost", extra={"error": str(exc)})
                await asyncio.sleep(0.5)
                if self.node.selling:
                    await self._refresh()  # what was missed meanwhile

    async def _on(self, channel: str, data: bytes) -> None:
        if channel == self.key("book"):
            await self._book(msgspec.json.decode(data, type=BookNotice))
        elif channel == self.key("presence"):
            node, buyer, n = data.decode().split(" ")
            if node != self.node.id:
                self._present(buyer, node, int(n))
        elif channel == self.key("answers"):
            origin, who, raw = data.split(b" ", 2)
            self.rtb_answer(origin.decode(), who.decode(), raw)
        else:  # to this edge: a notice or bid request for a buyer's oldest socket here
            to, _, raw = data.partition(b" ")
            self.deliver(to.decode(), raw)

    def rtb_answer(self, node: str, buyer: str, raw: bytes) -> None:
        """The seller: an RTB answer from a buyer on an edge, to its round (a refusal goes back)."""
        refused = self.ex.rtb.answer(BuyerId(buyer), _answer(raw))
        remote = self.remote.get((buyer, node))
        if refused is not None and remote is not None:
            remote.send(Error(code=refused.code, message=str(refused), path=refused.path))

    def deliver(self, buyer: str, raw: bytes) -> None:
        """An edge: a notice or bid request from the seller, to the buyer's oldest socket here."""
        conns = self.ex.rtb.buyers.get(buyer)
        if conns:
            conns[0].send(exchange_json.decode(raw))

    # ------------------------------------------------------------------ the seller's view
    def _present(self, buyer: str, node: str, sockets: int) -> None:
        rtb, key = self.ex.rtb, (buyer, node)
        if buyer == "*" and sockets == 0:  # the edge stopped
            for k in [k for k in self.remote if k[1] == node]:
                self._present(k[0], node, 0)
            return
        held = self.remote.get(key)
        if sockets > 0 and held is None:
            account = self.ex.accounts.by_id.get(buyer)
            if account is None:
                return
            held = self.remote[key] = RemoteSocket(account, node, self)
            rtb.attach(held)
            self.ex.buyer_joined(buyer)
        elif sockets <= 0 and held is not None:
            del self.remote[key]
            rtb.detach(held)
            self.ex.buyer_left(buyer)

    async def _book(self, notice: BookNotice) -> None:
        rows: list[CampaignRow] = []
        for buyer in sorted({b for b, _ in notice.specs}):
            wanted = {c for b, c in notice.specs if b == buyer}
            rows += [r for r in await self.ex.journal.store.load_campaigns(buyer) if r.id in wanted]
        for row in rows:
            self.apply(row)
        for buyer, cid, bid, paused in notice.prices:
            self._price(buyer, cid, bid, paused, notice.at_ns)

    def apply(self, row: CampaignRow) -> None:
        """A campaign saved by another node, into the seller's book, if newer than what it holds."""
        ex = self.ex
        seen = ex.bookstore.seen.get((row.buyer, row.id))
        if seen is not None and row.updated_ns <= seen[1]:
            return  # this change, or a newer one, is held already (the seller's own saves included)
        if row.spec is not None and (seen is None or seen[0] != hash(row.spec) or ex.core.book.get(row.buyer, row.id) is None):
            if row.buyer not in ex.accounts.by_id:
                return
            try:
                ex.core.upsert_campaign(row.buyer, campaign_of(row), ex.clock.now_ns(), away=row.buyer not in ex.rtb.buyers)
            except ValueError as exc:  # CampaignError: refused here as it would have been there
                log.warning("campaign_not_applied", extra={"buyer": row.buyer, "campaign": row.id, "reason": str(exc)})
                return
            ex.bookstore.seen[(row.buyer, row.id)] = seen = [hash(row.spec), 0]
        self._price(row.buyer, row.id, row.bid_cents, row.paused, row.updated_ns)

    def _price(self, buyer: str, cid: str, bid: int, paused: bool, at_ns: int) -> None:
        ex = self.ex
        book = ex.core.book
        s = book.get(buyer, cid)
        seen = ex.bookstore.seen.get((buyer, cid))
        if s is None or seen is None or at_ns < seen[1]:
            return
        seen[1] = at_ns
        if s.bid_cents != bid:
            book.reprice(buyer, cid, bid)
        if s.paused != paused:
            book.set_paused(buyer, cid, paused)
        book.dirty_specs.discard(s.slot)  # saved by the node that took it
        book.dirty_prices.discard(s.slot)

    async def _refresh(self, book: bool = True) -> None:
        """The seller, each lease period: presence as the edges' hashes say; and (``book``)
        every campaign saved since the last catch-up (a notice lost on the way changes
        nothing for long)."""
        try:
            seen: set[tuple[str, str]] = set()
            async for k in self.client.scan_iter(match=self.key("presence", "*"), count=500):
                node = (k.decode() if isinstance(k, bytes) else k).rsplit(":", 1)[1]
                for buyer, n in (await self.client.hgetall(k)).items():
                    b = buyer.decode() if isinstance(buyer, bytes) else buyer
                    if int(n) > 0 and node != self.node.id:
                        seen.add((b, node))
                        self._present(b, node, int(n))
            for key in [k for k in self.remote if k not in seen]:
                self._present(key[0], key[1], 0)
            if not book:
                return
            since, self.caught_up_ns = self.caught_up_ns - CATCH_UP_SLACK_NS, self.ex.clock.now_ns()
            for row in await self.ex.journal.store.load_campaigns(since_ns=since):
                self.apply(row)
        except (aioredis.RedisError, OSError) as exc:
            log.warning("market_refresh_failed", extra={"error": str(exc)})
        except Exception:  # the store down (StoreUnavailable) or a bug: next period
            log.exception("market_refresh_failed")

    async def _keep(self) -> None:
        every = self.node.lease.ttl_ms / 1000
        ticks = 0
        while True:
            await asyncio.sleep(every)
            ticks += 1
            if self.node.selling:
                await self._refresh(book=ticks % CATCH_UP_LEASES == 0)
                continue
            try:  # an edge: its presence counts, refreshed and kept alive as long as it is
                counts = {b: len(c) for b, c in self.ex.rtb.buyers.items() if c}
                key = self.key("presence", self.node.id)
                pipe = self.client.pipeline(transaction=True)
                pipe.delete(key)
                if counts:
                    pipe.hset(key, mapping=counts)  # type: ignore[arg-type]
                    pipe.pexpire(key, 2 * self.node.lease.ttl_ms)
                await pipe.execute()
            except (aioredis.RedisError, OSError) as exc:
                log.warning("market_presence_failed", extra={"error": str(exc)})

    def gauges(self) -> dict[str, int]:
        return {"market_published": self.published, "market_received": self.received, "market_dropped": self.dropped,
                "market_remote_sockets": len(self.remote)}
