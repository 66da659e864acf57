"""The exchange under test: start it (or point at a remote one), provision the load-test
accounts over its public API, read its ``/metrics``, and measure processes' CPU.

Everything here is plain blocking code (``httpx``, ``subprocess``, ``/proc``) for the
orchestrating process, which never imports Locust (Locust monkey-patches the standard
library for gevent as soon as it is imported).
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, UTC
from pathlib import Path
from typing import Any

import httpx

from exchange.messages import AccountCreate, AccountCreated, Deposit, Suppression, json_encoder

from .plan import Account
from .workload import us_caller

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


NODE_SUMMED = ("exchange_bids_ingested_total", "exchange_buyer_frames_total", "exchange_messages_rejected_total",
               "exchange_slow_consumers_closed_total")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


class Target:
    """An exchange reachable at ``base`` with an operator key; ``proc`` when we started it."""

    def __init__(self, base: str, admin_key: str, proc: subprocess.Popen | None = None, log_path: Path | None = None) -> None:
        self.base = base.rstrip("/")
        self.admin_key = admin_key
        self.proc = proc
        self.log_path = log_path
        self.workdir: Path | None = None
        self.edges: list[Target] = []  # the other nodes of its market (loadtest.cluster), when it is a seller
        self.cleanup: list[Callable[[], None]] = []  # run by ``stop`` once the processes are gone (a run's own schema)
        self.http = httpx.Client(base_url=self.base, timeout=30, headers={"Authorization": f"Bearer {admin_key}"})

    @property
    def local(self) -> bool:
        return self.proc is not None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return all(t.proc is None or t.proc.poll() is None for t in (self, *self.edges))

    def node_cpu_s(self) -> dict[str, float | None]:
        """CPU seconds of each node we started (this one first), by base URL."""
        return {t.base: proc_cpu_s(t.proc.pid) for t in (self, *self.edges) if t.proc is not None}

    def wait_s(self) -> float | None:
        """Seconds this node's threads have spent ready to run but waiting for a core (all threads)."""
        return proc_wait_s(self.proc.pid) if self.proc is not None else None

    def loop_cpu_s(self) -> float | None:
        """CPU seconds of this node's main thread, where its event loop runs (None: not started here)."""
        return thread_cpu_s(self.proc.pid, self.proc.pid) if self.proc is not None else None

    def wait_ready(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        last = ""
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the exchange exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                r = self.http.get("/readyz", timeout=2)
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise RuntimeError(f"the exchange at {self.base} is not ready after {timeout:g}s ({last})\n{self.log_tail()}")

    # ------------------------------------------------------------------ provisioning
    def _post(self, path: str, body: Any, expect: tuple[int, ...] = (200, 201)) -> Any:
        r = self.http.post(path, content=json_encoder.encode(body), headers={"Content-Type": "application/json"})
        if r.status_code not in expect:
            raise RuntimeError(f"POST {path} -> {r.status_code} {r.text[:500]}")
        return r.content

    def provision(self, buyers: int, publishers: int, suppressed: list[str], run_id: str,
                  unfunded: int = 0) -> tuple[list[Account], list[Account]]:
        """Create funded buyer accounts (and ``unfunded`` ones: no deposit, no credit),
        publisher accounts and exchange-wide opt-outs."""
        import msgspec

        made: dict[str, list[Account]] = {"buyer": [], "publisher": []}
        for kind, n in (("buyer", buyers + unfunded), ("publisher", publishers)):
            for i in range(n):
                funded = kind != "buyer" or i < buyers
                raw = self._post("/v1/accounts", AccountCreate(kind=kind, name=f"loadtest {run_id} {kind} {i}",
                                                               credit_limit_cents=10_000_000 if kind == "buyer" and funded else 0))
                acct = msgspec.json.decode(raw, type=AccountCreated)
                if kind == "buyer" and funded:
                    self._post(f"/v1/accounts/{acct.id}/deposits",
                               Deposit(amount_cents=10_000_000_000, reference=f"loadtest-{run_id}"))
                made[kind].append(Account(id=acct.id, key=acct.api_key, number=i, funded=funded))
        for number in suppressed:
            self._post("/v1/suppressions", Suppression(number=number, scope="exchange"))
        return made["buyer"], made["publisher"]

    def load_dnc_snapshot(self, count: int = 20_000, seed: int = 1) -> dict[str, Any]:
        """Import a small generated national DNC list dated today (UTC) through the exchange's
        own import path: a temporary FTC-style flat file (``NXXNXXXXXX`` per line) uploaded to
        ``POST /v1/dnc/national``. Without a snapshot the gate denies every outbound call with
        ``dnc_snapshot_stale``; with it, outbound calls are decided on their merits."""
        rng = random.Random(seed * 7919 + 3)
        today = datetime.now(UTC).date().isoformat()
        with tempfile.TemporaryFile() as f:
            f.write("".join(f"{us_caller(rng)[0][2:]}\n" for _ in range(count)).encode())
            f.seek(0)
            r = self.http.post(f"/v1/dnc/national?snapshot_date={today}", content=f.read(),
                               headers={"Content-Type": "text/plain"})
        if r.status_code != 201:
            raise RuntimeError(f"POST /v1/dnc/national -> {r.status_code} {r.text[:500]}")
        return r.json()

    # ------------------------------------------------------------------ observation
    def metrics(self) -> dict[str, float] | None:
        """``GET /metrics`` parsed: every sample by ``name{labels}`` plus each name's sum. A seller
        with edges adds theirs of what every node counts for its own sockets (bids, frames,
        rejected messages, slow consumers closed); decisions are the seller's alone."""
        try:
            r = self.http.get("/metrics", timeout=5)
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        out = parse_prometheus(r.text)
        for edge in self.edges:
            theirs = edge.metrics()
            for k, v in (theirs or {}).items():
                if k.startswith(NODE_SUMMED):
                    out[k] = out.get(k, 0.0) + v
        return out

    def log_tail(self, n: int = 4000) -> str:
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def log_problems(self) -> list[str]:
        if self.log_path is None:
            return []
        try:
            text = self.log_path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return []
        bad = ('"level": "error"', '"level": "critical"', "Traceback", "Exception", '"level": "warning"')
        return [ln[:500] for ln in text.splitlines() if any(b in ln for b in bad)][:20]

    def stop(self) -> int | None:
        for edge in self.edges:
            edge.stop()
        self.http.close()
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)  # this pid only: the server we started
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            code = self.proc.returncode
        if self.workdir is not None:
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)
        for step in self.cleanup:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - a leftover to report, never a failed run
                print(f"loadtest: clean-up left something behind: {type(exc).__name__}: {exc}")
        return code


def start_exchange(log_path: Path, env_extra: dict[str, str] | None = None, admin_key: str | None = None,
                   dnc: bool = True) -> Target:
    """``python -m exchange serve`` on a free loopback port, with a fresh operator key and a
    national DNC snapshot dated today (``Target.load_dnc_snapshot``; ``dnc=False``: none, for an
    edge of a market whose seller has it)."""
    port = free_port()
    admin_key = admin_key or "loadtest_admin_" + secrets.token_urlsafe(18)
    workdir = Path(tempfile.mkdtemp(prefix="loadtest-exchange-"))  # any embedded store lands here
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")
    # a load test measures the exchange, not the per-key limits: a few keys carry the whole load
    limits = {"EXCHANGE_RATE_LIMIT_WS_PER_S": "1000000000", "EXCHANGE_RATE_LIMIT_WS_BURST": "2000000000",
              "EXCHANGE_MAX_CAMPAIGNS_PER_BUYER": "1000000",
              "EXCHANGE_RATE_LIMIT_HTTP_PER_S": "10000000", "EXCHANGE_RATE_LIMIT_HTTP_BURST": "20000000"}
    env = child_env({"EXCHANGE_ADMIN_KEY": admin_key, "EXCHANGE_COMPLIANCE_DIR": str(workdir / "compliance"), **limits,
                     **(env_extra or {})})
    proc = subprocess.Popen([sys.executable, "-m", "exchange", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    t = Target(f"http://127.0.0.1:{port}", admin_key, proc, log_path)
    t.workdir = workdir
    try:
        t.wait_ready()
        if dnc:
            t.load_dnc_snapshot()  # the exchange we started has no national list of its own
    except BaseException:
        t.stop()
        raise
    return t


def parse_prometheus(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        key, _, value = line.rpartition(" ")
        try:
            v = float(value)
        except ValueError:
            continue
        out[key] = v
        name = key.split("{", 1)[0]
        if "{" in key and not name.endswith("_bucket"):
            out[name] = out.get(name, 0.0) + v
    return out


# ---------------------------------------------------------------- CPU from /proc (Linux)
def proc_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) of one process, or None when it is gone."""
    return _stat_cpu_s(f"/proc/{pid}/stat")


def thread_cpu_s(pid: int, tid: int) -> float | None:
    """CPU seconds (user + system) of one thread of a process (its main thread: ``tid == pid``)."""
    return _stat_cpu_s(f"/proc/{pid}/task/{tid}/stat")


def proc_wait_s(pid: int) -> float | None:
    """Seconds the threads of ``pid`` have waited on a run queue, ready but without a core
    (``/proc/PID/task/*/schedstat``, second field; threads that ended are not counted), or None
    when it is gone. Beside the CPU it says whether the host had a core for the process."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    ns = 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                ns += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return ns / 1e9


def _stat_cpu_s(path: str) -> float | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_cpu_s(pid: int) -> float | None:
    """CPU seconds of ``pid`` plus its reaped children (cutime, cstime)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def machine_busy_s() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    try:
        with open("/proc/stat", "rb") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK
