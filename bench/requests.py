"""Server CPU per request type, against a bare Starlette/uvicorn endpoint in the same run.

    python -m bench.requests [--n 600] [--rounds 5] [--sqlite-sync full|normal] [--out FILE]
    EXCHANGE_REDIS_URL=redis://... python -m bench.requests --nodes 1|2 --database-url postgresql://...

Two servers run as child processes with the same uvicorn settings (uvloop, httptools, no access
log): the exchange (``python -m exchange serve``, embedded SQLite store) and a bare Starlette app
answering ``GET /x`` with a small JSON body. One sequential keep-alive HTTP/1.1 client (raw
sockets: its own cost is not measured) sends, per round, ``--n`` requests of each type:

- ``bare``: ``GET /x`` on the bare server: the unit;
- ``healthz``: ``GET /healthz``;
- ``call_rejected``: ``POST /v1/calls`` for a vertical no campaign bids on (``no_eligible_bid``);
- ``call_routed``: ``POST /v1/calls`` routed to one standing campaign (no caps), its ``win``
  sent to the buyer's open WebSocket;
- ``event_connected`` and ``event_completed``: ``POST /v1/calls/{id}/events`` for those calls
  (each answered once its records are durable), each with its ``call`` notice to the buyer;
- ``lifecycle``: the sum of the three above (a call, connected, completed and the notices).

The figure for a type is the server process's CPU (user + system, all threads, from ``/proc``)
over the batch divided by ``--n``, read after the writer has drained; ratios are to ``bare`` in
the same round, split by thread (``main``: the event loop; ``others``: the store's writer thread,
whose share of an acknowledged event is mostly SQLite's commit and, by default, its fsync:
``--sqlite-sync normal`` shows the rest). Medians over rounds; JSON out. Targets (issue 11):
a call <= 1.5x bare, an event
<= 1.5x, a lifecycle <= 5x.

``--nodes 2`` (issue 12: what an edge's forwarding costs): the exchange is two nodes of one
market (``loadtest.cluster``: a seller and an edge, on ``--database-url`` PostgreSQL and
``EXCHANGE_REDIS_URL``), the buyer's socket on the seller, and the calls, events and ``/healthz``
are sent to the edge; a type's figure is both processes' CPU together (``by thread`` splits it
by node: ``seller.main``, ``edge.main`` ...). ``--nodes 1``: the seller alone, the same way
(a market of one node on the same stores): the figures to divide by.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from websockets.sync.client import connect

from loadtest.cluster import start_nodes
from loadtest.target import Target, child_env, free_port, start_exchange

TYPES = ("bare", "healthz", "call_rejected", "call_routed", "event_connected", "event_completed")
TARGETS = {"call_rejected": 1.5, "call_routed": 1.5, "event_connected": 1.5, "event_completed": 1.5, "lifecycle": 5.0}


class Http:
    """A minimal keep-alive HTTP/1.1 client over one socket (requests built by hand)."""

    def __init__(self, port: int, key: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.auth = f"Authorization: Bearer {key}\r\n" if key else ""
        self.buf = b""

    def request(self, method: str, path: str, body: bytes | None = None, headers: str = "") -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n{self.auth}{headers}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + (body or b""))
        while b"\r\n\r\n" not in self.buf:
            self._read()
        header, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status = int(header.split(b" ", 2)[1])
        length = next(int(h.split(b":", 1)[1]) for h in header.split(b"\r\n") if h.lower().startswith(b"content-length:"))
        while len(self.buf) < length:
            self._read()
        out, self.buf = self.buf[:length], self.buf[length:]
        return status, out

    def _read(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


BARE_APP = """
import sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from exchange.server import uvicorn_config
from exchange.settings import Settings

async def ok(request):
    return JSONResponse({"status": "ok"})

app = Starlette(routes=[Route("/x", ok)])
uvicorn.Server(uvicorn_config(app, Settings(host="127.0.0.1", port=int(sys.argv[1])))).run()
"""


def start_bare() -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BARE_APP, str(port)], env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            Http(port).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the bare server did not start")


def drain_notices(url: str, key: str, stop: threading.Event, seen: list[int]) -> None:
    with connect(url, additional_headers={"Authorization": f"Bearer {key}"}, max_size=None) as ws:
        ws.send(json.dumps({"type": "campaign", "id": "c1", "vertical": "auto", "bid_cents": 2500, "min_duration_s": 60,
                            "destination": "+18005550199", "seq": 1}))
        while not stop.is_set():
            try:
                ws.recv(timeout=0.2)
                seen[0] += 1
            except TimeoutError:
                continue


def nodes_cpu_ns(pids: dict[str, int]) -> dict[str, int]:
    """``thread_cpu_ns`` of several processes, named ``process.thread``."""
    return {f"{name}.{t}": ns for name, pid in pids.items() for t, ns in thread_cpu_ns(pid).items()}


def thread_cpu_ns(pid: int) -> dict[str, int]:
    """CPU nanoseconds of each thread of ``pid`` by name (``/proc/PID/task/*/schedstat``: exact,
    where ``/proc/PID/stat`` counts in 10 ms ticks): the event loop is ``main``, the store's
    writer threads and any others keep their names."""
    out: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ns = int((task / "schedstat").read_text().split()[0])
            name = "main" if task.name == str(pid) else "others"
        except (OSError, ValueError, IndexError):
            continue
        out[name] = out.get(name, 0) + ns
    return out


SPLIT: dict[str, dict[str, float]] = {}  # request type -> thread -> CPU µs per request (last round)


def measure(pid: int | dict[str, int], run, name: str = "", n: int = 1) -> float:
    """CPU seconds of ``pid`` (or of each process of a dict, together) spent on ``run()`` and
    the writes it left (the writer drains in ms)."""
    pids = pid if isinstance(pid, dict) else None
    time.sleep(0.3)
    threads = nodes_cpu_ns(pids) if pids else thread_cpu_ns(pid)  # type: ignore[arg-type]
    run()
    time.sleep(0.3)
    after = nodes_cpu_ns(pids) if pids else thread_cpu_ns(pid)  # type: ignore[arg-type]
    SPLIT[name] = {k: (v - threads.get(k, 0)) / n / 1e3 for k, v in after.items() if v - threads.get(k, 0) > 0}
    return (sum(after.values()) - sum(threads.values())) / 1e9


def one_round(ex: Target, bare_port: int, bare_pid: int, pub_key: str, n: int, round_no: int) -> dict[str, float]:
    front = ex.edges[0] if ex.edges else ex  # --via-edge: the requests go to the edge
    port = int(front.base.rsplit(":", 1)[1])
    bare, pub, health = Http(bare_port), Http(port, pub_key), Http(port)
    assert ex.pid is not None and front.pid is not None
    ex_pid: int | dict[str, int] = {"seller": ex.pid, "edge": front.pid} if ex.edges else ex.pid
    ids: list[str] = []
    callers = [f"+1212{300 + round_no % 600}{i % 10_000:04d}" for i in range(n)]  # a new consumer each: no repeat caller

    def bare_batch() -> None:
        for _ in range(n):
            assert bare.request("GET", "/x")[0] == 200

    def healthz() -> None:
        for _ in range(n):
            assert health.request("GET", "/healthz")[0] == 200

    def rejected() -> None:
        for c in callers:
            status, body = pub.request("POST", "/v1/calls", json.dumps({"caller": c, "vertical": "legal"}).encode())
            assert status == 200 and b'"rejected"' in body, body

    def routed() -> None:
        for c in callers:
            status, body = pub.request("POST", "/v1/calls", json.dumps({"caller": c, "vertical": "auto"}).encode())
            assert status == 200 and b'"routed"' in body, body
            ids.append(json.loads(body)["call_id"])

    def event(name: str, extra: dict[str, int]):
        def batch() -> None:
            for cid in ids:
                status, body = pub.request("POST", f"/v1/calls/{cid}/events", json.dumps({"event": name, **extra}).encode(),
                                           f"Idempotency-Key: {name}\r\n")
                assert status == 200, body
        return batch

    batches = {"bare": bare_batch, "healthz": healthz, "call_rejected": rejected, "call_routed": routed,
               "event_connected": event("connected", {}), "event_completed": event("completed", {"duration_s": 120})}
    out: dict[str, float] = {}
    for name in TYPES:
        out[name] = measure(bare_pid if name == "bare" else ex_pid, batches[name], name, n) / n * 1e6  # CPU µs per request
    out["lifecycle"] = out["call_routed"] + out["event_connected"] + out["event_completed"]
    for h in (bare, pub, health):
        h.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=600, help="requests of each type per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("bench/results/requests.json"))
    ap.add_argument("--sqlite-sync", choices=("full", "normal"), default="full",
                    help="the embedded store's fsync policy (full, the default: every commit is fsynced)")
    ap.add_argument("--database-url", help="another store (postgresql://...): its server's CPU is not counted")
    ap.add_argument("--nodes", type=int, choices=(1, 2), help="a market of N nodes (PostgreSQL and EXCHANGE_REDIS_URL); 2: requests sent to the edge")
    args = ap.parse_args()

    bare_proc, bare_port = start_bare()
    url = args.database_url or f"sqlite:///exchange.db?synchronous={args.sqlite_sync}"
    if args.nodes:
        ex = start_nodes(args.nodes, Path("bench/results/requests-nodes"), {"EXCHANGE_DATABASE_URL": url})
    else:
        ex = start_exchange(Path("bench/results/requests-exchange.log"), {"EXCHANGE_DATABASE_URL": url})
    stop, seen = threading.Event(), [0]
    try:
        buyer = json.loads(ex._post("/v1/accounts", {"kind": "buyer", "name": "bench buyer"}))
        ex._post(f"/v1/accounts/{buyer['id']}/deposits", {"amount_cents": 10**11, "reference": "bench"})
        pub = json.loads(ex._post("/v1/accounts", {"kind": "publisher", "name": "bench publisher"}))
        ws_url = ex.base.replace("http://", "ws://") + "/v1/buyers/ws"
        reader = threading.Thread(target=drain_notices, args=(ws_url, buyer["api_key"], stop, seen), daemon=True)
        reader.start()
        time.sleep(1.0)  # the campaign is in the book
        rounds = []
        for r in range(args.rounds):
            got = one_round(ex, bare_port, bare_proc.pid, pub["api_key"], args.n, r)
            rounds.append(got)
            print(f"round {r + 1}: " + "  ".join(f"{k} {v:,.0f}" for k, v in got.items()) + "  (CPU µs per request)", flush=True)
        stop.set()
        reader.join(5)
    finally:
        ex.stop()
        bare_proc.terminate()
        bare_proc.wait(10)
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    ratios = {k: statistics.median(r[k] / r["bare"] for r in rounds) for k in rounds[0] if k != "bare"}
    print(f"\nserver CPU per request (median of {args.rounds} rounds of {args.n}), and the ratio to a bare Starlette GET in the same round:")
    for k, v in med.items():
        target = TARGETS.get(k)
        ratio = "" if k == "bare" else f"{ratios[k]:5.2f}x bare" + (f"  (target <= {target}x: {'PASS' if ratios[k] <= target else 'FAIL'})" if target else "")
        print(f"  {k:<16} {v:>8,.0f} µs   {ratio}")
    print("  by thread (last round, CPU µs per request): " + "; ".join(
        f"{k} " + ", ".join(f"{t} {v:,.0f}" for t, v in sorted(th.items(), key=lambda x: -x[1])) for k, th in SPLIT.items()))
    print(f"  notices read by the buyer: {seen[0]:,}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bench": "requests", "n": args.n, "database_url": url.split("@")[-1], "nodes": args.nodes, "rounds": rounds, "median_cpu_us": med,
                                    "median_ratio_to_bare": ratios, "targets": TARGETS,
                                    "by_thread_last_round_us": SPLIT}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
