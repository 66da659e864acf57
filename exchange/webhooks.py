"""Signed webhooks: each endpoint gets its tenant's domain events, off the hot path.

Every endpoint has its own task, its own position in the event stream (billing.events) and at
most ``webhook_inflight`` deliveries in flight (1 by default: in order), so a slow or failing
endpoint holds up nobody else: not decisions (the tasks only read the store, after commit),
not other endpoints. The writer's commit wakes only the endpoints of the accounts its records
address (``Batch.parties``); a woken endpoint reads its own events from the store.

A delivery is a ``POST`` of one event (the same bytes on every attempt) with ``DCE-Event-Id``
and ``DCE-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``. A non-2xx
answer, a redirect (never followed), a timeout or a refused address is a failure: the event is
tried again after each delay of ``webhook_retry_s`` (30 s, 2 min, ... 24 h: over two days in
all), and the endpoint is disabled after ``webhook_disable_after`` failed attempts in a row,
with a ``webhook.disabled`` event to its owner. Every attempt is logged
(``GET /v1/webhooks/{id}/deliveries``). Each delivery resolves the host again and connects to
the address it checked (exchange.ssrf).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec

from billing.events import DomainEvent, derive, parse_position, position, select
from billing.records import AuditEvent
from billing.store import Batch, Store, StoreUnavailable

from . import ssrf

log = logging.getLogger("exchange.webhooks")
_encode = msgspec.json.Encoder().encode
OPERATOR = "operator"


def sign(secret: str, t: int, body: bytes) -> str:
    """The ``DCE-Signature`` header of ``body`` sent at unix second ``t``."""
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def parse_schedule(raw: str) -> tuple[float, ...]:
    delays = tuple(float(x) for x in raw.split(",") if x.strip())
    if not delays or any(d < 0 for d in delays):
        raise ValueError(f"webhook_retry_s must be a comma list of delays in seconds, got {raw!r}")
    return delays


class Hook:
    __slots__ = ("id", "account", "url", "events", "secret", "position", "failures", "disabled_ns", "disabled_reason",
                 "created_ns", "wake", "task", "next_due", "sem")

    def __init__(self, row: tuple) -> None:
        self.id, self.account, self.url, events, self.secret, self.created_ns, pos, self.failures, \
            self.disabled_ns, self.disabled_reason = row
        self.events: frozenset[str] | None = frozenset(events.split(",")) if events else None
        self.position = parse_position(pos)
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.next_due = 0
        self.sem: asyncio.Semaphore | None = None

    def view(self) -> dict[str, Any]:
        from .instants import rfc3339

        return {"id": self.id, "url": self.url, "events": sorted(self.events or ()), "created_at": rfc3339(self.created_ns),
                "failures": self.failures, "enabled": self.disabled_ns is None,
                "disabled_at": rfc3339(self.disabled_ns) if self.disabled_ns else None, "disabled_reason": self.disabled_reason}


COLS = "id, account, url, events, secret, created_ns, position, failures, disabled_ns, disabled_reason"


class Webhooks:
    def __init__(self, store: Store, record: Callable[[AuditEvent], Any], head: Callable[[], int], settings: Any,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.store, self.record, self.head, self.clock = store, record, head, clock_ns
        s = settings
        self.schedule = parse_schedule(s.webhook_retry_s)
        self.allow_loopback, self.disable_after, self.inflight = s.webhook_allow_loopback, s.webhook_disable_after, s.webhook_inflight
        self.timeout_s, self.max_per_account = s.webhook_timeout_s, s.webhook_max_per_account
        self.own = (s.host, s.port)
        self.hooks: dict[str, Hook] = {}
        self.delivered = self.failed = 0
        self._http: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        # aiohttp, as for HTTP bidders' pings (exchange.httpbid): httpx's engine spent ~15x the CPU
        # per request, taken from the decisions' event loop (bench.integrations: decision p99 on/off)
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60.0, use_dns_cache=False),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s), trust_env=False, skip_auto_headers=("Accept-Encoding",),
            headers={"User-Agent": "dce-exchange-webhooks/1", "Content-Type": "application/json"})
        for row in await self.store.fetch(f"SELECT {COLS} FROM webhooks WHERE disabled_ns IS NULL"):
            self._run(Hook(row))
        for wid, due in await self.store.fetch("SELECT webhook_id, min(due_ns) FROM webhook_retries GROUP BY webhook_id"):
            if wid in self.hooks:
                self.hooks[wid].next_due = int(due)

    async def stop(self) -> None:
        tasks = [t for t in (h.task for h in self.hooks.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    def _run(self, hook: Hook) -> None:
        self.hooks[hook.id] = hook
        hook.sem = asyncio.Semaphore(self.inflight)
        hook.wake.set()  # catch up from its position
        hook.task = asyncio.create_task(self._serve(hook), name=f"webhook-{hook.id}")

    # ------------------------------------------------------------------ the API's operations
    async def create(self, account: str, url: str, events: list[str], secret: str | None) -> tuple[Hook, str]:
        target = ssrf.parse(url)
        await ssrf.resolve(target, self.allow_loopback, self.own)
        mine = sum(1 for h in self.hooks.values() if h.account == account)
        if mine >= self.max_per_account:
            raise ssrf.UrlRefused(f"at most {self.max_per_account} webhooks per account")
        secret = secret or "whsec_" + secrets.token_urlsafe(32)
        wid = "wh_" + secrets.token_hex(8)
        row = (wid, account, url, ",".join(sorted(set(events))), secret, self.clock(), position(self.head()), 0, None, None)
        await self.store.fetch(f"INSERT INTO webhooks ({COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id", *row)
        hook = Hook(row)
        self._run(hook)
        return hook, secret

    async def listed(self, account: str) -> list[Hook]:
        rows = await self.store.fetch(f"SELECT {COLS} FROM webhooks" + ("" if account == OPERATOR else " WHERE account = ?")
                                      + " ORDER BY created_ns, id", *(() if account == OPERATOR else (account,)))
        return [self.hooks.get(r[0]) or Hook(r) for r in rows]

    async def owned(self, account: str, wid: str) -> Hook | None:
        rows = await self.store.fetch(f"SELECT {COLS} FROM webhooks WHERE id = ?", wid)
        if not rows or (account != OPERATOR and rows[0][1] != account):
            return None
        return self.hooks.get(wid) or Hook(rows[0])

    async def delete(self, hook: Hook) -> None:
        live = self.hooks.pop(hook.id, None)
        if live is not None and live.task is not None:
            live.task.cancel()
        for sql in ("DELETE FROM webhook_retries WHERE webhook_id = ?", "DELETE FROM webhooks WHERE id = ?"):
            await self.store.fetch(sql, hook.id)

    async def deliveries(self, hook: Hook, limit: int) -> list[tuple]:
        return await self.store.fetch(
            "SELECT event_id, attempt, at_ns, ok, http_status, error, duration_ms, next_ns FROM webhook_deliveries "
            "WHERE webhook_id = ? ORDER BY at_ns DESC LIMIT ?", hook.id, limit)

    # ------------------------------------------------------------------ the tasks
    def committed(self, batch: Batch) -> None:
        """The writer committed ``batch``: wake the endpoints of the accounts it addresses."""
        if not self.hooks or not batch.audit:
            return
        accounts = {p for p, _ in batch.parties}
        for h in self.hooks.values():
            if h.account == OPERATOR or h.account in accounts:
                h.wake.set()

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
            try:
                await asyncio.wait_for(hook.wake.wait(), 0.25)
            except TimeoutError:
                pass

    async def _catch_up(self, hook: Hook) -> None:
        viewer = None if hook.account == OPERATOR else hook.account
        while hook.disabled_ns is None:
            seq, index = hook.position
            rows = await self.store.event_rows(viewer, seq if index < 999 else seq + 1, 200)
            if not rows:
                return
            events = select(rows, viewer, hook.position, hook.events, 100_000)
            await asyncio.gather(*(self._attempt(hook, ev, 0) for ev in events))
            hook.position = parse_position(position(rows[-1].seq))
            await self.store.fetch("UPDATE webhooks SET position = ? WHERE id = ? RETURNING id", position(rows[-1].seq), hook.id)
            if len(rows) < 200:
                return

    async def _retry_due(self, hook: Hook) -> None:
        now = self.clock()
        due = await self.store.fetch("SELECT event_id, attempt FROM webhook_retries WHERE webhook_id = ? AND due_ns <= ? "
                                     "ORDER BY due_ns LIMIT 100", hook.id, now)
        for event_id, attempt in due:
            seq, index = parse_position(event_id)
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
                await self.store.fetch("DELETE FROM webhook_retries WHERE webhook_id = ? AND event_id = ?", hook.id, ev.id)
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
                await self.store.fetch("DELETE FROM webhook_retries WHERE webhook_id = ? AND event_id = ?", hook.id, ev.id)
        await self.store.fetch("INSERT INTO webhook_deliveries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING attempt",
                               hook.id, ev.id, attempt, now, ok, status, error, ms, next_ns)
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
        now = self.clock()
        hook.disabled_ns, hook.disabled_reason = now, reason
        await self.store.fetch("UPDATE webhooks SET disabled_ns = ?, disabled_reason = ? WHERE id = ? RETURNING id", now, reason, hook.id)
        self.record(AuditEvent(now, "webhook", None, None, {"account": hook.account, "webhook_id": hook.id, "url": hook.url,
                                                             "state": "disabled", "reason": reason}))
        self.hooks.pop(hook.id, None)
        log.warning("webhook_disabled", extra={"webhook": hook.id, "account": hook.account, "reason": reason})

    def gauges(self) -> dict[str, int]:
        return {"webhooks_active": len(self.hooks), "webhook_deliveries_ok": self.delivered, "webhook_deliveries_failed": self.failed}
