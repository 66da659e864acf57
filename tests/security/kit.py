"""Helpers of the security suite: real exchange processes on real ports, real HTTP and WebSocket clients.

Each module starts its own server (``start_server`` of the e2e suite) with the settings it
needs, so a small rate limit in one module cannot starve another. Helpers here keep the
tests short: ``Tenants`` (two buyers, two publishers, their keys), ``LogTail`` (the server's
stderr, drained by a thread so a chatty server never blocks on a full pipe) and
``start(plan=)`` (a server whose clock lets ``plan``'s callees be called: ``tests.e2e.clockshift``).
"""

from __future__ import annotations

from typing import NamedTuple

from tests.e2e.clockshift import OutboundPlan
from tests.e2e.conftest import Server, start_server

def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Tenant(NamedTuple):
    id: str
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return bearer(self.key)


class Tenants(NamedTuple):
    a: Tenant  # buyer
    b: Tenant  # buyer
    p1: Tenant  # publisher
    p2: Tenant  # publisher


def make_tenants(server: Server, tag: str, deposit: int = 1_000_000) -> Tenants:
    a = Tenant(*server.account("buyer", f"{tag}-a", deposit))
    b = Tenant(*server.account("buyer", f"{tag}-b", deposit))
    p1 = Tenant(*server.account("publisher", f"{tag}-p1"))
    p2 = Tenant(*server.account("publisher", f"{tag}-p2"))
    return Tenants(a, b, p1, p2)


class LogTail:
    """Everything the server process writes to stdout and stderr (its JSON log lines): the
    harness sends both to a file, so a chatty server never blocks on a full pipe."""

    def __init__(self, server: Server) -> None:
        self._server = server

    def text(self, wait_s: float = 0.0) -> str:
        """What was written so far (``wait_s``: let the process finish writing first)."""
        if wait_s:
            try:
                self._server.proc.wait(wait_s)
            except Exception:  # still running: read what is there
                pass
        return self._server.log()


def start(extra_env: dict[str, str] | None = None, plan: OutboundPlan | None = None) -> tuple[Server, LogTail]:
    server = start_server({"EXCHANGE_MAX_BODY_BYTES": "4096", "EXCHANGE_MAX_DNC_UPLOAD_BYTES": "8192", **(extra_env or {})},
                          clock_shift_s=plan.shift_s if plan else 0)
    return server, LogTail(server)
