"""``python -m loadtest run | sweep | worker | clientcost`` (see loadtest/README.md)."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest", description="Locust load tests of the exchange")
    sub = ap.add_subparsers(dest="command", required=True)

    from .runner import add_run_arguments

    p_run = sub.add_parser("run", help="one load run with a pass/fail verdict and a results folder")
    add_run_arguments(p_run)

    p_sweep = sub.add_parser("sweep", help="highest sustained bid rate and decision p99 vs book size and offered rate")
    from .sweep import add_sweep_arguments

    add_sweep_arguments(p_sweep)

    p_worker = sub.add_parser("worker", help="a Locust worker for a master started elsewhere (distributed runs)")
    p_worker.add_argument("--master-host", required=True)
    p_worker.add_argument("--master-port", type=int, default=5557)
    p_worker.add_argument("--processes", type=int, default=1, help="worker processes on this machine")

    p_cost = sub.add_parser("clientcost", help="client CPU per frame: raw-socket client vs websocket-client")
    p_cost.add_argument("--frames", type=int, default=50_000)
    p_cost.add_argument("--batch", type=int, default=1)

    args = ap.parse_args(argv)
    if args.command == "run":
        from .runner import main as run_main

        return run_main(args)
    if args.command == "sweep":
        from .sweep import main as sweep_main

        return sweep_main(args)
    if args.command == "worker":
        from pathlib import Path

        locustfile = str(Path(__file__).resolve().parent / "locustfile.py")
        argv2 = [sys.executable, "-m", "locust", "-f", locustfile, "--worker", "--master-host", args.master_host,
                 "--master-port", str(args.master_port)]
        if args.processes > 1:
            argv2 += ["--processes", str(args.processes)]
        os.execv(sys.executable, argv2)
    if args.command == "clientcost":
        from .clientcost import main as cost_main

        return cost_main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
