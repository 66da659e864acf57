"""Per-key HTTP rate limits and body size limits, on real servers.

The limited server allows ``RATE`` requests per second per key with bursts of ``BURST``;
failed authentications are counted per client address (the tests connect from several
loopback addresses: 127.0.0.0/8 is all local on Linux).
"""

from __future__ import annotations

import socket
import time
from typing import Iterator

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from exchange.errors import RateLimited
from exchange.access import HttpLimits
from exchange.http import status_of
from tests.e2e.conftest import Server, stop_server
from tests.security.kit import Tenants, bearer, make_tenants, start

pytestmark = pytest.mark.e2e

RATE, BURST = 1, 6


@pytest.fixture(scope="module")
def limited() -> Iterator[tuple[Server, Tenants]]:
    server, _ = start({"EXCHANGE_RATE_LIMIT_HTTP_PER_S": str(RATE), "EXCHANGE_RATE_LIMIT_HTTP_BURST": str(BURST)})
    try:
        yield server, make_tenants(server, "rl", deposit=0)  # 4 of the operator's 6 tokens
    finally:
        stop_server(server)


def client_from(server: Server, address: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=10, transport=httpx.HTTPTransport(local_address=address))


def retry_after(r: httpx.Response) -> int:
    assert r.status_code == 429, r.text
    assert r.json() == {"error": {"code": "rate_limited", "message": r.json()["error"]["message"]}}
    value = int(r.headers["retry-after"])  # whole seconds
    assert value >= 1
    return value


def burst(client: httpx.Client, n: int, url: str, headers: dict) -> list[httpx.Response]:
    return [client.get(url, headers=headers) for _ in range(n)]


def test_a_burst_over_the_limit_gets_429_and_other_keys_are_unaffected(limited):
    server, t = limited
    own = f"/v1/accounts/{t.a.id}/balance"
    got = burst(server.http, BURST + 3, own, t.a.auth)
    codes = [r.status_code for r in got]
    assert codes[:BURST] == [200] * BURST and codes[-2:] == [429, 429], codes  # a fast burst: no time to refill
    wait = retry_after(got[-1])
    # every endpoint, whatever its role, answers that key 429 until it has a token again
    assert server.http.post("/v1/suppressions", json={"number": "+12125550100", "scope": "buyer"}, headers=t.a.auth).status_code == 429
    assert server.http.get(f"/v1/accounts/{t.b.id}/balance", headers=t.a.auth).status_code == 429
    # the limit is per key: the other buyer and the publishers are served as usual
    for other in (t.b, t.p1, t.p2):
        assert server.http.get(f"/v1/accounts/{other.id}/balance", headers=other.auth).status_code == 200
    # Retry-After is honest: after it, the key is served again
    time.sleep(wait + 0.05)
    assert server.http.get(own, headers=t.a.auth).status_code == 200


def test_failed_authentication_is_limited_per_address(limited):
    server, t = limited
    url = f"/v1/accounts/{t.p1.id}/balance"
    with client_from(server, "127.0.0.2") as guesser, client_from(server, "127.0.0.3") as keyless:
        guesses = [guesser.get(url, headers=bearer(f"dce_guess{i:039d}")) for i in range(BURST + 2)]
        codes = [r.status_code for r in guesses]
        assert codes[:BURST] == [401] * BURST and codes[-1] == 429, codes
        retry_after(guesses[-1])
        # a blocked address is refused before its key is looked at: a right guess looks like a wrong one
        assert guesser.get(url, headers=t.p1.auth).status_code == 429
        # missing keys count as failed attempts too
        codes = [keyless.get(url).status_code for _ in range(BURST + 1)]
        assert codes[:BURST] == [401] * BURST and codes[-1] == 429, codes
    # other addresses are unaffected: their wrong keys are 401, their right keys 200
    with client_from(server, "127.0.0.4") as other:
        assert other.get(url, headers=bearer("dce_wrong")).status_code == 401
        assert other.get(url, headers=t.p1.auth).status_code == 200


def test_failed_websocket_handshakes_are_limited_per_address(limited):
    server, t = limited

    def handshake(key: str) -> bool:
        sock = socket.create_connection(("127.0.0.1", server.port), source_address=("127.0.0.5", 0))
        try:
            with connect(f"{server.ws_url}/v1/buyers/ws", sock=sock, additional_headers=bearer(key)):
                return True
        except InvalidStatus:
            return False

    assert not any(handshake(f"dce_guess{i:039d}") for i in range(BURST + 1))
    assert not handshake(t.a.key)  # blocked: a right guess looks like a wrong one


def test_limiter_retry_after_rounds_up_and_idle_buckets_are_pruned():
    limits = HttpLimits(rate_per_s=0.25, burst=2)
    limits.take("key:a", 100.0)
    limits.take("key:a", 100.0)
    with pytest.raises(RateLimited) as refused:
        limits.take("key:a", 100.5)
    assert (status_of(refused.value), refused.value.code, refused.value.retry_after_s) == (429, "rate_limited", 4)
    for i in range(1000):
        limits.take(f"ip:10.0.{i // 256}.{i % 256}", 100.0)
    assert len(limits.buckets) == 1001
    later = 100.0 + 2 / 0.25 + HttpLimits.PRUNE_EVERY_S  # every bucket is full again by then
    limits.take("key:b", later)
    assert len(limits.buckets) == 1


# ---------------------------------------------------------------- body size limits
MAX_BODY, MAX_UPLOAD = 4096, 8192  # what kit.start sets


@pytest.fixture(scope="module")
def sized() -> Iterator[tuple[Server, Tenants]]:
    server, _ = start()
    try:
        yield server, make_tenants(server, "sz")
    finally:
        stop_server(server)


def test_bodies_over_the_limit_get_413_on_every_endpoint_that_reads_one(sized):
    server, t = sized
    admin, http = server.admin, server.http
    call = http.post("/v1/calls", json={"caller": "+13125550142", "vertical": "sec_size"}, headers=t.p1.auth).json()["call_id"]
    json_bodies = [
        ("/v1/accounts", admin),
        (f"/v1/accounts/{t.a.id}/deposits", admin),
        (f"/v1/accounts/{t.p1.id}/payouts", admin),
        ("/v1/calls", t.p1.auth),
        (f"/v1/calls/{call}/events", {**t.p1.auth, "Idempotency-Key": "big"}),
        (f"/v1/calls/{call}/refund", admin),
        ("/v1/suppressions", t.a.auth),
        ("/v1/consents", t.p1.auth),
        ("/v1/consents/some-token/revoke", t.p1.auth),
    ]
    uploads = [("/v1/dnc/national?snapshot_date=2026-01-01", admin), ("/v1/dnc/state/TX?snapshot_date=2026-01-01", admin)]
    for (url, headers), limit in [*((x, MAX_BODY) for x in json_bodies), *((x, MAX_UPLOAD) for x in uploads)]:
        big = b"[" + b" " * (limit - 1) + b"]"  # one byte over
        r = http.post(url, content=big, headers=headers)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large", (url, r.text)
        chunks = iter([b" " * 1024] * (limit // 1024) + [b"[]"])  # chunked: no Content-Length to trust
        r = http.post(url, content=chunks, headers=headers)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large", (url, "chunked", r.text)
        if limit == MAX_BODY:  # at the limit: read and judged on its content
            r = http.post(url, content=b"[" + b" " * (limit - 2) + b"]", headers=headers)
            assert r.status_code != 413, (url, r.text)
    assert http.get("/readyz").status_code == 200
    assert http.get(f"/v1/accounts/{t.a.id}/balance", headers=admin).json()["balance_cents"] == 1_000_000
