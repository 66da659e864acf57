"""Signed webhooks, the delivery engine: each endpoint gets its tenant's domain events, off the hot path.

It runs in the delivery worker's own process (exchange.deliver, started by ``serve``), not in
the exchange's event loop, and reads only the store, where the writer's commits put the records
(the outbox: an event exists iff its record is durable). A follower polls the audit trail's head
every ``webhook_poll_ms``; when it moved, it reads the new records once, derives their events
once and hands each endpoint in step its own (the operator's: all); an endpoint behind (new,
restarted, or slow past ``webhook_inbox_max``) reads its own events from the store, from its position,
until it is in step. Every second it picks up endpoints created or deleted through the API.

Every endpoint has its own task, position and at most ``webhook_inflight`` deliveries in flight
(1 by default: in order), so a slow or failing endpoint holds up nobody else. A delivery is a
``POST`` of one event (the same bytes on every attempt) with ``DCE-Event-Id`` and
``DCE-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``. A non-2xx
answer, a redirect (never followed), a timeout or a refused address is a failure: the event is
tried again after each delay of ``webhook_retry_s`` (30 s, 2 min, ... 24 h: over two days in
all; the retries are rows in the store), and the endpoint is disabled after
``webhook_disable_after`` failed attempts in a row; the exchange then records the
``webhook.disabled`` notice to its owner (the audit trail has one writer). Every attempt is
logged (``GET /v1/webhooks/{id}/deliveries``). Log rows and positions are written in batches
every ``FLUSH_S``, rows before positions: a worker killed in between delivers again from the
saved position (at least once, with the same event id and body), never skips. Each delivery
resolves the host again and connects to the address it checked (exchange.ssrf).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec

from billing.events import DomainEvent, derive, event_id, parse_position, position, select
from billing.store import Store, StoreUnavailable

from . import ssrf
from .webhook_parts import COLS, OPERATOR, Hook, parse_schedule, sign  # noqa: F401 - sign: the receivers' tests

log = logging.getLogger("exchange.webhooks")
_encode = msgspec.json.Encoder().encode
FLUSH_S = 0.1  # delivery log rows and positions are written this often, in one statement each
SYNC_S = 1.0  # endpoints created or deleted through the API are seen within this
CHUNK = 500  # rows per statement
IDLE_SAVE_S = 10.0  # positions moved with nothing delivered are written this often
FOLLOW_ROWS = 2000  # records the follower reads at once


class Webhooks:
    def __init__(self, store: Store, settings: Any, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.store, self.clock = store, clock_ns
        s = settings
        self.schedule = parse_schedule(s.webhook_retry_s)
        self.allow_loopback, self.disable_after, self.inflight = s.webhook_allow_loopback, s.webhook_disable_after, s.webhook_inflight
        self.timeout_s, self.poll_s = s.webhook_timeout_s, s.webhook_poll_ms / 1000
        self.inbox_max = s.webhook_inbox_max  # events handed to an endpoint not yet delivered; past it, it reads the store again
        self.own = (s.host, s.port)
        self.hooks: dict[str, Hook] = {}
        self.delivered = self.failed = 0
        self.tail = 0  # the last audit seq whose addressees' endpoints were woken
        self._log: list[tuple] = []  # delivery log rows not yet written
        self._positions: dict[str, str] = {}  # endpoint -> position not yet written
        self._idle: set[str] = set()  # endpoints whose position moved with nothing delivered
        self._tasks: list[asyncio.Task] = []
        self._disabled: set[str] = set()  # disabled here (a look at the store begun before may still list them)
        self._flushing = asyncio.Lock()
        self._http: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        # aiohttp, as for HTTP bidders' pings (exchange.httpbid): httpx's engine spent ~15x the CPU per request
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60.0, use_dns_cache=False),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s), trust_env=False, skip_auto_headers=("Accept-Encoding",),
            headers={"User-Agent": "dce-exchange-webhooks/1", "Content-Type": "application/json"})
        self.tail = await self._head()  # every endpoint catches up from its own position when it starts
        await self._sync()
        self._tasks = [asyncio.create_task(f(), name=f"webhooks-{f.__name__}") for f in (self._follow, self._flusher)]

    async def stop(self) -> None:
        tasks = self._tasks + [t for t in (h.task for h in self.hooks.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._save_idle()
        try:
            await self._flush()
        except StoreUnavailable:
            pass  # delivered again from the saved positions at the next start
        if self._http is not None:
            await self._http.close()

    def _run(self, hook: Hook) -> None:
        self.hooks[hook.id] = hook
        hook.sem = asyncio.Semaphore(self.inflight)
        hook.wake.set()  # catch up from its position
        hook.task = asyncio.create_task(self._serve(hook), name=f"webhook-{hook.id}")

    async def _sync(self) -> None:
        """Start the endpoints created since the last look, stop the ones deleted."""
        rows = await self.store.fetch(f"SELECT {COLS} FROM webhooks WHERE disabled_ns IS NULL")
        live = {r[0] for r in rows}
        new = [Hook(r) for r in rows if r[0] not in self.hooks and r[0] not in self._disabled]
        if new and not self.hooks:  # the follower idled without endpoints: it follows from the head on (each reads its own past)
            self.tail = max(self.tail, await self._head())
        if new:
            due = dict(await self.store.fetch("SELECT webhook_id, min(due_ns) FROM webhook_retries GROUP BY webhook_id"))
            for hook in new:
                hook.next_due = int(due.get(hook.id) or 0)
                self._run(hook)
        for wid in [w for w in self.hooks if w not in live and w not in self._disabled]:
            hook = self.hooks.pop(wid)
            if hook.task is not None:
                hook.task.cancel()
            self._positions.pop(wid, None)
            await self.store.fetch("DELETE FROM webhook_retries WHERE webhook_id = ? RETURNING webhook_id", wid)

    async def _head(self) -> int:
        rows = await self.store.fetch("SELECT coalesce(max(seq), 0) FROM audit")
        return int(rows[0][0])

    # ------------------------------------------------------------------ the follower and the flusher
    async def _follow(self) -> None:
        """Read the records past ``tail`` once, derive their events once, and hand each endpoint in
        step its own (the others, behind, are woken to read the store); look for new endpoints."""
        synced = time.monotonic()
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                if time.monotonic() - synced >= SYNC_S:
                    synced = time.monotonic()
                    await self._sync()
                if not self.hooks:  # no endpoint: nothing to read (the first one made moves the tail to the head: _sync)
                    continue
                head = await self._head()
                if head > self.tail:
                    rows = await self.store.event_rows(None, self.tail + 1, FOLLOW_ROWS)
                    # (records committed since ``head`` was read come back too: the tail goes past them,
                    # or the next look would hand them over again, delivered twice)
                    self._hand_over(rows, rows[-1].seq if len(rows) == FOLLOW_ROWS else max(head, rows[-1].seq if rows else head))
            except StoreUnavailable:
                pass
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the follower must go on
                log.exception("webhook_follower_failed")

    def _hand_over(self, rows: list, upto: int) -> None:
        every: list[DomainEvent] = []
        mine: dict[str | None, list[DomainEvent]] = {}
        for ev in (ev for row in rows for ev in derive(row)):
            every.append(ev)
            mine.setdefault(ev.account, []).append(ev)
        prev, self.tail = self.tail, upto
        for h in self.hooks.values():
            evs = every if h.account == OPERATOR else mine.get(h.account, [])
            if h.covered != prev:  # behind: it reads the store
                if evs:
                    h.wake.set()
                continue
            if h.events is not None:
                evs = [e for e in evs if e.type in h.events]
            if len(h.inbox) + len(evs) > self.inbox_max:  # a slow endpoint: it reads the store again when it can
                h.inbox, h.covered = [], -1
                h.wake.set()
                continue
            h.covered = upto
            if evs or h.busy or h.inbox:
                h.inbox.extend(evs)
                h.wake.set()
            else:  # nothing for it: its position moves on (written now and then)
                h.position = (upto, 999)
                self._idle.add(h.id)

    async def _flusher(self) -> None:
        idle = time.monotonic()
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                if time.monotonic() - idle >= IDLE_SAVE_S:
                    idle = time.monotonic()
                    self._save_idle()
                await self._flush()
            except StoreUnavailable:
                pass  # kept, written next time
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.exception("webhook_flush_failed")

    def _save_idle(self) -> None:
        """The positions moved past records with nothing for their endpoint, written now and then
        (one behind on them reads those records again after a restart, and delivers nothing)."""
        idle, self._idle = self._idle, set()
        for wid in idle:
            if (h := self.hooks.get(wid)) is not None:
                self._positions[wid] = event_id(*h.position)

    async def _flush(self) -> None:
        """The delivery log rows, then the positions (a position is never ahead of its log rows)."""
        async with self._flushing:
            await self._write()

    async def _write(self) -> None:
        rows, self._log = self._log, []
        try:
            while rows:
                part = rows[:CHUNK]
                await self.store.fetch("INSERT INTO webhook_deliveries VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(part)),
                                       *(v for r in part for v in r))
                rows = rows[CHUNK:]
        except BaseException:
            self._log[:0] = rows
            raise
        moved, self._positions = list(self._positions.items()), {}
        try:
            while moved:
                part = moved[:CHUNK]
                await self.store.fetch("UPDATE webhooks SET position = v.column2 FROM (VALUES " + ", ".join(["(?, ?)"] * len(part))
                                       + ") AS v WHERE webhooks.id = v.column1", *(v for r in part for v in r))
                moved = moved[CHUNK:]
        except BaseException:
            for wid, pos in moved:
                self._positions.setdefault(wid, pos)
            raise

    # ------------------------------------------------------------------ the endpoints' tasks
    async def _serve(self, hook: Hook) -> None:
        while hook.disabled_ns is None:
            try:
                if hook.next_due and self.clock() >= hook.next_due:
                    await self._retry_due(hook)
                if hook.wake.is_set():
                    hook.wake.clear()
                    await self._catch_up(hook)
            except StoreUnavailable:
                hook.wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one endpoint's bug must not end its task
                log.exception("webhook_task_failed", extra={"webhook": hook.id})
            try:  # woken by the follower, or when its next retry is due
                await asyncio.wait_for(hook.wake.wait(), max(0.0, (hook.next_due - self.clock()) / 1e9) if hook.next_due else None)
            except TimeoutError:
                pass

    async def _catch_up(self, hook: Hook) -> None:
        hook.busy = True
        try:
            while hook.disabled_ns is None:
                if hook.covered >= 0:  # in step with the follower: its events are in the inbox
                    after = event_id(*hook.position)
                    events, upto, hook.inbox = [e for e in hook.inbox if e.id > after], hook.covered, []
                    await asyncio.gather(*(self._attempt(hook, ev, 0) for ev in events))
                    if hook.disabled_ns is not None:
                        return
                    if hook.covered >= 0:
                        self._moved(hook, upto)
                    elif events:  # its inbox overflowed meanwhile: the store is read from just past these, not again
                        self._past(hook, events[-1].id)
                    if not hook.inbox:
                        return
                elif await self._from_store(hook):
                    return
        finally:
            hook.busy = False

    async def _from_store(self, hook: Hook) -> bool:
        """One page of the endpoint's events up to the follower's tail; True once it is in step."""
        viewer = None if hook.account == OPERATOR else hook.account
        t = self.tail
        seq, index = hook.position
        page = await self.store.event_rows(viewer, seq if index < 999 else seq + 1, 200)
        rows = [r for r in page if r.seq <= t]  # past the tail: the follower hands them over
        if rows:
            await asyncio.gather(*(self._attempt(hook, ev, 0) for ev in select(rows, viewer, hook.position, hook.events, 100_000)))
            if hook.disabled_ns is not None:
                return True
            self._moved(hook, rows[-1].seq)
        if len(rows) == 200:
            return False
        if hook.position[0] > t:  # created past the follower's tail: in step once the tail gets there
            return True
        self._moved(hook, t)  # every record up to the tail read
        if self.tail == t:
            hook.covered = t
            return True
        return False

    def _moved(self, hook: Hook, seq: int) -> None:
        if (seq, 999) > hook.position:
            hook.position = (seq, 999)
            self._positions[hook.id] = position(seq)

    def _past(self, hook: Hook, last_id: str) -> None:
        pos = parse_position(last_id)
        if pos > hook.position:
            hook.position = pos
            self._positions[hook.id] = last_id

    async def _retry_due(self, hook: Hook) -> None:
        now = self.clock()
        due = await self.store.fetch("SELECT event_id, attempt FROM webhook_retries WHERE webhook_id = ? AND due_ns <= ? "
                                     "ORDER BY due_ns LIMIT 100", hook.id, now)
        for eid, attempt in due:
            seq, index = parse_position(eid)
            rows = await self.store.event_rows(None, seq, 1)
            events = derive(rows[0]) if rows and rows[0].seq == seq else []
            if index < len(events):
                await self._attempt(hook, events[index], int(attempt))
        left = await self.store.fetch("SELECT min(due_ns) FROM webhook_retries WHERE webhook_id = ?", hook.id)
        hook.next_due = int(left[0][0]) if left and left[0][0] is not None else 0

    async def _attempt(self, hook: Hook, ev: DomainEvent, attempt: int) -> None:
        assert hook.sem is not None
        async with hook.sem:
            if hook.disabled_ns is not None:
                return
            body = _encode(ev)
            t0 = time.monotonic()
            status, error = await self._post(hook, ev.id, body)
            ms = int((time.monotonic() - t0) * 1000)
        ok = status is not None and 200 <= status < 300
        now = self.clock()
        next_ns = None
        failures_before = hook.failures
        if ok:
            self.delivered += 1
            hook.failures = 0
            if attempt:
                await self.store.fetch("DELETE FROM webhook_retries WHERE webhook_id = ? AND event_id = ? RETURNING attempt", hook.id, ev.id)
        else:
            self.failed += 1
            hook.failures += 1
            if attempt < len(self.schedule):
                next_ns = now + int(self.schedule[attempt] * 1e9)
                await self.store.fetch(
                    "INSERT INTO webhook_retries VALUES (?, ?, ?, ?) ON CONFLICT (webhook_id, event_id) DO UPDATE "
                    "SET attempt = excluded.attempt, due_ns = excluded.due_ns RETURNING attempt", hook.id, ev.id, attempt + 1, next_ns)
                hook.next_due = min(hook.next_due, next_ns) if hook.next_due else next_ns
            else:
                await self.store.fetch("DELETE FROM webhook_retries WHERE webhook_id = ? AND event_id = ? RETURNING attempt", hook.id, ev.id)
        self._log.append((hook.id, ev.id, attempt, now, ok, status, error, ms, next_ns))
        if hook.failures != failures_before:  # a delivery after a delivery writes its log line only
            await self.store.fetch("UPDATE webhooks SET failures = ? WHERE id = ? RETURNING id", hook.failures, hook.id)
        if hook.failures >= self.disable_after and hook.disabled_ns is None:
            await self._disable(hook, f"{hook.failures} failed deliveries in a row (last: {error or status})")

    async def _post(self, hook: Hook, event_id: str, body: bytes) -> tuple[int | None, str | None]:
        assert self._http is not None
        try:
            target = ssrf.parse(hook.url)
            ip = await ssrf.resolve(target, self.allow_loopback, self.own)
        except ssrf.UrlRefused as exc:
            return None, str(exc)
        t = int(self.clock() // 1_000_000_000)
        default_port = 443 if target.scheme == "https" else 80
        headers = {"Host": target.host if target.port == default_port else f"{target.host}:{target.port}",
                   "DCE-Event-Id": event_id, "DCE-Signature": sign(hook.secret, t, body)}
        try:
            async with self._http.post(ssrf.pin(target, ip), data=body, headers=headers, allow_redirects=False,
                                       server_hostname=target.host if target.scheme == "https" else None) as r:
                await r.read()
                status = r.status
        except TimeoutError:
            return None, "timeout"
        except (aiohttp.ClientError, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}"[:300]
        return status, None if 200 <= status < 300 else f"HTTP {status}"

    async def _disable(self, hook: Hook, reason: str) -> None:
        """Disabled in the store; the exchange records the notice (exchange.webhook_registry)."""
        now = self.clock()
        hook.disabled_ns, hook.disabled_reason = now, reason
        self._disabled.add(hook.id)
        await self._flush()  # its log rows first
        await self.store.fetch("UPDATE webhooks SET disabled_ns = ?, disabled_reason = ? WHERE id = ? RETURNING id", now, reason, hook.id)
        self.hooks.pop(hook.id, None)
        log.warning("webhook_disabled", extra={"webhook": hook.id, "account": hook.account, "reason": reason})

    def gauges(self) -> dict[str, int]:
        return {"webhooks_active": len(self.hooks), "webhook_deliveries_ok": self.delivered, "webhook_deliveries_failed": self.failed}
