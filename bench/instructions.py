"""Instruction counts, which do not drift with the host: one decision, one bid, one lifecycle.

    python -m bench.instructions [--ops decision,bid,lifecycle] [--out FILE]

Each figure is measured under ``valgrind --tool=callgrind`` over the measured region only: the
worker calls ``os.getppid()`` right before its N operations and ``os.getpgrp()`` right after,
and callgrind zeroes its counters when entering the first (``--zero-before``) and dumps them
when entering the second (``--dump-before``): instructions per op = that dump's total / N.
The set-up is identical in every run (``PYTHONHASHSEED=0``, seeded data, the cyclic collector
off for the decision and the bid: ``quiet_gc``), and the BLAS/OpenMP pools that numpy starts
are held to one thread: their idle workers spin, and a spinning thread's instructions depend on
wall time (that is what made the decision's count drift by millions between runs of the same
code until 2026-12-07). Each op is counted in two runs and both are reported, so a count that
does drift shows. Times on these hosts vary by up to 4x between sessions; these counts change
only when the code does, so a regression shows in them.

- ``decision``: ``prepare`` + ``decide`` for one inbound call, book of 100,000 campaigns
  (``bench.decision``'s book), no bid updates between calls.
- ``bid``: one bid of a 100-bid JSON frame decoded and applied to a 1,000-campaign book, as
  the gateway does (``decode_frame`` + ``Book.reprice``), prices a random walk.
- ``lifecycle``: one call through the ASGI app in process (``POST /v1/calls``, events
  ``connected`` and ``completed``; the campaign's buyer has no open socket, so no notice is
  encoded or sent), the embedded store writing in its own thread.
- ``bare``: one ``GET`` of a bare Starlette app through the same in-process client: the unit
  the lifecycle is divided by (a lifecycle is three requests plus their work; the issue's
  target is at most 5 bare requests of server CPU).
- ``quality_off``, ``quality_signals``, ``quality_all`` (issue 14): ``prepare`` + ``decide`` of
  ``bench.decision --quality``'s calls in each of its modes, book of 10,000 campaigns, after
  1,000 calls that fill the signals' windows; each completed call's event is applied between
  two decisions, outside the count (every decision is its own region: one dump each, summed).
  Their ratios to ``quality_off`` are the decision's cost of the signals (and of attestation
  with bid modifiers), free of the host's noise that the p99 ratios carry.
- ``writer_off``, ``writer_distinct``, ``writer_pool`` (issue 14): the ledger writer's work for one
  routed billable call (``bench.privacy``'s records; ``_writer`` says what is counted), numbers
  as given or sealed (a new number every call, or 1,000 callers again and again): the
  instruction side of ``bench.privacy``'s throughput ratio, free of the disk's and the host's noise.
- ``client``: the lifecycle's three requests, sent the same way, answered by a stub ASGI app
  with canned bodies: the in-process client's (httpx) share of the lifecycle, which no change
  to the exchange can lower (since 2026-12-07 session 5; the lifecycle less this is the
  exchange's own work, printed beside the ratio).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

N = {"decision": 200, "bid": 20_000, "lifecycle": 100, "bare": 300, "client": 100,
     "quality_off": 1000, "quality_signals": 1000, "quality_all": 1000,
     "writer_off": 1000, "writer_distinct": 1000, "writer_pool": 1000}
QUALITY_BOOK = 10_000  # campaigns of the quality ops' book (bench.decision --quality's middle size)
START, STOP = "os_getppid", "os_getpgrp"  # the C functions behind the region's two markers


def region_start() -> None:
    os.getppid()


def region_stop() -> None:
    os.getpgrp()


# ---------------------------------------------------------------- the measured child
def quiet_gc() -> None:
    """No collection inside the measured region: whether the cyclic collector happens to run
    there (a full one walks 100,000 campaigns) depends on allocation counts far from the ops."""
    import gc

    gc.collect()
    gc.freeze()
    gc.disable()


def _decision(n: int) -> None:
    import random

    from bench.decision import AREA, NOW_NS, STATES, VERTICALS, build
    from exchange.messages import CallRequest
    from exchange.pipeline import decide, prepare

    rng = random.Random(1)
    core, _ = build(100_000, rng)
    reqs = [CallRequest(caller=f"+1{AREA[st]}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}", vertical=rng.choice(VERTICALS))
            for st in (rng.choice(STATES) for _ in range(1000))]
    warm = len(reqs)  # every request once first: the compliance week tables of each candidate set are built then
    quiet_gc()
    for i in range(warm + n):
        if i == warm:
            region_start()
        p = prepare(core, reqs[i % len(reqs)], "pub", f"call{i}", NOW_NS + i)
        decide(core, p, {}, NOW_NS + i)
    region_stop()


def _quality(mode: str, n: int) -> None:
    from bench.decision import NOW_NS, quality_calls
    from exchange.lifecycle import apply_event
    from exchange.pipeline import decide, prepare

    warm = 1000
    core, reqs, durations = quality_calls(QUALITY_BOOK, warm + n, 1, mode)
    quiet_gc()
    now = NOW_NS
    for i, req in enumerate(reqs):
        now += 1_000_000
        if i >= warm:
            region_start()
        p = prepare(core, req, f"pub{i % 20}", f"call{i}", now)
        rec, _ = decide(core, p, {}, now)
        if i >= warm:
            region_stop()
        if rec.status == "routed":
            apply_event(core, rec, "k", durations[i % 64], now)


def _writer(mode: str, n: int) -> None:
    """What the ledger writer spends on ``n`` routed billable calls (``bench.privacy``'s
    records): ``billing.trail.fill`` (what ``Writer._take`` runs on the loop: sealing, the
    audit chain) and ``SqliteStore._write`` (what the store's thread runs: the inserts and the
    commit), in batches of 100 calls, after as many calls outside the region. Called here on
    one thread, so the count holds no thread hand-over; the commit's fsync is a system call
    whose wait no instruction count sees (bench.privacy measures the throughput with it)."""
    import random
    import shutil

    from bench.privacy import call_records, number
    from billing.audit import Chain
    from billing.sqlitestore import SqliteStore
    from billing.store import Batch
    from billing.trail import fill
    from billing.vault import Vault, parse_master_keys

    rng = random.Random(1)
    vault = None if mode == "off" else Vault(parse_master_keys("11" * 32), b"\x22" * 32)
    work = tempfile.mkdtemp(prefix="bench-instr-")
    store = SqliteStore(f"{work}/ledger.db")
    store._open()
    chain = Chain()

    def calls(first: int) -> list[list[Any]]:
        callers = [number(first + i) if mode != "pool" else number(rng.randrange(1000)) for i in range(n)]
        recs = [call_records(rng, first + i, callers[i]) for i in range(n)]
        return [[r for c in recs[i:i + 100] for r in c] for i in range(0, n, 100)]

    def write(chunks: list[list[Any]]) -> None:
        for records in chunks:
            batch = Batch()
            fill(batch, records, chain.append, vault)
            store._write(batch)
            if vault is not None:
                vault.saved(batch.keys)

    write(calls(0))
    chunks = calls(n)
    quiet_gc()
    region_start()
    write(chunks)
    region_stop()
    shutil.rmtree(work, ignore_errors=True)


def _bid(n: int) -> None:
    import random

    import msgspec

    from routing.book import Book
    from exchange.codec import decode_buyer_frame
    from exchange.messages import Bid, Campaign

    rng = random.Random(1)
    book = Book()
    price = {}
    for i in range(1000):
        c = Campaign(id=f"c{i}", vertical=f"v{i % 7}", bid_cents=rng.randrange(800, 6000), states=[] if i % 3 == 0 else ["CA", "TX"],
                     min_duration_s=60, destination="+18005550199")
        book.upsert("b", c)
        price[c.id] = c.bid_cents
    frames = []
    ids = list(price)
    for _ in range(20 + N["bid"] // 100):  # the same frames in both runs, whatever n
        bids = []
        for _ in range(100):
            cid = rng.choice(ids)
            price[cid] = max(100, price[cid] + rng.choice((-1, 1)) * rng.choice((5, 25, 100)))
            bids.append(Bid(campaign=cid, bid_cents=price[cid]))
        frames.append(msgspec.json.encode(bids))
    def apply(frame: bytes) -> None:
        msgs, _, _ = decode_buyer_frame(frame)
        for m in msgs:
            book.reprice("b", m.campaign, m.bid_cents)
    quiet_gc()
    for f in frames[:20]:  # warm-up, the same in both runs
        apply(f)
    region_start()
    for f in frames[20:20 + n // 100]:
        apply(f)
    region_stop()


def _lifecycle(n: int) -> None:
    import asyncio

    import httpx

    from exchange.app import build_app
    from exchange.settings import load

    async def main() -> None:
        work = tempfile.mkdtemp(prefix="bench-instr-")
        settings = load({"EXCHANGE_ADMIN_KEY": "admin", "EXCHANGE_DATABASE_URL": f"sqlite:///{work}/x.db",
                         "EXCHANGE_COMPLIANCE_DIR": f"{work}/c", "EXCHANGE_LOG_LEVEL": "warning"})
        app = build_app(settings)
        async with app.router.lifespan_context(app):
            ex = app.state.exchange
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as http:
                admin = {"Authorization": "Bearer admin"}
                b = (await http.post("/v1/accounts", json={"kind": "buyer", "name": "b"}, headers=admin)).json()
                await http.post(f"/v1/accounts/{b['id']}/deposits", json={"amount_cents": 10**10, "reference": "d"}, headers=admin)
                p = (await http.post("/v1/accounts", json={"kind": "publisher", "name": "p"}, headers=admin)).json()
                from exchange.messages import Campaign
                ex.core.book.upsert(b["id"], Campaign(id="c", vertical="auto", bid_cents=2000, min_duration_s=60, destination="+18005550199"))
                await _lifecycles(http, {"Authorization": f"Bearer {p['api_key']}"}, n)

    asyncio.run(main())


async def _lifecycles(http: Any, pub: dict[str, str], n: int) -> None:
    """``n`` call lifecycles (the call, ``connected``, ``completed``) through ``http`` inside the
    measured region, after 10 outside it: what the ``lifecycle`` and ``client`` ops both send."""
    async def one(i: int) -> None:
        d = (await http.post("/v1/calls", json={"caller": f"+1212555{i:04d}", "vertical": "auto"}, headers=pub)).json()
        assert d["decision"] == "routed", d
        for ev in ({"event": "connected"}, {"event": "completed", "duration_s": 120}):
            r = await http.post(f"/v1/calls/{d['call_id']}/events", json=ev, headers={**pub, "Idempotency-Key": ev["event"]})
            assert r.status_code == 200, r.text
    for i in range(10):  # warm-up
        await one(i)
    region_start()
    for i in range(n):
        await one(100 + i)
    region_stop()


def _client(n: int) -> None:
    import asyncio

    import httpx

    routed = b'{"call_id":"call_0123456789abcdef","decision":"routed"}'
    done = b'{"status":"ok"}'

    async def stub(scope, receive, send):  # answers at once, like nothing else
        if scope["type"] != "http":
            return
        await receive()
        body = routed if scope["path"] == "/v1/calls" else done
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=stub), base_url="http://x") as http:
            await _lifecycles(http, {"Authorization": "Bearer dce_" + "k" * 43}, n)  # a key of new_key()'s length

    asyncio.run(main())


def _bare(n: int) -> None:
    import asyncio

    import httpx
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def ok(request):  # the same shape of answer as /healthz
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/x", ok)])

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as http:
            for _ in range(10):
                assert (await http.get("/x")).status_code == 200
            region_start()
            for _ in range(n):
                assert (await http.get("/x")).status_code == 200
            region_stop()

    asyncio.run(main())


WORKERS: dict[str, Any] = {"decision": _decision, "bid": _bid, "lifecycle": _lifecycle, "bare": _bare, "client": _client,
                           **{f"quality_{m}": (lambda n, m=m: _quality(m, n)) for m in ("off", "signals", "all")},
                           **{f"writer_{m}": (lambda n, m=m: _writer(m, n)) for m in ("off", "distinct", "pool")}}


# ---------------------------------------------------------------- the driver
def count(op: str, n: int) -> int:
    """Instructions of ``op``'s measured region (N operations) in one child under callgrind."""
    return sum(regions(op, n))


def regions(op: str, n: int) -> list[int]:
    """Instructions of each of ``op``'s measured regions, in order, in one child under callgrind
    (one region for most ops; one per decision for the quality ops)."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out", f"--zero-before={START}*", f"--dump-before={STOP}*",
             sys.executable, "-m", "bench.instructions", "--worker", op, str(n)], env=env, capture_output=True, text=True, check=True)
        dumps = sorted(Path(tmp).glob("cg.out.*"))  # one per region (most ops have one)
        if not dumps:
            raise RuntimeError("callgrind never reached the region's end marker:\n" + out.stderr[-2000:])
        counts = []
        for dump in sorted(dumps, key=lambda d: int(d.name.rsplit(".", 1)[1])):
            m = re.search(r"^summary: (\d+)", dump.read_text(errors="replace"), re.M)
            if m is None:
                raise RuntimeError(f"{dump.name} has no summary:\n" + out.stderr[-2000:])
            counts.append(int(m.group(1)))
    return counts


def quantile(xs: list[int], q: float) -> int:
    """The nearest-rank quantile of ``xs``."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", default="decision,bid,lifecycle,bare,client")
    ap.add_argument("--worker", nargs=2, metavar=("OP", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default="bench/results/instructions.json")
    ap.add_argument("--runs", type=int, default=2, help="children per op (their counts should agree)")
    args = ap.parse_args()
    if args.worker:
        WORKERS[args.worker[0]](int(args.worker[1]))
        return
    results = {}
    for op in args.ops.split(","):
        n = N[op]
        each = [regions(op, n) for _ in range(args.runs)]
        runs = [sum(c) for c in each]
        per = [r / n for r in runs]
        spread = (max(per) - min(per)) / min(per)
        results[op] = {"instructions_per_op": round(min(per)), "ops": n, "per_op_each_run": [round(x) for x in per],
                       "region_instructions": runs, "spread": round(spread, 6)}
        if len(each[0]) == n:  # one region per op: the ops' distribution (the first run's)
            results[op].update(p50=quantile(each[0], 0.5), p99=quantile(each[0], 0.99), max=max(each[0]))
        print(f"{op:>10}: {min(per):,.0f} instructions per op  ({n} ops; runs {', '.join(f'{x:,.0f}' for x in per)}; "
              f"spread {spread:.4%})", flush=True)
    if "lifecycle" in results and "bare" in results:
        ratio = results["lifecycle"]["instructions_per_op"] / results["bare"]["instructions_per_op"]
        results["lifecycle_over_bare_request"] = round(ratio, 2)
        print(f"lifecycle = {ratio:.1f} bare requests (in process, client included in both)")
        if "client" in results:
            own = results["lifecycle"]["instructions_per_op"] - results["client"]["instructions_per_op"]
            results["lifecycle_less_client"] = own
            results["client_over_bare_request"] = round(results["client"]["instructions_per_op"] / results["bare"]["instructions_per_op"], 2)
            print(f"of which the in-process client's three requests (stub app): {results['client_over_bare_request']:.1f} bare; "
                  f"the exchange's own work: {own:,} instructions = {own / results['bare']['instructions_per_op']:.1f} bare")
    if "quality_off" in results:
        off = results["quality_off"]["instructions_per_op"]
        for m in ("signals", "all"):
            if f"quality_{m}" in results:
                q = results[f"quality_{m}"]
                ratio = q["instructions_per_op"] / off
                results[f"quality_{m}_over_off"] = round(ratio, 3)
                p99 = q["p99"] / results["quality_off"]["p99"]
                results[f"quality_{m}_p99_over_off"] = round(p99, 3)
                print(f"decision with {m} = {ratio:.3f}x off on average, p99 {q['p99']:,} = {p99:.3f}x off's "
                      f"{results['quality_off']['p99']:,} (target <= 1.15x, issue 14)")
    if "writer_off" in results:
        off = results["writer_off"]["instructions_per_op"]
        for m in ("distinct", "pool"):
            if f"writer_{m}" in results:
                ratio = off / results[f"writer_{m}"]["instructions_per_op"]
                results[f"writer_{m}_throughput_over_off"] = round(ratio, 3)
                print(f"writer throughput sealed ({m}) = {ratio:.3f}x plain, by instructions (target >= 0.8x, issue 14)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "instructions", "python": sys.version.split()[0], "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
