"""National DNC at registry scale: import rate, file size (memory), lookup time.

    python -m bench.dnc [--numbers 250000000] [--dir /tmp/dnc-bench] [--lookups 1000000]
                        [--comma 25000000] [--changes 1000000] [--out FILE]

Generates a synthetic FTC full list of ``--numbers`` distinct numbers spread over the US
geographic area codes (one ``NXXNXXXXXX`` per line, in random order) into ``--dir``,
imports it with the real importer in a child process (``python -m exchange dnc import``;
its peak RSS is reported), maps the result and times ``--lookups`` membership tests of
present and absent numbers (``DncArray.has`` on E.164 strings, as the gate calls it). Then a
zipped ``NXX,NXXXXXX`` list of ``--comma`` numbers (the other form, general parser path) and
a change list of ``--changes`` records applied to the full snapshot. Everything generated is
deleted at the end. Prints figures and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from compliance.dncfile import open_array

ROOT = Path(__file__).resolve().parents[1]


def us_npas() -> list[int]:
    data = json.loads((ROOT / "compliance" / "data" / "npa.json").read_text())
    return sorted(int(k) for k, v in data["npa"].items() if v["region"] == "US" and v["geographic"] and v["state"])


def digits(keys: np.ndarray, sep_after3: bool) -> bytes:
    """Fixed-width text lines of 10-digit numbers (``NXXNXXXXXX\\n`` or ``NXX,NXXXXXX\\n``)."""
    width = 12 if sep_after3 else 11
    m = np.empty((len(keys), width), np.uint8)
    v = keys.copy()
    cols = list(range(9, -1, -1))
    for c in cols:
        pos = c + (1 if sep_after3 and c >= 3 else 0)
        m[:, pos] = (v % 10 + 48).astype(np.uint8)
        v //= 10
    if sep_after3:
        m[:, 3] = ord(",")
    m[:, -1] = 10
    return m.tobytes()


def generate(path: Path, total: int, npas: list[int], rng: np.random.Generator, sep: bool, zip_it: bool = False) -> np.ndarray:
    """Write ``total`` distinct numbers; returns a sample of them for lookups."""
    per = np.full(len(npas), total // len(npas))
    per[: total - per.sum()] += 1
    sample = []
    raw = path.with_suffix(".txt") if zip_it else path
    with open(raw, "wb", buffering=1 << 22) as f:
        for npa, k in zip(npas, per.tolist()):
            local = rng.permutation(8_000_000)[:k].astype(np.int64) + 2_000_000  # NXX 200-999, distinct
            keys = npa * 10_000_000 + local
            f.write(digits(keys, sep))
            sample.append(keys[:: max(1, k // 2000)])
    if zip_it:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            z.write(raw, "national.txt")
        raw.unlink()
    return np.concatenate(sample)


def cli_import(data: Path, files: list[Path], *flags: str) -> tuple[dict, float, int]:
    """Run the real CLI in a child process; (summary, wall seconds, the child's peak RSS in KiB).

    The peak is the child's own ``VmHWM``, polled from /proc while it runs (``getrusage`` of
    children would also count this process's memory at fork time)."""
    env = {**os.environ, "EXCHANGE_COMPLIANCE_DIR": str(data)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "exchange", "dnc", "import", *flags, *map(str, files), "--snapshot-date",
                             "2026-04-10", "--json", "--force"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.02)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"import failed: {err}")
    return json.loads(out), wall, peak


def lookups(arr, present: np.ndarray, n: int, rng: np.random.Generator) -> dict:
    hits = ["+1%d" % k for k in rng.choice(present, n)]
    misses = []
    while len(misses) < n:  # absent numbers in the same area codes
        cand = rng.choice(present, n) + rng.integers(1, 50, n)
        misses += ["+1%d" % k for k in cand if not arr.has("+1%d" % k)][: n - len(misses)]
    for s in hits[:100_000] + misses[:100_000]:  # fault the pages in once
        arr.has(s)
    out = {}
    has = arr.has
    for name, items, want in (("present", hits, True), ("absent", misses, False)):
        keys = [int(x[2:]) for x in items]
        t0 = time.perf_counter_ns()
        for k in keys:
            if (k in arr) is not want:
                raise SystemExit(f"wrong answer for {k}")
        out[f"{name}_int_key_mean_ns"] = round((time.perf_counter_ns() - t0) / len(keys))
        t0 = time.perf_counter_ns()
        for s in items:
            if has(s) is not want:
                raise SystemExit(f"wrong answer for {s}")
        mean = (time.perf_counter_ns() - t0) / len(items)
        samples = []
        clock = time.perf_counter_ns
        for s in items[:200_000]:
            t = clock()
            has(s)
            samples.append(clock() - t)
        samples.sort()
        out[name] = {"mean_ns": round(mean), "p50_ns": samples[len(samples) // 2], "p99_ns": samples[int(len(samples) * 0.99)],
                     "p999_ns": samples[int(len(samples) * 0.999)]}
    overhead = []
    for _ in range(200_000):
        t = time.perf_counter_ns()
        overhead.append(time.perf_counter_ns() - t)
    out["timer_overhead_p50_ns"] = sorted(overhead)[len(overhead) // 2]
    return out


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--numbers", type=int, default=250_000_000)
    ap.add_argument("--dir", default="/tmp/dnc-bench")
    ap.add_argument("--lookups", type=int, default=1_000_000)
    ap.add_argument("--comma", type=int, default=25_000_000)
    ap.add_argument("--changes", type=int, default=1_000_000)
    ap.add_argument("--out", default="bench/results/dnc.json")
    args = ap.parse_args()
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng = np.random.default_rng(11)
    npas = us_npas()
    result: dict = {"benchmark": "dnc", "python": platform.python_version(), "numbers": args.numbers, "npas": len(npas)}
    try:
        src = root / "national.txt"
        t0 = time.perf_counter()
        present = generate(src, args.numbers, npas, rng, sep=False)
        print(f"generated {args.numbers:,} numbers over {len(npas)} area codes: {src.stat().st_size / 2**30:.2f} GiB "
              f"in {time.perf_counter() - t0:.0f} s")
        data = root / "data"
        report, wall, rss_kb = cli_import(data, [src], "--national")
        rate = report["numbers"] / wall
        print(f"import (NXXNXXXXXX, plain): {report['numbers']:,} numbers in {wall:.1f} s = {rate / 1e6:.2f} M numbers/s "
              f"(importer's own {report['elapsed_s']} s), rejected {report['rejected']}, peak RSS {rss_kb / 1024:.0f} MiB")
        result["import_full"] = {"numbers": report["numbers"], "wall_s": round(wall, 2), "numbers_per_s": round(rate),
                                 "importer_elapsed_s": report["elapsed_s"], "rejected": report["rejected"],
                                 "peak_rss_mib": round(rss_kb / 1024)}
        src.unlink()
        path = data / "national.dnc"
        size = path.stat().st_size
        rss0 = rss_mb()
        t_open = time.perf_counter()
        arr = open_array(path)
        t_open = time.perf_counter() - t_open
        print(f"file: {size:,} bytes = {size / 2**30:.3f} GiB for {len(arr):,} numbers ({size / len(arr):.2f} B/number), "
              f"open + CRC check {t_open:.2f} s")
        lk = lookups(arr, present, args.lookups, rng)
        print(f"lookup (has(e164), mmap): present mean {lk['present']['mean_ns']} ns p50 {lk['present']['p50_ns']} ns "
              f"p99 {lk['present']['p99_ns']} ns; absent mean {lk['absent']['mean_ns']} ns p50 {lk['absent']['p50_ns']} ns "
              f"p99 {lk['absent']['p99_ns']} ns (timer overhead ~{lk['timer_overhead_p50_ns']} ns); "
              f"int key: present {lk['present_int_key_mean_ns']} ns, absent {lk['absent_int_key_mean_ns']} ns; "
              f"RSS +{rss_mb() - rss0:.0f} MiB")
        result["file"] = {"bytes": size, "gib": round(size / 2**30, 3), "bytes_per_number": round(size / len(arr), 3),
                          "open_verify_s": round(t_open, 2)}
        result["lookup"] = lk
        # a change list against the full snapshot
        if args.changes:
            ch = root / "changes.txt"
            dels = rng.choice(present, args.changes // 2, replace=False)
            adds = 2_000_000_000 + rng.integers(0, 7_999_999_999, args.changes - len(dels))
            adds = adds[(adds // 10_000) % 1000 >= 200]
            with open(ch, "w") as f:
                f.writelines(f"{k // 10_000_000},{k % 10_000_000:07d},D,20260411\n" for k in dels.tolist())
                f.writelines(f"{k // 10_000_000},{k % 10_000_000:07d},A,20260411\n" for k in adds.tolist())
            del arr
            rep, wall, rss_kb = cli_import(data, [ch], "--changes")
            print(f"change list: {rep['lines']:,} records applied in {wall:.1f} s (added {rep['added']:,}, deleted "
                  f"{rep['deleted']:,}; {rep['numbers']:,} in force), peak RSS {rss_kb / 1024:.0f} MiB")
            result["import_changes"] = {"records": rep["lines"], "wall_s": round(wall, 2), "added": rep["added"],
                                        "deleted": rep["deleted"], "numbers": rep["numbers"]}
            ch.unlink()
        # the other number form, zipped
        if args.comma:
            z = root / "comma.zip"
            generate(z, args.comma, npas, rng, sep=True, zip_it=True)
            data2 = root / "data2"
            rep, wall, rss_kb = cli_import(data2, [z], "--national")
            print(f"import (NXX,NXXXXXX, zipped): {rep['numbers']:,} numbers in {wall:.1f} s = "
                  f"{rep['numbers'] / wall / 1e6:.2f} M numbers/s, peak RSS {rss_kb / 1024:.0f} MiB")
            result["import_comma_zip"] = {"numbers": rep["numbers"], "wall_s": round(wall, 2),
                                          "numbers_per_s": round(rep["numbers"] / wall)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}; deleted {root}")


if __name__ == "__main__":
    main()
