"""Streaming import of DNC lists into ``DncArray`` files (COMPLIANCE.md §4.1).

Accepted input, zipped (every member), gzipped or plain:

* full lists, one number per line, ``NXXNXXXXXX`` or ``NXX,NXXXXXX`` (any of ``,-.()`` spaces,
  quotes and ``+`` between digits; a leading ``1`` on 11 digits is dropped); CSV/TXT lines
  with other fields (names, ZIP codes) take the first field that is a phone number;
* FTC change lists: comma-separated records holding the number (either form) and an
  add/delete indicator (``A``/``ADD``/``D``/``DEL``/``DELETE``...); other fields (dates) are
  ignored. The last record of a number wins.

Normalization: digits only, NPA and NXX must start with 2-9; anything else is a rejected
line, counted, with the first examples reported; the rest of the file still imports.

Memory stays bounded whatever the file size: the input is read in 8 MB chunks and parsed
with vectorized numpy (a fixed-width fast path, a general path, and a per-line fallback for
the lines those reject), valid numbers are spooled to one file per area code, and each area
code is then sorted, deduplicated and appended to the output on its own.

Abort (the previous list stays in force): unreadable/corrupt archives (zip CRC, gzip), a
full list without a single valid number, or more rejected lines than ``max_reject_ratio``.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterator

import numpy as np

from .dncarray import DncArray
from .dncfile import DncWriter, npa_numbers, npas_of

CHUNK = 8 << 20
SAMPLES = 5

_DIGIT = np.zeros(256, bool)
_DIGIT[48:58] = True
_ALLOWED = _DIGIT.copy()
for _c in b" ,-.()\t\r\"'+\n":
    _ALLOWED[_c] = True
_ADD = frozenset({"A", "ADD", "ADDED", "ADDITION", "I", "INS", "INSERT", "N", "NEW", "+"})
_DEL = frozenset({"D", "DEL", "DELETE", "DELETED", "DELETION", "R", "REM", "REMOVE", "REMOVED", "-"})


class ImportAborted(Exception):
    """The input is corrupt or unusable; nothing was published."""


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


# ---------------------------------------------------------------------------- reading
def _streams(path: Path) -> Iterator[IO[bytes]]:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"\x1f\x8b":
        with gzip.open(path, "rb") as g:
            yield g  # type: ignore[misc]
    elif magic == b"PK\x03\x04":
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.is_dir():
                    with z.open(info) as m:
                        yield m
    else:
        with open(path, "rb") as f2:
            yield f2


def read_chunks(paths: list[Path], size: int = CHUNK) -> Iterator[bytes]:
    """Chunks of whole lines (each ends with a newline) from every file, in order."""
    try:
        for path in paths:
            for stream in _streams(path):
                rest = b""
                while True:
                    block = stream.read(size)
                    if not block:
                        break
                    block = rest + block
                    cut = block.rfind(b"\n") + 1
                    rest = block[cut:]
                    if cut:
                        yield block[:cut]
                if rest:
                    yield rest + b"\n"
    except (zipfile.BadZipFile, gzip.BadGzipFile, EOFError, zlib.error, OSError) as exc:
        raise ImportAborted(f"cannot read the input: {exc}") from None


# ---------------------------------------------------------------------------- parsing
def _digits_of(field: str) -> str | None:
    f = field.strip().strip("\"'").strip()
    d = "".join(c for c in f if c.isdigit() and c.isascii())
    if not d or any(not (c.isdigit() or c in " -.()+") for c in f):
        return None
    return d


def _valid(d: str) -> int | None:
    if len(d) == 11 and d[0] == "1":
        d = d[1:]
    if len(d) == 10 and d[0] >= "2" and d[3] >= "2":
        return int(d)
    return None


def parse_fields(line: str) -> tuple[int | None, list[str]]:
    """(number, other fields) of a delimited line: the first phone-number field (or an
    ``NXX`` field followed by an ``NXXXXXX`` field)."""
    for sep in (",", "\t", "|", ";"):
        if sep in line:
            fields = line.split(sep)
            break
    else:
        fields = [line]
    digits = [_digits_of(f) for f in fields]
    for i, d in enumerate(digits):
        if d is not None and len(d) in (10, 11):
            key = _valid(d)
            if key is not None:
                return key, fields[:i] + fields[i + 1:]
        if d is not None and len(d) == 3 and i + 1 < len(digits) and digits[i + 1] is not None and len(digits[i + 1] or "") == 7:
            key = _valid(d + (digits[i + 1] or ""))
            if key is not None:
                return key, fields[:i] + fields[i + 2:]
    return None, fields


def _fixed(b: np.ndarray, n: int) -> np.ndarray | None:
    """Fast path: every line has the same width and the same shape. Values or None."""
    width = len(b) // n
    if width < 11 or width * n != len(b) or width > 24:
        return None
    m = b.reshape(n, width)
    if not (m[:, -1] == 10).all():
        return None
    m = m[:, :-1]
    row0 = m[0]
    dig = _DIGIT[row0]
    if dig.sum() not in (10, 11) or not _ALLOWED[row0[~dig]].all():
        return None
    cols = m[:, dig]
    if not _DIGIT[cols].all() or not (m[:, ~dig] == row0[~dig]).all():
        return None
    if cols.shape[1] == 11:
        if not (cols[:, 0] == 49).all():
            return None
        cols = cols[:, 1:]
    v = np.zeros(n, np.int64)
    for j in range(10):
        v *= 10
        v += cols[:, j] - 48
    return v


def parse_full_chunk(buf: bytes) -> tuple[np.ndarray, int, np.ndarray]:
    """(valid national numbers, line count, indexes of lines the vectorized paths reject)."""
    b = np.frombuffer(buf, np.uint8)
    nl = np.flatnonzero(b == 10)
    n = len(nl)
    if n == 0:
        return np.zeros(0, np.int64), 0, np.zeros(0, np.int64)
    v = _fixed(b, n)
    if v is not None:
        ok = ((v // 10_000_000) >= 200) & (((v // 10_000) % 1000) >= 200)
        return v[ok], n, np.flatnonzero(~ok)
    starts = np.empty(n, np.int64)
    starts[0] = 0
    starts[1:] = nl[:-1] + 1
    isd = _DIGIT[b]
    dcount = np.add.reduceat(isd.view(np.uint8), starts, dtype=np.int64)
    bad = np.add.reduceat((~_ALLOWED[b]).view(np.uint8), starts, dtype=np.int64)
    pos = np.flatnonzero(isd)
    line = np.searchsorted(nl, pos)
    first = np.zeros(n, np.int64)
    np.cumsum(dcount[:-1], out=first[1:])
    k = np.arange(len(pos)) - first[line]
    cnt = dcount[line]
    exp = np.where(cnt <= 11, cnt - 1 - k, 0)
    val = np.bincount(line, weights=(b[pos].astype(np.float64) - 48) * np.power(10.0, exp), minlength=n)
    v = np.rint(val).astype(np.int64)
    lead = np.zeros(n, np.uint8)
    has = dcount > 0
    lead[has] = b[pos[first[has]]]
    eleven = (dcount == 11) & (lead == 49)
    v[eleven] -= 10_000_000_000
    ok = (bad == 0) & ((dcount == 10) | eleven)
    ok &= ((v // 10_000_000) >= 200) & (((v // 10_000) % 1000) >= 200)
    blank = (dcount == 0) & (bad == 0)
    return v[ok], n - int(blank.sum()), np.flatnonzero(~ok & ~blank)


def _line_text(buf: bytes, idx: np.ndarray) -> list[str]:
    if not len(idx):
        return []
    b = np.frombuffer(buf, np.uint8)
    nl = np.flatnonzero(b == 10)
    out = []
    for i in idx.tolist():
        start = 0 if i == 0 else int(nl[i - 1]) + 1
        out.append(buf[start:int(nl[i])].decode("utf-8", "replace").rstrip("\r"))
    return out


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
                texts = _line_text(buf, rejected)
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
        writer = DncWriter(out_tmp, sorted(spool.files))
        try:
            for npa, local in spool.buckets():
                u = np.unique(local)
                writer.add(npa, u)
            report.numbers = writer.count
            report.duplicates = report.valid - writer.count
            report.elapsed_s = time.perf_counter() - t0
            return writer.finish(_meta(report, meta))
        except BaseException:
            writer.abort()
            raise
    finally:
        shutil.rmtree(spool_dir, ignore_errors=True)


def parse_change_lines(buf: bytes, first_line: int, report: Report) -> tuple[list[int], list[int]]:
    """(numbers, ops: +1 add / -1 delete) of a chunk of a change list."""
    keys: list[int] = []
    ops: list[int] = []
    for i, raw in enumerate(buf.split(b"\n")[:-1]):
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            continue
        report.lines += 1
        key, rest = parse_fields(text)
        op = 0
        for f in rest:
            token = f.strip().strip("\"'").upper()
            if token in _ADD:
                op = 1
                break
            if token in _DEL:
                op = -1
                break
        if key is None or op == 0:
            report.rejected += 1
            if len(report.reject_samples) < SAMPLES:
                report.reject_samples.append((first_line + i + 1, text[:120]))
            continue
        keys.append(key)
        ops.append(op)
    return keys, ops


def import_changes(current: DncArray, paths: list[Path], out_tmp: Path, report: Report,
                   progress: Progress | None = None, max_reject_ratio: float = 0.5, meta: dict | None = None) -> dict:
    """Apply change lists to ``current`` and write the result to ``out_tmp``."""
    t0 = time.perf_counter()
    all_keys: list[np.ndarray] = []
    all_ops: list[np.ndarray] = []
    seen_lines = 0
    for buf in read_chunks(paths):
        keys, ops = parse_change_lines(buf, seen_lines, report)
        seen_lines += buf.count(b"\n")
        all_keys.append(np.asarray(keys, np.int64))
        all_ops.append(np.asarray(ops, np.int8))
        if progress is not None:
            report.elapsed_s = time.perf_counter() - t0
            progress(report)
    _guard(report, max_reject_ratio, need_numbers=False)
    keys = np.concatenate(all_keys) if all_keys else np.zeros(0, np.int64)
    ops = np.concatenate(all_ops) if all_ops else np.zeros(0, np.int8)
    report.valid = len(keys)
    # the last record of each number wins
    rev_keys = keys[::-1]
    uniq, idx = np.unique(rev_keys, return_index=True)
    last_op = ops[::-1][idx]
    adds, dels = uniq[last_op > 0], uniq[last_op < 0]
    add_npa, del_npa = adds // 10_000_000, dels // 10_000_000
    old_npas = set(npas_of(current))
    npas = sorted(old_npas | set(np.unique(add_npa).tolist()))
    writer = DncWriter(out_tmp, npas)
    try:
        for npa in npas:  # one area code in memory at a time
            local = npa_numbers(current, npa) if npa in old_npas else np.zeros(0, np.uint32)
            a = (adds[add_npa == npa] - npa * 10_000_000).astype(np.uint32)
            d = (dels[del_npa == npa] - npa * 10_000_000).astype(np.uint32)
            before = len(local)
            if len(d):
                local = local[~np.isin(local, d)]
            report.deleted += before - len(local)
            if len(a):
                merged = np.union1d(local, a)
                report.added += len(merged) - len(local)
                local = merged
            writer.add(npa, local)
        report.numbers = writer.count
        report.elapsed_s = time.perf_counter() - t0
        return writer.finish(_meta(report, meta))
    except BaseException:
        writer.abort()
        raise


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
