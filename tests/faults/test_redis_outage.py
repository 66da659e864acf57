"""Redis down: the rule that needs it (the shared state frequency counter) fails closed with
``internal_error``; every call that does not need Redis is still decided on its merits.

A private redis-server is started on a free port and killed mid-run, so the shared server
other tests use is never touched. The exchange runs in-process on a manual clock set to noon
in Miami, so the Florida calling window is open whatever the time of the run.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from types import SimpleNamespace

import pytest

from billing.postings import buyer_account, deposit
from compliance.consent import Consent
from compliance.dncarray import EMPTY
from compliance.instants import parse_rfc3339, utc_day
from compliance.stores import NumberList
from exchange.clock import ManualClock
from exchange.messages import CallRequest
from exchange.service import Exchange
from exchange.settings import Settings
from tests.builders import campaign
from tests.e2e.conftest import redis_server

NOON_MIAMI = parse_rfc3339("2026-04-15T16:00:00Z")
FL = "+13053581234"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_redis():
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    proc = redis_server(port)
    yield proc, f"redis://127.0.0.1:{port}/0"
    proc.kill()
    proc.wait(5)


def test_redis_down_fails_the_frequency_rule_closed_and_nothing_else(private_redis, tmp_path, faults):
    proc, url = private_redis

    async def run() -> dict[str, str]:
        settings = Settings(redis_url=url, rtb_tmax_ms=0, compliance_dir=str(tmp_path / "compliance"),
                            database_url=f"sqlite:///{tmp_path}/ledger.db")
        ex = Exchange(settings, clock=ManualClock(NOON_MIAMI))
        await ex.start()
        try:
            core = ex.core
            core.ledger.post(deposit(buyer_account("b"), 10_000_000, "dep", NOON_MIAMI))
            core.book.upsert("b", campaign("c1", bid_cents=1000, accepts_outbound=True))
            core.gate.stores.swap(national=NumberList(EMPTY, utc_day(NOON_MIAMI), "national:test"))
            core.gate.stores.consents.add(Consent("tok", FL, frozenset({"b"}), NOON_MIAMI - 86_400 * 10**9))
            pub = SimpleNamespace(id="p1", kind="publisher")
            outbound = CallRequest(caller="+18885550100", callee=FL, direction="outbound", vertical="auto_insurance", consent_token="tok")
            inbound = CallRequest(caller="+13125550100", vertical="auto_insurance")
            out = {"outbound, Redis up": (await ex.desk.submit(pub, outbound)).reason}  # type: ignore[arg-type]
            proc.kill()
            proc.wait(5)
            faults.injected("Redis killed")
            d = await ex.desk.submit(pub, outbound)  # type: ignore[arg-type]
            out["outbound, Redis down"] = d.reason
            out["outbound, Redis down: decision"] = d.decision
            out["outbound, Redis down: rule"] = str(d.rule)
            out["inbound, Redis down"] = (await ex.desk.submit(pub, inbound)).reason  # type: ignore[arg-type]
            out["ledger sum"] = str(core.ledger.total())
            return out
        finally:
            await ex.stop()

    out = asyncio.run(run())
    assert out["outbound, Redis up"] == "ok", out
    assert out["outbound, Redis down"] == "internal_error" and out["outbound, Redis down: decision"] == "rejected", out
    assert out["outbound, Redis down: rule"] == "frequency_counter_unavailable", out  # the clear reason
    assert out["inbound, Redis down"] == "ok", out  # no shared counter needed: still routed
    assert out["ledger sum"] == "0"
