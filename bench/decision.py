"""The pure decision path: gate + auction + routing for one call, with 1K/10K/100K campaigns.

    python -m bench.decision [--calls 20000] [--sizes 1000,10000,100000] [--runs 3] [--flood 0.9] [--out FILE]
    python -m bench.decision --quality [--calls 20000] [--sizes 1000,10000,100000] [--runs 5] [--out FILE]

Each call is prepared and decided on the real core (no sockets); the routed leg is then
completed outside the timed region so capacity never runs out. A second series interleaves
one or a hundred bid updates between calls (untimed), as the book churns under a live
stream (100K bids/s against 1,000 calls/s is 100 per call). Prints p50/p99/p99.9 µs
(median over runs) and writes JSON.

The flood series (``--flood``, a share of the book) gives that share of the campaigns to
buyers without funds, bidding above everyone else: the attack where an unfunded buyer's
campaigns sit at the top of every heap. Each size is run clean and flooded in the same run,
and the ratio of the p50s and p99s is printed (target: within 1.5x of the clean book).

``--quality`` (issue 14) runs, in the same process and alternated run by run, the same book and
calls three ways: ``off`` (``EXCHANGE_QUALITY_SIGNALS=false``, no attestation: the exchange
before call quality), ``signals`` (the quality signals on: caller velocity with a limit,
near-duplicate callers, the publisher's risk score, its completed durations fed by the events)
and ``all`` (signals, plus an attestation on 80 % of the calls and, on 20 % of the campaigns,
bid modifiers, a ``min_attestation`` and a ``max_publisher_risk``). A tenth of the calls come
from a pool of 100 repeat callers, and 20 publishers submit them. It prints p50/p99 and the
ratios to ``off`` (target: p99 within 1.15x): the ratio of the medians over runs, and the median of
each run's ratio to the ``off`` run beside it (``pair_ratio_median``).
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

import msgspec

from billing.postings import buyer_account, deposit
from exchange import gcpolicy
from exchange.core import Core
from exchange.lifecycle import apply_event
from exchange.messages import CallEvent, CallRequest, Campaign, Caps, Schedule
from exchange.modifiers import AttestationModifiers, BidModifiers
from exchange.pipeline import decide, prepare
from exchange.settings import Settings

VERTICALS = [f"v{i}" for i in range(10)]
STATES = "CA TX FL NY IL PA OH GA NC MI NJ VA WA AZ MA TN IN MO MD WI".split()
AREA = {"CA": 415, "TX": 512, "FL": 305, "NY": 212, "IL": 312, "PA": 215, "OH": 614, "GA": 404, "NC": 919, "MI": 313,
        "NJ": 201, "VA": 804, "WA": 206, "AZ": 602, "MA": 617, "TN": 615, "IN": 317, "MO": 314, "MD": 410, "WI": 414}
ALL_DAY = {d: [("00:00", "24:00")] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
NOW_NS = 1_776_268_800 * 1_000_000_000  # a Wednesday, noon in New York


def build(n: int, rng: random.Random, flood: float = 0.0, quality: str | None = None) -> tuple[Core, list[tuple[str, str]]]:
    """The book; ``quality`` (the ``--quality`` series' mode) sets the signals on or off (None: the defaults)."""
    on = {} if quality is None else {"quality_signals": quality != "off", "quality_velocity_max_calls": 0 if quality == "off" else 50}
    core = Core(Settings(rtb_tmax_ms=0, pricing="second", **on))  # type: ignore[arg-type]
    qrng = random.Random(n)  # the quality extras: drawn whatever the mode, so every mode builds the same book
    keys = []
    buyers = max(10, n // 20)
    for b in range(buyers):
        core.ledger.post(deposit(buyer_account(f"b{b}"), 10**12, f"d{b}", 0))
    for i in range(n):
        if rng.random() < flood:  # an unfunded buyer's campaign above every funded bid
            core.book.upsert(f"u{i % buyers}", Campaign(
                id=f"u{i}", vertical=rng.choice(VERTICALS), bid_cents=rng.randrange(8000, 9000), states=[],
                min_duration_s=60, destination="+18005550199"))
            continue
        buyer = f"b{i % buyers}"
        states = [] if rng.random() < 0.2 else rng.sample(STATES, rng.randint(1, 3))
        c = Campaign(
            id=f"c{i}", vertical=rng.choice(VERTICALS), bid_cents=rng.randrange(500, 8000), states=states,
            schedule=Schedule(tz="America/New_York", hours=ALL_DAY) if rng.random() < 0.5 else None,
            caps=Caps(concurrency=1000, daily=10**6), daily_budget_cents=10**11, min_duration_s=60,
            dedupe_days=rng.choice([0, 30]), destination="+18005550199",
        )
        extra = qrng.random() < 0.2
        mods = BidModifiers(attestation=AttestationModifiers(B=qrng.choice([0.8, 0.9]), C=qrng.choice([0.5, 0.6])))
        strict, risk = qrng.choice([None, "C", "B"]), qrng.choice([None, 30, 60])
        if quality == "all" and extra:
            c = msgspec.structs.replace(c, bid_modifiers=mods, min_attestation=strict, max_publisher_risk=risk)
        core.book.upsert(buyer, c)
        keys.append((buyer, c.id))
    return core, keys


def run_once(n: int, calls: int, churn: int, seed: int, flood: float = 0.0) -> list[int]:
    rng = random.Random(seed)
    core, keys = build(n, rng, flood)
    reqs = []
    for _ in range(calls):
        st = rng.choice(STATES)
        reqs.append(CallRequest(caller=f"+1{AREA[st]}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}", vertical=rng.choice(VERTICALS)))
    done = CallEvent(event="completed", duration_s=120)
    samples = []
    now = NOW_NS
    gc.collect()
    gcpolicy.tune()  # the server's policy (exchange/gcpolicy.py)
    for i, req in enumerate(reqs):
        for _ in range(churn):  # the bid stream between two calls (untimed)
            b, c = keys[rng.randrange(n)]
            core.book.reprice(b, c, rng.randrange(500, 8000))
        now += 1_000_000
        t0 = time.perf_counter_ns()
        p = prepare(core, req, "pub", f"call{i}", now)
        rec, _ = decide(core, p, {}, now)
        samples.append(time.perf_counter_ns() - t0)
        if rec.status == "routed":
            apply_event(core, rec, "k", done, now)
    gc.unfreeze()
    return samples


def quality_calls(n: int, calls: int, seed: int, mode: str) -> tuple[Core, list[CallRequest], list[CallEvent]]:
    """The ``--quality`` series' book, calls and completion events for ``mode`` (the same in every mode
    but for what the mode turns on); ``bench.instructions`` counts the same decisions."""
    rng = random.Random(seed)
    core, _ = build(n, rng, 0.0, mode)
    qrng = random.Random(seed + 1)
    pool = [f"+1{AREA[st]}555{k:04d}" for k in range(100) for st in (qrng.choice(STATES),)]
    reqs = []
    for _ in range(calls):
        st = rng.choice(STATES)
        caller = qrng.choice(pool) if qrng.random() < 0.1 else f"+1{AREA[st]}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"
        att = qrng.choice(["A", "A", "B", "C", None])
        reqs.append(CallRequest(caller=caller, vertical=rng.choice(VERTICALS), attestation=att if mode == "all" else None))
    durations = [CallEvent(event="completed", duration_s=qrng.choice([20, 45, 61, 62, 64, 120, 300])) for _ in range(64)]
    return core, reqs, durations


def run_quality(n: int, calls: int, seed: int, mode: str) -> list[int]:
    """One run of the ``--quality`` series: the same book and calls in each ``mode``."""
    core, reqs, durations = quality_calls(n, calls, seed, mode)
    samples = []
    now = NOW_NS
    gc.collect()
    gcpolicy.tune()
    for i, req in enumerate(reqs):
        now += 1_000_000
        t0 = time.perf_counter_ns()
        p = prepare(core, req, f"pub{i % 20}", f"call{i}", now)
        rec, _ = decide(core, p, {}, now)
        samples.append(time.perf_counter_ns() - t0)
        if rec.status == "routed":
            apply_event(core, rec, "k", durations[i % 64], now)
    gc.unfreeze()
    return samples


def quality_series(sizes: list[int], calls: int, runs_n: int, path: Path) -> list[dict]:
    out: list[dict] = []
    modes = ("off", "signals", "all")
    print(f"quality: {' / '.join(modes)} alternated run by run; p99 ratio target <= 1.15x off")
    for n in sizes:
        runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
        for r in range(runs_n):
            for m in (modes if r % 2 == 0 else modes[::-1]):
                s = sorted(run_quality(n, calls, seed=r, mode=m))
                runs[m].append({"p50_us": pct(s, 0.5), "p99_us": pct(s, 0.99), "p999_us": pct(s, 0.999)})
        med = {m: {k: statistics.median(x[k] for x in rs) for k in ("p50_us", "p99_us", "p999_us")} for m, rs in runs.items()}
        ratio = {m: {k: med[m][k] / med["off"][k] for k in ("p50_us", "p99_us")} for m in modes[1:]}
        pair = {m: {k: statistics.median(x[k] / o[k] for x, o in zip(runs[m], runs["off"])) for k in ("p50_us", "p99_us")}
                for m in modes[1:]}  # each run's ratio to the off run next to it (same seed), median over runs
        out.append({"campaigns": n, "median": med, "ratio_to_off": ratio, "pair_ratio_median": pair, "runs": runs})
        path.write_text(json.dumps({"benchmark": "decision_quality", "python": platform.python_version(), "calls": calls,
                                    "runs": runs_n, "quality": out}, indent=2))  # after each size: a cut run keeps what it measured
        print(f"{n:>10} " + " · ".join(f"{m} p50 {med[m]['p50_us']:.1f} p99 {med[m]['p99_us']:.1f}" for m in modes)
              + " · p99 ratio " + " ".join(f"{m} {ratio[m]['p99_us']:.3f}" for m in modes[1:])
              + " · median of run pairs' p99 ratios " + " ".join(f"{m} {pair[m]['p99_us']:.3f}" for m in modes[1:]), flush=True)
    return out


def pct(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--flood", type=float, default=0.9, help="share of the book given to unfunded buyers at the top (0: skip)")
    ap.add_argument("--out", default="bench/results/decision.json")
    ap.add_argument("--quality", action="store_true", help="only the quality series: signals and attestation on vs off")
    args = ap.parse_args()
    if args.quality:
        out = Path(args.out if args.out != "bench/results/decision.json" else "bench/results/decision_quality.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        quality_series([int(x) for x in args.sizes.split(",")], args.calls, args.runs, out)
        print(f"wrote {out}")
        return
    results = []
    print(f"{'campaigns':>10} {'bids/call':>9} {'p50 µs':>8} {'p99 µs':>8} {'p99.9 µs':>9}   (median of {args.runs} runs, {args.calls} calls each)")
    for n in (int(x) for x in args.sizes.split(",")):
        for churn in (0, 1, 100):
            runs = []
            for r in range(args.runs):
                s = sorted(run_once(n, args.calls, churn, seed=r))
                runs.append({"p50_us": pct(s, 0.5), "p99_us": pct(s, 0.99), "p999_us": pct(s, 0.999), "mean_us": statistics.fmean(s) / 1000})
            med = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
            results.append({"campaigns": n, "bid_updates_between_calls": churn, "median": med, "runs": runs})
            print(f"{n:>10} {churn:>9} {med['p50_us']:>8.1f} {med['p99_us']:>8.1f} {med['p999_us']:>9.1f}", flush=True)
    flood = []
    if args.flood > 0:
        print(f"flood: {args.flood:.0%} of the book unfunded, bidding above every funded campaign; clean and flooded alternated")
        for n in (int(x) for x in args.sizes.split(",")):
            runs = {"clean": [], "flooded": []}
            for r in range(args.runs):
                for label, share in (("clean", 0.0), ("flooded", args.flood)):
                    s = sorted(run_once(n, args.calls, 0, seed=r, flood=share))
                    runs[label].append({"p50_us": pct(s, 0.5), "p99_us": pct(s, 0.99)})
            med = {label: {k: statistics.median(x[k] for x in rs) for k in ("p50_us", "p99_us")} for label, rs in runs.items()}
            ratio = {k: med["flooded"][k] / med["clean"][k] for k in ("p50_us", "p99_us")}
            flood.append({"campaigns": n, "flood_share": args.flood, "median": med, "ratio_flooded_to_clean": ratio, "runs": runs})
            print(f"{n:>10} clean p50 {med['clean']['p50_us']:.1f} p99 {med['clean']['p99_us']:.1f} · flooded p50 "
                  f"{med['flooded']['p50_us']:.1f} p99 {med['flooded']['p99_us']:.1f} · ratio p50 {ratio['p50_us']:.2f} p99 {ratio['p99_us']:.2f}",
                  flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "decision", "python": platform.python_version(), "calls": args.calls, "results": results,
                               "flood": flood}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
