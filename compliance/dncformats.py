"""DNC list files as the FTC and the states ship them: containers, lines, records (COMPLIANCE.md §4.1).

What the importer reads, without deciding what to do with it (that is ``compliance.importer``):

* containers: zip (every member, in order), gzip or plain files, read as chunks of whole
  lines (8 MB), so memory stays bounded whatever the file size;
* full lists, one number per line, ``NXXNXXXXXX`` or ``NXX,NXXXXXX`` (any of ``,-.()`` spaces,
  quotes and ``+`` between digits; a leading ``1`` on 11 digits is dropped); CSV/TXT lines
  with other fields (names, ZIP codes) take the first field that is a phone number. A chunk is
  parsed with vectorized numpy (a fixed-width fast path, then a general path) and the lines
  those reject go through the per-line parser;
* FTC change lists: comma-separated records holding the number (either form) and an
  add/delete indicator (``A``/``ADD``/``D``/``DEL``/``DELETE``...); other fields (dates) are
  ignored.

Normalization: digits only, NPA and NXX must start with 2-9; anything else is a rejected
line. The FTC also offers its lists as XML, but no source at hand gives that layout
(COMPLIANCE.md §8 item 2), so XML is not accepted: such a file is rejected line by line and
the import aborts rather than guess at tags.
"""

from __future__ import annotations

import gzip
import zipfile
import zlib
from pathlib import Path
from typing import IO
from collections.abc import Iterator

import numpy as np

CHUNK = 8 << 20

_DIGIT = np.zeros(256, bool)
_DIGIT[48:58] = True
_ALLOWED = _DIGIT.copy()
for _c in b" ,-.()\t\r\"'+\n":
    _ALLOWED[_c] = True
_ADD = frozenset({"A", "ADD", "ADDED", "ADDITION", "I", "INS", "INSERT", "N", "NEW", "+"})
_DEL = frozenset({"D", "DEL", "DELETE", "DELETED", "DELETION", "R", "REM", "REMOVE", "REMOVED", "-"})


class ImportAborted(Exception):
    """The input is corrupt or unusable; nothing was published."""


# ---------------------------------------------------------------------------- containers
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


# ---------------------------------------------------------------------------- lines
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


def line_text(buf: bytes, idx: np.ndarray) -> list[str]:
    if not len(idx):
        return []
    b = np.frombuffer(buf, np.uint8)
    nl = np.flatnonzero(b == 10)
    out = []
    for i in idx.tolist():
        start = 0 if i == 0 else int(nl[i - 1]) + 1
        out.append(buf[start:int(nl[i])].decode("utf-8", "replace").rstrip("\r"))
    return out


def parse_change_lines(buf: bytes, first_line: int) -> tuple[list[int], list[int], int, list[tuple[int, str]]]:
    """(numbers, ops: +1 add / -1 delete, records read, rejected (line number, text)) of a
    chunk of a change list; ``first_line`` lines came before it. The last record of a number
    wins when the caller applies them in order."""
    keys: list[int] = []
    ops: list[int] = []
    records = 0
    rejected: list[tuple[int, str]] = []
    for i, raw in enumerate(buf.split(b"\n")[:-1]):
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            continue
        records += 1
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
            rejected.append((first_line + i + 1, text))
            continue
        keys.append(key)
        ops.append(op)
    return keys, ops, records, rejected
