"""One node against two: the same offered load through ``python -m loadtest run --nodes N``.

    EXCHANGE_DATABASE_URL=postgresql://... EXCHANGE_REDIS_URL=redis://... \\
    python -m bench.nodes [--bids-per-s 20000] [--calls-per-s 100] [--duration 20] [--rounds 1]
                          [--profiles bids,calls,mixed] [--out FILE]

For N = 1 (one node of a market: the seller alone) and N = 2 (the seller and an edge; Locust's
buyers and publishers spread over both), three Locust runs each, alternated within a round:
bids only, calls only (with their events), and both together. From the runs' own samples:
each node's CPU over the measured window, hence CPU per bid (bids-only run, per bid ingested by
the market) and per call (calls-only run, per call decided), per node and summed; the clustering
overhead = the two nodes' summed CPU / the one node's, per bid and per call (target <= 1.25);
and from the mixed run: decision p99 (the seller's ``decision_us``) and the cross-node call
round trip (client-observed ``POST /v1/calls`` sent to the edge, decided at the seller; beside
the same for calls sent to the seller). Every figure is a ratio or a percentile inside the same
round on the same host; JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from loadtest.runner import Config, Thresholds, run_load


def _window_cpu(res: dict[str, Any]) -> dict[str, float]:
    """CPU seconds of each node over the run's measured window (from its 1-s samples)."""
    w = res.get("window") or {}
    samples = [s for s in res.get("server_samples", []) if s.get("node_cpu_s")]
    inside = [s for s in samples if w.get("start", 0) - 1 <= s["t"] <= w.get("end", 0) + 1]
    if len(inside) < 2:
        return {}
    a, b = inside[0], inside[-1]
    return {k: (b["node_cpu_s"].get(k) or 0.0) - (a["node_cpu_s"].get(k) or 0.0) for k in a["node_cpu_s"]} | {
        "_seconds": b["t"] - a["t"]}


def one(nodes: int, bids: float, calls: float, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    cfg = Config(bids_per_s=bids, calls_per_s=calls, duration=args.duration, warmup=args.warmup, nodes=nodes,
                 workers=args.workers, buyers=args.buyers, publishers=args.publishers, campaigns=args.campaigns,
                 out=str(out), quiet=True, ceiling=False,
                 thresholds=Thresholds(min_bids_per_s=0, max_decision_p99_us=1000, max_errors=0, min_calls_ratio=0.9))
    res, _ = run_load(cfg)
    cpu = _window_cpu(res)
    secs = cpu.pop("_seconds", 0.0) or 1.0
    fig = res.get("figures", {})
    lat = (json.loads((out / "locust-figures.json").read_text()).get("window_figures") or {}).get("latency_us", {}) \
        if (out / "locust-figures.json").exists() else {}
    bids_s, calls_s = fig.get("bids_per_s") or 0.0, fig.get("calls_per_s") or 0.0
    row = {"nodes": nodes, "bids_per_s": round(bids_s), "calls_per_s": round(calls_s, 1), "passed": res.get("passed"),
           "errors": next((c["value"] for c in res.get("checks", []) if c["name"] == "errors"), None),
           "node_cpu_pct": {k: round(100 * v / secs, 1) for k, v in cpu.items()},
           "cpu_us_per_bid": {k: round(1e6 * v / secs / bids_s, 2) for k, v in cpu.items()} if bids_s and not calls else None,
           "cpu_us_per_call": {k: round(1e6 * v / secs / calls_s) for k, v in cpu.items()} if calls_s and not bids else None,
           "decision_us": fig.get("decision_us"), "call_us": lat.get("call_us"), "edge_call_us": lat.get("edge_call_us")}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bids-per-s", type=float, default=20_000)
    ap.add_argument("--calls-per-s", type=float, default=100)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--buyers", type=int, default=10)
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--campaigns", type=int, default=1000)
    ap.add_argument("--out", default="bench/results/nodes.json")
    ap.add_argument("--profiles", default="bids,calls,mixed", help="which of the three runs (e.g. calls: the per-call overhead alone)")
    args = ap.parse_args()
    profiles = set(args.profiles.split(","))
    base = Path(f"/tmp/bench-nodes-{time.strftime('%Y%m%dT%H%M%S')}")
    rows: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for nodes in ((1, 2) if r % 2 == 0 else (2, 1)):
            for kind, bids, calls in (("bids", args.bids_per_s, 0.0), ("calls", 0.0, args.calls_per_s),
                                      ("mixed", args.bids_per_s, args.calls_per_s)):
                if kind not in profiles:
                    continue
                rows.append({"round": r, "profile": kind, **one(nodes, bids, calls, args, base / f"r{r}-n{nodes}-{kind}")})

    def total(row: dict[str, Any], key: str) -> float | None:
        per = row.get(key)
        return sum(per.values()) if per else None

    ratios = {}
    for key, profile in (("cpu_us_per_bid", "bids"), ("cpu_us_per_call", "calls")):
        per_round = []
        for r in range(args.rounds):
            one_n = next((total(x, key) for x in rows if x["round"] == r and x["profile"] == profile and x["nodes"] == 1), None)
            two_n = next((total(x, key) for x in rows if x["round"] == r and x["profile"] == profile and x["nodes"] == 2), None)
            if one_n and two_n:
                per_round.append(two_n / one_n)
        ratios[key.replace("cpu_us_", "overhead_")] = {"rounds": [round(x, 3) for x in per_round],
                                                       "median": round(statistics.median(per_round), 3) if per_round else None}
    out = {"benchmark": "nodes", "args": vars(args), "runs": rows, "overhead_two_nodes_to_one": ratios}
    print(json.dumps(ratios, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
