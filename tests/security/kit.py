"""Helpers of the security suite: real exchange processes on real ports, real HTTP and WebSocket clients.

Each module starts its own server (``start_server`` of the e2e suite) with the settings it
needs, so a small rate limit in one module cannot starve another. Helpers here keep the
tests short: ``Tenants`` (two buyers, two publishers, their keys), ``LogTail`` (the server's
stderr, drained by a thread so a chatty server never blocks on a full pipe) and
``outbound_numbers`` (callees inside their calling window right now).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import NamedTuple
from zoneinfo import ZoneInfo

from tests.e2e.conftest import Server, start_server

# One number per zone band: whatever the hour, one band is inside every calling window
# (the same bands as tests/compliance). Outbound calls are the ones the internal DNC and
# consents govern, so the isolation proofs for those endpoints route outbound calls.
BANDS = [("+1808586", "Pacific/Honolulu"), ("+1415555", "America/Los_Angeles"), ("+1312555", "America/Chicago"),
         ("+1212555", "America/New_York"), ("+1787555", "America/Puerto_Rico"), ("+1671555", "Pacific/Guam")]


def outbound_numbers(n: int) -> list[str]:
    """``n`` distinct callees whose local time is now inside calling hours."""
    now = datetime.now(timezone.utc)
    for prefix, zone in BANDS:
        if 9 <= now.astimezone(ZoneInfo(zone)).hour < 19:
            return [f"{prefix}{1230 + i:04d}" for i in range(n)]
    raise AssertionError("no band is inside its calling window")


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


def start(extra_env: dict[str, str] | None = None) -> tuple[Server, LogTail]:
    server = start_server({"EXCHANGE_MAX_BODY_BYTES": "4096", "EXCHANGE_MAX_DNC_UPLOAD_BYTES": "8192", **(extra_env or {})})
    return server, LogTail(server)
