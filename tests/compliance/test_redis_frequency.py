"""Two gates (and two exchanges) share the Redis frequency counter: never a 4th call in 24 h.

Runs against the real Redis on loopback (``EXCHANGE_TEST_REDIS_URL``, default
redis://127.0.0.1:6379/0). Each test uses its own key prefix and deletes its keys. Under
``CI=true`` a missing Redis is a failure, not a skip.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from types import SimpleNamespace

import pytest

from compliance.dncarray import EMPTY
from compliance.gate import Gate
from compliance.instants import parse_rfc3339, utc_day
from compliance.numbers import parse_number
from compliance.runtime import ComplianceRuntime
from compliance.stores import NumberList

REDIS_URL = os.environ.get("EXCHANGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
FL = "+13053581234"
AT = parse_rfc3339("2026-04-15T16:00:00Z")  # noon in Miami
HOUR = 3600 * 10**9


def _redis_or_skip() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is required under CI=true: {exc}")
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")


@pytest.fixture
def prefix():
    _redis_or_skip()
    p = f"test:{secrets.token_hex(6)}:"
    yield p
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    for key in r.scan_iter(f"{p}*"):
        r.delete(key)


def make_gate(tmp_path, name: str, prefix: str) -> tuple[Gate, ComplianceRuntime]:
    gate = Gate()
    gate.stores.swap(national=NumberList(EMPTY, utc_day(AT), "national:test"))
    from compliance.consent import Consent

    gate.stores.consents.add(Consent("tok", FL, frozenset({"b"}), AT - 86_400 * 10**9))
    rt = ComplianceRuntime(gate, tmp_path / name, REDIS_URL, prefix)
    return gate, rt


FIELDS = SimpleNamespace(direction="outbound", consent_token="tok", vertical="auto_insurance", origin=None,
                         dial_mode=None, state=None, zip=None)


async def one_call(gate: Gate, rt: ComplianceRuntime, at: int, n: int) -> str:
    _, v = gate.screen(FIELDS, parse_number(FL), at)
    if v.pending is not None:
        v = await rt.settle(v, f"call-{n}")
    return v.reason


async def scenario(tmp_path, prefix: str) -> None:
    (g1, r1), (g2, r2) = make_gate(tmp_path, "a", prefix), make_gate(tmp_path, "b", prefix)
    await r1.start()
    await r2.start()
    try:
        assert g1.shared_frequency and g2.shared_frequency
        calls = [one_call(g1 if n % 2 else g2, r1 if n % 2 else r2, AT + n, n) for n in range(24)]
        got = await asyncio.gather(*calls)
        assert got.count("ok") == 3 and got.count("state_frequency_limit") == 21, got
        # an hour later, from either process: still three in the window
        assert await one_call(g2, r2, AT + HOUR, 100) == "state_frequency_limit"
        # once the first three have aged out (24 h later), three more
        later = [one_call(g1 if n % 2 else g2, r1 if n % 2 else r2, AT + 24 * HOUR + 10**9 + n, 200 + n) for n in range(10)]
        assert (await asyncio.gather(*later)).count("ok") == 3
    finally:
        await r1.stop()
        await r2.stop()


def test_two_gates_share_one_count_under_concurrency(tmp_path, prefix):
    asyncio.run(scenario(tmp_path, prefix))


def test_an_unreachable_counter_fails_closed(tmp_path):
    gate, rt = make_gate(tmp_path, "x", "test:down:")

    async def run() -> str:
        rt.redis_url = "redis://127.0.0.1:1/0"
        await rt.start()
        try:
            return await one_call(gate, rt, AT, 1)
        finally:
            await rt.stop()

    assert asyncio.run(run()) == "internal_error"


def test_two_exchanges_share_the_counter_through_submit_call(tmp_path, prefix, monkeypatch):
    from billing.postings import buyer_account, deposit
    from exchange.clock import ManualClock
    from exchange.messages import CallRequest
    from exchange.service import Exchange
    from exchange.settings import Settings
    from tests.builders import campaign
    from tests.conftest import TEST_MASTER_KEY

    async def run() -> list[str]:
        exchanges = []
        for name in ("one", "two"):
            # one master key (README: Privacy): the counter's keys are the numbers' blind indexes, the same on both
            ex = Exchange(Settings(redis_url=REDIS_URL, redis_prefix=prefix, compliance_dir=str(tmp_path / name), rtb_tmax_ms=0,
                                   database_url=f"sqlite:///{tmp_path / name}.db", master_key=TEST_MASTER_KEY),
                          clock=ManualClock(AT))  # noon in Miami, whatever the time of the run
            await ex.start()
            core = ex.core
            core.ledger.post(deposit(buyer_account("b"), 10_000_000, f"dep-{name}", 0))
            core.book.upsert("b", campaign("c1", bid_cents=1000, accepts_outbound=True))
            now = ex.clock.now_ns()
            core.gate.stores.swap(national=NumberList(EMPTY, utc_day(now), "national:test"))
            from compliance.consent import Consent

            core.gate.stores.consents.add(Consent("tok", FL, frozenset({"b"}), now - 86_400 * 10**9))
            exchanges.append(ex)
        pub = SimpleNamespace(id="p1", kind="publisher")
        try:
            req = CallRequest(caller="+18885550100", callee=FL, direction="outbound", vertical="auto_insurance",
                              consent_token="tok")
            decisions = await asyncio.gather(*[exchanges[n % 2].desk.submit(pub, req) for n in range(12)])  # type: ignore[arg-type]
            return [d.reason for d in decisions]
        finally:
            for ex in exchanges:
                await ex.stop()

    reasons = asyncio.run(run())
    assert reasons.count("ok") == 3 and reasons.count("state_frequency_limit") == 9, reasons
    import redis

    keys = [k.decode() for k in redis.Redis.from_url(REDIS_URL).scan_iter(f"{prefix}*")]
    assert keys and not any(FL[2:] in k for k in keys), keys  # the counter is keyed by blind index, not the number
