"""Domain events across a restart and a SIGKILL, with the relay to a real NATS JetStream:
the bus ends up with exactly the events of the durable records (none lost, none invented,
none twice), in order, and ``GET /v1/events`` replays the same stream from any position."""

from __future__ import annotations

import asyncio
import signal
import time

from tests.e2e.conftest import market, route_calls, start_server, stop_server
from tests.faults.kit import Publisher
from tests.integration.natskit import consume, delete_stream, new_bus, require_nats

VERT = "faults_events"


def _replay(server, headers: dict, after: str = "0", limit: int = 500) -> list[dict]:
    """Every event the key may see after ``after``, page by page."""
    out: list[dict] = []
    while True:
        r = server.http.get("/v1/events", params={"after": after, "limit": limit}, headers=headers)
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["events"]
        if page["next_cursor"] is None:
            return out
        after = page["next_cursor"]


def _relayed(server, last_id: str, timeout_s: float = 30) -> None:
    end, pos = time.monotonic() + timeout_s, -1
    while time.monotonic() < end:
        lines = server.http.get("/metrics").text.splitlines()
        pos = next(int(float(x.split()[-1])) for x in lines if x.startswith("exchange_events_relay_position "))
        if pos >= int(last_id[4:20]):
            return
        time.sleep(0.1)
    raise AssertionError(f"the relay did not reach {last_id}: it is at record {pos}")


def test_sigkill_and_restart_lose_no_event_and_invent_none(database_url, faults):
    require_nats()
    bus = new_bus()
    env = {"EXCHANGE_DATABASE_URL": database_url, "EXCHANGE_NATS_URL": bus.url, "EXCHANGE_NATS_STREAM": bus.stream,
           "EXCHANGE_NATS_SUBJECT": bus.subject, "EXCHANGE_RELAY_BATCH": "20"}
    server = start_server(env)
    port = server.port
    try:
        m = market(server, "evcrash", VERT, 2500, 10_000_000)
        calls = route_calls(server, m, 40, VERT, "CA", "+1415555")
        for c in calls[:10]:
            r = server.http.post(f"/v1/calls/{c}/events", json={"event": "completed", "duration_s": 120},
                                 headers={**m.auth, "Idempotency-Key": f"{c}-0"})
            assert r.status_code == 200 and r.json()["billable"]
        m.buyer.close()
        plans = {c: [{"event": "connected"}, {"event": "completed", "duration_s": 120}] for c in calls[10:]}
        pubs = [Publisher(server.url, m.publisher_key, c, evs) for c, evs in plans.items()]
        for p in pubs[::2]:
            p.start()
        time.sleep(0.05)
        server.proc.send_signal(signal.SIGKILL)  # mid-stream: records committed, published or neither
        server.proc.wait(10)
        faults.injected("SIGKILL with the event relay running")
        for p in pubs[1::2]:
            p.start()
        server.http.close()

        again = start_server(env, port=port)
        try:
            for p in pubs:
                p.join(90)
            assert not [e for p in pubs for e in p.errors]
            everything = _replay(again, again.admin)
            ids = [e["id"] for e in everything]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
            # every acknowledged completion is there, once per addressee
            done = [e for e in everything if e["type"] == "call.completed"]
            assert {e["call_id"] for e in done} == set(calls)
            assert len(done) == 2 * len(calls)
            billed = [e for e in everything if e["type"] == "money.charged"]
            assert sorted(e["call_id"] for e in billed) == sorted(calls) and all(e["data"]["amount_cents"] == 2500 for e in billed)
            # a replay from any position is the rest of the stream
            for k in (0, len(everything) // 3, len(everything) - 2):
                assert _replay(again, again.admin, everything[k]["id"], limit=7) == everything[k + 1:]
            # the bus holds exactly the store's events, in order, once each
            _relayed(again, ids[-1])
            got = asyncio.run(consume(bus, len(everything)))
            assert [g[0] for g in got] == ids, "the bus lost, repeated or invented an event"
            assert [g[2] for g in got] == everything
            # each tenant's replay is its own share of the market's
            buyer = _replay(again, {"Authorization": f"Bearer {m.buyer_key}"})
            assert buyer == [e for e in everything if e["account"] == m.buyer_id]
            pub = _replay(again, m.auth)
            assert pub == [e for e in everything if e["account"] == m.publisher_id]
        finally:
            stop_server(again)
    finally:
        if server.proc.poll() is None:
            stop_server(server)
        asyncio.run(delete_stream(bus))
