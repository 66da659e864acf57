"""The event relay against a real NATS JetStream and both stores: a real consumer gets every
event once, in order; a relay restarted, or a stream lost, replays from the store with no
event lost and none twice."""

from __future__ import annotations

import asyncio

import pytest

from billing.events import derive
from billing.records import AccountRow
from billing.store import Store
from exchange.relay import Relay
from tests.integration.ledgerkit import NOV_NS, NS, billable_call, opened, unbilled_call
from tests.integration.natskit import Bus, consume, delete_stream, new_bus, require_nats

pytestmark = pytest.mark.integration


@pytest.fixture
def bus():
    require_nats()
    b = new_bus()
    yield b
    asyncio.run(delete_stream(b))


async def _all_events(store: Store) -> list:
    rows = await store.event_rows(None, 1, 1_000_000)
    return [e for r in rows for e in derive(r)]


async def _caught_up(relay: Relay, store: Store, timeout_s: float = 20.0) -> None:
    last = (await store.last_audit())[0]
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while relay.at[0] < last:
        assert loop.time() < end, f"the relay is at {relay.at}, the store at {last}"
        await asyncio.sleep(0.02)


def _write_calls(writer, lo: int, hi: int) -> int:
    seq = 0
    for i in range(lo, hi):
        make = billable_call if i % 3 else unbilled_call
        seq = writer.put(make(f"call_{i:05d}", "b1", "p1", 1000 + i, NOV_NS + i * NS))
    return seq


def _relay(store: Store, bus: Bus, **kw) -> Relay:
    return Relay(store, bus.url, bus.stream, bus.subject, batch=kw.pop("batch", 50), inflight=kw.pop("inflight", 64), **kw)


def _check(got: list, want: list) -> None:
    ids = [g[0] for g in got]
    assert len(ids) == len(set(ids)), "a duplicate on the bus"
    assert ids == [e.id for e in want], "the bus does not hold exactly the store's events, in order"
    for (_, account, body), e in zip(got, want):
        assert body["id"] == e.id and body["type"] == e.type and body["data"] == e.data and account == (e.account or "")


def test_a_real_consumer_gets_every_event_once_in_order(db_url, bus):
    async def main() -> None:
        async with opened(db_url, linger_s=0.0) as (store, writer):
            writer.put([AccountRow("b1", "buyer", "B", "d-b1", 0, NOV_NS), AccountRow("p1", "publisher", "P", "d-p1", 0, NOV_NS)])
            await writer.wait(_write_calls(writer, 0, 30), 10)
            relay = _relay(store, bus)
            relay.start()
            try:
                await writer.wait(_write_calls(writer, 30, 60), 10)  # written while it relays
                await _caught_up(relay, store)
            finally:
                await relay.stop()
            want = await _all_events(store)
            assert len(want) > 250
            _check(await consume(bus, len(want)), want)
            assert await store.relay_position(relay.name) == (await store.last_audit())[0]

    asyncio.run(main())


def test_a_restarted_relay_and_a_lost_stream_replay_from_the_store(db_url, bus):
    async def main() -> None:
        async with opened(db_url, linger_s=0.0) as (store, writer):
            await writer.wait(_write_calls(writer, 0, 20), 10)
            first = _relay(store, bus, batch=7, inflight=5)
            first.start()
            await _caught_up(first, store)
            await first.stop()
            # written while no relay runs; then a new relay (a restart) carries on where the stream ends
            await writer.wait(_write_calls(writer, 20, 40), 10)
            second = _relay(store, bus)
            second.start()
            await _caught_up(second, store)
            await second.stop()
            want = await _all_events(store)
            _check(await consume(bus, len(want)), want)

            # the bus loses everything: a relay started on the new, empty stream replays it all from the store
            await delete_stream(bus)
            await writer.wait(_write_calls(writer, 40, 50), 10)
            third = _relay(store, bus)
            third.start()
            await _caught_up(third, store)
            await third.stop()
            want = await _all_events(store)
            _check(await consume(bus, len(want)), want)

    asyncio.run(main())


def test_a_relay_cut_off_mid_batch_resumes_from_what_the_stream_holds(db_url, bus):
    """The relay's task is cancelled while publishes are in flight (its saved position lags
    behind the stream): the next relay neither repeats nor skips an event."""
    async def main() -> None:
        async with opened(db_url, linger_s=0.0) as (store, writer):
            await writer.wait(_write_calls(writer, 0, 120), 20)
            for _ in range(3):
                relay = _relay(store, bus, batch=400, inflight=16)
                relay.start()
                await asyncio.sleep(0.15)
                await relay.stop()  # wherever it was
            relay = _relay(store, bus)
            relay.start()
            await _caught_up(relay, store)
            await relay.stop()
            want = await _all_events(store)
            _check(await consume(bus, len(want)), want)

    asyncio.run(main())


def test_a_nats_server_that_stops_reading_cannot_hang_the_relays_awaits():
    """A real socket speaking just enough of the NATS protocol to connect, then reading nothing:
    the client's publish blocks (its flusher waits for the socket to drain) and so would a close
    with pending bytes. The relay's bounded awaits give up on time instead of hanging."""
    import nats

    from exchange.relay import bounded, close_client

    async def stalled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'INFO {"server_id":"stalled","version":"2.10.0","proto":1,"max_payload":1048576,"headers":true}\r\n')
        buf = b""
        while b"PING\r\n" not in buf:
            buf += await reader.read(4096)
        writer.write(b"PONG\r\n")
        await asyncio.sleep(3600)  # reads nothing more

    async def main() -> None:
        server = await asyncio.start_server(stalled, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        nc = await bounded(nats.connect(f"nats://127.0.0.1:{port}", connect_timeout=2, allow_reconnect=False,
                                        max_reconnect_attempts=0), 10.0)
        loop = asyncio.get_running_loop()
        stalled_at = None
        for _ in range(100_000):  # until the socket's buffers are full and a publish blocks
            t0 = loop.time()
            try:
                await bounded(nc.publish("x", b"y" * 4096), 0.5)
            except TimeoutError:
                stalled_at = loop.time() - t0
                break
        assert stalled_at is not None and stalled_at < 1.5, "the publish never blocked, or its bound did not hold"
        t0 = loop.time()
        await close_client(nc, timeout_s=1.0)
        assert loop.time() - t0 < 3.5
        server.close()

    asyncio.run(asyncio.wait_for(main(), 60))
