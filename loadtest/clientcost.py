"""``python -m loadtest clientcost``: what one bid frame costs the load generator's CPU.

Against a real exchange started here, one buyer connection sends ``--frames`` frames of
``--batch`` bids as fast as the exchange takes them, then a ``ping`` and waits for its
``pong``; the figure is the client process's CPU time (user + system) per frame:

* ``raw ring``       — ``loadtest.wire``: frames encoded and masked once into a ring, sent
                       100 frames per ``sendall`` (what ``BuyerUser`` does);
* ``raw per frame``  — ``loadtest.wire``: each frame's ``Bid`` Structs built, encoded with
                       ``json_encoder``, masked with a fresh key and sent on its own;
* ``websocket-client`` — the ``websocket-client`` package, each frame built and encoded the
                       same way and sent with ``WebSocket.send`` (it masks with a fresh key).

It runs without gevent; under Locust the sockets are gevent's, which adds about the same
small cost to every way. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from exchange.messages import Bid, Ping, exchange_json, json_encoder

from .target import start_exchange
from .wire import FrameRing, WsClient, client_frame
from .workload import bid_payloads, buyer_campaigns, campaign_frames

PING_SEQ = 4_242_424_242


def _wait_seq(recv: Any, seq: int) -> None:
    while True:
        got = exchange_json.decode(recv())
        for m in got if isinstance(got, list) else [got]:
            if getattr(m, "seq", None) == seq:
                return


def _raw_recv(ws: WsClient) -> Any:
    buf: list[bytes] = []

    def recv() -> bytes:
        while not buf:
            buf.extend(p for _, p in ws.recv())
        return buf.pop(0)

    return recv


def measure(url: str, key: str, campaigns: list, frames: int, batch: int) -> dict[str, Any]:
    ids = [c.id for c in campaigns if not c.rtb]
    out: dict[str, Any] = {}

    # raw ring
    ws = WsClient(url, key)
    recv = _raw_recv(ws)
    ring = FrameRing(bid_payloads(campaigns, batch, min(frames, 20_000) * batch, 7), batch)
    c0, t0 = time.process_time(), time.perf_counter()
    left = frames
    while left > 0:
        k = min(100, left)
        ws.send_raw(ring.take(k))
        left -= k
    ws.send(json_encoder.encode(Ping(seq=PING_SEQ)))
    _wait_seq(recv, PING_SEQ)
    out["raw ring"] = _fig(frames, batch, time.process_time() - c0, time.perf_counter() - t0)
    ws.close()

    # raw, one frame at a time, encoded and masked per frame
    ws = WsClient(url, key)
    recv = _raw_recv(ws)
    n = len(ids)
    c0, t0 = time.process_time(), time.perf_counter()
    i = 0
    for _ in range(frames):
        bids = [Bid(campaign=ids[(i + j) % n], bid_cents=1000 + (i + j) % 3000) for j in range(batch)]
        i += batch
        payload = json_encoder.encode(bids[0] if batch == 1 else bids)
        ws.sock.sendall(client_frame(payload))
    ws.send(json_encoder.encode(Ping(seq=PING_SEQ)))
    _wait_seq(recv, PING_SEQ)
    out["raw per frame"] = _fig(frames, batch, time.process_time() - c0, time.perf_counter() - t0)
    ws.close()

    # websocket-client
    try:
        import websocket  # the websocket-client package
    except ImportError:
        out["websocket-client"] = {"error": "not installed (pip install websocket-client)"}
        return out
    conn = websocket.create_connection(url, header=[f"Authorization: Bearer {key}"], subprotocols=["dce.json.v1"])
    c0, t0 = time.process_time(), time.perf_counter()
    i = 0
    for _ in range(frames):
        bids = [Bid(campaign=ids[(i + j) % n], bid_cents=1000 + (i + j) % 3000) for j in range(batch)]
        i += batch
        conn.send(json_encoder.encode(bids[0] if batch == 1 else bids).decode())
    conn.send(json_encoder.encode(Ping(seq=PING_SEQ)).decode())
    _wait_seq(conn.recv, PING_SEQ)
    out["websocket-client"] = _fig(frames, batch, time.process_time() - c0, time.perf_counter() - t0)
    conn.close()
    return out


def _fig(frames: int, batch: int, cpu_s: float, wall_s: float) -> dict[str, Any]:
    return {"frames": frames, "batch": batch, "cpu_us_per_frame": round(cpu_s / frames * 1e6, 2),
            "cpu_ns_per_bid": round(cpu_s / (frames * batch) * 1e9, 1), "frames_per_s": round(frames / wall_s),
            "client_cpu_pct": round(100 * cpu_s / wall_s, 1)}


def main(args: argparse.Namespace) -> int:
    log = Path(tempfile.mkdtemp(prefix="loadtest-clientcost-")) / "exchange.log"
    target = start_exchange(log)
    try:
        (buyer,), _ = target.provision(1, 0, [], "clientcost")
        url = target.base.replace("http://", "ws://") + "/v1/buyers/ws"
        campaigns = buyer_campaigns(0, 1000, 1, rtb=0)
        ws = WsClient(url, buyer.key)
        recv = _raw_recv(ws)
        for seq, frame in campaign_frames(campaigns):
            ws.send(frame)
            _wait_seq(recv, seq)
        ws.close()
        res = measure(url, buyer.key, campaigns, args.frames, args.batch)
        errors = target.metrics() or {}
        res["exchange_messages_rejected"] = errors.get("exchange_messages_rejected_total", 0)
    finally:
        target.stop()
    print(msgspec.json.format(msgspec.json.encode(res), indent=2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main(argparse.Namespace(frames=50_000, batch=1)))
