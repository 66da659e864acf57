"""The durable ledger: billable calls/s through the group-commit writer, and ack latency.

    python -m bench.ledger [--database-url URL] [--calls 60000] [--runs 3] [--max-batch 5000]
                           [--rate 1000] [--seconds 10] [--skip-sqlite] [--http] [--json FILE]

One billable call is what the exchange writes when a call completes billably: the capture of
its hold (``HoldEvent``), its charge (``billing.postings.charge``: three legs), its
``CallOutcome``, and the audit record the writer adds for the entry. Records are built before
the clock starts (the core's work is not the writer's).

- Throughput: every call is put on the real ``billing.writer.Writer`` as fast as it accepts
  them (chunks of 100 calls, yielding to the loop between chunks, honouring ``room()``), and
  the clock stops when the last one is committed: calls/s = calls / (first put -> last ack).
  PostgreSQL and, for comparison, SQLite (a fresh file in a temporary folder).
- Ack latency: open loop at ``--rate`` completions/s paced by the event loop's clock (a call
  is put when its time comes, whether or not earlier ones are acknowledged); each put's
  ``writer.wait`` is timed from the put to its return. p50/p99/p99.9 over ``--seconds``
  after a one-second warm-up, on PostgreSQL.
- ``--http``: the same open loop end to end against a real ``python -m exchange serve`` on
  PostgreSQL: each tick routes a call (``POST /v1/calls``, untimed) and completes it billably
  (``POST /v1/calls/{id}/events``, timed from request to response, which the server sends
  only once the charge is committed). A minimal keep-alive HTTP/1.1 client keeps the load
  generator's own cost low; a buyer WebSocket holds the campaign and drains its notices. The
  server's per-key HTTP rate limit is raised for the run (one publisher key sends 2/tick).

Each run uses its own schema (``bench_ledger_<pid>_<n>``), created by the store's migrations
and dropped afterwards. Prints medians over ``--runs`` and writes JSON; not a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from billing.postings import charge
from billing.records import CallOutcome, HoldEvent, Record
from billing.backends import open_store
from billing.store import Store
from billing.writer import Writer
from exchange import gcpolicy
from bench import run_and_write

DEFAULT_URL = "postgresql://postgres@127.0.0.1/test"
BUYERS, PUBLISHERS, TAKE_RATE_BPS = 200, 50, 2000
START_NS = 1_776_268_800 * 1_000_000_000


def billable_call(rng: random.Random, n: int) -> list[Record]:
    """The records of one billable completion, as the core emits them."""
    call_id = f"call_{rng.getrandbits(64):016x}"  # random, like the exchange's call ids
    buyer, publisher = f"b{rng.randrange(BUYERS)}", f"p{rng.randrange(PUBLISHERS)}"
    price = rng.randrange(100, 5000)
    at = START_NS + n * 1_000_000
    e = charge(call_id, buyer, publisher, price, TAKE_RATE_BPS, at)
    payout, margin = e.legs[1].amount_cents, e.legs[2].amount_cents
    return [
        HoldEvent(call_id, 0, "capture", e.legs[0].account, price, at),
        e,
        CallOutcome(call_id, publisher, buyer, f"camp{rng.randrange(1000)}", "completed", True, price, price,
                    payout, margin, at - 120_000_000_000, at),
    ]


def with_schema(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["schema"] = schema
    return urlunsplit(parts._replace(query=urlencode(query)))


async def drop_schema(url: str, schema: str) -> None:
    import asyncpg

    parts = urlsplit(url)
    query = {k: v for k, v in parse_qsl(parts.query) if k != "schema"}
    conn = await asyncpg.connect(urlunsplit(parts._replace(query=urlencode(query))))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


class Target:
    """A fresh, empty store for one run (a PostgreSQL schema or an SQLite file), removed after."""

    def __init__(self, url: str, run: int) -> None:
        self.base, self.run = url, run
        self.schema = self.tmp = None
        if url.startswith("sqlite"):
            self.tmp = tempfile.mkdtemp(prefix="bench_ledger_")
            self.url = f"sqlite:///{self.tmp}/ledger.db"
        else:
            self.schema = f"bench_ledger_{os.getpid()}_{run}"
            self.url = with_schema(url, self.schema)

    async def __aenter__(self) -> Store:
        self.store = open_store(self.url)
        await self.store.open()
        return self.store

    async def __aexit__(self, *exc: object) -> None:
        await self.store.close()
        if self.schema:
            await drop_schema(self.base, self.schema)
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


async def throughput(url: str, calls: int, run: int, max_batch: int) -> dict:
    rng = random.Random(run)
    work = [billable_call(rng, i) for i in range(calls)]
    chunk = 100
    flat = [[r for c in work[i:i + chunk] for r in c] for i in range(0, calls, chunk)]
    del work
    async with Target(url, run) as store:
        writer = Writer(store, max_batch=max_batch)
        await writer.start()
        gc.collect()
        gcpolicy.tune()
        pid = store.writer_pid() if hasattr(store, "writer_pid") else None
        cpu0, db0 = time.process_time(), backend_cpu_s(pid)
        t0 = time.perf_counter()
        seq = 0
        for recs in flat:
            seq = writer.put(recs)
            await writer.room()
            await asyncio.sleep(0)
        await writer.wait(seq, 300)
        dt = time.perf_counter() - t0
        cpu, db = time.process_time() - cpu0, backend_cpu_s(pid)
        gc.unfreeze()
        out = {"calls": calls, "seconds": dt, "calls_per_s": calls / dt, "loadavg_1m": os.getloadavg()[0],
               "batches": writer.batches,
               "calls_per_batch": calls / max(1, writer.batches), "commit_s": writer.commit_s_total,
               "client_cpu_us_per_call": cpu / calls * 1e6,
               "db_backend_cpu_us_per_call": (db - db0) / calls * 1e6 if db is not None and db0 is not None else None}
        await writer.close()
        return out


async def ack_latency(url: str, rate: float, seconds: float, run: int, max_batch: int) -> dict:
    rng = random.Random(1000 + run)
    warm = int(rate)  # one second of warm-up, not recorded
    n = warm + int(rate * seconds)
    work = [billable_call(rng, i) for i in range(n)]
    async with Target(url, 100 + run) as store:
        writer = Writer(store, max_batch=max_batch)
        await writer.start()
        loop = asyncio.get_running_loop()
        lat: list[float] = []
        late: list[float] = []
        errors = 0

        async def ack(seq: int, t_put: float, keep: bool) -> None:
            nonlocal errors
            try:
                await writer.wait(seq, 5.0)
            except Exception:
                errors += 1
                return
            if keep:
                lat.append(time.perf_counter() - t_put)

        gc.collect()
        gcpolicy.tune()
        tasks = []
        start = loop.time() + 0.01
        for i, recs in enumerate(work):
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            t_put = time.perf_counter()
            late.append(loop.time() - due)
            seq = writer.put(recs)
            tasks.append(asyncio.create_task(ack(seq, t_put, i >= warm)))
        await asyncio.gather(*tasks)
        gc.unfreeze()
        lat.sort()
        late = sorted(late[warm:])
        out = {"rate_per_s": rate, "samples": len(lat), "errors": errors, "loadavg_1m": os.getloadavg()[0],
               "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3, "p999_ms": pct(lat, 0.999) * 1e3,
               "max_ms": lat[-1] * 1e3 if lat else None, "batches": writer.batches,
               "put_lag_p99_ms": pct(late, 0.99) * 1e3}
        await writer.close()
        return out


def backend_cpu_s(pid: int | None) -> float | None:
    """CPU seconds of the writer's PostgreSQL backend (when the server runs on this machine)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------- end to end over HTTP
class HttpConn:
    """One keep-alive HTTP/1.1 connection; requests are sent one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    async def post(self, path: str, body: bytes, headers: str) -> tuple[int, bytes]:
        self.w.write(f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n{headers}\r\n".encode() + body)
        head = await self.r.readuntil(b"\r\n\r\n")
        i = head.lower().find(b"content-length:")
        n = int(head[i + 15:head.index(b"\r\n", i)]) if i >= 0 else 0
        return int(head[9:12]), await self.r.readexactly(n)


async def http_ack_latency(base_url: str, rate: float, seconds: float, run: int) -> dict:
    import subprocess
    import sys

    import httpx
    import websockets

    schema = f"bench_ledger_{os.getpid()}_http{run}"
    admin = "dce_admin_bench_" + "x" * 24
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    log = tempfile.NamedTemporaryFile(prefix="bench-ledger-server-", suffix=".log", delete=False)
    env = {**os.environ, "EXCHANGE_ADMIN_KEY": admin, "EXCHANGE_PORT": str(port),
           "EXCHANGE_DATABASE_URL": with_schema(base_url, schema),
           "EXCHANGE_RATE_LIMIT_HTTP_PER_S": "100000"}  # one publisher key sends 2 requests per tick
    proc = subprocess.Popen([sys.executable, "-m", "exchange", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            for _ in range(400):
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None:
                    raise RuntimeError(f"the server exited; see {log.name}")
                await asyncio.sleep(0.05)
            auth = {"Authorization": f"Bearer {admin}"}
            buyer = (await http.post("/v1/accounts", json={"kind": "buyer", "name": "bench-buyer"}, headers=auth)).json()
            pub = (await http.post("/v1/accounts", json={"kind": "publisher", "name": "bench-pub"}, headers=auth)).json()
            r = await http.post(f"/v1/accounts/{buyer['id']}/deposits", json={"amount_cents": 10**10, "reference": "bench"},
                                headers=auth)
            assert r.status_code == 201, r.text
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/v1/buyers/ws", subprotocols=["dce.json.v1"],
                                      additional_headers={"Authorization": f"Bearer {buyer['api_key']}"}, max_size=None)
        await ws.send(json.dumps({"type": "campaign", "id": "bench", "vertical": "bench_ledger", "bid_cents": 2500,
                                  "min_duration_s": 60, "destination": "+18005550199", "seq": 1}))

        async def drain() -> None:
            async for _ in ws:
                pass

        drainer = asyncio.create_task(drain())
        await asyncio.sleep(0.2)
        pool: asyncio.Queue[HttpConn] = asyncio.Queue()
        for _ in range(64):
            pool.put_nowait(HttpConn(*await asyncio.open_connection("127.0.0.1", port)))
        pub_auth = f"Authorization: Bearer {pub['api_key']}\r\n"
        warm = int(rate)
        n = warm + int(rate * seconds)
        lat: list[float] = []
        route_lat: list[float] = []  # for comparison: the routing request, which waits for no commit
        bad: dict[str, int] = {}

        async def one(i: int) -> None:
            conn = await pool.get()
            try:
                caller = f"+1{(312, 773, 872, 217, 309, 618)[i // 9000 % 6]}555{i % 9000 + 1000:04d}"
                t0 = time.perf_counter()
                status, body = await conn.post("/v1/calls", json.dumps(
                    {"caller": caller, "vertical": "bench_ledger", "state": "IL"}).encode(), pub_auth)
                if i >= warm:
                    route_lat.append(time.perf_counter() - t0)
                d = json.loads(body)
                if status != 200 or d.get("decision") != "routed":
                    bad[f"route {status} {d.get('reason')}"] = bad.get(f"route {status} {d.get('reason')}", 0) + 1
                    return
                t0 = time.perf_counter()
                status, body = await conn.post(f"/v1/calls/{d['call_id']}/events", b'{"event":"completed","duration_s":120}',
                                               pub_auth + f"Idempotency-Key: done-{i}\r\n")
                dt = time.perf_counter() - t0
                if status != 200 or not json.loads(body).get("billable"):
                    bad[f"event {status}"] = bad.get(f"event {status}", 0) + 1
                elif i >= warm:
                    lat.append(dt)
            finally:
                pool.put_nowait(conn)

        loop = asyncio.get_running_loop()
        gc.collect()
        gcpolicy.tune()
        cpu0, srv0 = time.process_time(), backend_cpu_s(proc.pid) or 0.0
        tasks = []
        start = loop.time() + 0.01
        for i in range(n):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        wall = loop.time() - start
        cpu, srv = time.process_time() - cpu0, (backend_cpu_s(proc.pid) or 0.0) - srv0
        gc.unfreeze()
        drainer.cancel()
        await ws.close()
        while not pool.empty():
            pool.get_nowait().w.close()
        lat.sort()
        route_lat.sort()
        return {"rate_per_s": rate, "samples": len(lat), "failures": bad, "loadavg_1m": os.getloadavg()[0],
                "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3, "p999_ms": pct(lat, 0.999) * 1e3,
                "max_ms": lat[-1] * 1e3 if lat else None,
                "route_p50_ms": pct(route_lat, 0.5) * 1e3, "route_p99_ms": pct(route_lat, 0.99) * 1e3,
                "route_p999_ms": pct(route_lat, 0.999) * 1e3,
                "server_cpu_pct": srv / wall * 100, "client_cpu_pct": cpu / wall * 100}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        await drop_schema(base_url, schema)
        os.unlink(log.name)


def pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def median_of(runs: list[dict], keys: tuple[str, ...]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in keys}


async def pg_info(url: str) -> dict:
    import asyncpg

    parts = urlsplit(url)
    query = {k: v for k, v in parse_qsl(parts.query) if k != "schema"}
    conn = await asyncpg.connect(urlunsplit(parts._replace(query=urlencode(query))))
    try:
        rows = await conn.fetch("SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
                                ["server_version", "synchronous_commit", "fsync", "shared_buffers", "wal_buffers"])
        return {r[0]: r[1] for r in rows}
    finally:
        await conn.close()


async def main_async(args: argparse.Namespace) -> dict:
    results: dict = {"benchmark": "ledger", "python": platform.python_version(), "machine": platform.machine(),
                     "cpus": os.cpu_count(), "calls": args.calls, "runs": args.runs, "max_batch": args.max_batch,
                     "postgres_settings": await pg_info(args.database_url)}
    targets = [("postgres", args.database_url)] + ([] if args.skip_sqlite else [("sqlite", "sqlite")])
    print(f"throughput: {args.calls} billable calls per run (hold capture + 3-leg charge + outcome + audit), "
          f"median of {args.runs} runs")
    for name, url in targets:
        runs = [await throughput(url, args.calls, r, args.max_batch) for r in range(args.runs)]
        med = median_of(runs, ("calls_per_s", "calls_per_batch", "client_cpu_us_per_call"))
        if all(r["db_backend_cpu_us_per_call"] is not None for r in runs):
            med |= median_of(runs, ("db_backend_cpu_us_per_call",))
        results[f"throughput_{name}"] = {"median": med, "runs": runs}
        print(f"  {name:<8} {med['calls_per_s']:>9,.0f} calls/s   (runs: "
              + ", ".join(f"{r['calls_per_s']:,.0f}" for r in runs)
              + f"; {med['calls_per_batch']:,.0f} calls/batch; CPU µs/call: client {med['client_cpu_us_per_call']:.1f}"
              + (f", db backend {med['db_backend_cpu_us_per_call']:.1f}" if "db_backend_cpu_us_per_call" in med else "")
              + ")", flush=True)
    if args.seconds > 0:
        runs = [await ack_latency(args.database_url, args.rate, args.seconds, r, args.max_batch) for r in range(args.runs)]
        med = median_of(runs, ("p50_ms", "p99_ms", "p999_ms", "max_ms", "put_lag_p99_ms"))
        results["ack_latency_postgres"] = {"median": med, "runs": runs}
        print(f"ack latency, postgres, {args.rate:,.0f} completions/s open loop for {args.seconds:g} s "
              f"(median of {args.runs} runs):")
        print(f"  p50 {med['p50_ms']:.2f} ms   p99 {med['p99_ms']:.2f} ms   p99.9 {med['p999_ms']:.2f} ms   "
              f"max {med['max_ms']:.2f} ms   (put lag p99 {med['put_lag_p99_ms']:.2f} ms; errors "
              f"{sum(r['errors'] for r in runs)})", flush=True)
    if args.http:
        runs = [await http_ack_latency(args.database_url, args.rate, args.seconds, r) for r in range(args.runs)]
        med = median_of(runs, ("p50_ms", "p99_ms", "p999_ms", "max_ms", "route_p50_ms", "route_p99_ms", "route_p999_ms",
                               "server_cpu_pct", "client_cpu_pct"))
        results["ack_latency_http_postgres"] = {"median": med, "runs": runs}
        print(f"ack latency over HTTP (python -m exchange serve on postgres), {args.rate:,.0f} billable completions/s "
              f"(+ as many routed calls) for {args.seconds:g} s (median of {args.runs} runs):")
        print(f"  p50 {med['p50_ms']:.2f} ms   p99 {med['p99_ms']:.2f} ms   p99.9 {med['p999_ms']:.2f} ms   "
              f"max {med['max_ms']:.2f} ms   (CPU: server {med['server_cpu_pct']:.0f} %, load generator "
              f"{med['client_cpu_pct']:.0f} %; failures {[r['failures'] for r in runs]})")
        print(f"  (for comparison, routing, which awaits no commit: p50 {med['route_p50_ms']:.2f} ms   "
              f"p99 {med['route_p99_ms']:.2f} ms   p99.9 {med['route_p999_ms']:.2f} ms)", flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--database-url", default=os.environ.get("EXCHANGE_BENCH_DATABASE_URL", DEFAULT_URL))
    ap.add_argument("--skip-sqlite", action="store_true")
    ap.add_argument("--calls", type=int, default=60_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-batch", type=int, default=5_000, help="the writer's max records per batch (server default)")
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=10.0, help="ack-latency run length; 0 skips it")
    ap.add_argument("--http", action="store_true", help="also measure the ack end to end over HTTP (starts a server)")
    ap.add_argument("--json", default="bench/results/ledger.json")
    args = ap.parse_args()
    run_and_write(main_async, args, args.json)


if __name__ == "__main__":
    main()
