"""``python -m exchange dnc import ...``: load DNC lists into the compliance data directory.

    python -m exchange dnc import --national FILE [FILE ...] --snapshot-date 2026-04-10
    python -m exchange dnc import --changes FILE [FILE ...] --snapshot-date 2026-04-11
    python -m exchange dnc import --state TX FILE [FILE ...] --snapshot-date 2026-04-01
    python -m exchange dnc import --litigator FILE [FILE ...]

The snapshot date is the date the list was downloaded (the FTC download date), never the
import date: the gate denies every outbound call once it is more than 31 days old. The
directory is ``--dir`` or ``EXCHANGE_COMPLIANCE_DIR``; running exchanges pick the new file up
within seconds. Progress goes to stderr, the summary (with rejected lines counted and the
first ones shown) to stdout; ``--json`` prints the summary as JSON. Exit status: 0 imported,
1 aborted (the previous list stays in force), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .gate import Gate
from .importer import ImportAborted, Report
from .runtime import ComplianceRuntime


def _progress(r: Report) -> None:
    print(f"  {r.list_id}: {r.lines:,} lines read, {r.valid:,} numbers, {r.rejected:,} rejected "
          f"({r.rate / 1e6:.2f} M lines/s)", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exchange dnc", description="Compliance data: DNC lists")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("import", help="import a DNC list (zip, gzip or text)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--national", nargs="+", metavar="FILE", help="FTC full list file(s): together, the whole snapshot")
    what.add_argument("--changes", nargs="+", metavar="FILE", help="FTC change list(s) applied to the national list in force")
    what.add_argument("--state", nargs="+", metavar=("ST", "FILE"), help="a state's DNC list: --state TX FILE [FILE ...]")
    what.add_argument("--litigator", nargs="+", metavar="FILE", help="litigator list file(s) (replaces the list in force)")
    p.add_argument("--snapshot-date", help="the download date, YYYY-MM-DD (required for --national, --changes, --state)")
    p.add_argument("--dir", help="compliance data directory (default: $EXCHANGE_COMPLIANCE_DIR)")
    p.add_argument("--force", action="store_true", help="import a national list even if it shrank by more than half")
    p.add_argument("--max-reject-ratio", type=float, default=0.5, help="abort when more lines than this are rejected")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)

    root = args.dir or os.environ.get("EXCHANGE_COMPLIANCE_DIR")
    if not root:
        parser.error("set --dir or EXCHANGE_COMPLIANCE_DIR (the directory the exchange reads)")
    state = None
    if args.national:
        kind, files, changes = "national", args.national, False
    elif args.changes:
        kind, files, changes = "national", args.changes, True
    elif args.state:
        if len(args.state) < 2 or len(args.state[0]) != 2 or not args.state[0].isalpha():
            parser.error("--state needs a two-letter state and at least one file: --state TX FILE")
        kind, state, files, changes = "state", args.state[0].upper(), args.state[1:], False
    else:
        kind, files, changes = "litigators", args.litigator, False
    if kind != "litigators" and not args.snapshot_date:
        parser.error("--snapshot-date is required (the date the list was downloaded)")
    paths = [Path(f) for f in files]
    missing = [str(f) for f in paths if not f.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")

    runtime = ComplianceRuntime(Gate(), Path(root))
    print(f"importing {kind}{' ' + state if state else ''}{' changes' if changes else ''} from "
          f"{', '.join(files)} into {root}", file=sys.stderr)
    try:
        report = runtime.import_list(kind, paths, args.snapshot_date, state, changes, _progress, args.force,
                                     args.max_reject_ratio)
    except ImportAborted as exc:
        print(f"import aborted, the list in force is unchanged: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"bad arguments: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.as_dict()))
        return 0
    print(f"imported {report.list_id} ({report.kind}), snapshot {report.snapshot_date}: {report.numbers:,} numbers in force")
    print(f"  lines read {report.lines:,}; valid {report.valid:,}; duplicates {report.duplicates:,}; "
          f"rejected {report.rejected:,}")
    if changes:
        print(f"  added {report.added:,}; deleted {report.deleted:,}")
    for line_no, text in report.reject_samples:
        print(f"  rejected line {line_no}: {text!r}")
    print(f"  {report.elapsed_s:.2f} s ({report.rate / 1e6:.2f} M lines/s) -> {report.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
