"""Concurrent buyer connections: how many one exchange process holds, and what each costs.

Starts a real exchange (``python -m exchange serve``, embedded store, default settings) and
opens ``--connections`` buyer WebSockets to it from ``--clients`` client processes, each
authenticated in the handshake (one of ``--accounts`` buyer accounts). The clients are raw
asyncio protocols on uvloop (a few hundred bytes each, masking with
``loadtest.wire.client_frame``) that keep answering the server's heartbeat pings. The
server's RSS (``VmRSS`` of /proc/PID/status) is read before the first connection, once all
sockets are open, and again once every socket has sent one ``campaign`` and had it acked:
the differences give the memory per open socket, per campaign, and per connection with its
campaign. With every socket open, a publisher then submits ``--calls`` calls one after
another (``POST /v1/calls``, each won by one of the connected buyers and notified over its
socket); the client-side round trip and the server's ``decision_us`` are reported as p50/p99.
At the end either the clients close every socket (``--finish clients``: how fast the server
lets go of them) or the server is sent SIGTERM (``--finish sigterm``: its graceful drain
closes every socket with 1001 before it exits; the clients count the close codes).

The file-descriptor limit is raised to its hard limit (``resource.setrlimit``) before the
server and the clients start, so both inherit it.

    python -m bench.connections [--connections 10000] [--accounts 100] [--clients 2]
                                [--calls 300] [--hold 5] [--finish clients|sigterm]
                                [--out bench/results/connections.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import multiprocessing as mp
import os
import platform
import resource
import secrets
import signal
import struct
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.ingest import Server
from loadtest.target import child_env, free_port
from exchange.messages import Campaign, json_encoder
from loadtest.wire import GUID, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, client_frame, next_frame

ROOT = Path(__file__).resolve().parent.parent
VERTICAL = "conn_bench"
WS_PATH = "/v1/buyers/ws"


# ---------------------------------------------------------------- the client side (one process)
class BuyerConn(asyncio.Protocol):
    """One buyer socket: upgrade, send the campaign, wait for its ack, then answer pings and
    count what arrives. Server frames are parsed from one bytearray; nothing per byte in Python."""

    __slots__ = ("request", "accept", "campaign", "transport", "buf", "upgraded", "opened", "acked", "wins", "pings", "close_code")

    def __init__(self, request: bytes, accept: bytes, campaign: bytes, opened: asyncio.Future, acked: asyncio.Future) -> None:
        self.request, self.accept, self.campaign, self.opened, self.acked = request, accept, campaign, opened, acked
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.wins = self.pings = 0
        self.close_code: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            if not head.startswith(b"HTTP/1.1 101") or self.accept not in head:
                self._fail(f"handshake refused: {head[:80]!r}")
                return
            self.upgraded = True
            self.opened.set_result(True)
        self._frames()

    def send_campaign(self) -> None:
        self.transport.write(self.campaign)

    def _frames(self) -> None:
        buf, pos = self.buf, 0
        while (frame := next_frame(buf, pos)) is not None:
            b0, payload, pos = frame
            op = b0 & 0x0F
            if op == OP_TEXT:
                if not self.acked.done():
                    if b'"ack"' in payload:
                        self.acked.set_result(True)
                    elif b'"error"' in payload:
                        self._fail(payload[:200].decode("utf-8", "replace"))
                elif b'"win"' in payload:
                    self.wins += 1
            elif op == OP_PING:
                self.pings += 1
                self.transport.write(client_frame(payload, OP_PONG))
            elif op == OP_CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.transport.close()
        del buf[:pos]

    def _fail(self, why: str) -> None:
        for fut in (self.opened, self.acked):
            if not fut.done():
                fut.set_exception(ConnectionError(why))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_code is None:
            self.close_code = 1006
        for fut in (self.opened, self.acked):
            if not fut.done():
                fut.set_exception(ConnectionError(f"connection lost: {exc}"))
                fut.exception()  # retrieved: nobody may be waiting on it any more


def _handshake(host: str, port: int, key: str) -> tuple[bytes, bytes]:
    nonce = base64.b64encode(os.urandom(16))
    request = (f"GET {WS_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {nonce.decode()}\r\nSec-WebSocket-Version: 13\r\n"
               f"Sec-WebSocket-Protocol: dce.json.v1\r\nAuthorization: Bearer {key}\r\n\r\n").encode()
    return request, base64.b64encode(hashlib.sha1(nonce + GUID).digest())


async def _hold(pipe: Any, host: str, port: int, jobs: list[tuple[str, str, int]], concurrency: int) -> None:
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(concurrency)
    conns: list[BuyerConn] = []
    errors: Counter[str] = Counter()

    async def one(key: str, campaign_id: str, bid: int) -> None:
        frame = client_frame(json_encoder.encode(Campaign(id=campaign_id, vertical=VERTICAL, bid_cents=bid, min_duration_s=60,
                                                          destination="+18005550199", seq=1)))
        async with sem:
            for _ in range(3):
                request, accept = _handshake(host, port, key)
                opened, acked = loop.create_future(), loop.create_future()
                try:
                    _, proto = await loop.create_connection(lambda: BuyerConn(request, accept, frame, opened, acked), host, port)
                    await asyncio.wait_for(opened, 60)
                except (OSError, ConnectionError, TimeoutError) as exc:
                    errors[f"{type(exc).__name__}: {str(exc)[:100]}"] += 1
                    await asyncio.sleep(0.2)
                    continue
                conns.append(proto)
                return

    t0 = time.perf_counter()
    await asyncio.gather(*(one(*j) for j in jobs))
    pipe.send({"opened": len(conns), "failed": len(jobs) - len(conns), "open_s": round(time.perf_counter() - t0, 2),
               "errors": dict(errors.most_common(5))})

    def stats() -> dict[str, Any]:
        codes = Counter(c.close_code for c in conns if c.close_code is not None)
        return {"open": sum(1 for c in conns if c.close_code is None), "wins": sum(c.wins for c in conns),
                "pings_answered": sum(c.pings for c in conns), "closed_by_code": {str(k): v for k, v in codes.items()}}

    while True:
        cmd = await loop.run_in_executor(None, pipe.recv)
        if cmd == "campaigns":  # each socket sends its campaign; all acked?
            t1 = time.perf_counter()
            for c in conns:
                c.send_campaign()
            done = await asyncio.gather(*(asyncio.wait_for(c.acked, 60) for c in conns), return_exceptions=True)
            bad = Counter(f"{type(d).__name__}: {str(d)[:100]}" for d in done if isinstance(d, BaseException))
            pipe.send({"acked": len(done) - sum(bad.values()), "errors": dict(bad.most_common(5)),
                       "campaigns_s": round(time.perf_counter() - t1, 2)})
        elif cmd == "stats":
            pipe.send(stats())
        elif cmd == "close":
            before = stats()
            for c in conns:
                if c.close_code is None and c.transport is not None:
                    c.transport.write(client_frame(struct.pack("!H", 1000), OP_CLOSE))
                    c.transport.close()
            await asyncio.sleep(0.5)
            pipe.send(before)
            return


def client_main(pipe: Any, host: str, port: int, jobs: list[tuple[str, str, int]], concurrency: int) -> None:
    raise_fd_limit()
    import uvloop

    uvloop.run(_hold(pipe, host, port, jobs, concurrency))


# ---------------------------------------------------------------- the server side
def raise_fd_limit() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kB) of one process, and its open file descriptors."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def fd_limit_of(pid: int) -> str:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return " ".join(line.split()[3:5])
    return "?"


def gauge(http: httpx.Client, admin: dict[str, str], name: str) -> float | None:
    for line in http.get("/metrics", headers=admin).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def pct(values: list[float], q: float) -> float:
    data = sorted(values)
    return data[min(len(data) - 1, int(q * len(data)))]


def settle_rss(pid: int, seconds: float = 2.0) -> dict[str, int]:
    time.sleep(seconds)  # let the sweeper's GC pass and pending writes land
    return proc_status(pid)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.connections", description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--accounts", type=int, default=100, help="buyer accounts the connections are spread over")
    ap.add_argument("--clients", type=int, default=2, help="client processes holding the sockets")
    ap.add_argument("--concurrency", type=int, default=200, help="handshakes in flight per client process")
    ap.add_argument("--calls", type=int, default=300, help="publisher calls decided with every socket open")
    ap.add_argument("--hold", type=float, default=5.0, help="seconds to hold every socket before the calls")
    ap.add_argument("--finish", choices=("clients", "sigterm"), default="clients",
                    help="clients: the clients close their sockets; sigterm: the server is sent SIGTERM and closes them (1001)")
    ap.add_argument("--out", default="bench/results/connections.json")
    args = ap.parse_args(argv)

    soft, hard = raise_fd_limit()
    print(f"fd limit (ulimit -n) raised to {soft} (hard {hard})", flush=True)
    if soft < args.connections + 200:
        print(f"warning: {soft} descriptors cannot hold {args.connections} sockets in one server process", flush=True)
    port = free_port()
    admin_key = "bench-admin-" + secrets.token_urlsafe(16)
    admin = {"Authorization": f"Bearer {admin_key}"}
    workdir = Path(tempfile.mkdtemp(prefix="connections-exchange-"))
    srv = Server("exchange", [sys.executable, "-m", "exchange", "serve", "--host", "127.0.0.1", "--port", str(port)],
                 port, child_env({"EXCHANGE_ADMIN_KEY": admin_key,
                           # every socket comes from 127.0.0.1, hundreds of handshakes in flight at once
                           "EXCHANGE_HTTP_UNAUTH_PER_ADDRESS": "0"}), workdir)
    srv.workdir = workdir
    procs: list[mp.Process] = []
    try:
        srv.wait_ready(60.0)
        pid = srv.proc.pid
        http = httpx.Client(base_url=srv.base, timeout=30)
        keys = []
        for i in range(args.accounts):
            r = http.post("/v1/accounts", json={"kind": "buyer", "name": f"conn-{i}"}, headers=admin)
            r.raise_for_status()
            acct = r.json()
            http.post(f"/v1/accounts/{acct['id']}/deposits", json={"amount_cents": 100_000_000, "reference": "init"},
                      headers=admin).raise_for_status()
            keys.append(acct["api_key"])
        pub = http.post("/v1/accounts", json={"kind": "publisher", "name": "conn-pub"}, headers=admin)
        pub.raise_for_status()
        pub_auth = {"Authorization": f"Bearer {pub.json()['api_key']}"}
        before = settle_rss(pid)
        server_fd_limit = fd_limit_of(pid)
        print(f"server pid {pid}: fd limit {server_fd_limit}; before: RSS {before['VmRSS'] / 1024:.1f} MiB, "
              f"{before['fds']} fds", flush=True)

        jobs = [(keys[i % len(keys)], f"c{i}", 1000 + (i * 37) % 4000) for i in range(args.connections)]
        ctx = mp.get_context("spawn")
        pipes = []
        t0 = time.perf_counter()
        for k in range(args.clients):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=client_main, args=(child, "127.0.0.1", port, jobs[k :: args.clients], args.concurrency), daemon=True)
            p.start()
            procs.append(p)
            pipes.append(parent)
        opened = []
        for pipe in pipes:
            while not pipe.poll(2.0):
                held = gauge(http, admin, 'exchange_connections{role="buyer"}')
                print(f"  ... {held:,.0f} buyer sockets open on the server after {time.perf_counter() - t0:.0f}s", flush=True)
            opened.append(pipe.recv())
        open_s = max(o["open_s"] for o in opened)  # the clients' own time, process start-up excluded
        total_opened = sum(o["opened"] for o in opened)
        connected = settle_rss(pid)
        held = gauge(http, admin, 'exchange_connections{role="buyer"}') or 0
        per_socket_kib = (connected["VmRSS"] - before["VmRSS"]) / max(1, held)
        print(f"opened {total_opened:,} of {args.connections:,} in {open_s:.1f}s ({total_opened / open_s:,.0f}/s); "
              f"failed {sum(o['failed'] for o in opened)} {[o['errors'] for o in opened if o['errors']]}", flush=True)
        print(f"held: {held:,.0f} buyer sockets (server gauge); RSS {connected['VmRSS'] / 1024:.1f} MiB, {connected['fds']} fds "
              f"-> {per_socket_kib:.1f} KiB per open socket", flush=True)

        for pipe in pipes:
            pipe.send("campaigns")
        acks = [pipe.recv() for pipe in pipes]
        after = settle_rss(pid)
        campaigns = gauge(http, admin, "exchange_book_campaigns") or 0
        per_conn_kib = (after["VmRSS"] - before["VmRSS"]) / max(1, held)
        per_campaign_kib = (after["VmRSS"] - connected["VmRSS"]) / max(1, campaigns)
        print(f"campaigns: {sum(a['acked'] for a in acks):,} acked in {max(a['campaigns_s'] for a in acks):.1f}s "
              f"{[a['errors'] for a in acks if a['errors']]}; {campaigns:,.0f} in the book; RSS {after['VmRSS'] / 1024:.1f} MiB "
              f"-> {per_campaign_kib:.1f} KiB per campaign, {per_conn_kib:.1f} KiB per connection with its campaign", flush=True)

        time.sleep(args.hold)
        hold_rss = proc_status(pid)
        rtts: list[float] = []
        decision_us: list[int] = []
        decisions: Counter[str] = Counter()
        for i in range(args.calls):
            t = time.perf_counter()
            r = http.post("/v1/calls", json={"caller": f"+1212{5550000 + i:07d}", "vertical": VERTICAL}, headers=pub_auth)
            rtts.append((time.perf_counter() - t) * 1e6)
            d = r.json()
            decisions[f"{d.get('decision')}/{d.get('reason')}" if r.status_code == 200 else f"http_{r.status_code}"] += 1
            if r.status_code == 200:
                decision_us.append(d["decision_us"])
        time.sleep(0.5)
        for pipe in pipes:
            pipe.send("stats")
        stats = [pipe.recv() for pipe in pipes]
        still_open = sum(s["open"] for s in stats)
        wins = sum(s["wins"] for s in stats)
        print(f"{args.calls} calls with every socket open: {dict(decisions)}; wins delivered over the sockets {wins}", flush=True)
        print(f"  call round trip p50 {pct(rtts, 0.5):,.0f} us, p99 {pct(rtts, 0.99):,.0f} us, max {max(rtts):,.0f} us; "
              f"server decision_us p50 {pct(decision_us, 0.5):,.0f}, p99 {pct(decision_us, 0.99):,.0f}", flush=True)
        print(f"  sockets still open after {args.hold:g}s hold and the calls: {still_open:,}", flush=True)

        t1 = time.perf_counter()
        drained: dict[str, Any] | None = None
        if args.finish == "sigterm":  # the server drains: every socket closed by it (1001), then it exits
            srv.proc.send_signal(signal.SIGTERM)
            code = srv.proc.wait(60)
            closed_s = time.perf_counter() - t1
            time.sleep(0.5)
            for pipe in pipes:
                pipe.send("stats")
            after_term = [pipe.recv() for pipe in pipes]
            by_code: Counter[str] = Counter()
            for st in after_term:
                by_code.update(st["closed_by_code"])
            drained = {"exit_code": code, "closed_by_code": dict(by_code), "still_open": sum(st["open"] for st in after_term)}
            print(f"SIGTERM: server exited ({code}) after {closed_s:.1f}s; client sockets closed by code {dict(by_code)}, "
                  f"still open {drained['still_open']}", flush=True)
            gone, left = {"VmRSS": None, "VmHWM": None, "fds": None}, None
            for pipe in pipes:
                pipe.send("close")
                pipe.recv()
        else:
            for pipe in pipes:
                pipe.send("close")
            for pipe in pipes:
                pipe.recv()
            end = time.monotonic() + 30
            while (gauge(http, admin, 'exchange_connections{role="buyer"}') or 0) > 0 and time.monotonic() < end:
                time.sleep(0.2)
            left = gauge(http, admin, 'exchange_connections{role="buyer"}') or 0
            closed_s = time.perf_counter() - t1
            gone = settle_rss(pid)
            print(f"closed all in {closed_s:.1f}s (server gauge now {left:.0f}); RSS {gone['VmRSS'] / 1024:.1f} MiB", flush=True)

        result = {
            "benchmark": "connections",
            "config": vars(args),
            "env": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
                    "fd_limit": [soft, hard], "server_fd_limit": server_fd_limit},
            "connections_requested": args.connections,
            "connections_opened": total_opened,
            "connections_held_server_gauge": int(held),
            "connections_open_after_calls": still_open,
            "open_s": round(open_s, 2),
            "open_per_s": round(total_opened / open_s, 1),
            "client_errors": [o["errors"] for o in opened] + [a["errors"] for a in acks],
            "campaigns_acked": sum(a["acked"] for a in acks),
            "server_rss_kib": {"before": before["VmRSS"], "sockets_open": connected["VmRSS"], "with_campaigns": after["VmRSS"],
                               "after_hold": hold_rss["VmRSS"], "after_close": gone["VmRSS"], "peak_hwm": gone["VmHWM"]},
            "server_fds": {"before": before["fds"], "sockets_open": connected["fds"], "after_close": gone["fds"]},
            "memory_per_socket_kib": round(per_socket_kib, 2),
            "memory_per_campaign_kib": round(per_campaign_kib, 2),
            "memory_per_connection_kib": round(per_conn_kib, 2),
            "campaigns_in_book": campaigns,
            "calls": {"n": args.calls, "decisions": dict(decisions), "wins_delivered": wins,
                      "rtt_us": {"p50": round(pct(rtts, 0.5)), "p99": round(pct(rtts, 0.99)), "max": round(max(rtts))},
                      "decision_us": {"p50": pct(decision_us, 0.5), "p99": pct(decision_us, 0.99)} if decision_us else None},
            "client_stats": stats,
            "finish": args.finish,
            "closed_s": round(closed_s, 2),
            "server_gauge_after_close": left,
            "sigterm_drain": drained,
        }
        out = ROOT / args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}", flush=True)
        return 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()  # our own client processes only, by handle
        srv.stop()


if __name__ == "__main__":
    sys.exit(main())
