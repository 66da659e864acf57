"""``python -m loadtest sweep``: the highest sustained bid rate, and the decision p99 there,
against book size and offered rate.

For each book size (``--books``, default 1K / 10K / 100K campaigns) one exchange is
started and provisioned; then for each offered rate (``--rates``, ascending) one full
``loadtest run`` (same code path: Locust master + workers, calls alongside) measures the
bids/s the exchange ingested and the decision p99. A step *sustains* its rate when the
exchange ingested at least ``--sustain-ratio`` of the offered rate over the window, the
decision p99 stayed under ``--max-decision-p99-us`` and nothing failed. After
``--stop-after`` failing steps in a row the book's sweep stops. The results folder holds
``sweep.json``, ``sweep.png``, ``summary.txt`` and every step's own results folder.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import msgspec

from .runner import Config, Thresholds, default_out, environment, provision, run_load
from .target import start_exchange


def _ints(text: str) -> list[int]:
    out = []
    for x in text.split(","):
        x = x.strip().lower().replace("_", "")
        mult = 1
        if x.endswith("k"):
            x, mult = x[:-1], 1_000
        elif x.endswith("m"):
            x, mult = x[:-1], 1_000_000
        out.append(int(float(x) * mult))
    return out


def add_sweep_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--books", default="1k,10k,100k", help="book sizes (campaigns), comma-separated")
    ap.add_argument("--rates", default="250k,500k,1m,1.5m,2m,2.5m", help="offered bids/s, ascending")
    ap.add_argument("--batch", type=int, default=1000, help="bids per frame")
    ap.add_argument("--calls-per-s", type=float, default=200, help="calls offered alongside, for the decision p99")
    ap.add_argument("--duration", type=float, default=15)
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--buyers", type=int, default=10)
    ap.add_argument("--sustain-ratio", type=float, default=0.99, help="ingested / offered for a step to count")
    ap.add_argument("--max-decision-p99-us", type=float, default=1000.0)
    ap.add_argument("--stop-after", type=int, default=2, help="failing steps in a row that end a book's sweep")
    ap.add_argument("--out", default=None, help="results folder (default: loadtest/results/sweep-<UTC time>)")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else default_out("sweep")
    out.mkdir(parents=True, exist_ok=True)
    books, rates = _ints(args.books), sorted(_ints(args.rates))
    rows: list[dict[str, Any]] = []
    best: dict[int, dict[str, Any] | None] = {}
    print(f"sweep: books {books}, offered {rates} bids/s, batch {args.batch}, {args.calls_per_s:g} calls/s, "
          f"{args.duration:g} s per step, {args.workers} Locust worker(s) -> {out}", flush=True)
    for book in books:
        bdir = out / f"book-{book}"
        target = start_exchange(bdir / "exchange.log")
        best[book] = None
        try:
            base = Config(buyers=args.buyers, campaigns=book, batch=args.batch, calls_per_s=args.calls_per_s,
                          duration=args.duration, warmup=args.warmup, workers=args.workers, quiet=True)
            accounts = provision(base, target)
            misses = 0
            for rate in rates:
                cfg = Config(**{**base.__dict__, "bids_per_s": rate, "out": str(bdir / f"rate-{rate}"),
                                "thresholds": Thresholds(min_bids_per_s=rate * args.sustain_ratio, rate_tolerance=0.0,
                                                         max_decision_p99_us=args.max_decision_p99_us)})
                t0 = time.time()
                res, _ = run_load(cfg, target=target, accounts=accounts)
                f = res["figures"]
                dec = f.get("decision_us") or {}
                row = {
                    "book": book, "offered": rate, "ingested": f.get("bids_per_s"), "sent": f.get("bids_offered_per_s"),
                    "worst_5s": f.get("bids_per_s_worst_5s"), "decision_p50_us": dec.get("p50"),
                    "decision_p99_us": dec.get("p99"), "decision_p999_us": dec.get("p999"),
                    "call_p99_us": (f.get("call_round_trip_us") or {}).get("p99"),
                    "calls_per_s": f.get("calls_per_s"), "errors": f.get("errors", {}).get("total"),
                    "cpu_exchange_pct": f.get("cpu_exchange_pct"), "cpu_locust_pct": f.get("cpu_locust_total_pct"),
                    "machine_busy_cores": f.get("machine_busy_cores"), "sustained": res["passed"],
                    "checks": {c["name"]: c["ok"] for c in res["checks"]}, "seconds": round(time.time() - t0, 1),
                }
                rows.append(row)
                print(f"book {book:>7,} offered {rate:>10,} -> ingested {_n(row['ingested'])} "
                      f"(sent {_n(row['sent'])}) decision p99 {_n(row['decision_p99_us'])} µs, errors {row['errors']}, "
                      f"cpu exchange {_n(row['cpu_exchange_pct'])}% locust {_n(row['cpu_locust_pct'])}% "
                      f"-> {'sustained' if row['sustained'] else 'not sustained'}", flush=True)
                if row["sustained"]:
                    misses = 0
                    if best[book] is None or (row["ingested"] or 0) > (best[book]["ingested"] or 0):
                        best[book] = row
                else:
                    misses += 1
                    if misses >= args.stop_after or not target.alive():
                        break
        finally:
            target.stop()
    result = {"config": vars(args), "machine": environment(), "steps": rows,
              "highest_sustained": {str(b): r for b, r in best.items()}}
    (out / "sweep.json").write_bytes(msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n")
    text = summary(result)
    (out / "summary.txt").write_text(text)
    try:
        plot(result, out / "sweep.png")
    except Exception as exc:
        (out / "sweep.error.txt").write_text(f"{type(exc).__name__}: {exc}\n")
    print(text, flush=True)
    print(f"results: {out}", flush=True)
    return 0 if all(best.values()) else 1


def _n(v: Any) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def summary(result: dict[str, Any]) -> str:
    c, m = result["config"], result["machine"]
    L = [f"=== loadtest sweep: batch {c['batch']}, {c['calls_per_s']:g} calls/s alongside, {c['duration']:g} s per step, "
         f"{c['workers']} Locust worker(s)",
         f"machine {m.get('cpus')} cores {m.get('cpu_model') or ''} · Python {m.get('python')} · Locust {m.get('locust')} · {m.get('time')}",
         "",
         f"{'book':>8} {'offered':>11} {'ingested':>11} {'worst 5s':>11} {'dec p50':>8} {'dec p99':>8} {'call p99':>9} "
         f"{'errors':>6} {'cpu exch':>8} {'cpu locust':>10}  sustained"]
    for r in result["steps"]:
        L.append(f"{r['book']:>8,} {r['offered']:>11,} {_n(r['ingested']):>11} {_n(r['worst_5s']):>11} "
                 f"{_n(r['decision_p50_us']):>8} {_n(r['decision_p99_us']):>8} {_n(r['call_p99_us']):>9} "
                 f"{r['errors'] if r['errors'] is not None else 'n/a':>6} {_n(r['cpu_exchange_pct']):>7}% "
                 f"{_n(r['cpu_locust_pct']):>9}%  {'yes' if r['sustained'] else 'no'}")
    L.append("")
    for b, r in result["highest_sustained"].items():
        if r is None:
            L.append(f"book {int(b):>7,}: no offered rate sustained")
        else:
            L.append(f"book {int(b):>7,}: highest sustained {_n(r['ingested'])} bids/s (offered {r['offered']:,}), "
                     f"decision p50 {_n(r['decision_p50_us'])} µs, p99 {_n(r['decision_p99_us'])} µs")
    return "\n".join(L) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
    books = sorted({r["book"] for r in result["steps"]})
    for b in books:
        rs = [r for r in result["steps"] if r["book"] == b]
        xs = [r["offered"] / 1e6 for r in rs]
        a1.plot(xs, [(r["ingested"] or 0) / 1e6 for r in rs], marker="o", label=f"{b:,} campaigns")
        a2.plot(xs, [r["decision_p99_us"] or float("nan") for r in rs], marker="o", label=f"{b:,} campaigns")
        for r in rs:
            if not r["sustained"]:
                a1.plot([r["offered"] / 1e6], [(r["ingested"] or 0) / 1e6], marker="x", color="red", markersize=9)
    hi = max((r["offered"] for r in result["steps"]), default=1) / 1e6
    a1.plot([0, hi], [0, hi], color="gray", linestyle=":", linewidth=0.8, label="ingested = offered")
    a1.set_xlabel("offered (M bids/s)")
    a1.set_ylabel("ingested by the exchange (M bids/s)")
    a1.set_title("bid ingest vs offered rate (x: not sustained)")
    a1.legend(fontsize=8)
    a1.grid(True, alpha=0.3)
    a2.axhline(result["config"]["max_decision_p99_us"], color="red", linestyle=":", linewidth=0.8, label="1 ms")
    a2.set_yscale("log")
    a2.set_xlabel("offered (M bids/s)")
    a2.set_ylabel("decision_us p99 (µs)")
    a2.set_title("decision p99 vs offered bid rate")
    a2.legend(fontsize=8)
    a2.grid(True, alpha=0.3)
    c = result["config"]
    fig.suptitle(f"loadtest sweep — batch {c['batch']}, {c['calls_per_s']:g} calls/s alongside, "
                 f"{result['machine'].get('cpus')} cores, exchange and Locust on one machine", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
