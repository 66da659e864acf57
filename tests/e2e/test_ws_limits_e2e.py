"""WebSocket limits end to end, over real sockets against a real server process: per-account
rate limits (an error per refused frame, a 1008 close on sustained abuse), heartbeats and
the idle timeout (1001), a buyer vanishing mid-RTB (a timeout, never a stall), a slow
consumer closed while others are served, and the graceful close (1001) on SIGTERM."""

from __future__ import annotations

import re
import signal
import socket
import struct
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from exchange.messages import Bid, Campaign, Decision, Ping, PublisherCall, RtbBid, Win, exchange_json, json_encoder
from loadtest import wire
from tests.e2e.conftest import start_server, stop_server
from tests.e2e.wsclient import Buyer

WS_BURST, WS_RATE, STRIKES = 200, 100, 5
PUB_BURST = 100


def metric(server, name: str) -> float:
    for line in server.http.get("/metrics", headers=server.admin).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def camp(cid: str, bid: int, seq: int | None = None, vertical: str = "e2e_limits", **kw) -> Campaign:
    return Campaign(id=cid, vertical=vertical, bid_cents=bid, destination="+18005550199", min_duration_s=60, seq=seq, **kw)


def recv_all(b: Buyer, timeout: float = 5.0) -> list:
    """Every message of the next frame."""
    return b.recv(timeout=timeout)


def closed_with(ws, timeout: float = 10.0) -> tuple[int | None, str]:
    """Read a websockets sync connection until it closes; the close code and reason received."""
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            ws.recv(timeout=max(0.01, end - time.monotonic()))
    except ConnectionClosed as exc:
        return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")
    except TimeoutError:
        pass
    raise AssertionError("the connection was not closed")


def raw_drain_until_closed(c: wire.WsClient, timeout: float = 20.0) -> wire.Closed:
    c.sock.settimeout(timeout)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            c.recv()
        except wire.Closed as exc:
            return exc
    raise AssertionError("the connection was not closed")


# ---------------------------------------------------------------- rate limits
@pytest.fixture(scope="module")
def limited():
    s = start_server({"EXCHANGE_RATE_LIMIT_WS_PER_S": str(WS_RATE), "EXCHANGE_RATE_LIMIT_WS_BURST": str(WS_BURST),
                      "EXCHANGE_WS_ABUSE_STRIKES": str(STRIKES),
                      "EXCHANGE_RATE_LIMIT_HTTP_PER_S": str(PUB_BURST), "EXCHANGE_RATE_LIMIT_HTTP_BURST": str(PUB_BURST)})
    yield s
    stop_server(s)


def bids_frame(b: Buyer, campaign: str, n: int, price: int) -> tuple[str, list[int]]:
    seqs = [b.next_seq() for _ in range(n)]
    return json_encoder.encode([Bid(campaign=campaign, bid_cents=price, seq=s) for s in seqs]).decode(), seqs


def test_a_refused_frame_applies_nothing_gets_one_error_and_the_retry_hint_holds(limited):
    server = limited
    _, key = server.account("buyer", "rl-a", 10_000)
    _, other_key = server.account("buyer", "rl-b", 10_000)
    a, b = Buyer(server.ws_url, key), Buyer(server.ws_url, other_key)
    assert type(a.request(lambda s: camp("ca", 1000, s))).__name__ == "Ack"
    assert type(b.request(lambda s: camp("cb", 1000, s))).__name__ == "Ack"
    before = metric(server, "exchange_bids_ingested_total")

    frame, seqs = bids_frame(a, "ca", 180, 1100)  # within the burst: every bid applied and acked
    a.send_raw(frame)
    acks = recv_all(a)
    assert [m.seq for m in acks] == seqs and {type(m).__name__ for m in acks} == {"Ack"}

    frame, seqs = bids_frame(a, "ca", 180, 1200)  # the bucket holds ~20 now: refused as a whole
    a.send_raw(frame)
    refused = recv_all(a)
    assert len(refused) == 1 and refused[0].code == "rate_limited" and refused[0].seq is None, refused
    assert metric(server, "exchange_bids_ingested_total") == before + 180
    assert 'exchange_messages_rejected_total{code="rate_limited"} 1' in server.http.get("/metrics").text

    # another account has its own bucket
    frame_b, seqs_b = bids_frame(b, "cb", 180, 1100)
    b.send_raw(frame_b)
    assert [m.seq for m in recv_all(b)] == seqs_b

    # waiting as long as the error says is enough: the same frame is then taken whole
    retry_ms = int(re.search(r"retry in (\d+) ms", refused[0].message).group(1))
    assert 0 < retry_ms <= 1000 * 180 / WS_RATE
    time.sleep(retry_ms / 1000 + 0.05)
    a.send_raw(frame)
    assert [m.seq for m in recv_all(a)] == seqs
    assert metric(server, "exchange_bids_ingested_total") == before + 3 * 180
    a.close()
    b.close()


def test_sustained_flooding_closes_the_socket_1008_and_spares_other_accounts(limited):
    server = limited
    _, key = server.account("buyer", "flood", 10_000)
    _, calm_key = server.account("buyer", "calm", 10_000)
    flooder, calm = Buyer(server.ws_url, key), Buyer(server.ws_url, calm_key)
    assert type(flooder.request(lambda s: camp("cf", 1000, s))).__name__ == "Ack"
    too_big = json_encoder.encode([Bid(campaign="cf", bid_cents=1000) for _ in range(WS_BURST + 1)]).decode()
    for i in range(STRIKES - 1):
        flooder.send_raw(too_big)
        err = recv_all(flooder)
        assert len(err) == 1 and err[0].code == "rate_limited" and "smaller frames" in err[0].message
    assert type(calm.request(lambda s: Ping(seq=s))).__name__ == "Pong"
    abuse_closes = metric(server, "exchange_ws_abuse_closed_total")
    flooder.send_raw(too_big)  # the STRIKES-th refusal in a row
    code, reason = closed_with(flooder.ws)
    assert code == 1008 and "rate limit" in reason
    assert metric(server, "exchange_ws_abuse_closed_total") == abuse_closes + 1
    assert type(calm.request(lambda s: Ping(seq=s))).__name__ == "Pong"
    calm.close()


def test_publisher_socket_messages_are_rate_limited_per_account(limited):
    server = limited
    _, key = server.account("publisher", "rl-pub")
    with connect(f"{server.ws_url}/v1/publishers/ws", additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        ws.send(json_encoder.encode([Ping(seq=i) for i in range(PUB_BURST + 1)]).decode())
        err = exchange_json.decode(ws.recv(timeout=5))
        assert err.code == "rate_limited"
        ws.send(json_encoder.encode(Ping(seq=7)).decode())
        pong = exchange_json.decode(ws.recv(timeout=5))
        assert type(pong).__name__ == "Pong" and pong.seq == 7


def test_a_publisher_has_one_limit_over_http_and_websocket(limited):
    """The socket spends the same per-account bucket as ``POST /v1/calls``: using both
    transports does not double the rate."""
    server = limited
    _, key = server.account("publisher", "rl-both")
    auth = {"Authorization": f"Bearer {key}"}
    with connect(f"{server.ws_url}/v1/publishers/ws", additional_headers=auth) as ws:
        ws.send(json_encoder.encode([Ping(seq=i) for i in range(PUB_BURST - 1)]).decode())  # all but one token
        pongs = 0
        while pongs < PUB_BURST - 1:  # every ping applied (answers queued together arrive as one frame's array)
            got = exchange_json.decode(ws.recv(timeout=5))
            for m in got if isinstance(got, list) else [got]:
                assert type(m).__name__ == "Pong", got
                pongs += 1
        t0 = time.monotonic()
        statuses = [server.http.get("/v1/calls/call_nope", headers=auth).status_code for _ in range(10)]
        elapsed = time.monotonic() - t0
        # the bucket the socket drained is the HTTP one: one token left, refilled at PUB_BURST/s
        # (separate buckets would answer all ten)
        assert statuses.count(404) <= 2 + elapsed * PUB_BURST, (statuses, elapsed)


# ---------------------------------------------------------------- heartbeats and idle timeout
def read_raw_frames(sock: socket.socket, buf: bytearray, timeout: float) -> list[tuple[int, bytes]]:
    """Complete server frames (opcode, payload) from ``sock`` within ``timeout``; pings are NOT answered."""
    sock.settimeout(timeout)
    out: list[tuple[int, bytes]] = []
    while not out:
        while (frame := wire.next_frame(buf, 0)) is not None:
            b0, payload, end = frame
            out.append((b0 & 0x0F, payload))
            del buf[:end]
        if out:
            break
        data = sock.recv(65536)
        if not data:
            out.append((-1, b""))  # EOF
            break
        buf += data
    return out


@pytest.fixture(scope="module")
def heartbeat_server():
    s = start_server({"EXCHANGE_HEARTBEAT_S": "1", "EXCHANGE_IDLE_TIMEOUT_S": "5"})
    yield s
    stop_server(s)


def test_heartbeat_pings_and_a_silent_socket_is_closed_1001_while_live_ones_stay(heartbeat_server):
    server = heartbeat_server
    _, key = server.account("buyer", "hb", 10_000)
    url = f"{server.ws_url}/v1/buyers/ws"
    results: dict[str, object] = {}

    def silent() -> None:  # reads, never answers a ping, never sends
        sock, rest = wire.connect(url, key)
        t0, buf, pings = time.monotonic(), bytearray(rest), []
        try:
            while True:
                for op, payload in read_raw_frames(sock, buf, 15):
                    if op == wire.OP_PING:
                        pings.append(time.monotonic() - t0)
                    elif op in (wire.OP_CLOSE, -1):
                        results["silent"] = (op, payload, time.monotonic() - t0, pings)
                        return
        finally:
            sock.close()

    def chatty() -> None:  # never answers a ping, but sends a frame every second
        sock, rest = wire.connect(url, key)
        buf = bytearray(rest)
        end = time.monotonic() + 8
        try:
            while time.monotonic() < end:
                sock.sendall(wire.client_frame(json_encoder.encode(Ping())))
                try:
                    for op, _ in read_raw_frames(sock, buf, 1.0):
                        if op in (wire.OP_CLOSE, -1):
                            results["chatty"] = "closed"
                            return
                except TimeoutError:
                    pass
            results["chatty"] = "open"
        finally:
            sock.close()

    threads = [threading.Thread(target=silent), threading.Thread(target=chatty)]
    for t in threads:
        t.start()
    # answers pings (the websockets client does, in the background) but sends nothing itself
    with connect(url, additional_headers={"Authorization": f"Bearer {key}"}, ping_interval=None) as quiet:
        time.sleep(8)
        quiet.send(json_encoder.encode(Ping(seq=1)).decode())
        assert type(exchange_json.decode(quiet.recv(timeout=5))).__name__ == "Pong"
    for t in threads:
        t.join(20)
    op, payload, at_s, pings = results["silent"]
    assert pings and pings[0] < 2.5, f"no heartbeat ping: {pings}"
    assert op == wire.OP_CLOSE, "closed without a close frame"
    code, reason = struct.unpack("!H", payload[:2])[0], payload[2:].decode()
    assert code == 1001 and "idle" in reason
    assert 4.5 <= at_s <= 8.0, at_s
    assert results["chatty"] == "open"
    assert metric(server, "exchange_ws_idle_closed_total") >= 1


# ---------------------------------------------------------------- vanished and slow buyers
LONG_TMAX = {"EXCHANGE_RTB_TMAX_MS": "5000", "EXCHANGE_RTB_TMAX_CAP_MS": "5000"}  # a call's tmax_ms only shortens these (80, 200)


@pytest.fixture(scope="module")
def rtb_server():
    s = start_server(LONG_TMAX)
    yield s
    stop_server(s)


def test_a_buyer_vanishing_mid_rtb_is_a_timeout_not_a_stall(rtb_server):
    server = rtb_server
    _, r_key = server.account("buyer", "vanish", 50_000)
    f_id, f_key = server.account("buyer", "steady", 50_000)
    steady = Buyer(server.ws_url, f_key)
    assert type(steady.request(lambda s: camp("fixed", 1000, s, vertical="e2e_vanish"))).__name__ == "Ack"
    rtb = wire.WsClient(f"{server.ws_url}/v1/buyers/ws", r_key)
    rtb.send(json_encoder.encode(camp("live", 0, 1, vertical="e2e_vanish", rtb=True)))
    assert type(exchange_json.decode(rtb.recv()[0][1])).__name__ == "Ack"
    _, pub_key = server.account("publisher", "vanish-pub")
    auth = {"Authorization": f"Bearer {pub_key}"}
    timeouts, answers = metric(server, "exchange_rtb_timeouts_total"), metric(server, "exchange_rtb_answers_total")
    tmax_ms = 1500
    got: dict[str, object] = {}

    def vanish() -> None:
        msgs = [exchange_json.decode(p) for _, p in rtb.recv()]
        got["request"] = next(m for m in msgs if type(m).__name__ == "BidRequest")
        rtb.sock.close()  # TCP gone, no close frame, the bid_request unanswered
        got["vanished_after_s"] = time.monotonic() - t0

    t0 = time.monotonic()
    t = threading.Thread(target=vanish)
    t.start()
    r = server.http.post("/v1/calls", json={"caller": "+12125550177", "vertical": "e2e_vanish", "tmax_ms": tmax_ms}, headers=auth)
    elapsed = time.monotonic() - t0
    t.join(5)
    assert got["vanished_after_s"] < 1.0, got  # well before tmax: the round was still open
    d = r.json()
    assert r.status_code == 200 and d["decision"] == "routed" and d["route"]["buyer"] == f_id, d
    # the round ends when the socket goes, not at tmax
    assert elapsed < got["vanished_after_s"] + 0.5 < tmax_ms / 1000, (elapsed, got)
    assert d["rtb_wait_us"] < (got["vanished_after_s"] + 0.5) * 1_000_000, d
    assert metric(server, "exchange_rtb_timeouts_total") == timeouts + 1
    assert metric(server, "exchange_rtb_answers_total") == answers
    # the vanished buyer is forgotten: the next call does not wait for it at all
    t0 = time.monotonic()
    d2 = server.http.post("/v1/calls", json={"caller": "+12125550178", "vertical": "e2e_vanish", "tmax_ms": tmax_ms}, headers=auth).json()
    assert time.monotonic() - t0 < 0.5 and d2["decision"] == "routed" and (d2.get("rtb_wait_us") or 0) < 50_000, d2
    assert metric(server, "exchange_rtb_timeouts_total") == timeouts + 1
    steady.close()


@pytest.fixture(scope="module", params=[{"EXCHANGE_SEND_QUEUE": "16"}, {"EXCHANGE_SEND_QUEUE": "1000000", "EXCHANGE_SEND_QUEUE_BYTES": "262144"}],
                ids=["bound-in-messages", "bound-in-bytes"])
def small_queue(request):
    """A send queue bounded in messages, or only in bytes (one frame's 500 answers are one
    message of ~12 KB: no message count bounds the memory)."""
    s = start_server(request.param)
    yield s
    stop_server(s)


def test_a_buyer_that_stops_reading_is_closed_1008_while_a_buyer_and_a_publisher_are_served(small_queue):
    server = small_queue
    _, sleepy_key = server.account("buyer", "sleepy", 10_000)
    h_id, h_key = server.account("buyer", "healthy", 10_000_000)  # every call holds 1,500 until the end: never short of funds
    _, pub_key = server.account("publisher", "busy-pub")
    healthy = Buyer(server.ws_url, h_key)
    assert type(healthy.request(lambda s: camp("h", 1500, s, vertical="e2e_slow"))).__name__ == "Ack"
    sleepy = wire.WsClient(f"{server.ws_url}/v1/buyers/ws", sleepy_key)
    # (its receive buffer keeps the kernel's default: what the server sent before closing, megabytes
    # in the kernel's buffers, must drain fast at the end -- a tiny window would crawl on probes)
    flood = wire.client_frame(json_encoder.encode([Ping(seq=i) for i in range(500)]))  # each answered by ~12 KB
    stop = threading.Event()

    def pester() -> None:
        sleepy.sock.settimeout(0.5)
        while not stop.is_set():
            try:
                sleepy.sock.sendall(flood)
            except OSError:  # our send buffer is full (the server reads no more of us) or the socket is gone
                time.sleep(0.05)

    t = threading.Thread(target=pester)
    t.start()
    auth = {"Authorization": f"Bearer {pub_key}"}
    latencies: list[float] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and metric(server, "exchange_slow_consumers_closed_total") < 1:
            t0 = time.monotonic()
            d = server.http.post("/v1/calls", json={"caller": f"+1212555{len(latencies):04d}", "vertical": "e2e_slow"}, headers=auth).json()
            latencies.append(time.monotonic() - t0)
            assert d["decision"] == "routed" and d["route"]["buyer"] == h_id, d
            win = healthy.wait_for(lambda m, cid=d["call_id"]: isinstance(m, Win) and m.call_id == cid)
            assert win.price_cents == 1500
    finally:
        stop.set()
        t.join(5)
    assert metric(server, "exchange_slow_consumers_closed_total") == 1, "the slow consumer was never closed"
    assert latencies and max(latencies) < 1.0, latencies
    assert type(healthy.request(lambda s: Ping(seq=s))).__name__ == "Pong"
    closed = raw_drain_until_closed(sleepy, timeout=60.0)  # megabytes may sit in the kernel buffers: returns once closed
    assert closed.code == 1008 and "slow consumer" in closed.reason
    healthy.close()


# ---------------------------------------------------------------- graceful shutdown
def test_sigterm_decides_calls_in_flight_flushes_then_closes_every_socket_1001():
    server = start_server(LONG_TMAX)
    try:
        r_id, r_key = server.account("buyer", "drain-rtb", 50_000)
        _, pub_key = server.account("publisher", "drain-pub")
        rtb = Buyer(server.ws_url, r_key)
        assert type(rtb.request(lambda s: camp("live", 0, s, vertical="e2e_drain", rtb=True))).__name__ == "Ack"
        with connect(f"{server.ws_url}/v1/publishers/ws", additional_headers={"Authorization": f"Bearer {pub_key}"}) as pub:
            pub.send(json_encoder.encode(PublisherCall(caller="+12125550190", vertical="e2e_drain", tmax_ms=3000, seq=1)).decode())
            req = rtb.wait_for(lambda m: type(m).__name__ == "BidRequest", timeout=5)
            server.proc.send_signal(signal.SIGTERM)
            end = time.monotonic() + 5
            while server.http.get("/readyz").status_code == 200:  # draining has begun
                assert time.monotonic() < end, "readyz never went to 503"
                time.sleep(0.02)
            late = Buyer(server.ws_url, r_key)  # a new socket while draining: refused with 1013
            assert closed_with(late.ws, 5)[0] == 1013
            rtb.send(RtbBid(request_id=req.request_id, bid_cents=3300))
            d = exchange_json.decode(pub.recv(timeout=5))  # the call in flight is decided and its answer flushed
            assert isinstance(d, Decision) and d.seq == 1 and d.decision == "routed" and d.route.buyer == r_id
            assert closed_with(pub, 10) == (1001, "server shutting down")
            assert rtb.wait_for(lambda m: isinstance(m, Win), timeout=5).price_cents == 3300
            assert closed_with(rtb.ws, 10) == (1001, "server shutting down")
        assert server.proc.wait(15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    finally:
        stop_server(server)


# ---------------------------------------------------------------- campaigns per buyer
def test_a_campaign_past_the_per_buyer_ceiling_gets_campaign_limit_and_nothing_changes():
    server = start_server({"EXCHANGE_MAX_CAMPAIGNS_PER_BUYER": "2"})
    try:
        b_id, b_key = server.account("buyer", "ceiling", 100_000)
        _, o_key = server.account("buyer", "other", 100_000)
        _, pub_key = server.account("publisher", "ceiling-pub")
        buyer, other = Buyer(server.ws_url, b_key), Buyer(server.ws_url, o_key)
        for i in range(2):
            assert type(buyer.request(lambda s, i=i: camp(f"c{i}", 1000 + i, s, vertical="e2e_ceiling"))).__name__ == "Ack"
        err = buyer.request(lambda s: camp("c2", 5000, s, vertical="e2e_ceiling"))
        assert type(err).__name__ == "Error" and err.code == "campaign_limit" and "2" in err.message and err.path == "$.id", err
        assert type(buyer.request(lambda s: camp("c1", 1500, s, vertical="e2e_ceiling"))).__name__ == "Ack"  # a replacement is fine
        assert type(other.request(lambda s: camp("c9", 900, s, vertical="e2e_ceiling"))).__name__ == "Ack"  # per buyer
        assert metric(server, "exchange_book_campaigns") == 3
        d = server.http.post("/v1/calls", json={"caller": "+12125550100", "vertical": "e2e_ceiling"},
                             headers={"Authorization": f"Bearer {pub_key}"}).json()
        assert d["route"]["buyer"] == b_id and d["route"]["campaign"] == "c1", d  # the refused 5,000 bid never entered the book
        buyer.close()
        other.close()
    finally:
        stop_server(server)


def test_permessage_deflate_is_declined_unless_enabled():
    """Compressing every notice and decision cost more than half the server's CPU per call over
    the publisher socket (bench.decisions: 2,434 -> 5,316 decisions per CPU-second without it)."""
    for env, want in (({}, []), ({"EXCHANGE_WS_COMPRESSION": "true"}, ["permessage-deflate"])):
        server = start_server(env)
        try:
            _, key = server.account("buyer", "deflate", 1000)
            with connect(f"{server.ws_url}/v1/buyers/ws", additional_headers={"Authorization": f"Bearer {key}"}) as ws:
                assert [e.name for e in ws.protocol.extensions] == want  # the client offered it both times
                ws.send(json_encoder.encode(Ping(seq=1)).decode())
                assert '"pong"' in ws.recv(timeout=5)
        finally:
            stop_server(server)



def test_an_uncompressed_oversized_frame_still_gets_its_1009():
    """Without compression a 3.2 MB frame is still arriving when the server refuses it at its
    header; closing at once made the kernel reset the connection and the client saw no close
    code. The server now ends its side after the close frame and drops the rest (``LINGER_S``)."""
    server = start_server({"EXCHANGE_WS_COMPRESSION": "false"})
    try:
        _, key = server.account("buyer", "big-raw", 1000)
        for _ in range(3):
            b, other = Buyer(server.ws_url, key), Buyer(server.ws_url, key)
            b.send_raw("[" + ",".join(['{"type":"ping"}'] * 200_000) + "]")
            with pytest.raises(ConnectionClosed) as closed:
                for _ in range(50):
                    b.recv(timeout=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
            assert type(other.request(lambda s: Ping(seq=s))).__name__ == "Pong"
            other.close()
    finally:
        stop_server(server)
