"""Durable writes never stall decisions: decision_us with the ledger writer busy vs idle, same run.

    python -m bench.stall [--calls-per-s 400] [--phase-s 5] [--rounds 3] [--event-clients 4] [--out FILE]

One exchange (``python -m exchange serve``, embedded SQLite store by default, ``--database-url``
for another), ten buyers holding ``--campaigns`` campaigns on open sockets, and one publisher
socket submitting calls at a steady ``--calls-per-s`` (frames of 10) for the whole run. The run
alternates phases of ``--phase-s``: *quiet* (calls only: the writer commits the decisions' holds
and audit records) and *busy* (as well, ``--event-clients`` HTTP clients post ``connected`` then
``completed`` for the routed calls as fast as each is answered: every event waits for its commit,
and a completion writes the charge, the capture, the outcome and their audit records). The
figure is the server's own ``decision_us`` carried by every decision (``prepare`` + ``decide``),
split by the phase the call was answered in; the target (issue 11, D5) is busy p99 <= 1.2x quiet
p99. Medians over rounds; JSON out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

from websockets.sync.client import connect

from exchange.messages import json_encoder
from loadtest.target import start_exchange

from .decisions import calls, campaigns, open_market, pct
from .requests import Http


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls-per-s", type=float, default=400)
    ap.add_argument("--phase-s", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--campaigns", type=int, default=1000)
    ap.add_argument("--event-clients", type=int, default=4)
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--out", type=Path, default=Path("bench/results/stall.json"))
    args = ap.parse_args()
    env = {"EXCHANGE_LOG_LEVEL": "warning"}
    if args.database_url:
        env["EXCHANGE_DATABASE_URL"] = args.database_url
    target = start_exchange(Path("bench/results/stall-exchange.log"), env)
    phase = ["warmup"]
    samples: dict[str, list[int]] = {"quiet": [], "busy": []}
    routed: list[str] = []
    events_done = [0]
    lock = threading.Condition()
    stop = threading.Event()
    try:
        publishers, ws_url, market_stop = open_market(target, campaigns(args.campaigns, 1))
        port = int(target.base.rsplit(":", 1)[1])
        pub = connect(f"{ws_url}/v1/publishers/ws", additional_headers={"Authorization": f"Bearer {publishers[0].key}"},
                      max_size=None, ping_interval=None)
        reqs = calls(20_000, 1)
        frames = [json_encoder.encode(reqs[i:i + 10]).decode() for i in range(0, len(reqs), 10)]

        def submit() -> None:
            gap, nxt, f = 10 / args.calls_per_s, time.perf_counter(), 0
            while not stop.is_set():
                pub.send(frames[f % len(frames)])
                f += 1
                nxt += gap
                time.sleep(max(0.0, nxt - time.perf_counter()))

        def read() -> None:
            while not stop.is_set():
                try:
                    got = json.loads(pub.recv(timeout=0.5))
                except TimeoutError:
                    continue
                except Exception:
                    return
                for m in got if isinstance(got, list) else [got]:
                    if m.get("type") != "decision":
                        continue
                    now = phase[0]
                    if now in samples:
                        samples[now].append(m["decision_us"])
                    if m["decision"] == "routed":
                        with lock:
                            routed.append(m["call_id"])
                            lock.notify()

        def events() -> None:
            http = Http(port, publishers[0].key)
            while not stop.is_set():
                with lock:
                    while not stop.is_set() and (phase[0] != "busy" or not routed):
                        lock.wait(0.1)
                    if stop.is_set():
                        return
                    call_id = routed.pop()
                for body, key in ((b'{"event":"connected"}', "c"), (b'{"event":"completed","duration_s":120}', "d")):
                    status, _ = http.request("POST", f"/v1/calls/{call_id}/events", body, f"Idempotency-Key: {key}\r\n")
                    if status == 200:
                        events_done[0] += 1

        threads = [threading.Thread(target=f, daemon=True) for f in (submit, read, *[events] * args.event_clients)]
        for t in threads:
            t.start()
        time.sleep(2)  # warm-up
        rounds = []
        for r in range(args.rounds):
            got = {}
            for name in ("quiet", "busy"):
                samples[name] = []
                with lock:
                    routed.clear()
                done0 = events_done[0]
                phase[0] = name
                time.sleep(args.phase_s)
                phase[0] = "pause"
                got[name] = {"decisions": len(samples[name]), "p50_us": pct(samples[name], 50), "p99_us": pct(samples[name], 99),
                             "events_per_s": round((events_done[0] - done0) / args.phase_s)}
                time.sleep(0.5)  # events in flight settle
            got["ratio_p99"] = round(got["busy"]["p99_us"] / max(1.0, got["quiet"]["p99_us"]), 3)
            rounds.append(got)
            print(f"round {r + 1}: quiet p50 {got['quiet']['p50_us']:.0f} p99 {got['quiet']['p99_us']:.0f} µs "
                  f"({got['quiet']['decisions']} decisions) · busy p50 {got['busy']['p50_us']:.0f} p99 {got['busy']['p99_us']:.0f} µs "
                  f"({got['busy']['decisions']} decisions, {got['busy']['events_per_s']} events/s) · p99 ratio {got['ratio_p99']:.2f}",
                  flush=True)
        stop.set()
        market_stop.set()
        for t in threads:
            t.join(5)
        pub.close()
    finally:
        stop.set()
        target.stop()
    med = statistics.median(r["ratio_p99"] for r in rounds)
    print(f"median p99 ratio busy/quiet: {med:.2f} (target <= 1.2: {'PASS' if med <= 1.2 else 'FAIL'})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bench": "stall", "args": {k: str(v) for k, v in vars(args).items()}, "rounds": rounds,
                                    "median_ratio_p99": med}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
