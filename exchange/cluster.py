"""``python -m exchange cluster --nodes N [--port BASE]``: N local nodes of one market.

Each node is a ``python -m exchange serve`` process on port BASE+i with ``EXCHANGE_NODE_ID``
``node-<i+1>``, all on the same ``EXCHANGE_DATABASE_URL`` (PostgreSQL), ``EXCHANGE_REDIS_URL``
and ``EXCHANGE_MARKET``, and one operator key (generated and printed once if
``EXCHANGE_ADMIN_KEY`` is unset: each process would make its own). The embedded SQLite file
belongs to one process, so N > 1 needs PostgreSQL and Redis; N = 1 on the embedded defaults is
a plain ``serve``. ``node-1`` is started first and becomes the market's seller (see
``exchange.nodes``); the others start once it is ready. Ctrl-C (or SIGTERM) stops them all;
if one exits, the others are stopped too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

from .accounts import new_key
from .settings import Settings, database_url


def problems(settings: Settings, nodes: int) -> list[str]:
    if nodes < 1:
        return ["--nodes must be at least 1"]
    out = []
    if nodes > 1:
        if not settings.redis_url:
            out.append("set EXCHANGE_REDIS_URL (e.g. redis://127.0.0.1:6379/0): the nodes' registry and leases live in Redis")
        if not database_url(settings).startswith(("postgresql://", "postgres://")):
            out.append("set EXCHANGE_DATABASE_URL to PostgreSQL (e.g. postgresql://postgres@127.0.0.1:5432/exchange): "
                       "the embedded SQLite file cannot be shared by several processes")
        elif not (settings.master_key or settings.master_key_file):
            out.append("set EXCHANGE_MASTER_KEY (or EXCHANGE_MASTER_KEY_FILE): consumer numbers are sealed at rest with it, and on "
                       "PostgreSQL every node needs the same one (make one with: python -c 'import base64,os; "
                       "print(base64.b64encode(os.urandom(32)).decode())'; keep it: without it the sealed numbers are unreadable)")
    return out


def _ready(port: int, host: str, proc: subprocess.Popen, deadline_s: float = 60) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def run_cluster(settings: Settings, nodes: int, base_port: int | None) -> int:
    bad = problems(settings, nodes)
    if bad:
        print("cannot start the cluster:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 2
    base = base_port if base_port is not None else settings.port
    env = dict(os.environ)
    if not settings.admin_key:
        env["EXCHANGE_ADMIN_KEY"] = new_key()
        print(f"operator key of every node (set EXCHANGE_ADMIN_KEY to choose one): {env['EXCHANGE_ADMIN_KEY']}", flush=True)
    procs: list[subprocess.Popen] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.terminate()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for i in range(nodes):
            node_env = {**env, "EXCHANGE_PORT": str(base + i)}
            if nodes > 1:
                node_env["EXCHANGE_NODE_ID"] = f"node-{i + 1}"
            procs.append(subprocess.Popen([sys.executable, "-m", "exchange", "serve"], env=node_env))
            if i == 0 and nodes > 1 and not _ready(base, settings.host, procs[0]):
                print("node-1 did not become ready; stopping", file=sys.stderr)
                stop()
                break
        if not stopping:
            print(f"{nodes} node(s) of market {settings.market!r}: "
                  + ", ".join(f"http://{settings.host}:{base + i}" for i in range(nodes)), flush=True)
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.2)
        stop()
    finally:
        codes = []
        for p in procs:
            try:
                codes.append(p.wait(15))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
    return max((c for c in codes if c and c > 0), default=0)
