"""National DNC at registry scale: import rate, file size (memory), lookup time.

    python -m bench.dnc [--numbers 250000000] [--runs 3] [--dir /tmp/dnc-bench] [--lookups 1000000]
                        [--batch 50] [--comma 25000000] [--changes 1000000] [--out FILE]

Generates a synthetic FTC full list of ``--numbers`` distinct numbers spread over the US
geographic area codes (one ``NXXNXXXXXX`` per line, in random order) into ``--dir``. Then,
``--runs`` times: imports it with the real importer in a child process (``python -m exchange
dnc import``; its peak RSS is reported) into a fresh directory, maps the result and times
``--lookups`` membership tests of present and absent numbers as the gate makes them
(``array.contains(key)``, the national number as an int; see ``lookups`` for how per-lookup
time is measured).
Medians of the runs are printed last. Then a change list of ``--changes`` records applied to
the full snapshot and a zipped ``NXX,NXXXXXX`` list of ``--comma`` numbers (the other form).
Everything generated is deleted at the end. Prints figures and writes JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from compliance.dncarray import sorted_unique
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


def distinct(rng: np.random.Generator, space: int, k: int) -> np.ndarray:
    """``k`` distinct ints in ``[0, space)``, in random order."""
    got = np.zeros(0, np.int64)
    while len(got) < k:
        got = sorted_unique(np.concatenate([got, rng.integers(0, space, int((k - len(got)) * 1.1) + 16)]))
    return rng.permutation(rng.permutation(got)[:k])


def generate(path: Path, total: int, npas: list[int], rng: np.random.Generator, sep: bool, zip_it: bool = False) -> np.ndarray:
    """Write ``total`` distinct numbers; returns a sample of them for lookups."""
    per = np.full(len(npas), total // len(npas))
    per[: total - per.sum()] += 1
    sample = []
    raw = path.with_suffix(".txt") if zip_it else path
    with open(raw, "wb", buffering=1 << 22) as f:
        for npa, k in zip(npas, per.tolist()):
            local = distinct(rng, 8_000_000, k) + 2_000_000  # NXX 200-999
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


def dist(samples: list[int] | np.ndarray) -> dict:
    s = np.sort(np.asarray(samples, dtype=np.float64))
    q = lambda p: round(float(s[min(len(s) - 1, int(p * len(s)))]), 1)  # noqa: E731
    return {"mean_ns": round(float(s.mean()), 1), "p50_ns": q(0.5), "p99_ns": q(0.99), "p999_ns": q(0.999), "n": len(s)}


def lookups(arr, present: np.ndarray, n: int, rng: np.random.Generator, batch: int) -> dict:
    """The gate's lookup, ``array.contains(key)`` with the int national number, timed three ways.

    * per call: ``perf_counter_ns`` around each lookup; the figure includes the timer's own
      cost (measured alone and reported as ``timer``), so it is an upper bound;
    * per batch: ``batch`` lookups of random numbers timed together, divided by ``batch``; no
      timer cost, but a slow lookup is averaged with its batch;
    * ``has(e164)`` (the string form) per call, for comparison.
    Numbers are drawn at random from the whole list (present) or next to members (absent),
    so nearly every lookup touches a different page of the mapping: most of its time is that
    one random memory access (cache and TLB miss), not Python. The collector is off while
    timing."""
    hits = rng.choice(present, n).tolist()
    misses: list[int] = []
    while len(misses) < n:  # absent numbers in the same prefixes
        cand = (rng.choice(present, n) + rng.integers(1, 50, n)).tolist()
        misses += [k for k in cand if not arr.contains(k)][: n - len(misses)]
    contains = arr.contains
    if not all(contains(k) for k in hits) or any(contains(k) for k in misses):  # every answer checked once
        raise SystemExit("wrong answer")
    clock = time.perf_counter_ns
    out: dict = {}
    gc.disable()
    for name, keys in (("present", hits), ("absent", misses)):
        per_call = []
        for k in keys:
            t = clock()
            arr.contains(k)
            per_call.append(clock() - t)
        per_batch = []
        for i in range(0, len(keys) - batch + 1, batch):
            chunk = keys[i:i + batch]
            t = clock()
            for k in chunk:
                arr.contains(k)
            per_batch.append((clock() - t) / batch)
        strings = [f"+1{k}" for k in keys[:200_000]]
        has = arr.has
        per_str = []
        for e in strings:
            t = clock()
            has(e)
            per_str.append(clock() - t)
        out[name] = {"per_call": dist(per_call), f"per_batch_of_{batch}": dist(per_batch), "has_e164_per_call": dist(per_str)}
    hot = hits[:512]  # the same few numbers over and over: everything in cache, Python's own cost
    for k in hot:
        arr.contains(k)
    per_hot = []
    for i in range(200_000):
        k = hot[i & 511]
        t = clock()
        arr.contains(k)
        per_hot.append(clock() - t)
    empty = []
    for _ in range(200_000):
        t = clock()
        empty.append(clock() - t)
    bits = arr._bits  # the floor: one bare random byte read from the same mapping, no lookup around it
    floor = []
    for o in rng.integers(0, len(bits), 300_000).tolist():
        t = clock()
        bits[o]
        floor.append(clock() - t)
    gc.enable()
    out["memory_floor_per_call"] = dist(floor)
    out["hot_cache_per_call"] = dist(per_hot)
    out["timer"] = dist(empty)
    return out


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def median_of(runs: list, path: tuple) -> float:
    vals = []
    for r in runs:
        for k in path:
            r = r[k]
        vals.append(r)
    return statistics.median(vals)


def one_run(src: Path, data: Path, present: np.ndarray, args: argparse.Namespace, rng: np.random.Generator) -> dict:
    """Import the full list into a fresh directory, map it, time the lookups."""
    shutil.rmtree(data, ignore_errors=True)
    os.sync()  # the generator's (or the last run's) dirty pages are not this import's writes
    report, wall, rss_kb = cli_import(data, [src], "--national")
    path = data / "national.dnc"
    size = path.stat().st_size
    rss0 = rss_mb()
    t_open = time.perf_counter()
    arr = open_array(path)
    t_open = time.perf_counter() - t_open
    lk = lookups(arr, present, args.lookups, rng, args.batch)
    out = {"import_full": {"numbers": report["numbers"], "wall_s": round(wall, 2), "numbers_per_s": round(report["numbers"] / wall),
                           "importer_elapsed_s": report["elapsed_s"], "rejected": report["rejected"],
                           "peak_rss_mib": round(rss_kb / 1024)},
           "file": {"bytes": size, "gib": round(size / 2**30, 3), "bytes_per_number": round(size / len(arr), 3),
                    "open_verify_s": round(t_open, 2), "rss_after_lookups_mib": round(rss_mb() - rss0)},
           "lookup": lk}
    imp, f = out["import_full"], out["file"]
    print(f"import (NXXNXXXXXX, plain): {imp['numbers']:,} numbers in {wall:.1f} s = {imp['numbers_per_s'] / 1e6:.2f} M "
          f"numbers/s (importer's own {report['elapsed_s']} s), rejected {report['rejected']}, peak RSS {imp['peak_rss_mib']} MiB")
    print(f"file: {size:,} bytes = {f['gib']:.3f} GiB for {len(arr):,} numbers ({f['bytes_per_number']:.2f} B/number), "
          f"open + checks {t_open:.2f} s; RSS +{f['rss_after_lookups_mib']} MiB after the lookups")
    for name in ("present", "absent"):
        pc, pb, hs = lk[name]["per_call"], lk[name][f"per_batch_of_{args.batch}"], lk[name]["has_e164_per_call"]
        print(f"lookup {name:<7} (contains)  per call p50 {pc['p50_ns']:.0f} p99 {pc['p99_ns']:.0f} "
              f"p99.9 {pc['p999_ns']:.0f} ns (mean {pc['mean_ns']:.0f}) | per lookup, batches of {args.batch}: "
              f"p50 {pb['p50_ns']:.0f} p99 {pb['p99_ns']:.0f} p99.9 {pb['p999_ns']:.0f} ns (mean {pb['mean_ns']:.0f}) | "
              f"has(e164) per call p50 {hs['p50_ns']:.0f} p99 {hs['p99_ns']:.0f} ns")
    t, h, f = lk["timer"], lk["hot_cache_per_call"], lk["memory_floor_per_call"]
    print(f"  (per-call figures include the timer: an empty perf_counter_ns pair takes p50 {t['p50_ns']:.0f} "
          f"p99 {t['p99_ns']:.0f} ns; the same lookup with everything in cache takes p50 {h['p50_ns']:.0f} "
          f"p99 {h['p99_ns']:.0f} ns: the rest is the random memory access; one bare random byte read from "
          f"the mapping, timed the same way, takes p50 {f['p50_ns']:.0f} p99 {f['p99_ns']:.0f} ns on this host)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--numbers", type=int, default=250_000_000)
    ap.add_argument("--dir", default="/tmp/dnc-bench")
    ap.add_argument("--runs", type=int, default=3, help="imports and lookup series of the same generated list")
    ap.add_argument("--lookups", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=50, help="lookups per timed batch")
    ap.add_argument("--comma", type=int, default=25_000_000)
    ap.add_argument("--changes", type=int, default=1_000_000)
    ap.add_argument("--out", default="bench/results/dnc.json")
    args = ap.parse_args()
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng = np.random.default_rng(11)
    npas = us_npas()
    result: dict = {"benchmark": "dnc", "python": platform.python_version(), "numbers": args.numbers, "npas": len(npas),
                    "batch": args.batch}
    try:
        src = root / "national.txt"
        t0 = time.perf_counter()
        present = generate(src, args.numbers, npas, rng, sep=False)
        print(f"generated {args.numbers:,} numbers over {len(npas)} area codes: {src.stat().st_size / 2**30:.2f} GiB "
              f"in {time.perf_counter() - t0:.0f} s")
        data = root / "data"
        runs = []
        for r in range(args.runs):
            print(f"-- run {r + 1} of {args.runs}")
            runs.append(one_run(src, data, present, args, rng))
        src.unlink()
        b = f"per_batch_of_{args.batch}"
        med = {"import_numbers_per_s": median_of(runs, ("import_full", "numbers_per_s")),
               "file_gib": runs[-1]["file"]["gib"]}
        for name in ("present", "absent"):
            for kind in ("per_call", b):
                for q in ("p50_ns", "p99_ns", "p999_ns", "mean_ns"):
                    med[f"{name}_{kind}_{q}"] = median_of(runs, ("lookup", name, kind, q))
        result["runs"], result["median"] = runs, med
        print(f"== median of {args.runs}: import {med['import_numbers_per_s'] / 1e6:.2f} M numbers/s; file "
              f"{med['file_gib']:.3f} GiB")
        for name in ("present", "absent"):
            print(f"   lookup {name:<7} per call p50/p99/p99.9 {med[f'{name}_per_call_p50_ns']:.0f} / "
                  f"{med[f'{name}_per_call_p99_ns']:.0f} / {med[f'{name}_per_call_p999_ns']:.0f} ns; per lookup in batches "
                  f"of {args.batch} {med[f'{name}_{b}_p50_ns']:.0f} / {med[f'{name}_{b}_p99_ns']:.0f} / "
                  f"{med[f'{name}_{b}_p999_ns']:.0f} ns")
        # a change list against the full snapshot
        if args.changes:
            ch = root / "changes.txt"
            dels = rng.choice(present, args.changes // 2, replace=False)
            adds = 2_000_000_000 + rng.integers(0, 7_999_999_999, args.changes - len(dels))
            adds = adds[(adds // 10_000) % 1000 >= 200]
            with open(ch, "w") as f:
                f.writelines(f"{k // 10_000_000},{k % 10_000_000:07d},D,20260411\n" for k in dels.tolist())
                f.writelines(f"{k // 10_000_000},{k % 10_000_000:07d},A,20260411\n" for k in adds.tolist())
            os.sync()
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
            os.sync()
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
