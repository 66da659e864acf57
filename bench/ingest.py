"""Buyer-gateway ingest benchmark: bids/second that ONE server process ingests over a real
WebSocket on loopback, the load generator (``bench.wsload``) in a separate process.

Targets
  bare  the bare transport (``bench.bare_server``): Starlette on uvicorn with the exchange's
        uvicorn settings, decoding each frame with ``decode_buyer_frame`` and nothing else;
  real  the exchange itself (``python -m exchange serve``), with a buyer account and
        ``--campaigns`` campaigns created first, so the bids reprice real campaigns.
Modes
  single  one ``bid`` per frame;   batch  ``--batch`` bids per frame (a JSON array).

Runs are interleaved (run 1 of every target and mode, then run 2, ...) so drift hits all
figures alike; the table shows medians and the ratio real/bare. Server CPU is read from
/proc (the server process and its descendants) over each run; client CPU is the load
generator's own figure over the measured interval, plus its whole-process total.

    python -m bench.ingest [--seconds 5] [--campaigns 1000] [--runs 3] [--batch 100] [--unfunded]
                           [--targets bare,real] [--out bench/results/ingest.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec

from exchange.messages import Campaign, json_encoder
from loadtest.target import child_env, free_port

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
WS_PATH = "/v1/buyers/ws"
INGESTED = "exchange_bids_ingested_total"  # the exchange's counter of bids applied to the book
STATE_SETS = (["CA", "TX"], ["FL"], ["NY", "NJ", "PA"], ["IL", "OH"], ["GA", "NC", "SC"], [])


# ---------------------------------------------------------------- processes
# the bench measures the transport's ceiling, not the per-key limiter (which is tested elsewhere)
UNLIMITED = {"EXCHANGE_RATE_LIMIT_WS_PER_S": "1000000000", "EXCHANGE_RATE_LIMIT_WS_BURST": "2000000000"}


class Server:
    """A server subprocess (started by us, stopped by us, by its own pid)."""

    def __init__(self, name: str, argv: list[str], port: int, env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}{WS_PATH}"
        self.key = ""  # the buyer API key wsload authenticates with
        self.admin_key: str | None = None
        self.workdir: Path | None = None  # a temporary cwd to remove after the run
        self.log_path = Path(tempfile.mkstemp(prefix=f"ingest-{name}-", suffix=".log")[1])
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} server exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if client.get(self.base + "/readyz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} server not ready after {timeout}s:\n{self.log_tail()}")

    def cpu_s(self) -> float:
        return tree_cpu_s(self.proc.pid)

    def counter(self, name: str) -> float | None:
        """One unlabelled counter from GET /metrics (Prometheus text), or None."""
        headers = {"Authorization": f"Bearer {self.admin_key}"} if self.admin_key else {}
        try:
            r = httpx.get(self.base + "/metrics", headers=headers, timeout=5)
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        for line in r.text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def log_tail(self, n: int = 4000) -> str:
        try:
            self._log.flush()
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def log_problems(self) -> list[str]:
        text = self.log_tail(1 << 20)
        return [ln for ln in text.splitlines() if "Traceback" in ln or "ERROR" in ln or "Exception" in ln][:20]

    def stop(self, keep_log: bool = False) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # this pid only: the server we started
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        if not keep_log:
            self.log_path.unlink(missing_ok=True)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _proc_cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime+stime ticks, ppid) of one process from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12]), int(fields[1])


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine from /proc/stat."""
    with open("/proc/stat", "rb") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return total - idle, total


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used by ``pid`` and its live descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                t, ppid = _proc_cpu_ticks(int(entry))
            except (OSError, ValueError, IndexError):
                continue
            parents[int(entry)] = ppid
            ticks[int(entry)] = t
    total = 0
    for p, t in ticks.items():
        q = p
        while q and q != pid:
            q = parents.get(q, 0)
        if q == pid:
            total += t
    return total / CLK_TCK


# ---------------------------------------------------------------- targets
def start_bare() -> Server:
    port = free_port()
    srv = Server("bare", [sys.executable, "-m", "bench.bare_server", "--host", "127.0.0.1", "--port", str(port)], port, child_env(), ROOT)
    srv.wait_ready()
    srv.key = "bare"
    return srv


def make_campaigns(n: int) -> list[Campaign]:
    return [
        Campaign(
            id=f"c{i}",
            vertical="auto_insurance",
            bid_cents=1000 + (i * 37) % 4000,
            states=STATE_SETS[i % len(STATE_SETS)],
            min_duration_s=60,
            destination="+18005550199",
        )
        for i in range(n)
    ]


def upsert_campaigns(ws_url: str, key: str, n: int, per_batch: int = 250, timeout: float = 30.0) -> dict[str, Any]:
    """Create ``n`` campaigns over the buyer WebSocket, a batch per frame, seq on each batch's last."""
    from websockets.sync.client import connect

    decoder = msgspec.json.Decoder()
    campaigns = make_campaigns(n)
    errors: list[Any] = []
    t0 = time.perf_counter()
    with connect(ws_url, additional_headers={"Authorization": f"Bearer {key}"}, subprotocols=["dce.json.v1"],
                 max_size=None, open_timeout=10) as ws:
        for b, start in enumerate(range(0, n, per_batch), start=1):
            chunk = campaigns[start : start + per_batch]
            chunk[-1] = msgspec.structs.replace(chunk[-1], seq=b)
            ws.send(json_encoder.encode(chunk).decode())
            end = time.monotonic() + timeout
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"no ack for campaign batch seq={b} within {timeout}s")
                raw = ws.recv(timeout=left)
                got = decoder.decode(raw)
                msgs = got if isinstance(got, list) else [got]
                done = False
                for m in msgs:
                    if m.get("type") == "error":
                        errors.append(m)
                        if m.get("seq") == b:
                            done = True
                    elif m.get("type") == "ack" and m.get("seq") == b:
                        done = True
                if done:
                    break
    return {"campaigns": n, "per_frame": per_batch, "upsert_s": round(time.perf_counter() - t0, 3),
            "errors": len(errors), "error_samples": errors[:5]}


def start_real(campaigns: int, funded: bool = True) -> tuple[Server, dict[str, Any]]:
    port = free_port()
    admin_key = "bench-admin-" + secrets.token_urlsafe(16)
    workdir = Path(tempfile.mkdtemp(prefix="ingest-exchange-"))  # any embedded store lands here
    srv = Server("real", [sys.executable, "-m", "exchange", "serve", "--host", "127.0.0.1", "--port", str(port)],
                 port, child_env({"EXCHANGE_ADMIN_KEY": admin_key, **UNLIMITED}), workdir)
    srv.workdir = workdir
    try:
        srv.wait_ready(60.0)
        r = httpx.post(srv.base + "/v1/accounts", headers={"Authorization": f"Bearer {admin_key}"},
                       json={"kind": "buyer", "name": "bench"}, timeout=10)
        if r.status_code != 201:
            raise RuntimeError(f"POST /v1/accounts -> {r.status_code} {r.text[:500]}")
        key = r.json()["api_key"]
        # funded, so its campaigns are listed and each bid takes the book's usual path; ``--unfunded``:
        # the first decision would park them all for funds, and each bid then reprices a parked campaign
        if funded:
            r = httpx.post(srv.base + f"/v1/accounts/{r.json()['id']}/deposits", headers={"Authorization": f"Bearer {admin_key}"},
                           json={"amount_cents": 10**11, "reference": "bench-funds"}, timeout=10)
            if r.status_code not in (200, 201):
                raise RuntimeError(f"POST deposits -> {r.status_code} {r.text[:500]}")
        setup = upsert_campaigns(srv.ws_url, key, campaigns)
    except BaseException:
        print(f"real server log:\n{srv.log_tail()}", file=sys.stderr)
        srv.stop()
        raise
    srv.key = key
    srv.admin_key = admin_key
    time.sleep(1.0)  # let any batched durable writes of the set-up settle
    return srv, setup


# ---------------------------------------------------------------- one measurement
def run_wsload(srv: Server, campaigns: int, batch: int, seconds: float) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.wsload", "--url", srv.ws_url, "--key", srv.key,
            "--campaigns", str(campaigns), "--batch", str(batch), "--seconds", str(seconds)]
    ingested0 = srv.counter(INGESTED) if srv.name == "real" else None
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, _ = machine_ticks()
    wall0 = time.perf_counter()
    cpu0 = srv.cpu_s()
    proc = subprocess.run(argv, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=seconds + 120)
    cpu1 = srv.cpu_s()
    wall = time.perf_counter() - wall0
    busy1, _ = machine_ticks()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    try:
        res: dict[str, Any] = msgspec.json.decode(line)
    except msgspec.DecodeError:
        res = {"pong": False, "bids": 0, "bids_per_s": 0.0, "fatal": f"bad wsload output: {proc.stdout[-500:]!r}"}
    if proc.returncode != 0 and proc.stderr:
        res["stderr"] = proc.stderr[-2000:]
    server_cpu = cpu1 - cpu0
    elapsed = res.get("elapsed_s") or 0
    res["server_cpu_s"] = round(server_cpu, 3)
    res["server_cpu_pct"] = round(100.0 * server_cpu / elapsed, 1) if elapsed else None
    if ingested0 is not None:
        ingested1 = srv.counter(INGESTED)
        if ingested1 is not None:
            res["server_bids_ingested"] = int(ingested1 - ingested0)
    # whole machine (every process, kernel included) over the wsload process's life, in cores
    res["machine_busy_cores"] = round((busy1 - busy0) / CLK_TCK / wall, 2) if wall > 0 else None
    res["client_total_cpu_s"] = round((ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime), 3)
    return res


def median(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}%" if pct else f"{v:,.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Buyer WebSocket ingest benchmark (bare transport vs real exchange).")
    ap.add_argument("--seconds", type=float, default=5.0, help="send duration of each run")
    ap.add_argument("--campaigns", type=int, default=1000)
    ap.add_argument("--unfunded", action="store_true", help="the buyer has no funds: its campaigns are parked for funds")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=100, help="bids per frame in batch mode")
    ap.add_argument("--targets", default="bare,real", help="comma-separated: bare, real")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of discarded load per target and mode first")
    ap.add_argument("--out", default="bench/results/ingest.json")
    args = ap.parse_args(argv)

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets or any(t not in ("bare", "real") for t in targets):
        ap.error("--targets takes bare and/or real")
    modes = [("single", 1), (f"batch{args.batch}", args.batch)]

    servers: dict[str, Server] = {}
    setup: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    try:
        for t in targets:
            if t == "bare":
                servers[t] = start_bare()
            else:
                servers[t], setup[t] = start_real(args.campaigns, funded=not args.unfunded)
                print(f"real: {setup[t]['campaigns']} campaigns upserted in {setup[t]['upsert_s']}s"
                      f" ({setup[t]['errors']} errors)", flush=True)
        if args.warmup > 0:
            for t in targets:
                for _, batch in modes:
                    run_wsload(servers[t], args.campaigns, batch, args.warmup)
        for r in range(1, args.runs + 1):
            for t in targets:
                for mode, batch in modes:
                    time.sleep(0.5)
                    res = run_wsload(servers[t], args.campaigns, batch, args.seconds)
                    res.update(target=t, mode=mode, run=r)
                    runs.append(res)
                    note = "" if res.get("pong") else f"  NO FINAL PONG {res.get('fatal') or res.get('close_reason') or ''}"
                    if "server_bids_ingested" in res and res["server_bids_ingested"] != res.get("bids"):
                        note += f"  server applied {res['server_bids_ingested']:,} of {res.get('bids', 0):,} bids"
                    if res.get("errors"):
                        note += f"  {res['errors']} errors, e.g. {res['error_samples'][:1]}"
                    print(f"run {r} {t:4} {mode:9} {fmt(res.get('bids_per_s')):>11} bids/s  "
                          f"server {fmt(res.get('server_cpu_pct'), True):>5}  client {fmt(res.get('client_cpu_pct'), True):>4}{note}",
                          flush=True)
    finally:
        problems = {t: s.log_problems() for t, s in servers.items()}
        for t, s in servers.items():
            failed = bool(problems[t]) or any(not x.get("pong") for x in runs if x["target"] == t)
            if failed:
                print(f"{t} server log kept at {s.log_path}", flush=True)
            s.stop(keep_log=failed)

    medians: dict[str, dict[str, dict[str, float | None]]] = {}
    for t in targets:
        medians[t] = {}
        for mode, _ in modes:
            rs = [x for x in runs if x["target"] == t and x["mode"] == mode]
            medians[t][mode] = {
                "bids_per_s": median([x.get("bids_per_s") if x.get("pong") else None for x in rs]),
                "server_cpu_pct": median([x.get("server_cpu_pct") for x in rs]),
                "client_cpu_pct": median([x.get("client_cpu_pct") for x in rs]),
                "machine_busy_cores": median([x.get("machine_busy_cores") for x in rs]),
                "errors": sum(x.get("errors") or 0 for x in rs),
                "runs_ok": sum(1 for x in rs if x.get("pong")),
            }
    ratio: dict[str, float | None] = {}
    if "bare" in medians and "real" in medians:
        for mode, _ in modes:
            b, rl = medians["bare"][mode]["bids_per_s"], medians["real"][mode]["bids_per_s"]
            ratio[mode] = round(rl / b, 3) if b and rl else None

    # table
    print()
    print(f"ingest, median of {args.runs} x {args.seconds:g}s, {args.campaigns} campaigns, one server process")
    head = f"{'mode':<12}" + "".join(f"{t + ' bids/s':>16}{'srv cpu':>9}{'cli cpu':>9}" for t in targets)
    if ratio:
        head += f"{'real/bare':>11}"
    print(head)
    for mode, _ in modes:
        row = f"{mode:<12}"
        for t in targets:
            m = medians[t][mode]
            row += f"{fmt(m['bids_per_s']):>16}{fmt(m['server_cpu_pct'], True):>9}{fmt(m['client_cpu_pct'], True):>9}"
        if ratio:
            row += f"{(f'{ratio[mode]:.2f}' if ratio[mode] is not None else '-'):>11}"
        print(row)
    for t, lines in problems.items():
        if lines:
            print(f"\n{t} server log problems (first {len(lines)}):\n  " + "\n  ".join(lines))

    out = {
        "benchmark": "buyer websocket ingest",
        "config": {"seconds": args.seconds, "campaigns": args.campaigns, "runs": args.runs, "batch": args.batch,
                   "targets": targets, "warmup_s": args.warmup},
        "env": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "setup": setup,
        "medians": medians,
        "ratio_real_over_bare": ratio,
        "runs": runs,
        "server_log_problems": problems,
    }
    path = Path(args.out)
    if not path.is_absolute():
        path = Path.cwd() / path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(out), indent=2) + b"\n")
    print(f"\nwrote {path}")
    ok = all(x.get("pong") for x in runs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
