"""``GET /v1/reports`` over a month of calls at 200 calls/s: how long a report takes to answer.

    python -m bench.reports [--days 30] [--rate 200] [--sample 5000] [--profiles 24] [--repeat 5] [--out FILE]

The exchange is built in this process (``build_app``; its store an embedded SQLite file) and
requests go through the real ASGI app (routing, authentication, the rate limiter, the report
code and the JSON encoder) by ``httpx.ASGITransport``: no socket, so the figures are the
server's own work. The report aggregate (``Tally``) is filled with synthetic calls through its
own update code (``decided``, ``rang``, ``completed``): ``--profiles`` distinct hours (a day's
profile, by default), each from ``--sample`` calls drawn from a market of 40 publishers, 120
buyers with 400 campaigns over 7 verticals and 20 states (two to four bidders a call, a fifth of
the calls without a buyer, most routed calls completed and billable). Each of the month's hours
(``--days`` x 24) then holds one profile's cells with its counters scaled so that the hour
counts ``--rate`` x 3600 calls (720,000 at 200 calls/s; 518 million in 30 days): a report's
cost is per cell and per hour, not per call, and the profiles' cells are shared between the
days that use them (memory for 24 hours of cells, not 720).

For each ``group_by``, as the operator, a buyer and a publisher, over the whole month: the
first request (``cold``: every closed hour grouped once, then cached by the tally) and the
median of ``--repeat`` more (``warm``), in ms and as a ratio to a bare request (``GET /healthz``
through the same app). Writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from exchange.app import build_app
from exchange.instants import rfc3339
from exchange.service import Exchange
from exchange.settings import Settings
from exchange.tally import GROUPS, HOUR_NS, Hour, Tally, sliced

ADMIN = "dce_admin_bench_" + "r" * 24
VERTICALS = ["auto_insurance", "health_insurance", "medicare", "home_services", "legal", "debt_relief", "solar"]
STATES = "CA TX FL NY IL PA OH GA NC MI NJ VA WA AZ MA TN IN MO MD WI".split()
REASONS = ["no_eligible_bid"] * 6 + ["below_floor", "dnc_national", "consent_missing", "caller_velocity", "foreign_number", "outside_calling_hours"]


def fill_profile(tally: Tally, hour_ns: int, sample: int, pubs: list[str], campaigns: list[tuple[str, str, str, frozenset[str]]],
                 rng: random.Random) -> None:
    """``sample`` calls of one hour through the tally's own update code."""
    by_vertical: dict[str, list[tuple[str, str, str, frozenset[str]]]] = {}
    for c in campaigns:
        by_vertical.setdefault(c[2], []).append(c)
    for i in range(sample):
        t = hour_ns + i * (HOUR_NS // sample)
        pub = pubs[i % len(pubs)]
        vertical = VERTICALS[(i // len(pubs) + pubs.index(pub)) % len(VERTICALS)] if rng.random() < 0.8 else rng.choice(VERTICALS)
        state = rng.choice(STATES)
        pool = [c for c in by_vertical[vertical] if not c[3] or state in c[3]]
        bidders = rng.sample(pool, min(len(pool), rng.randint(2, 4))) if rng.random() > 0.2 else []
        floor = rng.choice([0, 0, 500, 1500])
        bids = sorted(((b, c, rng.randrange(300, 6000, 25)) for b, c, _, _ in bidders), key=lambda x: -x[2])
        above = [x for x in bids if x[2] >= floor]
        if above:
            routes = [(b, c) for b, c, _ in above[:2]]
            tally.decided(t, pub, vertical, state, "ok", routes, bids, floor)
            if rng.random() < 0.15 and len(routes) > 1:
                tally.rang(t, pub, vertical, state, *routes[1])
            if rng.random() < 0.85:
                dur = rng.choice([20, 45, 95, 130, 300])
                price = above[0][2]
                billable = dur >= 90
                payout = price * 8 // 10
                tally.completed(t, pub, vertical, state, routes[0], routes[0], "won", dur, billable,
                                price if billable else 0, payout if billable else 0, price - payout if billable else 0)
        else:
            tally.decided(t, pub, vertical, state, "below_floor" if bids else rng.choice(REASONS), [], bids, floor)


def scale(hour: Hour, factor: float) -> Hour:
    out = Hour()
    out.calls = {k: [int(x * factor) for x in c] for k, c in hour.calls.items()}
    out.bids = {k: [int(x * factor) for x in c] for k, c in hour.bids.items()}
    out.own = hour.own
    return out


async def run(args: argparse.Namespace) -> dict:
    settings = Settings(admin_key=ADMIN, database_url=f"sqlite:///{tempfile.mkdtemp(prefix='dce-bench-reports-')}/ledger.db",
                        report_days=args.days + 2, rate_limit_http_per_s=1_000_000, rate_limit_http_burst=1_000_000)
    ex = Exchange(settings)
    app = build_app(settings, ex)
    await ex.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as http:
            admin = {"Authorization": f"Bearer {ADMIN}"}
            accounts: dict[str, tuple[str, str]] = {}
            for kind, n in (("publisher", 40), ("buyer", 120)):
                for i in range(n):
                    r = await http.post("/v1/accounts", json={"kind": kind, "name": f"{kind}{i}"}, headers=admin)
                    body = r.json()
                    accounts[f"{kind}{i}"] = (body["id"], body["api_key"])
            pubs = [accounts[f"publisher{i}"][0] for i in range(40)]
            rng = random.Random(7)
            campaigns = []
            for k in range(400):
                buyer = accounts[f"buyer{k % 120}"][0]
                states = frozenset() if rng.random() < 0.3 else frozenset(rng.sample(STATES, rng.randint(1, 4)))
                campaigns.append((buyer, f"cmp{k}", VERTICALS[k % len(VERTICALS)], states))
            now = ex.clock.now_ns()
            first = now // HOUR_NS - args.days * 24
            t0 = time.perf_counter()
            profiles = []
            for p in range(args.profiles):
                scratch = Tally(args.days + 2)
                fill_profile(scratch, (first + p) * HOUR_NS, args.sample, pubs, campaigns, rng)
                (hour,) = scratch.hours.values()
                calls = sum(c[0] for c in hour.calls.values())
                profiles.append(scale(hour, args.rate * 3600 / calls))
            tally = ex.desk.tally
            for h in range(first, now // HOUR_NS + 1):
                prof = profiles[h % args.profiles]
                hour = Hour()
                hour.calls, hour.bids, hour.own = prof.calls, prof.bids, prof.own  # shared between the days that use this profile
                tally.hours[h] = hour
            fill_s = time.perf_counter() - t0
            cells = statistics.fmean(len(p.calls) + len(p.bids) for p in profiles)
            month_calls = sum(sum(c[0] for c in tally.hours[h].calls.values()) for h in tally.hours)
            print(f"filled {len(tally.hours)} hours ({month_calls:,} calls; {cells:,.0f} cells an hour) in {fill_s:.1f} s", flush=True)

            async def timed(path: str, key: str) -> tuple[float, int]:
                t = time.perf_counter_ns()
                r = await http.get(path, headers={"Authorization": f"Bearer {key}"})
                dt = (time.perf_counter_ns() - t) / 1e6
                assert r.status_code == 200, r.text
                return dt, len(r.content)

            seal: dict = {"sealed": not args.no_seal}
            if not args.no_seal:  # the exchange's background pass (Exchange._sealer), timed here with the loop's longest stall
                gaps: list[float] = []
                done = False

                async def ticker() -> None:
                    last = time.perf_counter()
                    while not done:
                        await asyncio.sleep(0)
                        t = time.perf_counter()
                        gaps.append(t - last)
                        last = t

                tick = asyncio.create_task(ticker())
                t0, c0 = time.perf_counter(), time.process_time()
                await sliced(tally.seal(now))
                seal.update(wall_s=round(time.perf_counter() - t0, 2), cpu_s=round(time.process_time() - c0, 2),
                            longest_stall_ms=round(max(gaps, default=0) * 1000, 1), stall_p99_ms=round(sorted(gaps)[int(len(gaps) * .99)] * 1000, 2) if gaps else None)
                done = True
                await tick
                print(f"sealed (background pass): {seal['wall_s']} s wall, {seal['cpu_s']} s CPU; the event loop's longest stall "
                      f"{seal['longest_stall_ms']} ms", flush=True)
            bare = [(await timed("/healthz", ADMIN))[0] for _ in range(50)]
            bare_ms = statistics.median(bare)
            lo = rfc3339(first * HOUR_NS)
            who = {"operator": ADMIN, "buyer": accounts["buyer3"][1], "publisher": accounts["publisher5"][1]}
            results = []
            print(f"bare request (GET /healthz): {bare_ms:.3f} ms")
            print(f"{'caller':>9} {'group_by':>9} {'rows':>6} {'cold ms':>9} {'warm ms':>9} {'warm/bare':>9}")
            for kind, key in who.items():
                for g in GROUPS:
                    path = f"/v1/reports?group_by={g}&from={lo}"
                    cold, size = await timed(path, key)
                    warm = [(await timed(path, key))[0] for _ in range(args.repeat)]
                    r = await http.get(path, headers={"Authorization": f"Bearer {key}"})
                    rows = len(r.json()["rows"])
                    w = statistics.median(warm)
                    results.append({"caller": kind, "group_by": g, "rows": rows, "bytes": size, "cold_ms": round(cold, 2),
                                    "warm_ms": round(w, 2), "warm_ratio_to_bare": round(w / bare_ms, 1)})
                    print(f"{kind:>9} {g:>9} {rows:>6} {cold:>9.1f} {w:>9.1f} {w / bare_ms:>9.1f}", flush=True)
            # the dashboard's snapshot (exchange/dashboard.py): its report-built parts (recomputed at most every
            # 5 s per account, grouping the open hour's cells) and the per-interval rest (counters only)
            from exchange import dashboard
            from exchange.accounts import OPERATOR

            snaps = []
            print(f"{'dashboard':>9} {'snapshot, report parts ms':>26} {'snapshot, counters only ms':>27}")
            for kind, acct in (("operator", OPERATOR), ("buyer", ex.accounts.by_id[accounts["buyer3"][0]]),
                               ("publisher", ex.accounts.by_id[accounts["publisher5"][0]])):
                probe = dashboard.Probe()
                slow, fast = [], []
                for _ in range(args.repeat):
                    dashboard._slow_cache.clear()
                    t = time.perf_counter_ns()
                    dashboard.snapshot(ex, acct, probe)
                    slow.append((time.perf_counter_ns() - t) / 1e6)
                    t = time.perf_counter_ns()
                    dashboard.snapshot(ex, acct, probe)
                    fast.append((time.perf_counter_ns() - t) / 1e6)
                snaps.append({"caller": kind, "report_parts_ms": round(statistics.median(slow), 2), "counters_ms": round(statistics.median(fast), 3)})
                print(f"{kind:>9} {statistics.median(slow):>26.1f} {statistics.median(fast):>27.3f}", flush=True)
            return {"benchmark": "reports", "dashboard_snapshots": snaps, "python": platform.python_version(), "days": args.days, "rate_calls_per_s": args.rate,
                    "hours": len(tally.hours), "month_calls": month_calls, "cells_per_hour": cells, "sample_calls_per_profile": args.sample,
                    "profiles": args.profiles, "seal": seal, "bare_ms": round(bare_ms, 3), "results": results}
    finally:
        await ex.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--sample", type=int, default=5000, help="synthetic calls pushed through the tally per distinct hour")
    ap.add_argument("--profiles", type=int, default=24, help="distinct hours; the month's hours cycle through them")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-seal", action="store_true", help="skip the background sealing pass: cold = a report before it ran")
    ap.add_argument("--out", default="bench/results/reports.json")
    args = ap.parse_args()
    out = asyncio.run(run(args))
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
