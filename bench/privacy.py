"""Writer throughput with consumer numbers sealed (billing.vault) vs stored as given, same run.

    python -m bench.privacy [--database-url URL] [--calls 30000] [--runs 3] [--skip-postgres]
                            [--pool 10000] [--json bench/results/privacy.json]

One call is what the writer stores for a routed call that completes billably: its decision
record (the request with the caller's number, compliance evidence, bids, the route; the
record the writer seals), the hold, the publisher's event record, the capture, the 3-leg
charge and the outcome (bench.ledger's billable call plus the two audit records with
bodies). Records are built before the clock starts; every call is put on the real
``billing.writer.Writer`` as fast as it accepts them and the clock stops at the last commit.

``off``: a writer without a vault (numbers as given, the exchange before this change);
``on``: the same records through a writer with a vault: each decision's ``number`` becomes
its blind index (HMAC-SHA-256) and ``caller``/``consumer`` are sealed (AES-256-GCM under the
number's data key, a new key wrapped and stored in the same batch the first time a number is
seen). Two caller mixes: ``distinct`` (every call a new number: one new data key per call,
the worst case) and ``pool`` (``--pool`` numbers called again and again: keys cached).
Runs alternate off/on on fresh stores (SQLite file, PostgreSQL schema); the figure is the
median over runs of on/off calls/s of adjacent runs. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import random
import statistics
import time

from bench.ledger import DEFAULT_URL, START_NS, Target, billable_call, pg_info
from billing import keystore
from billing.records import AuditEvent, Record
from billing.vault import new_master_key_text, parse_master_keys
from billing.writer import Writer
from exchange import gcpolicy
from exchange.messages import CallEvent, CallRequest, EventResponse
from bench import run_and_write

EVIDENCE = {"gate": "gate-7", "rules": "rules-2026-11", "npa_table": "npa-2026-10", "tzdata": "2025.2", "holidays": "us-2026",
            "national_dnc": "national:2026-11-01:n=253012345:crc=1a2b3c4d", "dnc_snapshot_date": "2026-11-01", "state_dnc": {},
            "litigators": "litigators-none", "rnd": "rnd-none", "flags": "flags-0", "suppressions": 3, "consents": 1,
            "reason": "ok"}
NPAS = ("415", "212", "312", "713", "305", "617", "404", "206", "303", "702")


def number(i: int) -> str:
    return f"+1{NPAS[i % len(NPAS)]}{200 + (i // 10) % 800:03d}{(i // 8000) % 10000:04d}"


def call_records(rng: random.Random, n: int, caller: str) -> list[Record]:
    """A decision and an event record around bench.ledger's billable call."""
    money = billable_call(rng, n)
    capture, entry, outcome = money
    at = capture.at_ns
    call_id = capture.call_id
    request = CallRequest(caller=caller, vertical="auto_insurance", state="CA", floor_cents=100)
    route = {"buyer": outcome.buyer, "campaign": outcome.campaign, "price_cents": outcome.price_cents,
             "destination": "+18005550199", "min_duration_s": 60, "payout_cents": outcome.payout_cents}
    decision = AuditEvent(at - 120_000_000_000, "decision", call_id, caller, {
        "publisher": outcome.publisher, "request": request,
        "decision": {"decision": "routed", "reason": "ok", "route": route, "fallbacks": []},
        "compliance": EVIDENCE, "bids": [{"buyer": f"b{k}", "campaign": f"c{k}", "bid_cents": 1000 + k, "live": False} for k in range(3)],
        "routes": [route]})
    hold = capture._replace(kind="hold", at_ns=at - 119_000_000_000)
    ev = CallEvent(event="completed", duration_s=95)
    resp = EventResponse(call_id=call_id, status="completed", billable=True, charged_cents=outcome.price_cents,
                         payout_cents=outcome.payout_cents)
    event = AuditEvent(at, "event", call_id, None, {"key": f"k{n}", "event": ev, "response": resp, "route_index": 0,
                                                    "status": "completed", "billable": True, "charged_cents": outcome.price_cents,
                                                    "publisher": outcome.publisher, "buyer": outcome.buyer, "event_route": 0})
    return [decision, hold, event, capture, entry, outcome]


async def run_once(url: str, calls: int, run: int, sealed: bool, mix: str, pool: int) -> dict:
    rng = random.Random(run)
    callers = [number(i) if mix == "distinct" else number(rng.randrange(pool)) for i in range(calls)]
    work = [call_records(rng, i, callers[i]) for i in range(calls)]
    chunk = 100
    flat = [[r for c in work[i:i + chunk] for r in c] for i in range(0, calls, chunk)]
    del work
    async with Target(url, run) as store:
        vault = await keystore.open_vault(store, parse_master_keys(new_master_key_text()), START_NS) if sealed else None
        writer = Writer(store, vault=vault)
        await writer.start()
        gc.collect()
        gcpolicy.tune()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        seq = 0
        for recs in flat:
            seq = writer.put(recs)
            await writer.room()
            await asyncio.sleep(0)
        await writer.wait(seq, 600)
        dt = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        gc.unfreeze()
        keys = (await store.fetch("SELECT count(*) FROM privacy_keys"))[0][0]
        await writer.close()
        return {"sealed": sealed, "mix": mix, "calls": calls, "seconds": dt, "calls_per_s": calls / dt,
                "client_cpu_us_per_call": cpu / calls * 1e6, "data_keys": int(keys), "loadavg_1m": os.getloadavg()[0]}


async def main_async(args: argparse.Namespace) -> dict:
    results: dict = {"benchmark": "privacy", "python": platform.python_version(), "cpus": os.cpu_count(), "calls": args.calls,
                     "runs": args.runs, "pool": args.pool}
    targets = ([] if args.skip_postgres else [("postgres", args.database_url)]) + [("sqlite", "sqlite")]
    if not args.skip_postgres:
        results["postgres_settings"] = await pg_info(args.database_url)
    print(f"writer throughput, {args.calls} routed billable calls per run (decision + event audit records, hold, capture, "
          f"charge, outcome), sealed (on) vs as given (off), alternating, {args.runs} pairs")
    for name, url in targets:
        for mix in ("distinct", "pool"):
            pairs = []
            for r in range(args.runs):
                order = (False, True) if r % 2 == 0 else (True, False)
                got = {s: await run_once(url, args.calls, 100 * r + int(s), s, mix, args.pool) for s in order}
                pairs.append({"off": got[False], "on": got[True], "ratio": got[True]["calls_per_s"] / got[False]["calls_per_s"]})
            med = {"ratio_on_off": statistics.median(p["ratio"] for p in pairs),
                   "off_calls_per_s": statistics.median(p["off"]["calls_per_s"] for p in pairs),
                   "on_calls_per_s": statistics.median(p["on"]["calls_per_s"] for p in pairs),
                   "off_client_cpu_us_per_call": statistics.median(p["off"]["client_cpu_us_per_call"] for p in pairs),
                   "on_client_cpu_us_per_call": statistics.median(p["on"]["client_cpu_us_per_call"] for p in pairs),
                   "on_data_keys": statistics.median(p["on"]["data_keys"] for p in pairs)}
            results[f"{name}_{mix}"] = {"median": med, "pairs": pairs}
            ratios = ", ".join(f"{p['ratio']:.2f}" for p in pairs)
            print(f"  {name:<8} {mix:<8} off {med['off_calls_per_s']:>8,.0f}/s  on {med['on_calls_per_s']:>8,.0f}/s  "
                  f"on/off {med['ratio_on_off']:.2f} (pairs: {ratios}); "
                  f"client CPU µs/call {med['off_client_cpu_us_per_call']:.0f} -> {med['on_client_cpu_us_per_call']:.0f}; "
                  f"data keys {med['on_data_keys']:,.0f}", flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--database-url", default=os.environ.get("EXCHANGE_BENCH_DATABASE_URL", DEFAULT_URL))
    ap.add_argument("--skip-postgres", action="store_true")
    ap.add_argument("--calls", type=int, default=30_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pool", type=int, default=10_000, help="callers of the 'pool' mix")
    ap.add_argument("--json", default="bench/results/privacy.json")
    args = ap.parse_args()
    run_and_write(main_async, args, args.json)


if __name__ == "__main__":
    main()
