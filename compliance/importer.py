"""Streaming import of DNC lists into ``DncArray`` files (COMPLIANCE.md §4.1).

The files are read and parsed by ``compliance.dncformats`` (zip, gzip or plain; full lists
in both number forms; change lists). This module turns what they hold into a new snapshot:

* a full list: valid numbers are spooled to one file per area code (so memory stays bounded
  whatever the input size), then each area code is sorted, deduplicated and appended to the
  output on its own;
* change lists: applied to the list in force, one area code in memory at a time; the last
  record of a number wins.

Every malformed line is counted, with the first examples kept for the report, and the rest
of the file still imports. Abort (the previous list stays in force): unreadable or corrupt
archives (zip CRC, gzip), a full list without a single valid number, or more rejected lines
than ``max_reject_ratio``. The caller (``compliance.runtime``) publishes the file atomically.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from collections.abc import Callable, Iterator

import numpy as np

from .dncarray import BLOCK, LINES, NPA_SPAN, DncArray, sorted_unique
from .dncfile import DncWriter
from .dncformats import ImportAborted, line_text, parse_change_lines, parse_fields, parse_full_chunk, read_chunks

__all__ = ["ImportAborted", "Report", "import_changes", "import_full"]

SAMPLES = 5


@dataclass
class Report:
    kind: str
    list_id: str
    snapshot_date: str | None
    files: list[str]
    lines: int = 0
    valid: int = 0
    numbers: int = 0
    duplicates: int = 0
    rejected: int = 0
    reject_samples: list[tuple[int, str]] = field(default_factory=list)
    added: int = 0
    deleted: int = 0
    elapsed_s: float = 0.0
    path: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.lines / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "kind": self.kind, "list": self.list_id, "snapshot_date": self.snapshot_date, "files": self.files,
            "lines": self.lines, "valid": self.valid, "numbers": self.numbers, "duplicates": self.duplicates,
            "rejected": self.rejected, "reject_samples": [{"line": n, "text": t} for n, t in self.reject_samples],
            "added": self.added, "deleted": self.deleted, "elapsed_s": round(self.elapsed_s, 3),
            "lines_per_s": round(self.rate), "path": self.path,
        }


Progress = Callable[[Report], None]


# ---------------------------------------------------------------------------- spooling
class _Spool:
    """Valid numbers bucketed by area code into files of 7-digit uint32 local numbers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[int, IO[bytes]] = {}
        self.valid = 0

    def add(self, keys: np.ndarray) -> None:
        if not len(keys):
            return
        self.valid += len(keys)
        npa = (keys // 10_000_000).astype(np.uint16)
        order = np.argsort(npa, kind="stable")
        npa = npa[order]
        local = (keys[order] - npa.astype(np.int64) * 10_000_000).astype(np.uint32)
        present, starts = np.unique(npa, return_index=True)
        ends = np.append(starts[1:], len(npa))
        for a, s, e in zip(present.tolist(), starts.tolist(), ends.tolist()):
            f = self.files.get(a)
            if f is None:
                f = self.files[a] = open(self.root / f"{a}.u32", "ab", buffering=1 << 17)
            f.write(local[s:e].tobytes())

    def buckets(self) -> Iterator[tuple[int, np.ndarray]]:
        for f in self.files.values():
            f.close()
        for npa in sorted(self.files):
            yield npa, np.fromfile(self.root / f"{npa}.u32", dtype=np.uint32)
            (self.root / f"{npa}.u32").unlink()


# ---------------------------------------------------------------------------- imports
def import_full(paths: list[Path], out_tmp: Path, report: Report, progress: Progress | None = None,
                max_reject_ratio: float = 0.5, meta: dict | None = None) -> dict:
    """Write the full list in ``paths`` to ``out_tmp``; returns the file's metadata."""
    t0 = time.perf_counter()
    spool_dir = Path(tempfile.mkdtemp(prefix="dnc-spool-", dir=out_tmp.parent))
    try:
        spool = _Spool(spool_dir)
        last = t0
        physical = 0
        for buf in read_chunks(paths):
            keys, nlines, rejected = parse_full_chunk(buf)
            if len(rejected):
                texts = line_text(buf, rejected)
                salvaged = []
                for i, text in zip(rejected.tolist(), texts):
                    key, _ = parse_fields(text)
                    if key is not None:
                        salvaged.append(key)
                        continue
                    report.rejected += 1
                    if len(report.reject_samples) < SAMPLES:
                        report.reject_samples.append((physical + i + 1, text[:120]))
                if salvaged:
                    keys = np.concatenate([keys, np.asarray(salvaged, np.int64)])
            report.lines += nlines
            physical += buf.count(b"\n")
            spool.add(keys)
            report.valid = spool.valid
            now = time.perf_counter()
            if progress is not None and now - last >= 1.0:
                report.elapsed_s = now - t0
                progress(report)
                last = now
        _guard(report, max_reject_ratio, need_numbers=True)
        writer = DncWriter(out_tmp)
        try:
            for npa, local in spool.buckets():
                writer.add(npa, local)  # duplicates fold into one bit
            report.numbers = writer.count
            report.duplicates = report.valid - writer.count
            report.elapsed_s = time.perf_counter() - t0
            return writer.finish(_meta(report, meta))
        except BaseException:
            writer.abort()
            raise
    finally:
        shutil.rmtree(spool_dir, ignore_errors=True)


def import_changes(current: DncArray, paths: list[Path], out_tmp: Path, report: Report,
                   progress: Progress | None = None, max_reject_ratio: float = 0.5, meta: dict | None = None) -> dict:
    """Apply change lists to ``current`` and write the result to ``out_tmp``."""
    t0 = time.perf_counter()
    all_keys: list[np.ndarray] = []
    all_ops: list[np.ndarray] = []
    seen_lines = 0
    for buf in read_chunks(paths):
        keys, ops, records, rejected = parse_change_lines(buf, seen_lines)
        report.lines += records
        report.rejected += len(rejected)
        report.reject_samples.extend((n, text[:120]) for n, text in rejected[:max(0, SAMPLES - len(report.reject_samples))])
        seen_lines += buf.count(b"\n")
        all_keys.append(np.asarray(keys, np.int64))
        all_ops.append(np.asarray(ops, np.int8))
        if progress is not None:
            report.elapsed_s = time.perf_counter() - t0
            progress(report)
    _guard(report, max_reject_ratio, need_numbers=False)
    key_arr = np.concatenate(all_keys) if all_keys else np.zeros(0, np.int64)
    op_arr = np.concatenate(all_ops) if all_ops else np.zeros(0, np.int8)
    report.valid = len(key_arr)
    # the last record of each number wins
    rev_keys = key_arr[::-1]
    uniq, idx = np.unique(rev_keys, return_index=True)
    last_op = op_arr[::-1][idx]
    adds, dels = uniq[last_op > 0], uniq[last_op < 0]  # sorted, disjoint
    add_npa, del_npa = adds // NPA_SPAN, dels // NPA_SPAN
    old_npas = set(current.npas())
    writer = DncWriter(out_tmp)
    try:
        for npa in sorted(old_npas | set(sorted_unique(add_npa).tolist())):  # one area code in memory at a time
            nxx, blocks = current.blocks(npa) if npa in old_npas else (np.zeros(0, np.int64), np.zeros((0, BLOCK), np.uint8))
            a = adds[np.searchsorted(add_npa, npa):np.searchsorted(add_npa, npa, "right")] - npa * NPA_SPAN
            d = dels[np.searchsorted(del_npa, npa):np.searchsorted(del_npa, npa, "right")] - npa * NPA_SPAN
            if len(a) or len(d):
                nxx, blocks, added, deleted = apply_changes(nxx, blocks, a, d)
                report.added += added
                report.deleted += deleted
            writer.add_blocks(npa, nxx, blocks)
        report.numbers = writer.count
        report.elapsed_s = time.perf_counter() - t0
        return writer.finish(_meta(report, meta))
    except BaseException:
        writer.abort()
        raise


def apply_changes(nxx: np.ndarray, blocks: np.ndarray, adds: np.ndarray, dels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """One area code's blocks with deletions, then additions (local numbers) applied:
    (NXX present, blocks, numbers added, numbers deleted). Prefixes left empty are dropped."""
    every = sorted_unique(np.concatenate([np.asarray(nxx, np.int64), adds // LINES]))
    flags = np.zeros((len(every), LINES), np.bool_)
    if len(nxx):
        flags[np.searchsorted(every, nxx)] = np.unpackbits(blocks, axis=1, bitorder="little").view(np.bool_)
    before = int(flags.sum())
    if len(dels):
        row = np.minimum(np.searchsorted(every, dels // LINES), max(len(every) - 1, 0))
        known = every[row] == dels // LINES if len(every) else np.zeros(len(dels), np.bool_)
        flags[row[known], dels[known] % LINES] = False
    kept = int(flags.sum())
    if len(adds):
        flags[np.searchsorted(every, adds // LINES), adds % LINES] = True
    after = int(flags.sum())
    live = flags.any(axis=1)
    return every[live], np.packbits(flags[live], axis=1, bitorder="little"), after - kept, before - kept


def _guard(report: Report, max_reject_ratio: float, need_numbers: bool) -> None:
    if report.lines == 0:
        raise ImportAborted("the input holds no lines")
    if need_numbers and report.valid == 0:
        raise ImportAborted(f"no valid number in {report.lines} lines")
    if report.rejected > max_reject_ratio * report.lines:
        raise ImportAborted(f"{report.rejected} of {report.lines} lines rejected (more than {max_reject_ratio:.0%}): "
                            "wrong or corrupt file")


def _meta(report: Report, extra: dict | None) -> dict:
    return {
        "kind": report.kind, "list": report.list_id, "snapshot_date": report.snapshot_date,
        "sources": [Path(f).name for f in report.files], "lines": report.lines, "rejected": report.rejected,
        "duplicates": report.duplicates, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
