"""Ten HTTP bidders pinged per call against ten WebSocket bidders, in one run of one server.

    python -m bench.httpbidders [--calls 300] [--rounds 3] [--concurrency 4] [--bidders 10] [--out FILE]

One exchange (``EXCHANGE_PING_ALLOW_LOOPBACK=true``) holds two RTB verticals: ``bench_ws`` with
``--bidders`` buyers answering ``bid_request`` over their sockets, and ``bench_http`` with as
many buyers whose campaigns carry a ``ping`` to a local HTTP/1.1 keep-alive endpoint. Both kinds
of bidder live in one separate process (uvloop: an asyncio HTTP server and the WebSocket
clients) and answer at once with a bid. A publisher submits ``--calls`` calls per phase over
``POST /v1/calls`` (``--concurrency`` in flight), alternating WS and HTTP phases ``--rounds``
times, every call asking all ten bidders. Per phase: the server's ``decision_us`` (prepare +
decide, RTB wait excluded), its ``rtb_wait_us`` (the round: all ten answers), the publisher's
wall time per call, and the server process's CPU per call (``/proc``). Medians over rounds of
each phase's p50 / p99, and the HTTP/WS ratios; JSON out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import re
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec

from exchange.messages import Campaign, json_encoder
from exchange.pingspec import PingMap, PingSpec
from loadtest.target import free_port, proc_cpu_s, start_exchange
from loadtest.workload import us_caller

WS_V, HTTP_V = "bench_ws", "bench_http"


# ---------------------------------------------------------------- the bidders' process
class PingServer(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive endpoint: ``POST /b<i>`` answers ``{"bid_cents": 2000+i}``."""

    def connection_made(self, transport: Any) -> None:
        self.t, self.buf = transport, b""
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (i := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:i]
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            end = i + 4 + (int(m.group(1)) if m else 0)
            if len(self.buf) < end:
                return
            self.buf = self.buf[end:]
            n = int(head.split(b" ", 2)[1][2:] or 0)
            body = b'{"bid_cents": %d}' % (2000 + n)
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


async def _ws_bidder(url: str, key: str, n: int, ready: Any) -> None:
    from websockets.asyncio.client import connect

    decode = msgspec.json.Decoder().decode
    async with connect(f"{url}/v1/buyers/ws", additional_headers={"Authorization": f"Bearer {key}"}, subprotocols=["dce.json.v1"],
                       max_size=None, compression=None) as ws:
        ready.release()
        async for raw in ws:
            msgs = decode(raw)
            for m in msgs if isinstance(msgs, list) else [msgs]:
                if m.get("type") == "bid_request":
                    await ws.send(b'{"type":"rtb_bid","request_id":"%s","bid_cents":%d}' % (m["request_id"].encode(), 2000 + n), text=True)


def bidders_main(ws_url: str, keys: list[str], port: int, started: Any) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(PingServer, "127.0.0.1", port, backlog=1024)
        ready = asyncio.Semaphore(0)
        tasks = [asyncio.create_task(_ws_bidder(ws_url, k, i, ready)) for i, k in enumerate(keys)]
        for _ in keys:
            await ready.acquire()
        started.set()
        await asyncio.gather(*tasks)

    uvloop.run(main())


# ---------------------------------------------------------------- the publisher
async def phase(url: str, key: str, vertical: str, calls: int, concurrency: int, seed: int, pid: int) -> dict[str, Any]:
    rng = random.Random(seed)
    todo = [us_caller(rng)[0] for _ in range(calls)]
    dec, wait, wall, bad = [], [], [], 0
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker() -> None:
            nonlocal bad
            while todo:
                caller = todo.pop()
                t0 = time.perf_counter()
                r = await client.post("/v1/calls", json={"caller": caller, "vertical": vertical, "tmax_ms": 200})
                wall.append((time.perf_counter() - t0) * 1e6)
                d = r.json()
                if r.status_code != 200 or d.get("decision") != "routed":
                    bad += 1
                    continue
                dec.append(d["decision_us"])
                wait.append(d.get("rtb_wait_us") or 0)

        cpu0 = proc_cpu_s(pid) or 0.0
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu = (proc_cpu_s(pid) or 0.0) - cpu0
    return {"calls": calls, "not_routed": bad, "decision_us": pcts(dec), "rtb_wait_us": pcts(wait), "wall_us": pcts(wall),
            "server_cpu_us_per_call": round(cpu * 1e6 / max(1, calls))}


def pcts(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    s = sorted(xs)
    return {"p50": round(s[len(s) // 2]), "p99": round(s[min(len(s) - 1, len(s) * 99 // 100)]), "n": len(s)}


def setup(t: Any, bidders: int, ping_port: int) -> tuple[list[str], str]:
    from websockets.sync.client import connect

    def account(kind: str, name: str) -> tuple[str, str]:
        r = t.http.post("/v1/accounts", json={"kind": kind, "name": name})
        r.raise_for_status()
        a = r.json()
        if kind == "buyer":
            t.http.post(f"/v1/accounts/{a['id']}/deposits", json={"amount_cents": 10**10, "reference": f"bench-{name}"}).raise_for_status()
        return a["id"], a["api_key"]

    ws_keys = []
    for i in range(2 * bidders):
        _, key = account("buyer", f"bench-{i}")
        http = i >= bidders
        ping = PingSpec(url=f"http://127.0.0.1:{ping_port}/b{i - bidders}", map=PingMap(bid_cents="$.bid_cents")) if http else None
        c = Campaign(id="c", vertical=HTTP_V if http else WS_V, bid_cents=0, min_duration_s=60, destination="+18005550199",
                     rtb=True, ping=ping, seq=1)
        with connect(f"{t.base.replace('http', 'ws')}/v1/buyers/ws", additional_headers={"Authorization": f"Bearer {key}"}) as ws:
            ws.send(json_encoder.encode(c).decode())
            ack = msgspec.json.decode(ws.recv(timeout=10))
            assert ack.get("type") == "ack", ack
        if not http:
            ws_keys.append(key)
    return ws_keys, account("publisher", "bench-pub")[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--bidders", type=int, default=10)
    ap.add_argument("--out", default="bench/results/httpbidders.json")
    args = ap.parse_args()
    t = start_exchange(Path("bench/results/httpbidders-server.log"),
                       {"EXCHANGE_PING_ALLOW_LOOPBACK": "true", "EXCHANGE_RTB_TMAX_MS": "200", "EXCHANGE_LOG_LEVEL": "warning"})
    proc = None
    try:
        ping_port = free_port()
        ws_keys, pub = setup(t, args.bidders, ping_port)
        started = multiprocessing.Event()
        proc = multiprocessing.Process(target=bidders_main, args=(t.base.replace("http", "ws"), ws_keys, ping_port, started), daemon=True)
        proc.start()
        assert started.wait(30), "bidders did not start"
        assert t.proc is not None
        pid = t.proc.pid
        asyncio.run(phase(t.base, pub, WS_V, 50, args.concurrency, 99, pid))  # warm both paths (connections, caches)
        asyncio.run(phase(t.base, pub, HTTP_V, 50, args.concurrency, 98, pid))
        runs: list[dict[str, Any]] = []
        for r in range(args.rounds):
            got = {}
            for mode, vertical in (("ws", WS_V), ("http", HTTP_V)):
                got[mode] = asyncio.run(phase(t.base, pub, vertical, args.calls, args.concurrency, 1000 * r + len(mode), pid))
                print(f"round {r} {mode:4}: {json.dumps(got[mode])}", flush=True)
            runs.append(got)
        m = t.metrics() or {}

        def med(mode: str, field: str, q: str) -> float:
            return statistics.median(run[mode][field][q] for run in runs)

        median = {mode: {f: {q: med(mode, f, q) for q in ("p50", "p99")} for f in ("decision_us", "rtb_wait_us", "wall_us")}
                  for mode in ("ws", "http")}
        for mode in ("ws", "http"):
            median[mode]["server_cpu_us_per_call"] = statistics.median(run[mode]["server_cpu_us_per_call"] for run in runs)
        ratios = {f"{f}_{q}": round(median["http"][f][q] / max(1, median["ws"][f][q]), 2)
                  for f in ("decision_us", "rtb_wait_us", "wall_us") for q in ("p50", "p99")}
        ratios["server_cpu_per_call"] = round(median["http"]["server_cpu_us_per_call"] / max(1, median["ws"]["server_cpu_us_per_call"]), 2)
        pings = {k: v for k, v in m.items() if "ping" in k}
        print("median:", json.dumps(median))
        print("http/ws:", json.dumps(ratios))
        print("server ping counters:", json.dumps(pings))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"benchmark": "httpbidders", "args": vars(args), "median": median, "ratio_http_over_ws": ratios,
                                   "ping_counters": pings, "runs": runs}, indent=2))
        print(f"wrote {out}")
    finally:
        if proc is not None:
            proc.terminate()
        t.stop()


if __name__ == "__main__":
    main()
