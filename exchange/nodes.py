"""This process as one node of a market (``EXCHANGE_NODE_ID``): leases in Redis, fail closed.

Every key lives under the market's prefix (``EXCHANGE_MARKET``, default ``dce``), so two
markets, or two test runs, share one Redis:

- ``<market>:stores`` -- the market's database (scheme, host, port, name and schema; never a
  password), set by its first node. A node started on another database, or on another schema,
  refuses to start.
- ``<market>:node:<id>`` -- the node's lease: ``<token>|<json: node, host, port, pid>``, set
  with ``NX`` and a TTL of ``EXCHANGE_NODE_LEASE_MS`` (3,000), renewed every third of it by a
  Lua script that extends it only while it still holds this process's token. A second process
  started with an id whose lease is alive refuses to start, naming the holder. A key that
  vanished (Redis restarted, or this process stalled past its TTL) is taken again with ``NX``;
  a key holding another token means the id was taken over: this node stays stale.
- ``<market>:seller`` -- the seller's lease, the same way. The first node to start takes it
  and is the market's **seller**: it alone decides calls and moves money, so concurrency, caps,
  budgets, balance plus credit, dedupe, frequency and idempotency keys stay exact in one
  process's memory (and its writer is the audit chain's only writer). Every other node is an
  **edge**: it takes buyers' sockets (their campaigns and bids join the shared book, their
  notices reach them through Redis) and answers ``/healthz``, ``/readyz``, ``/metrics``; every
  other HTTP request is forwarded to the seller (``exchange.forward``: its own memory of money
  and calls is not the market's); ``refusal`` says ``not_seller`` for what it cannot forward
  (a call over its publisher WebSocket). When the seller's lease has lapsed (the
  seller was killed, or cut off from Redis past its TTL), an edge takes it (``NX``) and its
  process is replaced by one that adopts the lease's token and starts as the seller
  (``exchange.server.serve``): the market is rebuilt from the database as a restarted seller's
  is (``exchange.recovery``), and its buyers reconnect.
- the seller's **epoch** in the database (``market_seller``, ``Store.take_seller``): raised by
  each new seller before it reads anything; each batch of the seller's writer commits in a
  transaction that holds that row at its own epoch, so a previous seller that still runs
  (stalled, or cut off) cannot commit once it has been replaced: a fencing token, since Redis
  leases alone cannot promise that two processes never believe they sell.

Fail closed: the leases are trusted until the instant their last successful renewal was
*sent* plus 90 % of the TTL (Redis started its TTL later than that). Past it, the node is
**stale**: ``/readyz`` 503, calls and writes refused with ``503 node_stale``, until a renewal
succeeds. A seller whose lease was taken by another process never sells again.

A node also records itself in the database (``market_nodes``, every renewal), so a process
started on that database *without* a node id (its own counters, its own audit chain) refuses
to start while a node of a market has been seen within three leases.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from collections.abc import Callable
from time import monotonic, time_ns
from urllib.parse import parse_qsl, urlsplit

import redis.asyncio as aioredis

from billing.backends import open_store
from billing.store import Store, StoreUnavailable

from .errors import Unavailable
from .settings import Settings, database_url

log = logging.getLogger("exchange.nodes")

RENEW = """
local v = redis.call('GET', KEYS[1])
if not v then return -1 end
if string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
RELEASE = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
ADOPT_ENV = "EXCHANGE_NODE_TOKEN"  # internal: the leases' token handed to the process that replaces a taking-over edge
TRUST = 0.9  # the share of a lease's TTL a node relies on, counted from the request's sending


class NodeRefused(RuntimeError):
    """This node must not start (the message says why and what to do)."""


def store_identity(url: str) -> str:
    """The database a URL names, without credentials: ``scheme://host:port/name?schema=s``."""
    parts = urlsplit(url)
    if parts.scheme.startswith("sqlite"):
        return url.partition("?")[0]
    schema = dict(parse_qsl(parts.query)).get("schema", "public")
    return f"postgresql://{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}?schema={schema}"


class Lease:
    """One key held with a TTL by this process's token (see the module's docstring)."""

    __slots__ = ("client", "key", "prefix", "value", "ttl_ms", "until", "lost", "_renew", "_release")

    def __init__(self, client: aioredis.Redis, key: str, token: str, info: str, ttl_ms: int) -> None:
        self.client, self.key, self.ttl_ms = client, key, ttl_ms
        self.prefix = token + "|"
        self.value = self.prefix + info
        self.until = 0.0  # monotonic instant up to which the lease is trusted
        self.lost = False  # taken by another process: never trusted again
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)

    def fresh(self) -> bool:
        return not self.lost and monotonic() < self.until

    async def take(self) -> bool:
        t0 = monotonic()
        if await self.client.set(self.key, self.value, nx=True, px=self.ttl_ms):
            self.until = t0 + self.ttl_ms / 1000 * TRUST
            return True
        return False

    async def renew(self) -> bool:
        """Extend the lease; take it again if it vanished. False: another process holds it."""
        t0 = monotonic()
        held = int(await self._renew(keys=[self.key], args=[self.prefix, self.ttl_ms]))
        if held == -1:
            log.warning("lease_lapsed", extra={"key": self.key})
            return await self.take()
        if held == 1:
            self.until = t0 + self.ttl_ms / 1000 * TRUST
            return True
        return False

    async def holder(self) -> dict[str, object] | None:
        raw = await self.client.get(self.key)
        if raw is None:
            return None
        try:
            info = json.loads(_text(raw).partition("|")[2])
            return info if isinstance(info, dict) else {}
        except ValueError:
            return {}

    async def release(self) -> None:
        await self._release(keys=[self.key], args=[self.prefix])


def _text(raw: bytes | str | None) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw or ""


def _where(info: dict[str, object] | None) -> str:
    if not info:
        return "unknown address"
    return f"{info.get('host')}:{info.get('port')}, pid {info.get('pid')}"


class Node:
    """This process's place in its market: its lease, whether it sells, and the refusals."""

    def __init__(self, settings: Settings, store: Store, adopt: str | None = None) -> None:
        assert settings.node_id and settings.redis_url
        self.id, self.market, self.store = settings.node_id, settings.market, store
        self.url = database_url(settings)
        self.client = aioredis.from_url(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        # a process that replaced an edge which took the vacant seller's lease (``hand_over``) adopts its leases
        self.adopted = bool(adopt)
        token = adopt or secrets.token_hex(8)
        self.token = token
        self.info: dict[str, object] = {"node": self.id, "host": settings.host, "port": settings.port, "pid": os.getpid()}
        info = json.dumps(self.info)
        ttl = settings.node_lease_ms
        self.lease = Lease(self.client, f"{self.market}:node:{self.id}", token, info, ttl)
        self.seller = Lease(self.client, f"{self.market}:seller", token, info, ttl)
        self.selling = False
        self.seller_info: dict[str, object] | None = None  # the seller's address, for the refusals of an edge
        self.epoch = 0  # the seller's epoch in the database (Store.take_seller), once selling
        self.link_secret = ""  # what an edge presents on its link to the seller (exchange.nodelink): the market's, from Redis
        # an edge that took the vacant seller's lease calls this once: its process is replaced by a seller (exchange.server)
        self.on_vacant: Callable[[], None] | None = None
        # a seller whose lease another process took (Redis restarted, or this one stalled past its
        # TTL) calls this once: its process is replaced by one that joins again (as an edge, or the seller if vacant)
        self.on_lost: Callable[[], None] | None = None
        self.taking_over = False
        self.handing_over = False  # leave() keeps this node's leases for the process that replaces this one
        self._task: asyncio.Task[None] | None = None

    def key(self, *parts: str) -> str:
        return ":".join((self.market, *parts))

    def announce_link(self, port: int) -> None:
        """The port of this node's link listener (exchange.nodelink), in its leases: before ``join``."""
        self.info["link"] = port
        info = json.dumps(self.info)
        for lease in (self.lease, self.seller):
            lease.value = lease.prefix + info

    # ------------------------------------------------------------------ joining and leaving
    async def join(self) -> None:
        """Check the market's database, take this node's lease (else ``NodeRefused``), and the
        seller's if nobody holds it; then keep them renewed."""
        try:
            await self._join()
        except (aioredis.RedisError, OSError) as exc:
            raise NodeRefused(f"node {self.id!r}: cannot reach Redis for the node registry: {exc}") from exc
        self._task = asyncio.create_task(self._keep(), name="node-lease")

    async def _join(self) -> None:
        mine = store_identity(self.url)
        await self.client.set(self.key("stores"), mine, nx=True)
        theirs = _text(await self.client.get(self.key("stores")))
        if theirs != mine:
            raise NodeRefused(
                f"node {self.id!r}: market {self.market!r} uses the database {theirs}, this node was given {mine}: "
                f"start it with the market's EXCHANGE_DATABASE_URL, or another EXCHANGE_MARKET "
                f"(or delete the Redis key {self.key('stores')!r} to move the whole market)")
        if not await self.lease.take() and not (self.adopted and await self.lease.renew()):
            other = await self.lease.holder()
            ttl = await self.client.pttl(self.lease.key)
            raise NodeRefused(
                f"node id {self.id!r} is already alive in market {self.market!r} ({_where(other)}): start this node "
                f"with another EXCHANGE_NODE_ID, or stop that one (a dead node's lease lapses within {max(ttl, 0)} ms)")
        # the secret an edge presents on its call link to the seller: whoever can read the market's Redis is of it
        await self.client.set(self.key("link"), secrets.token_urlsafe(32), nx=True)
        self.link_secret = _text(await self.client.get(self.key("link")))
        self.selling = await self.seller.take() or (self.adopted and await self.seller.renew())
        if self.selling:  # fence the previous seller out of the ledger before anything is read from it
            self.epoch = await self.store.take_seller(self.market, self.id, time_ns())
        self.seller_info = self.info if self.selling else await self.seller.holder()
        await self._seen()
        log.info("node_joined", extra={"node": self.id, "market": self.market, "role": self.role})

    async def _seen(self) -> None:
        try:
            await self.store.node_seen(self.market, self.id, json.dumps(self.info), time_ns())
        except Exception as exc:  # noqa: BLE001 - the registry in the database is advisory; the writer reports outages
            log.warning("node_seen_failed", extra={"error": str(exc)})

    async def _keep(self) -> None:
        every = self.lease.ttl_ms / 3000
        while True:
            await asyncio.sleep(every)
            try:
                if not self.lease.lost and not await self.lease.renew():
                    self.lease.lost = True
                    log.error("node_lease_taken", extra={"node": self.id, "market": self.market})
                if (self.selling or self.taking_over) and not self.seller.lost and not await self.seller.renew():
                    self.seller.lost = True
                    log.error("seller_lease_taken", extra={"node": self.id, "market": self.market})
                    if self.selling and self.on_lost is not None:
                        self.handing_over = True
                        self.on_lost()
                if not self.selling and not self.taking_over:
                    self.seller_info = await self.seller.holder()
                    if self.seller_info is None and self.on_vacant is not None and await self.seller.take():
                        self.taking_over = self.handing_over = True  # this edge holds the seller's lease; its process becomes the seller
                        log.warning("seller_vacant_taking_over", extra={"node": self.id, "market": self.market})
                        self.on_vacant()
            except (aioredis.RedisError, OSError) as exc:  # stale once the trusted window passes
                log.warning("lease_renewal_failed", extra={"node": self.id, "error": str(exc)})
            await self._seen()

    async def leave(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            if self.handing_over:  # handed over to the process that replaces this one: keep its leases
                await self.lease.renew()
                if self.taking_over:
                    await self.seller.renew()
            else:
                if self.selling:
                    await self.seller.release()
                await self.lease.release()
        except (aioredis.RedisError, OSError) as exc:
            log.warning("lease_release_failed", extra={"error": str(exc)})
        await self.client.aclose()

    # ------------------------------------------------------------------ what it may do now
    @property
    def role(self) -> str:
        return "seller" if self.selling else "edge"

    def fresh(self) -> bool:
        return self.lease.fresh()

    def seller_host(self) -> tuple[str, dict[str, object]] | None:
        """The host to reach the seller at and its lease's info (None: no seller known, or this node is it)."""
        info = self.seller_info
        if not info or info.get("node") == self.id:
            return None
        host = str(info.get("host") or "127.0.0.1")
        return ("127.0.0.1" if host in ("0.0.0.0", "::", "") else host), info

    def refusal(self) -> Unavailable | None:
        """Why this node must not decide a call or write now (None: it may)."""
        if not self.lease.fresh():
            return Unavailable("node_stale", f"node {self.id!r} has lost its lease in market {self.market!r} "
                               "(Redis unreachable, or the id taken over): it takes no call; send it to another node",
                               retry_after_s=1)
        if not self.selling:
            return Unavailable("not_seller", f"node {self.id!r} is an edge of market {self.market!r}: send calls and API "
                               f"requests to its seller ({_where(self.seller_info)}); buyers' sockets are served here",
                               retry_after_s=1)
        if not self.seller.fresh():
            return Unavailable("node_stale", f"node {self.id!r} has lost the seller's lease of market {self.market!r}: "
                               "it takes no call", retry_after_s=1)
        return None


async def refuse_beside_nodes(store: Store, lease_ms: int) -> None:
    """A process without a node id on a database that nodes of a market use: ``NodeRefused``."""
    if store.backend != "postgres":
        return
    seen = await store.nodes_seen(time_ns() - 3 * lease_ms * 1_000_000)
    if seen:
        names = ", ".join(f"{m}/{n}" for m, n in seen[:5])
        raise NodeRefused(f"this database is used by the live nodes {names}: a process without EXCHANGE_NODE_ID would keep "
                          "its own counters and fork the audit chain; start it with EXCHANGE_NODE_ID, EXCHANGE_MARKET "
                          "and the market's EXCHANGE_REDIS_URL")


async def preflight(settings: Settings) -> str | None:
    """Before a process starts serving: why it must not (None: it may). The same checks run
    again when it joins (a race between two starts is refused there)."""
    store = open_store(database_url(settings))
    try:
        await store.open()
    except StoreUnavailable:
        return None  # the start reports an unreachable database itself
    try:
        if settings.node_id is None:
            await refuse_beside_nodes(store, settings.node_lease_ms)
            return None
        node = Node(settings, store)
        try:
            mine, theirs = store_identity(node.url), _text(await node.client.get(node.key("stores")))
            if theirs and theirs != mine:
                return (f"node {node.id!r}: market {node.market!r} uses the database {theirs}, this node was given {mine}: "
                        "start it with the market's EXCHANGE_DATABASE_URL, or another EXCHANGE_MARKET")
            other = await node.lease.holder()
            adopt = os.environ.get(ADOPT_ENV)
            if other is not None and not (adopt and _text(await node.client.get(node.lease.key)).startswith(adopt + "|")):
                return (f"node id {node.id!r} is already alive in market {node.market!r} ({_where(other)}): start this node "
                        "with another EXCHANGE_NODE_ID, or stop that one")
        except (aioredis.RedisError, OSError) as exc:
            return f"node {node.id!r}: cannot reach Redis for the node registry: {exc}"
        finally:
            await node.client.aclose()
        return None
    except NodeRefused as exc:
        return str(exc)
    finally:
        await store.close()
