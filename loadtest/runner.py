"""``python -m loadtest run``: one load run, start to verdict.

1. start the exchange on a free loopback port (unless ``--host`` names one; then the
   operator key comes from ``--admin-key`` or ``EXCHANGE_ADMIN_KEY``);
2. provision funded buyer accounts, publisher accounts and opt-outs over the public API;
3. start Locust headless: a master plus ``--workers`` worker processes (0: one local
   process), the plan passed in the environment; the master waits for every buyer to have
   upserted its campaigns, lets ``--warmup`` pass, measures ``--duration`` seconds, stops;
4. meanwhile sample the exchange's ``/metrics`` and the CPU of the exchange and of every
   Locust process each second, and print a progress line;
5. write the results folder (``loadtest.report``) and exit non-zero if a threshold is missed.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
import os
import platform
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from . import report
from .ceiling import bare_ceiling
from .plan import Account, Plan, encode_plan
from .cluster import start_nodes
from .target import ROOT, Target, child_env, free_port, machine_busy_s, proc_cpu_s, start_exchange
from .workload import suppressed_numbers

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


@dataclass
class Thresholds:
    min_bids_per_s: float = 100_000.0
    max_decision_p99_us: float = 1000.0
    max_errors: int = 0
    min_calls_ratio: float = 0.9  # calls/s decided vs offered: below this the load generator fell short
    rate_tolerance: float = 0.002  # precision of a window rate (frame granularity, 1-s sampling at the edges)


@dataclass
class Config:
    bids_per_s: float = 100_000
    calls_per_s: float = 500
    duration: float = 60
    warmup: float = 5
    host: str | None = None
    admin_key: str | None = None
    workers: int = 1
    batch: int = 100
    buyers: int = 10
    publishers: int = 4
    publisher_users: int = 0  # 0: max(2, 2 * workers)
    campaigns: int = 1000     # book size: campaigns over all buyers
    rtb_per_buyer: int = 1
    noncompliant: float = 0.10
    ineligible: float = 0.0   # share of each buyer's campaigns closed all run
    unfunded_buyers: int = 0  # extra buyers without funds, bidding above everyone (a flood)
    seed: int = 1
    ring_bids: int = 65_536
    setup_timeout: float = 120
    out: str | None = None
    master_bind_host: str = "127.0.0.1"
    master_bind_port: int = 0
    expect_remote_workers: int = 0
    exchange_env: dict[str, str] = field(default_factory=dict)
    quiet: bool = False
    ceiling: bool = True  # a bid-rate miss measures the host's bare-transport ceiling (loadtest.ceiling)
    thresholds: Thresholds = field(default_factory=Thresholds)
    nodes: int = 0  # > 0: that many nodes of one market on PostgreSQL and Redis (loadtest.cluster)


def add_run_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--bids-per-s", type=float, default=100_000, help="bids per second offered, all buyers together")
    ap.add_argument("--calls-per-s", type=float, default=500, help="calls per second offered, all publishers together")
    ap.add_argument("--duration", type=float, default=60, help="seconds measured (after set-up and warm-up)")
    ap.add_argument("--warmup", type=float, default=5, help="seconds of load before the measured window")
    ap.add_argument("--host", default=None, help="an exchange already running (http://HOST:PORT); default: start one here")
    ap.add_argument("--admin-key", default=None, help="operator key of --host (default: $EXCHANGE_ADMIN_KEY)")
    ap.add_argument("--workers", type=int, default=1, help="local Locust worker processes (0: master runs the users)")
    ap.add_argument("--batch", type=int, default=100, help="bids per WebSocket frame, 1..1000")
    ap.add_argument("--buyers", type=int, default=10, help="buyer accounts = BuyerUsers (one WebSocket each)")
    ap.add_argument("--publishers", type=int, default=4, help="publisher accounts")
    ap.add_argument("--publisher-users", type=int, default=0, help="PublisherUsers (default: max(2, 2 x workers))")
    ap.add_argument("--campaigns", type=int, default=1000, help="book size: campaigns over all buyers")
    ap.add_argument("--rtb-per-buyer", type=int, default=1, help="live-priced (rtb) campaigns per buyer")
    ap.add_argument("--noncompliant", type=float, default=0.10, help="share of calls that must be rejected")
    ap.add_argument("--ineligible", type=float, default=0.0,
                    help="share of each buyer's campaigns whose schedule is closed all through the run")
    ap.add_argument("--unfunded-buyers", type=int, default=0,
                    help="extra buyers with no funds whose campaigns bid above everyone's (a flood), streaming bids too")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ring-bids", type=int, default=65_536, help="pre-encoded bids per buyer, cycled")
    ap.add_argument("--setup-timeout", type=float, default=120)
    ap.add_argument("--out", default=None, help="results folder (default: loadtest/results/run-<UTC time>)")
    ap.add_argument("--master-bind-host", default="127.0.0.1", help="where the Locust master listens for workers")
    ap.add_argument("--master-bind-port", type=int, default=0, help="(0: a free port)")
    ap.add_argument("--expect-remote-workers", type=int, default=0,
                    help="workers started elsewhere (python -m loadtest worker --master-host THIS_HOST ...)")
    ap.add_argument("--exchange-env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for the exchange this command starts (repeatable)")
    ap.add_argument("--nodes", type=int, default=0,
                    help="start N nodes of one market (EXCHANGE_DATABASE_URL on PostgreSQL, EXCHANGE_REDIS_URL): "
                         "the first is the seller; buyers and publishers spread over all of them")
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    ap.add_argument("--no-ceiling", action="store_true",
                    help="on a bid-rate miss, do not measure the host's bare-transport ceiling (loadtest.ceiling)")
    t = ap.add_argument_group("thresholds (a miss exits with status 1)")
    t.add_argument("--min-bids-per-s", type=float, default=100_000.0, help="sustained bids/s ingested by the exchange")
    t.add_argument("--max-decision-p99-us", type=float, default=1000.0, help="decision_us p99 in the window")
    t.add_argument("--max-errors", type=int, default=0, help="errors of any kind over the whole run")
    t.add_argument("--min-calls-ratio", type=float, default=0.9, help="calls/s decided / offered")
    t.add_argument("--rate-tolerance", type=float, default=0.002,
                   help="relative precision allowed on the bids/s check (window edges are sampled once a second)")


def config_from(args: argparse.Namespace) -> Config:
    if not 1 <= args.batch <= 1000:
        raise SystemExit("--batch must be within 1..1000")
    env = {}
    for kv in args.exchange_env:
        k, _, v = kv.partition("=")
        env[k] = v
    return Config(
        bids_per_s=args.bids_per_s, calls_per_s=args.calls_per_s, duration=args.duration, warmup=args.warmup,
        host=args.host, admin_key=args.admin_key or os.environ.get("EXCHANGE_ADMIN_KEY"), workers=args.workers,
        batch=args.batch, buyers=args.buyers, publishers=args.publishers, publisher_users=args.publisher_users,
        campaigns=args.campaigns, rtb_per_buyer=args.rtb_per_buyer, noncompliant=args.noncompliant, seed=args.seed,
        ineligible=args.ineligible, unfunded_buyers=args.unfunded_buyers,
        ring_bids=args.ring_bids, setup_timeout=args.setup_timeout, out=args.out,
        master_bind_host=args.master_bind_host, master_bind_port=args.master_bind_port,
        expect_remote_workers=args.expect_remote_workers, exchange_env=env, quiet=args.quiet, ceiling=not args.no_ceiling,
        nodes=args.nodes, thresholds=Thresholds(args.min_bids_per_s, args.max_decision_p99_us, args.max_errors, args.min_calls_ratio,
                              args.rate_tolerance),
    )


def default_out(prefix: str = "run") -> Path:
    return ROOT / "loadtest" / "results" / f"{prefix}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"


# ---------------------------------------------------------------- processes
class Proc:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        with open(log, "wb") as f:
            self.p = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)

    def cpu_s(self) -> float | None:
        return proc_cpu_s(self.p.pid)

    def stop(self, grace: float = 10.0) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)  # only the process we started, by its pid
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)


def start_locust(cfg: Config, plan: Plan, out: Path) -> tuple[Proc, list[Proc]]:
    users = plan.buyer_users + plan.publisher_users
    env = child_env({"LOCUST_DCE_PLAN": encode_plan(plan)})
    run_time = int(cfg.setup_timeout + cfg.warmup + cfg.duration + 60)
    base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
    argv = base + ["--headless", "--only-summary", "-u", str(users), "-r", str(max(users, 1)), "--run-time", f"{run_time}s",
                   "--host", plan.host, "--csv", str(out / "locust"), "--csv-full-history", "--stop-timeout", "0",
                   "--loglevel", "WARNING", "--exit-code-on-error", "0"]
    expect = cfg.workers + cfg.expect_remote_workers
    port = cfg.master_bind_port or free_port()
    if expect > 0:
        argv += ["--master", "--expect-workers", str(expect), "--master-bind-host", cfg.master_bind_host,
                 "--master-bind-port", str(port), "--expect-workers-max-wait", str(int(cfg.setup_timeout))]
    master = Proc("master", argv, env, out / "locust-master.log")
    workers = []
    wenv = child_env()  # workers get the plan from the master, as remote ones do
    for i in range(cfg.workers):
        workers.append(Proc(f"worker{i}", base + ["--worker", "--master-host", "127.0.0.1", "--master-port", str(port),
                                                 "--loglevel", "WARNING"], wenv, out / f"locust-worker-{i}.log"))
    return master, workers


def stop_locust(master: Proc | None, workers: list[Proc], grace_s: float = 15.0) -> None:
    for w in workers:
        w.stop(5)
    if master is not None:
        master.stop(grace_s)


# ---------------------------------------------------------------- the run
def make_plan(cfg: Config, target: Target, buyers: list[Account], publishers: list[Account], suppressed: list[str],
              out: Path) -> Plan:
    publisher_users = cfg.publisher_users or max(2, 2 * max(1, cfg.workers + cfg.expect_remote_workers))
    return Plan(
        host=target.base, edges=[e.base for e in target.edges], buyers=buyers, publishers=publishers, seed=cfg.seed,
        campaigns_per_buyer=max(1, cfg.campaigns // max(1, len(buyers))), rtb_per_buyer=cfg.rtb_per_buyer,
        bids_per_s=cfg.bids_per_s, batch=cfg.batch, calls_per_s=cfg.calls_per_s, buyer_users=len(buyers),
        publisher_users=publisher_users if cfg.calls_per_s > 0 else 0, ring_bids=cfg.ring_bids,
        warmup_s=cfg.warmup, duration_s=cfg.duration, setup_timeout_s=cfg.setup_timeout,
        noncompliant=cfg.noncompliant, suppressed=suppressed, ineligible=cfg.ineligible,
        weekday=datetime.now(UTC).weekday(),
        live_path=str(out / "live.json"), out_path=str(out / "locust-figures.json"),
    )


def provision(cfg: Config, target: Target) -> tuple[list[Account], list[Account], list[str]]:
    suppressed = suppressed_numbers(cfg.seed)
    run_id = secrets.token_hex(4)
    buyers, publishers = target.provision(cfg.buyers, cfg.publishers, suppressed, run_id, cfg.unfunded_buyers)
    return buyers, publishers, suppressed


def run_load(cfg: Config, target: Target | None = None,
             accounts: tuple[list[Account], list[Account], list[str]] | None = None) -> tuple[dict[str, Any], int]:
    """One run; returns (results, exit status). Starts and stops the exchange unless given."""
    if target is None and cfg.host and not cfg.admin_key:
        raise SystemExit("--host needs the exchange's operator key: --admin-key or EXCHANGE_ADMIN_KEY")
    out = Path(cfg.out) if cfg.out else default_out()
    out.mkdir(parents=True, exist_ok=True)
    own_target = target is None
    started = time.time()
    if target is None:
        if cfg.host:
            target = Target(cfg.host, cfg.admin_key)
            target.wait_ready(30)
        elif cfg.nodes:
            target = start_nodes(cfg.nodes, out, cfg.exchange_env)
        else:
            target = start_exchange(out / "exchange.log", cfg.exchange_env)
    master: Proc | None = None
    workers: list[Proc] = []
    samples: list[dict[str, Any]] = []
    try:
        if accounts is None:
            accounts = provision(cfg, target)
        buyers, publishers, suppressed = accounts
        plan = make_plan(cfg, target, buyers, publishers, suppressed, out)
        for p in (out / "live.json", out / "locust-figures.json"):
            p.unlink(missing_ok=True)
        metrics0 = target.metrics()
        master, workers = start_locust(cfg, plan, out)
        samples = _watch(cfg, target, master, workers, out)
        final = _read_json(out / "locust-figures.json")
    finally:
        stop_locust(master, workers)
        server_exit = None
        alive = target.alive() if target is not None else True
        problems = target.log_problems() if target is not None else []
        if own_target and target is not None:
            server_exit = target.stop()
    results = report.build(cfg, plan, target, final, samples, metrics0, alive, problems, started,
                           {"master": master.p.returncode if master else None,
                            "workers": [w.p.returncode for w in workers], "exchange": server_exit},
                           environment())
    if not next((c["ok"] for c in results["checks"] if c["name"] == "bids_per_s"), True) and cfg.ceiling:
        if not cfg.quiet:
            print("the exchange took less than the offered bid rate: measuring this host's bare-transport ceiling", flush=True)
        results["ceiling"] = bare_ceiling(cfg, plan, out / "ceiling")
    report.write(out, results)
    status = 0 if results["passed"] else 1
    if not cfg.quiet:
        print((out / "summary.txt").read_text(), flush=True)
        print(f"results: {out}", flush=True)
    return results, status


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return msgspec.json.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError):
        return None


def _watch(cfg: Config, target: Target, master: Proc, workers: list[Proc], out: Path) -> list[dict[str, Any]]:
    """Sample once a second until the Locust master exits; print the progress line."""
    samples: list[dict[str, Any]] = []
    tty = sys.stdout.isatty()
    deadline = time.time() + cfg.setup_timeout + cfg.warmup + cfg.duration + 120
    last_print = 0.0
    nxt = time.time()
    while master.p.poll() is None:
        if time.time() > deadline:
            print("\nthe Locust master overran its time; stopping it", flush=True)
            break
        nxt += 1.0
        time.sleep(max(0.0, nxt - time.time()))
        t = time.time()
        m = target.metrics()
        s: dict[str, Any] = {
            "t": t, "metrics": m, "server_cpu_s": sum(v or 0.0 for v in nodes.values()) if (nodes := target.node_cpu_s()) else None,
            "node_cpu_s": nodes, "loop_cpu_s": target.loop_cpu_s(), "wait_s": target.wait_s(),
            "locust_cpu_s": {p.name: p.cpu_s() for p in [master, *workers]}, "machine": machine_busy_s(),
            "server_alive": target.alive(),
        }
        samples.append(s)
        live = _read_json(out / "live.json")
        if not cfg.quiet and (tty or t - last_print >= 5):
            line = progress_line(cfg, samples, live)
            if tty:
                print("\r" + line.ljust(150)[:200], end="", flush=True)
            else:
                print(line, flush=True)
            last_print = t
    if not cfg.quiet and tty:
        print(flush=True)
    return samples


def _rate(samples: list[dict[str, Any]], key: str, span: int = 1) -> float | None:
    if len(samples) <= span:
        return None
    a, b = samples[-1 - span], samples[-1]
    if not a["metrics"] or not b["metrics"]:
        return None
    return (b["metrics"].get(key, 0) - a["metrics"].get(key, 0)) / (b["t"] - a["t"])


def _cpu_pct(samples: list[dict[str, Any]], pick: Any, span: int = 1) -> float | None:
    if len(samples) <= span:
        return None
    a, b = pick(samples[-1 - span]), pick(samples[-1])
    if a is None or b is None:
        return None
    return 100.0 * (b - a) / (samples[-1]["t"] - samples[-1 - span]["t"])


def _locust_cpu(s: dict[str, Any]) -> float | None:
    vals = [v for v in s["locust_cpu_s"].values() if v is not None]
    return sum(vals) if vals else None


def progress_line(cfg: Config, samples: list[dict[str, Any]], live: dict[str, Any] | None) -> str:
    phase = (live or {}).get("phase", "starting")
    now = time.time()
    where = phase
    if live and live.get("window"):
        start, end = live["window"]
        if phase == "measure":
            where = f"measure {min(now, end) - start:4.0f}/{end - start:.0f}s"
        elif phase == "warmup":
            where = f"warmup {start - now:3.0f}s left"
    elif live and phase == "setup":
        where = f"setup {live.get('buyers_ready', 0)}/{live.get('buyer_users', '?')} buyers ready"
    bids = _rate(samples, "exchange_bids_ingested_total", 2)
    calls = _rate(samples, "exchange_calls_total", 2)
    dec = ""
    rows = [r for r in (live or {}).get("last", []) if r.get("decision_us_n") and r["t"] <= now - 2]
    if rows:
        r = rows[-1]
        dec = f" | decision p50 {r['decision_us_p50']}us p99 {r['decision_us_p99']}us"
        if r.get("call_us_p99") is not None:
            dec += f" | call p99 {r['call_us_p99'] / 1000:.1f}ms"
    errors = 0
    if live:
        c = live.get("counts", {})
        errors = (live.get("failures") or 0) + c.get("compliance_leaks", 0)
    scpu = _cpu_pct(samples, lambda s: s["server_cpu_s"], 2)
    lcpu = _cpu_pct(samples, _locust_cpu, 2)
    cpu = f" | cpu exchange {scpu:.0f}% locust {lcpu:.0f}%" if scpu is not None and lcpu is not None else (
        f" | cpu locust {lcpu:.0f}%" if lcpu is not None else "")
    return (f"[{where}] bids/s {bids or 0:,.0f} (offered {cfg.bids_per_s:,.0f}) | calls/s {calls or 0:,.0f}"
            f"{dec} | errors {errors}{cpu}")


def environment() -> dict[str, Any]:
    import importlib.metadata as md

    def ver(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    cpu_model = None
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "cpu_model": cpu_model, "hostname": platform.node(),
            "locust": ver("locust"), "msgspec": ver("msgspec"), "uvicorn": ver("uvicorn"), "websockets": ver("websockets"),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    _, status = run_load(cfg)
    return status


__all__ = ["Config", "Thresholds", "run_load", "add_run_arguments", "config_from"]
