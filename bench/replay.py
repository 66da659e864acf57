"""What recording the auction replay costs a decision: ``decision_us`` with it on vs off, one run.

    python -m bench.replay [--calls 20000] [--sizes 10000,100000] [--runs 3] [--out FILE]

One core per book; its settings are swapped between two that differ only in ``auction_replay``
from one call to the next (on, off, on, off... over one stream of calls), so both sides see the
same book, the same state and the same kind of calls, and each decision is timed as
``decision_us`` counts it (``prepare`` + ``decide``, the pure steps). Each run draws its own
calls. Books:

- ``clean``: the decision bench's book (bench/decision.py: 20% wide campaigns, half with an
  all-day schedule, funded buyers);
- ``walked``: the same plus, in every bucket, higher bids that each call walks and refuses
  (area codes no caller has, so they are never parked): the replay records each of them;
- ``parked``: 90% of the book closed for the day (a schedule open on no day of the run) and
  parked on arrival (``Core.upsert_campaign``), which the replay counts per bucket, not walked.

Prints p50 / mean / p99 µs for each side and their ratios (target: on/off <= 1.1); writes JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import time
from pathlib import Path

from billing.postings import buyer_account, deposit
from exchange import gcpolicy
from exchange.core import Core
from exchange.lifecycle import apply_event
from exchange.messages import CallEvent, CallRequest, Campaign, Caps, Schedule
from exchange.pipeline import decide, prepare
from exchange.settings import Settings

from .decision import ALL_DAY, AREA, NOW_NS, STATES, VERTICALS, pct

SUNDAY_ONLY = Schedule(tz="America/New_York", hours={"sun": [("00:00", "24:00")]})  # NOW_NS is a Wednesday


def build(n: int, book: str, seed: int) -> Core:
    rng = random.Random(seed)
    core = Core(Settings(rtb_tmax_ms=0, pricing="second"))
    buyers = max(10, n // 20)
    for b in range(buyers):
        core.ledger.post(deposit(buyer_account(f"b{b}"), 10**12, f"d{b}", 0))
    for i in range(n):
        buyer = f"b{i % buyers}"
        states = [] if rng.random() < 0.2 else rng.sample(STATES, rng.randint(1, 3))
        closed = book == "parked" and rng.random() < 0.9
        walked = book == "walked" and rng.random() < 0.01
        c = Campaign(
            id=f"c{i}", vertical=rng.choice(VERTICALS), bid_cents=rng.randrange(8000, 9000) if walked or closed else rng.randrange(500, 8000),
            states=states, area_codes=[999] if walked else None,
            schedule=SUNDAY_ONLY if closed else Schedule(tz="America/New_York", hours=ALL_DAY) if rng.random() < 0.5 else None,
            caps=Caps(concurrency=1000, daily=10**6), daily_budget_cents=10**11, min_duration_s=60,
            dedupe_days=rng.choice([0, 30]), destination="+18005550199",
        )
        core.upsert_campaign(buyer, c, NOW_NS)
    return core


def run_once(core: Core, calls: int, seed: int, start_ns: int) -> dict[str, list[int]]:
    rng = random.Random(seed + 1000)
    reqs = []
    for _ in range(2 * calls):
        st = rng.choice(STATES)
        reqs.append(CallRequest(caller=f"+1{AREA[st]}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}", vertical=rng.choice(VERTICALS)))
    sides = {"on": Settings(rtb_tmax_ms=0, pricing="second", auction_replay=True),
             "off": Settings(rtb_tmax_ms=0, pricing="second", auction_replay=False)}
    done = CallEvent(event="completed", duration_s=120)
    samples: dict[str, list[int]] = {"on": [], "off": []}
    now = start_ns
    gc.collect()
    gcpolicy.tune()
    for i, req in enumerate(reqs):
        side = ("on", "off")[(i + i // 2) % 2]  # on, off, off, on, on, off...: neither side always goes first
        core.settings = sides[side]
        now += 1_000_000
        t0 = time.perf_counter_ns()
        p = prepare(core, req, "pub", f"call{seed}.{i}", now)
        rec, _ = decide(core, p, {}, now)
        samples[side].append(time.perf_counter_ns() - t0)
        if rec.status == "routed":
            apply_event(core, rec, "k", done, now)
        core.calls.pop(rec.call_id, None)
        core.finished.clear()
    gc.unfreeze()
    return samples


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--books", default="clean,walked,parked")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default="bench/results/replay.json")
    args = ap.parse_args()
    results = []
    print(f"{'campaigns':>9} {'book':>7}  {'off p50':>7} {'on p50':>7} {'ratio':>5}  {'off mean':>8} {'on mean':>8} {'ratio':>5}  "
          f"{'off p99':>7} {'on p99':>7} {'ratio':>5}   (µs; median of {args.runs} runs, {args.calls} calls each side)")
    for n in (int(x) for x in args.sizes.split(",")):
        for book in args.books.split(","):
            runs = []
            core = build(n, book, seed=0)
            for r in range(args.runs):
                s = run_once(core, args.calls, seed=r, start_ns=NOW_NS + r * 3_600_000_000_000)
                row = {}
                for side in ("off", "on"):
                    x = sorted(s[side])
                    row[side] = {"p50_us": pct(x, 0.5), "mean_us": statistics.fmean(x) / 1000, "p99_us": pct(x, 0.99)}
                row["ratio"] = {k: row["on"][k] / row["off"][k] for k in ("p50_us", "mean_us", "p99_us")}
                runs.append(row)
            med = {side: {k: statistics.median(run[side][k] for run in runs) for k in ("p50_us", "mean_us", "p99_us")}
                   for side in ("off", "on", "ratio")}
            results.append({"campaigns": n, "book": book, "median": med, "runs": runs})
            o, i, q = med["off"], med["on"], med["ratio"]
            print(f"{n:>9} {book:>7}  {o['p50_us']:>7.1f} {i['p50_us']:>7.1f} {q['p50_us']:>5.2f}  {o['mean_us']:>8.1f} {i['mean_us']:>8.1f} "
                  f"{q['mean_us']:>5.2f}  {o['p99_us']:>7.1f} {i['p99_us']:>7.1f} {q['p99_us']:>5.2f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "replay", "python": platform.python_version(), "calls": args.calls, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
