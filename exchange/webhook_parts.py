"""Webhooks' small parts: the signature, the retry schedule, and an endpoint (a ``webhooks`` row
with what the delivery engine keeps beside it)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Any

from billing.events import DomainEvent, parse_position

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
                 "created_ns", "wake", "task", "next_due", "sem", "inbox", "covered", "busy")

    def __init__(self, row: tuple) -> None:
        self.id, self.account, self.url, events, self.secret, self.created_ns, pos, self.failures, \
            self.disabled_ns, self.disabled_reason = row
        self.events: frozenset[str] | None = frozenset(events.split(",")) if events else None
        self.position = parse_position(pos)
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.next_due = 0
        self.sem: asyncio.Semaphore | None = None
        self.inbox: list[DomainEvent] = []  # events the follower handed over, not yet delivered
        self.covered = -1  # the follower's tail its inbox reaches (-1: behind, it reads the store itself)
        self.busy = False

    def view(self) -> dict[str, Any]:
        from .instants import rfc3339

        return {"id": self.id, "url": self.url, "events": sorted(self.events or ()), "created_at": rfc3339(self.created_ns),
                "failures": self.failures, "enabled": self.disabled_ns is None,
                "disabled_at": rfc3339(self.disabled_ns) if self.disabled_ns else None, "disabled_reason": self.disabled_reason}


COLS = "id, account, url, events, secret, created_ns, position, failures, disabled_ns, disabled_reason"
