"""Decisions per second over the publisher WebSocket, against the pure core in the same run.

    python -m bench.decisions [--seconds 10] [--batch 100] [--campaigns 1000] [--runs 3] [--compression on|off]
                              [--replay on|off|both] [--out FILE]

A publisher batches calls over ``/v1/publishers/ws`` (frames of ``--batch`` calls, at most 200
awaiting their decisions, under the server's 256 in flight); ten buyers hold their sockets open
(their win and loss notices are read and dropped) with ``--campaigns`` all-day campaigns without
caps; every call is an inbound call from a valid US number. The server's rate is decisions
received per second of the server process's own CPU (``/proc``), so the figure is what one core
sustains whatever else the machine runs. The pure rate is ``prepare`` + ``decide`` on a core
holding the same campaigns, for the same calls, in this process. Both in one run; the ratio is
the target (>= 0.6). The same run compares the decision's own time: ``decision_us`` as the
server reports it on every decision (``prepare`` + ``decide``, RTB wait excluded) against the
same two steps timed one by one in the pure core (target: server p50 <= 1.3x pure p50).
Medians over runs; JSON out.

``--replay both`` runs each run twice, the server (and the pure core) with the auction replay
recorded (``EXCHANGE_AUCTION_REPLAY``) and without, one after the other, and prints the ratios
of ``decision_us`` (p50, p99) and of decisions per CPU-second, on to off.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
from pathlib import Path

import msgspec
from websockets.sync.client import connect

from billing.postings import buyer_account, deposit
from exchange.core import Core
from exchange.messages import Campaign, PublisherCall, json_encoder
from exchange.pipeline import decide, prepare
from exchange.settings import Settings
from loadtest.target import proc_cpu_s, start_exchange
from loadtest.workload import VERTICALS, us_caller

BUYERS = 10


def campaigns(n: int, seed: int) -> list[list[Campaign]]:
    rng = random.Random(seed)
    per = max(1, n // BUYERS)
    return [[Campaign(id=f"c{j}", vertical=rng.choice(VERTICALS[:4]), bid_cents=rng.randrange(800, 6000, 5),
                      min_duration_s=60, destination="+18005550199") for j in range(per)] for _ in range(BUYERS)]


def calls(n: int, seed: int) -> list[PublisherCall]:
    rng = random.Random(seed + 1)
    return [PublisherCall(caller=us_caller(rng)[0], vertical=rng.choice(VERTICALS[:4]), seq=i) for i in range(n)]


def pure_rate(book: list[list[Campaign]], reqs: list[PublisherCall], times_us: list[float] | None = None, replay: bool = True) -> float:
    core = Core(Settings(rtb_tmax_ms=0, max_campaigns_per_buyer=10**6, auction_replay=replay))
    for b, cs in enumerate(book):
        core.ledger.post(deposit(buyer_account(f"b{b}"), 10**13, f"d{b}", 0))
        for c in cs:
            core.book.upsert(f"b{b}", c)
    now = time.time_ns()
    clock = time.perf_counter_ns
    t0 = time.perf_counter()
    for i, req in enumerate(reqs):
        a = clock()
        p = prepare(core, req, "pub", f"call{i}", now + i * 1000)
        decide(core, p, {}, now + i * 1000)
        if times_us is not None:
            times_us.append((clock() - a) / 1000)
    return len(reqs) / (time.perf_counter() - t0)


def open_market(target, book: list[list[Campaign]]) -> tuple[list, str, threading.Event]:
    """Ten funded buyers with ``book``'s campaigns on open sockets whose notices are read and
    dropped (a real buyer reads them) until the returned event is set; one publisher."""
    buyers, publishers = target.provision(BUYERS, 1, [], "decisions")
    ws_url = target.base.replace("http://", "ws://")
    stop = threading.Event()
    socks = []
    for acct, cs in zip(buyers, book):
        ws = connect(f"{ws_url}/v1/buyers/ws", additional_headers={"Authorization": f"Bearer {acct.key}"}, max_size=None,
                     ping_interval=None)
        for start in range(0, len(cs), 500):
            chunk = cs[start:start + 500]
            ws.send(json_encoder.encode([*chunk[:-1], msgspec.structs.replace(chunk[-1], seq=1)]).decode())
            while '"ack"' not in str(ws.recv(timeout=30)):
                pass
        socks.append(ws)

    def drain(ws) -> None:
        try:
            while not stop.is_set():
                try:
                    ws.recv(timeout=0.2)
                except TimeoutError:
                    continue
        except Exception:
            return
        finally:
            ws.close()

    for ws in socks:
        threading.Thread(target=drain, args=(ws,), daemon=True).start()
    return publishers, ws_url, stop


def server_rate(target, book: list[list[Campaign]], reqs: list[PublisherCall], seconds: float, batch: int,
                decision_us: list[int] | None = None) -> tuple[float, dict]:
    publishers, ws_url, stop = open_market(target, book)
    pub = connect(f"{ws_url}/v1/publishers/ws", additional_headers={"Authorization": f"Bearer {publishers[0].key}"}, max_size=None,
                  ping_interval=None)
    frames = [json_encoder.encode(reqs[i:i + batch]).decode() for i in range(0, len(reqs) - batch + 1, batch)]
    decided = errors = sent = 0
    outstanding = 0
    kinds: dict[str, int] = {}
    cpu0, t0 = proc_cpu_s(target.pid), time.perf_counter()
    end = t0 + seconds
    f = 0
    while time.perf_counter() < end:
        while outstanding + batch <= 200:
            pub.send(frames[f % len(frames)])
            f += 1
            outstanding += batch
            sent += batch
        msg = json.loads(pub.recv(timeout=30))
        for m in msg if isinstance(msg, list) else [msg]:
            if m.get("type") == "decision":
                decided += 1
                if decision_us is not None:
                    decision_us.append(m["decision_us"])
                kinds[m["reason"]] = kinds.get(m["reason"], 0) + 1
            elif m.get("type") == "error":
                errors += 1
                kinds["error:" + m.get("code", "?")] = kinds.get("error:" + m.get("code", "?"), 0) + 1
            outstanding -= 1
    wall, cpu = time.perf_counter() - t0, proc_cpu_s(target.pid) - cpu0
    stop.set()
    pub.close()
    return decided / cpu, {"decided": decided, "errors": errors, "wall_s": round(wall, 2), "server_cpu_s": round(cpu, 2),
                           "per_wall_s": round(decided / wall), "outcomes": kinds}


def pct(xs: list, q: float) -> float:
    """The q-th percentile (nearest rank); 0 for no data."""
    if not xs:
        return 0.0
    ys = sorted(xs)
    return float(ys[min(len(ys) - 1, int(len(ys) * q / 100))])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--campaigns", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--compression", choices=("on", "off"), default="off", help="EXCHANGE_WS_COMPRESSION of the server")
    ap.add_argument("--replay", choices=("on", "off", "both"), default="on", help="EXCHANGE_AUCTION_REPLAY of the server and the pure core")
    ap.add_argument("--out", default="bench/results/decisions.json")
    args = ap.parse_args()
    book, reqs = campaigns(args.campaigns, 1), calls(20_000, 1)
    runs = []
    by_mode: dict[str, list[dict]] = {"on": [], "off": []}
    modes = ("on", "off") if args.replay == "both" else (args.replay,)
    for r in range(args.runs):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            target = start_exchange(Path(f"bench/results/decisions-exchange-{r}.log"), {"EXCHANGE_LOG_LEVEL": "warning",
                                    "EXCHANGE_WS_COMPRESSION": "true" if args.compression == "on" else "false",
                                    "EXCHANGE_AUCTION_REPLAY": "true" if mode == "on" else "false"})
            server_us: list[int] = []
            try:
                srv, detail = server_rate(target, book, reqs, args.seconds, args.batch, server_us)
            finally:
                target.stop()
            pure_us: list[float] = []
            pure = statistics.median(pure_rate(book, reqs[:5000], pure_us if k == 0 else None, mode == "on") for k in range(3))
            s50, p50 = pct(server_us, 50), pct(pure_us, 50)
            run = {"replay": mode, "server_decisions_per_cpu_s": round(srv), "pure_decisions_per_s": round(pure), "ratio": round(srv / pure, 3),
                   "server_decision_us_p50": s50, "server_decision_us_p99": pct(server_us, 99), "pure_decision_us_p50": p50,
                   "pure_decision_us_p99": pct(pure_us, 99), "decision_us_ratio_p50": round(s50 / p50, 3), **detail}
            runs.append(run)
            by_mode[mode].append(run)
            print(f"run {r + 1} (replay {mode}): server {srv:,.0f} decisions per CPU-second ({detail['per_wall_s']:,}/s wall, "
                  f"{detail['errors']} errors) · pure core {pure:,.0f}/s · ratio {srv / pure:.2f} · decision_us p50 in the server "
                  f"{s50:.0f} vs pure {p50:.0f} ({s50 / p50:.2f}x)", flush=True)
    replay_ratio = None
    if args.replay == "both":
        med_of = {m: {k: statistics.median(x[k] for x in by_mode[m]) for k in
                      ("server_decision_us_p50", "server_decision_us_p99", "pure_decision_us_p50", "pure_decision_us_p99",
                       "server_decisions_per_cpu_s")} for m in ("on", "off")}
        replay_ratio = {k: round(med_of["on"][k] / med_of["off"][k], 3) for k in med_of["on"] if med_of["off"][k]}
        print(f"replay on/off (medians): server decision_us p50 {replay_ratio.get('server_decision_us_p50')}x, p99 "
              f"{replay_ratio.get('server_decision_us_p99')}x; pure p50 {replay_ratio.get('pure_decision_us_p50')}x; "
              f"server decisions per CPU-second {replay_ratio.get('server_decisions_per_cpu_s')}x")
    keys = ("server_decisions_per_cpu_s", "pure_decisions_per_s", "ratio", "server_decision_us_p50", "pure_decision_us_p50",
            "decision_us_ratio_p50")
    med = {k: statistics.median(x[k] for x in by_mode["off" if args.replay == "off" else "on"]) for k in keys}
    print(f"median: server {med['server_decisions_per_cpu_s']:,.0f}/CPU-s, pure {med['pure_decisions_per_s']:,.0f}/s, "
          f"ratio {med['ratio']:.2f} (target >= 0.6); decision_us p50 server {med['server_decision_us_p50']:.0f} vs pure "
          f"{med['pure_decision_us_p50']:.0f}: {med['decision_us_ratio_p50']:.2f}x (target <= 1.3x)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "decisions", "args": vars(args), "median": med, "replay_on_to_off": replay_ratio, "runs": runs},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
