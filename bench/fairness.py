"""Calls under a bid-stream overload: does a publisher still get its decision promptly?

    python -m bench.fairness [--bids-per-s 1500000] [--seconds 15] [--shares 0,256] [--out FILE]

For each ``EXCHANGE_WS_FAIR_SHARE`` value: starts an exchange (per-key limits raised, as the
load tests do), runs ``python -m loadtest run --host`` against it offering far more bids than
one process can apply (10 buyer sockets in frames of 100, 100 calls/s), and meanwhile, from
this separate process, times 60 ``POST /v1/calls`` (one every 100 ms, a vertical nobody bids
on: the whole path of gate, auction and answer, no RTB wait). The probe is the figure: the
Locust publishers share one gevent worker with the saturated buyer users, so their own round
trips (also printed) mostly measure the load generator. Prints figures and writes JSON.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from loadtest.target import free_port

ROOT = Path(__file__).resolve().parents[1]
LIMITS = {"EXCHANGE_RATE_LIMIT_WS_PER_S": "1000000000", "EXCHANGE_RATE_LIMIT_WS_BURST": "2000000000",
          "EXCHANGE_RATE_LIMIT_HTTP_PER_S": "10000000", "EXCHANGE_RATE_LIMIT_HTTP_BURST": "20000000"}


def probe(port: int, admin: str, n: int, delay_s: float) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def req(path: str, body: dict, key: str) -> dict:
        conn.request("POST", path, json.dumps(body), {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        r = conn.getresponse()
        data = json.loads(r.read())
        if r.status not in (200, 201):
            raise RuntimeError(f"{path} -> {r.status} {data}")
        return data

    time.sleep(delay_s)
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
    admin = "bench_admin_" + secrets.token_urlsafe(32)
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="fairness-"))
    env = {**os.environ, **LIMITS, "EXCHANGE_ADMIN_KEY": admin, "EXCHANGE_WS_FAIR_SHARE": str(share),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen([sys.executable, "-m", "exchange", "serve", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=work, env=env, stdout=open(work / "exchange.log", "wb"), stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        load = subprocess.Popen(
            [sys.executable, "-m", "loadtest", "run", "--host", f"http://127.0.0.1:{port}", "--admin-key", admin,
             "--bids-per-s", str(args.bids_per_s), "--batch", "100", "--calls-per-s", "100", "--duration", str(args.seconds),
             "--warmup", "3", "--min-calls-ratio", "0", "--out", str(work / "run")],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        got: dict = {}
        t = threading.Thread(target=lambda: got.update(lat=probe(port, admin, 60, args.probe_delay)))
        t.start()
        t.join()
        load.wait(timeout=args.seconds + 240)
        res = json.loads((work / "run" / "results.json").read_text())
        f = res["figures"]
        out = {"fair_share": share, "probe_call_rtt": dist(got["lat"]), "bids_per_s": f.get("bids_per_s"),
               "locust_call_rtt_us": f.get("call_round_trip_us"), "decision_us": f.get("decision_us")}
        p, lc = out["probe_call_rtt"], out["locust_call_rtt_us"] or {}
        print(f"fair_share {share:>4}: bids ingested {out['bids_per_s'] or 0:,.0f}/s | probe POST /v1/calls p50 "
              f"{p['p50_us'] / 1000:.1f} p90 {p['p90_us'] / 1000:.1f} max {p['max_us'] / 1000:.1f} ms | Locust publishers' "
              f"round trip p50 {(lc.get('p50') or 0) / 1e3:,.0f} ms", flush=True)
        return out
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bids-per-s", type=int, default=1_500_000)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--shares", default="0,256", help="EXCHANGE_WS_FAIR_SHARE values, run in this order")
    ap.add_argument("--probe-delay", type=float, default=12.0, help="seconds before probing (set-up and warm-up)")
    ap.add_argument("--out", default="bench/results/fairness.json")
    args = ap.parse_args()
    runs = [run_one(int(s), args) for s in args.shares.split(",")]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"bench": "fairness", "args": vars(args), "runs": runs}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
