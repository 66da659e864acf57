"""The decision under the load test's own workload, in process: what the server runs.

    python -m bench.stream [--campaigns 1000] [--bids-per-call 500] [--calls 3000] [--runs 3]
                           [--ineligible 0.9] [--unfunded-buyers 1] [--out FILE]

``bench.decision`` prices a synthetic book with at most 100 bid updates between calls. The load
test offers 100,000 bids/s beside 200 calls/s: 500 price changes between two calls, a random
walk over every campaign in turn (``loadtest.workload.bid_payloads``), and a call mix with
outbound legs, floors and states (``CallMaker``). Profiling the server under that profile put
two thirds of the decision in ``Book.ranked`` working through what the bid stream left in the
heaps, which the synthetic bench never showed. This bench builds the load test's book
(``buyer_campaigns``, 10 buyers), applies its bid frames between calls (untimed, in frames of
100 as the gateway does) and times ``prepare`` + ``decide`` as the server's ``decision_us`` does.
Each run also counts the book's heap work per decision (``Book.stats``), a figure that does
not depend on the host's speed. Prints medians over runs and writes JSON.
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
from compliance.dncarray import EMPTY
from compliance.instants import utc_day
from compliance.stores import NumberList
from exchange import gcpolicy
from exchange.core import Core
from exchange.lifecycle import apply_event
from exchange.messages import Bid, CallEvent
from exchange.pipeline import decide, prepare
from exchange.settings import Settings
from loadtest.workload import CallMaker, bid_payloads, buyer_campaigns, call_duration_s, suppressed_numbers

NOW_NS = 1_776_268_800 * 1_000_000_000  # a Wednesday, noon in New York
BUYERS = 10
FRAME = 100


def run_once(campaigns: int, bids_per_call: int, calls: int, seed: int, ineligible: float = 0.0, unfunded: int = 0) -> dict:
    core = Core(Settings(rtb_tmax_ms=0, max_campaigns_per_buyer=10**6))
    core.gate.stores.swap(national=NumberList(EMPTY, utc_day(NOW_NS), "national:bench"))
    per = max(1, campaigns // (BUYERS + unfunded))
    frames: list[tuple[str, list[Bid]]] = []
    decoder = msgspec.json.Decoder(list[Bid])
    weekday = (NOW_NS // 86_400_000_000_000 + 3) % 7  # 1970-01-01 was a Thursday
    for b in range(BUYERS + unfunded):
        buyer = f"b{b}"
        if b < BUYERS:
            core.ledger.post(deposit(buyer_account(buyer), 10**13, f"d{b}", 0))
        book = buyer_campaigns(b, per, seed, rtb=0, ineligible=ineligible, top=b >= BUYERS, weekday=weekday)
        for c in book:
            core.upsert_campaign(buyer, c, NOW_NS)
        ring = bid_payloads(book, FRAME, max(FRAME, bids_per_call * calls // BUYERS), seed + b)
        frames.extend((buyer, decoder.decode(p)) for p in ring)
    random.Random(seed).shuffle(frames)
    for s in suppressed_numbers(seed):
        core.gate.stores.suppressions.add(s, "exchange", 0)
    maker, rng = CallMaker(random.Random(seed), suppressed_numbers(seed)), random.Random(seed + 1)
    reqs = [maker.next()[1] for _ in range(calls)]
    per_call = max(1, bids_per_call // FRAME)
    samples: list[int] = []
    now, f = NOW_NS, 0
    gc.collect()
    gcpolicy.tune()
    book = core.book
    before = dict(book.stats)
    for i, req in enumerate(reqs):
        for _ in range(per_call):  # the bid frames between two calls (untimed)
            buyer, bids = frames[f % len(frames)]
            f += 1
            for bid in bids:
                book.reprice(buyer, bid.campaign, bid.bid_cents)
        now += 5_000_000  # 200 calls/s
        t0 = time.perf_counter_ns()
        p = prepare(core, req, "pub", f"call{i}", now)
        rec, _ = decide(core, p, {}, now)
        samples.append(time.perf_counter_ns() - t0)
        if rec.status == "routed":
            apply_event(core, rec, "k", CallEvent(event="completed", duration_s=call_duration_s(rng)), now)
    gc.unfreeze()
    samples.sort()
    ops = {k: (book.stats[k] - before.get(k, 0)) / calls for k in book.stats}
    return {"p50_us": samples[len(samples) // 2] / 1000, "p99_us": samples[int(len(samples) * 0.99)] / 1000,
            "p999_us": samples[int(len(samples) * 0.999)] / 1000, "mean_us": statistics.fmean(samples) / 1000,
            "heap_ops_per_decision": ops}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--campaigns", default="1000", help="comma-separated book sizes")
    ap.add_argument("--bids-per-call", type=int, default=500)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ineligible", type=float, default=0.0, help="share of each buyer's campaigns closed all run")
    ap.add_argument("--unfunded-buyers", type=int, default=0, help="extra buyers without funds bidding above everyone")
    ap.add_argument("--out", default="bench/results/stream.json")
    args = ap.parse_args()
    results = []
    for n in (int(x) for x in args.campaigns.split(",")):
        runs = [run_once(n, args.bids_per_call, args.calls, r + 1, args.ineligible, args.unfunded_buyers) for r in range(args.runs)]
        med = {k: statistics.median(r[k] for r in runs) for k in ("p50_us", "p99_us", "p999_us", "mean_us")}
        ops = {k: statistics.median(r["heap_ops_per_decision"][k] for r in runs) for k in runs[0]["heap_ops_per_decision"]}
        results.append({"campaigns": n, "bids_per_call": args.bids_per_call, "median": med, "heap_ops_per_decision": ops, "runs": runs})
        print(f"{n:>7} campaigns, {args.bids_per_call} bids between calls: p50 {med['p50_us']:.1f} µs, p99 {med['p99_us']:.1f}, "
              f"p99.9 {med['p999_us']:.1f} · per decision: " + ", ".join(f"{k} {v:.1f}" for k, v in ops.items()), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "stream", "python": platform.python_version(), "calls": args.calls, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
