"""``python -m exchange serve | deliver | cluster --nodes N | demo | dnc import ... | billing invoice|reconcile | audit verify | privacy ...``."""

from __future__ import annotations

import argparse
import sys

from .settings import SettingsError, load


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["privacy"]:  # (its own parser: "privacy --help" would be taken by this one)
        from .privacy_cli import main as privacy_main

        return privacy_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m exchange", description="Pay-per-call real-time bidding exchange")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the exchange (embedded defaults, no external server needed)")
    p_serve.add_argument("--host", default=None)
    p_serve.add_argument("--port", type=int, default=None)
    p_deliver = sub.add_parser("deliver", help="deliver signed webhooks from the store (serve starts one itself by default)")
    p_deliver.add_argument("--settings-stdin", action="store_true", help=argparse.SUPPRESS)  # serve's child: its settings
    p_deliver.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)  # ... and its pid (gone: stop)
    p_cluster = sub.add_parser("cluster", help="run N local nodes of one market (N > 1: PostgreSQL and Redis)")
    p_cluster.add_argument("--nodes", type=int, required=True)
    p_cluster.add_argument("--port", type=int, default=None, help="the first node's port (default EXCHANGE_PORT, 8080)")
    p_demo = sub.add_parser("demo", help="run the exchange with simulated buyers and publishers, then print a summary")
    p_demo.add_argument("--seconds", type=float, default=20.0)
    p_demo.add_argument("--calls-per-s", type=float, default=40.0)
    p_demo.add_argument("--seed", type=int, default=7)
    p_dnc = sub.add_parser("dnc", help="compliance data: import DNC lists (dnc import --help)", add_help=False)
    p_dnc.add_argument("dnc_args", nargs=argparse.REMAINDER)
    p_billing = sub.add_parser("billing", help="money: billing invoice --month YYYY-MM | billing reconcile", add_help=False)
    p_billing.add_argument("billing_args", nargs=argparse.REMAINDER)
    p_audit = sub.add_parser("audit", help="the audit trail: audit verify", add_help=False)
    p_audit.add_argument("audit_args", nargs=argparse.REMAINDER)
    p_privacy = sub.add_parser("privacy", help="consumer privacy: privacy erase <E.164> | hold | release | holds | retention | "
                               "rotate-key | keys", add_help=False)
    p_privacy.add_argument("privacy_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "privacy":
        from .privacy_cli import main as privacy_main

        return privacy_main(args.privacy_args)
    if args.command == "dnc":
        from compliance.cli import main as dnc_main

        return dnc_main(args.dnc_args)
    if args.command in ("billing", "audit"):
        from billing.cli import main as billing_main

        return billing_main([args.command, *getattr(args, f"{args.command}_args")])
    if args.command == "deliver":
        from .deliver import read_settings, run_worker

        try:
            settings = read_settings(sys.stdin.buffer.read()) if args.settings_stdin else load()
        except (SettingsError, ValueError) as exc:
            print(exc, file=sys.stderr)
            return 2
        from .server import configure_logging

        configure_logging(settings.log_level)
        return run_worker(settings, args.parent)
    try:
        settings = load(host=getattr(args, "host", None), port=getattr(args, "port", None) if args.command == "serve" else None)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "cluster":
        from .cluster import run_cluster

        return run_cluster(settings, args.nodes, args.port)
    if args.command == "serve":
        from .server import serve

        return serve(settings)
    from .demo import run_demo

    return run_demo(settings, seconds=args.seconds, calls_per_s=args.calls_per_s, seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
