"""The durable store's contract, shared by PostgreSQL and SQLite.

A store applies its migrations at open, writes one ``Batch`` per transaction (idempotent by
each record's natural key, so writing a batch twice writes each row once) and answers the
read queries behind statements, refunds, the audit API, invoices and reconciliation. The
queries are plain SQL written once here with ``?`` placeholders; each backend runs them.

``open_store(url)``: ``postgresql://...`` (asyncpg; ``?schema=name`` isolates a schema) or
``sqlite:///path`` / ``sqlite://:memory:`` (the standard library's sqlite3 on one thread).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, NamedTuple

from .audit import AuditRow
from .postings import Entry, Leg
from .records import AccountRow, CallOutcome, HoldEvent
from .vault import KeyRow


class StoreUnavailable(Exception):
    """The database cannot be reached now (retry later); nothing was written."""


class StoreRefused(Exception):
    """The database refused the batch for a reason no record of it explains (e.g. a second
    writer forking the audit chain): the writer stops."""


class BatchRefused(StoreRefused):
    """The database refused the batch's data (a value it cannot store, a broken constraint:
    PostgreSQL SQLSTATE classes 22, 23 and 54; SQLite's IntegrityError, an integer it cannot
    hold, text it cannot encode). Some record of the batch is at fault: the writer splits the
    batch to find it, refuses that operation alone and commits the rest."""


class RecordRefused(StoreRefused):
    """The database refused the records of this one operation (named in the message); nothing
    of it was written, every other operation of its batch was."""


@dataclass
class Batch:
    entries: list[Entry] = field(default_factory=list)
    holds: list[HoldEvent] = field(default_factory=list)
    outcomes: list[CallOutcome] = field(default_factory=list)
    accounts: list[AccountRow] = field(default_factory=list)
    audit: list[AuditRow] = field(default_factory=list)
    parties: list[tuple[str, int]] = field(default_factory=list)  # (account, audit seq): who its domain events address
    keys: list[KeyRow] = field(default_factory=list)  # data keys (billing.vault) first used by this batch's records

    def __len__(self) -> int:
        return len(self.entries) + len(self.holds) + len(self.outcomes) + len(self.accounts) + len(self.audit)


class Snapshot(NamedTuple):
    """What a starting exchange loads: accounts, balances and the non-charge entries' keys."""

    accounts: list[AccountRow]
    balances: dict[str, int]
    entries: list[Entry]  # deposits, payouts and refunds (replays of these must stay no-ops)
    open_holds: list[HoldEvent]


class CampaignRow(NamedTuple):
    """A standing campaign as saved (exchange.bookstore): its message as JSON, the live price
    and pause. ``spec`` None: a price/pause change only (the stored spec is kept)."""

    buyer: str
    id: str
    spec: str | None
    bid_cents: int
    paused: bool
    updated_ns: int


class StatementLine(NamedTuple):
    at_ns: int
    kind: str
    reference: str
    amount_cents: int
    memo: str


# A campaign as saved: its message with the price and pause saved beside it, or the later price and
# pause of ``campaign_prices`` (price-only changes, kept apart so they do not rewrite the message).
_NEWER = "p.updated_ns >= c.updated_ns"  # (a price saved at the instant of its message is the later save)
LOAD_CAMPAIGNS = (f"SELECT buyer, id, spec, bc, pa, u FROM (SELECT c.buyer AS buyer, c.id AS id, c.spec AS spec, "
                  f"CASE WHEN {_NEWER} THEN p.bid_cents ELSE c.bid_cents END AS bc, "
                  f"CASE WHEN {_NEWER} THEN p.paused ELSE c.paused END AS pa, "
                  f"CASE WHEN {_NEWER} THEN p.updated_ns ELSE c.updated_ns END AS u "
                  f"FROM campaigns c LEFT JOIN campaign_prices p ON p.buyer = c.buyer AND p.id = c.id) AS r WHERE u >= ?")


def migrations(backend: str) -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration of ``backend``, in order."""
    out = []
    for f in resources.files("billing").joinpath("migrations", backend).iterdir():
        if f.name.endswith(".sql"):
            version = int(f.name.split("_", 1)[0])
            out.append((version, f.name, f.read_text()))
    return sorted(out)


def _legs(rows: list[tuple]) -> dict[int, list[Leg]]:
    by: dict[int, list[Leg]] = {}
    for entry_id, account, amount in rows:
        by.setdefault(entry_id, []).append(Leg(account, amount))
    return by


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class Store(ABC):
    backend = ""
    # (market, epoch) once this process is its market's seller (``take_seller``): every batch the
    # writer commits checks it first, in the batch's transaction (PostgreSQL; one process per SQLite file)
    fence: tuple[str, int] | None = None

    # ------------------------------------------------------------------ backend primitives
    @abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def reconnect(self) -> None:
        """Drop the connection and connect again (raises StoreUnavailable if it cannot)."""

    @abstractmethod
    async def write(self, batch: Batch) -> int:
        """Write the batch in one transaction; returns how many entries were new."""

    @abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[tuple]:
        """Run a read query written with ``?`` placeholders."""

    @abstractmethod
    async def save_campaigns(self, rows: list[CampaignRow]) -> None:
        """Upsert standing campaigns in one transaction. A row with a spec replaces the
        campaign; one without updates its price and pause only (a campaign not stored yet is
        skipped: its spec comes with its own row). A row older than the stored one
        (``updated_ns``) changes nothing, so two nodes saving the same campaign converge."""

    async def load_campaigns(self, buyer: str | None = None, since_ns: int | None = None) -> list[CampaignRow]:
        """The saved standing campaigns (of one buyer, or all; changed since ``since_ns``, or
        ever), oldest change first."""
        lo = since_ns if since_ns is not None else -(1 << 62)
        rows = await (self.fetch(LOAD_CAMPAIGNS + " AND buyer = ? ORDER BY u, id", lo, buyer) if buyer is not None
                      else self.fetch(LOAD_CAMPAIGNS + " ORDER BY u, buyer, id", lo))
        return [CampaignRow(b, i, sp, int(bc), bool(p), int(u)) for b, i, sp, bc, p, u in rows]

    # ------------------------------------------------------------------ shared reads
    async def last_audit(self) -> tuple[int, bytes]:
        rows = await self.fetch("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        return (rows[0][0], bytes(rows[0][1])) if rows else (0, bytes(32))

    async def load(self) -> Snapshot:
        accounts = [AccountRow(*r) for r in await self.fetch(
            "SELECT id, kind, name, key_digest, credit_limit_cents, created_ns FROM accounts ORDER BY created_ns, id")]
        balances = dict(await self.fetch("SELECT account, balance_cents FROM balances"))
        heads = await self.fetch("SELECT id, reference, kind, at_ns, memo FROM entries WHERE kind <> 'charge' ORDER BY id")
        legs = _legs(await self.fetch(
            "SELECT l.entry_id, l.account, l.amount_cents FROM legs l JOIN entries e ON e.id = l.entry_id "
            "WHERE e.kind <> 'charge' ORDER BY l.entry_id"))
        entries = [Entry(ref, kind, tuple(legs.get(eid, ())), at, memo) for eid, ref, kind, at, memo in heads]
        return Snapshot(accounts, balances, entries, await self.open_holds())

    async def open_holds(self) -> list[HoldEvent]:
        rows = await self.fetch(
            "SELECT h.call_id, h.route_index, h.kind, h.account, h.amount_cents, h.at_ns FROM holds h "
            "WHERE h.kind = 'hold' AND NOT EXISTS (SELECT 1 FROM holds x WHERE x.call_id = h.call_id "
            "AND x.route_index = h.route_index AND x.kind <> 'hold') ORDER BY h.at_ns")
        return [HoldEvent(*r) for r in rows]

    async def repeat_callers(self, since_ns: int) -> list[tuple[str, str, int]]:
        """(buyer, consumer number, billed at) of each billable call finished since ``since_ns``,
        oldest first: what the repeat-caller (dedupe) index is rebuilt from at start. The number
        is sealed (billing.vault: the decision body's ``consumer``) unless it was written
        before numbers were (then the ``number`` column holds it)."""
        consumer = "a.body::jsonb->>'consumer'" if self.backend == "postgres" else "json_extract(a.body, '$.consumer')"
        rows = await self.fetch(
            f"SELECT o.buyer, coalesce({consumer}, a.number), o.final_ns FROM call_outcomes o "
            "JOIN audit a ON a.call_id = o.call_id AND a.kind = 'decision' "
            "WHERE o.billable AND o.final_ns >= ? AND a.number IS NOT NULL ORDER BY o.final_ns", since_ns)
        return [(b, n, int(t)) for b, n, t in rows]

    async def delivered_legs(self, since_ns: int) -> list[tuple[str, str, bool, int, int]]:
        """(buyer, campaign, billable, price, final_ns) of each routed call completed since
        ``since_ns``: what a restarted exchange counts its campaigns' caps and budgets from."""
        rows = await self.fetch(
            "SELECT buyer, campaign, billable, price_cents, final_ns FROM call_outcomes "
            "WHERE status = 'completed' AND final_ns >= ? ORDER BY final_ns", since_ns)
        return [(b, c, bool(x), int(p), int(t)) for b, c, x, p, t in rows]

    async def call_entries(self, call_id: str) -> list[Entry]:
        """The charge of a call and every refund of it, in posting order."""
        heads = await self.fetch(
            "SELECT id, reference, kind, at_ns, memo FROM entries WHERE (reference = ? AND kind = 'charge') "
            "OR (kind = 'refund' AND reference LIKE ? ESCAPE '\\') ORDER BY id", call_id, _like_prefix(call_id + ":"))
        heads = [h for h in heads if h[2] == "charge" or h[1].startswith(call_id + ":")]
        if not heads:
            return []
        ids = [h[0] for h in heads]
        marks = ",".join("?" * len(ids))
        legs = _legs(await self.fetch(f"SELECT entry_id, account, amount_cents FROM legs WHERE entry_id IN ({marks}) ORDER BY entry_id", *ids))
        return [Entry(ref, kind, tuple(legs.get(eid, ())), at, memo) for eid, ref, kind, at, memo in heads]

    async def has_outcome(self, call_id: str) -> bool:
        """Whether the call's outcome is on record (it was routed and has finished)."""
        return bool(await self.fetch("SELECT 1 FROM call_outcomes WHERE call_id = ?", call_id))

    async def statement(self, account: str, lo_ns: int | None, hi_ns: int | None) -> tuple[int, list[StatementLine]]:
        """(balance before ``lo_ns``, the account's lines in [lo_ns, hi_ns)) in posting order."""
        lo = lo_ns if lo_ns is not None else -(1 << 62)
        hi = hi_ns if hi_ns is not None else 1 << 62
        opening = await self.fetch(
            "SELECT coalesce(sum(l.amount_cents), 0) FROM legs l JOIN entries e ON e.id = l.entry_id "
            "WHERE l.account = ? AND e.at_ns < ?", account, lo)
        rows = await self.fetch(
            "SELECT e.at_ns, e.kind, e.reference, l.amount_cents, e.memo FROM legs l JOIN entries e ON e.id = l.entry_id "
            "WHERE l.account = ? AND e.at_ns >= ? AND e.at_ns < ? ORDER BY e.id", account, lo, hi)
        return int(opening[0][0]), [StatementLine(*r) for r in rows]

    async def audit_query(self, call_id: str | None, number: str | None, lo_ns: int | None, hi_ns: int | None,
                          limit: int = 1000, after_seq: int = 0) -> list[AuditRow]:
        where: list[str] = ["seq > ?"]
        args: list[Any] = [after_seq]
        if call_id is not None:
            where.append("call_id = ?")
            args.append(call_id)
        if number is not None:
            where.append("number = ?")
            args.append(number)
        if lo_ns is not None:
            where.append("at_ns >= ?")
            args.append(lo_ns)
        if hi_ns is not None:
            where.append("at_ns < ?")
            args.append(hi_ns)
        rows = await self.fetch(
            "SELECT seq, at_ns, kind, call_id, number, body, prev_hash, hash FROM audit WHERE "
            + " AND ".join(where) + " ORDER BY seq LIMIT ?", *args, limit)
        return [AuditRow(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6]), bytes(r[7])) for r in rows]

    # ------------------------------------------------------------------ the nodes of a market (exchange.nodes)
    async def node_seen(self, market: str, node_id: str, info: str, now_ns: int) -> None:
        await self.fetch(
            "INSERT INTO market_nodes (market, node_id, info, seen_ns) VALUES (?, ?, ?, ?) ON CONFLICT (market, node_id) "
            "DO UPDATE SET info = excluded.info, seen_ns = excluded.seen_ns RETURNING seen_ns", market, node_id, info, now_ns)

    async def take_seller(self, market: str, node_id: str, now_ns: int) -> int:
        """Become ``market``'s seller in the database: its epoch goes up by one (waiting for a
        batch the previous seller is committing) and this store's writes are fenced with it, so
        the previous seller cannot commit any more (migration 0007). Returns the new epoch."""
        rows = await self.fetch(
            "INSERT INTO market_seller (market, epoch, node_id, taken_ns) VALUES (?, 1, ?, ?) ON CONFLICT (market) "
            "DO UPDATE SET epoch = market_seller.epoch + 1, node_id = excluded.node_id, taken_ns = excluded.taken_ns "
            "RETURNING epoch", market, node_id, now_ns)
        self.fence = (market, int(rows[0][0]))
        return self.fence[1]

    async def nodes_seen(self, since_ns: int) -> list[tuple[str, str]]:
        """(market, node id) of the nodes seen since ``since_ns``."""
        return [(m, n) for m, n in await self.fetch(
            "SELECT market, node_id FROM market_nodes WHERE seen_ns >= ? ORDER BY market, node_id", since_ns)]

    # ------------------------------------------------------------------ domain events (billing.events)
    async def event_rows(self, viewer: str | None, from_seq: int, limit: int) -> list[AuditRow]:
        """Audit records from ``from_seq`` on (seq order, at most ``limit``) with an event for
        ``viewer`` (every record for the operator, None)."""
        cols = "a.seq, a.at_ns, a.kind, a.call_id, a.number, a.body, a.prev_hash, a.hash"
        if viewer is None:
            rows = await self.fetch(f"SELECT {cols} FROM audit a WHERE a.seq >= ? ORDER BY a.seq LIMIT ?", from_seq, limit)
        else:
            rows = await self.fetch(
                f"SELECT {cols} FROM event_parties p JOIN audit a ON a.seq = p.seq "
                "WHERE p.account = ? AND p.seq >= ? ORDER BY p.seq LIMIT ?", viewer, from_seq, limit)
        return [AuditRow(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6]), bytes(r[7])) for r in rows]

    async def relay_position(self, name: str) -> int | None:
        """The last audit seq whose events relay ``name`` saw acknowledged (None: never ran)."""
        rows = await self.fetch("SELECT seq FROM relay_positions WHERE name = ?", name)
        return int(rows[0][0]) if rows else None

    async def save_relay_position(self, name: str, seq: int, now_ns: int) -> None:
        await self.fetch(
            "INSERT INTO relay_positions (name, seq, updated_ns) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE "
            "SET seq = excluded.seq, updated_ns = excluded.updated_ns RETURNING seq", name, seq, now_ns)
