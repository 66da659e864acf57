"""Calls under a bid-stream overload: does a publisher still get its decision promptly?

    python -m bench.fairness [--bids-per-s 1500000] [--seconds 15] [--shares 0,256] [--out FILE]

For each ``EXCHANGE_WS_FAIR_SHARE`` value: starts an exchange as the load test does
(``loadtest.target.start_exchange``: per-key limits raised, a DNC snapshot loaded), runs ``python -m loadtest run --host`` against it offering far more bids than
one process can apply (10 buyer sockets in frames of 100, 100 calls/s), and meanwhile, from
this separate process, once the bid stream flows, times 60 ``POST /v1/calls`` (one every 100 ms, a vertical nobody bids
on: the whole path of gate, auction and answer, no RTB wait). The probe is the figure: the
Locust publishers share one gevent worker with the saturated buyer users, so their own round
trips (also printed) mostly measure the load generator. Prints figures and writes JSON.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest.target import start_exchange

ROOT = Path(__file__).resolve().parents[1]


def probe(port: int, admin: str, n: int, delay_s: float) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def req(path: str, body: dict, key: str) -> dict:
        conn.request("POST", path, json.dumps(body), {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        r = conn.getresponse()
        data = json.loads(r.read())
        if r.status not in (200, 201):
            raise RuntimeError(f"{path} -> {r.status} {data}")
        return data

    def ingested() -> float:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        return next(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith("exchange_bids_ingested_total"))

    end = time.monotonic() + delay_s
    last = ingested()
    while time.monotonic() < end:  # wait for the bid stream to be flowing (set-up and warm-up done)
        time.sleep(1.0)
        now = ingested()
        if now - last > 100_000:
            break
        last = now
    time.sleep(2.0)  # into the measured window
    key = req("/v1/accounts", {"kind": "publisher", "name": "fairness-probe"}, admin)["api_key"]
    out = []
    for i in range(n):
        t = time.perf_counter()
        req("/v1/calls", {"caller": f"+1312555{i:04d}", "vertical": "probe_nobody", "state": "IL"}, key)
        out.append((time.perf_counter() - t) * 1e6)
        time.sleep(0.1)
    return out


def dist(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"n": len(xs), "p50_us": xs[len(xs) // 2], "p90_us": xs[int(len(xs) * 0.9)], "max_us": xs[-1],
            "mean_us": statistics.fmean(xs)}


def run_one(share: int, args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="fairness-"))
    target = start_exchange(work / "exchange.log", {"EXCHANGE_WS_FAIR_SHARE": str(share)})  # limits raised, DNC loaded
    port = int(target.base.rsplit(":", 1)[1])
    try:
        load = subprocess.Popen(
            [sys.executable, "-m", "loadtest", "run", "--host", target.base, "--admin-key", target.admin_key,
             "--bids-per-s", str(args.bids_per_s), "--batch", "100", "--calls-per-s", "100", "--duration", str(args.seconds),
             "--warmup", "3", "--min-calls-ratio", "0", "--out", str(work / "run")],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        lat = probe(port, target.admin_key, 60, args.probe_delay)
        load.wait(timeout=args.seconds + 240)
        f = json.loads((work / "run" / "results.json").read_text())["figures"]
        out = {"fair_share": share, "probe_call_rtt": dist(lat), "bids_per_s": f.get("bids_per_s"),
               "locust_call_rtt_us": f.get("call_round_trip_us"), "decision_us": f.get("decision_us")}
        p, lc = out["probe_call_rtt"], out["locust_call_rtt_us"] or {}
        print(f"fair_share {share:>4}: bids ingested {out['bids_per_s'] or 0:,.0f}/s | probe POST /v1/calls p50 "
              f"{p['p50_us'] / 1000:.1f} p90 {p['p90_us'] / 1000:.1f} max {p['max_us'] / 1000:.1f} ms | Locust publishers' "
              f"round trip p50 {(lc.get('p50') or 0) / 1e3:,.0f} ms", flush=True)
        return out
    finally:
        target.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bids-per-s", type=int, default=1_500_000)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--shares", default="0,256", help="EXCHANGE_WS_FAIR_SHARE values, run in this order")
    ap.add_argument("--probe-delay", type=float, default=60.0, help="at most this long to wait for the bid stream to flow")
    ap.add_argument("--out", default="bench/results/fairness.json")
    args = ap.parse_args()
    runs = [run_one(int(s), args) for s in args.shares.split(",")]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"bench": "fairness", "args": vars(args), "runs": runs}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
