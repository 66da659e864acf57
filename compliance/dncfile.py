"""The on-disk form of a ``DncArray``: one file, memory-mapped read-only by every process.

Layout: a 4096-byte header (``DNCARR02``, a little-endian u32 length, then JSON metadata:
list kind and id, snapshot date, count, slot count, CRC-32s of the index and of the lines),
then ``slot`` int32[1000], ``offs`` uint32[nslots*100001], ``lines`` uint8[count]
(see ``compliance.dncarray``). Several processes mapping the same file share one copy in
the page cache.

Files are written to a temporary name in the same directory, fsynced, checked, and only
then renamed over the live name (``os.replace`` is atomic), so a reader sees the old file
or the new one, never a partial one. ``open_array`` verifies size, magic, index shape and
both CRCs before anything is swapped in: a corrupt or truncated file raises ``DncFileError``
and the caller keeps the list it had.
"""

from __future__ import annotations

import json
import mmap
import os
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .dncarray import BUCKETS, SLOT_WIDTH, DncArray

MAGIC = b"DNCARR02"
HEADER = 4096
SLOT_BYTES = 4000


class DncFileError(ValueError):
    pass


class DncWriter:
    """Streams a sorted list, one area code at a time, into ``path`` (a temporary name)."""

    def __init__(self, path: Path, npas: list[int]) -> None:
        self.path = path
        self.npas = sorted(set(npas))
        self.slot = np.full(1000, -1, np.int32)
        self.slot[self.npas] = np.arange(len(self.npas), dtype=np.int32)
        self.offs = np.zeros(len(self.npas) * SLOT_WIDTH, np.uint32)
        self.count = 0
        self._next = 0
        self._crc_lines = 0
        self._f = open(path, "wb")
        self._f.write(b"\0" * (HEADER + SLOT_BYTES + self.offs.nbytes))

    def add(self, npa: int, local: np.ndarray) -> None:
        """The sorted, unique 7-digit local numbers (NXX*10000 + line) of one area code."""
        s = int(self.slot[npa])
        if s < self._next:
            raise ValueError("area codes must be added once each, in ascending order")
        self._next = s + 1
        local = np.asarray(local, dtype=np.uint32)
        counts = np.bincount(local // 100, minlength=BUCKETS)
        base = s * SLOT_WIDTH
        self.offs[base + 1 : base + BUCKETS] = self.count + np.cumsum(counts[:-1])
        self.offs[base] = self.count
        self.count += len(local)
        data = (local % 100).astype(np.uint8).tobytes()
        self._crc_lines = zlib.crc32(data, self._crc_lines)
        self._f.write(data)

    def finish(self, meta: dict[str, Any]) -> dict[str, Any]:
        # offs[s*SLOT_WIDTH + BUCKETS] is the start of the next area code
        for s in range(len(self.npas) - 1):
            self.offs[s * SLOT_WIDTH + BUCKETS] = self.offs[(s + 1) * SLOT_WIDTH]
        if len(self.npas):
            self.offs[len(self.offs) - 1] = self.count
        slot, offs = memoryview(self.slot).cast("B"), memoryview(self.offs).cast("B")
        meta = dict(meta, format=2, count=self.count, nslots=len(self.npas),
                    crc_index=zlib.crc32(offs, zlib.crc32(slot)), crc_lines=self._crc_lines)
        head = json.dumps(meta, sort_keys=True).encode()
        if len(head) > HEADER - 12:
            raise ValueError("metadata too large for the header")
        self._f.seek(0)
        self._f.write(MAGIC + len(head).to_bytes(4, "little") + head)
        self._f.seek(HEADER)
        self._f.write(slot)
        self._f.write(offs)
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return meta

    def abort(self) -> None:
        self._f.close()
        self.path.unlink(missing_ok=True)


def write_keys(path: Path, keys: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
    """Write sorted unique int64 national numbers (small lists, tests)."""
    keys = np.asarray(keys, dtype=np.int64)
    npa = keys // 10_000_000
    present = np.unique(npa).tolist()
    w = DncWriter(path, present)
    try:
        for n in present:
            lo, hi = np.searchsorted(npa, n), np.searchsorted(npa, n, side="right")
            w.add(n, (keys[lo:hi] - n * 10_000_000).astype(np.uint32))
        return w.finish(meta)
    except BaseException:
        w.abort()
        raise


def read_meta(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        head = f.read(HEADER)
    return _meta(head, path)


def _meta(head: bytes, path: Path) -> dict[str, Any]:
    if len(head) < HEADER or head[:8] != MAGIC:
        raise DncFileError(f"{path}: not a DNC array file")
    n = int.from_bytes(head[8:12], "little")
    try:
        meta = json.loads(head[12 : 12 + n])
    except ValueError:
        raise DncFileError(f"{path}: unreadable header") from None
    if not isinstance(meta, dict) or meta.get("format") != 2:
        raise DncFileError(f"{path}: unknown format")
    return meta


def open_array(path: Path, verify: bool = True) -> DncArray:
    """Map ``path`` read-only and check it; raises ``DncFileError`` when it is not whole."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < HEADER + SLOT_BYTES:
            raise DncFileError(f"{path}: truncated ({size} bytes)")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        meta = _meta(mm[:HEADER], path)
        count, nslots = int(meta["count"]), int(meta["nslots"])
        index_end = HEADER + SLOT_BYTES + 4 * nslots * SLOT_WIDTH
        if size != index_end + count:
            raise DncFileError(f"{path}: {size} bytes, the header promises {index_end + count}")
        view = memoryview(mm)
        index = view[HEADER:index_end]
        lines = view[index_end:]
        if verify:
            if zlib.crc32(index) != meta["crc_index"] or zlib.crc32(lines) != meta["crc_lines"]:
                raise DncFileError(f"{path}: checksum mismatch")
            slot = np.frombuffer(index[:SLOT_BYTES], np.int32)
            offs = np.frombuffer(index[SLOT_BYTES:], np.uint32)
            if (slot >= nslots).any() or (len(offs) and (bool((offs[1:] < offs[:-1]).any()) or offs[-1] != count)):
                raise DncFileError(f"{path}: inconsistent index")
        arr = DncArray(index[:SLOT_BYTES].cast("i"), index[SLOT_BYTES:].cast("I"), lines, meta, mm, mm.find, index_end)
    except DncFileError:
        raise  # the mapping goes with its views when they are collected
    except Exception as exc:
        raise DncFileError(f"{path}: {exc}") from None
    return arr


def npas_of(arr: DncArray) -> list[int]:
    return np.flatnonzero(np.frombuffer(arr._slot, np.int32) >= 0).tolist()


def npa_numbers(arr: DncArray, npa: int) -> np.ndarray:
    """The sorted local numbers (NXX*10000 + line) of one area code of an array."""
    s = int(np.frombuffer(arr._slot, np.int32)[npa])
    if s < 0:
        return np.zeros(0, np.uint32)
    seg = np.frombuffer(arr._offs, np.uint32)[s * SLOT_WIDTH:][:SLOT_WIDTH].astype(np.int64)
    lines = np.frombuffer(arr._lines, np.uint8)[seg[0]:seg[-1]]
    return (np.repeat(np.arange(BUCKETS, dtype=np.uint32), np.diff(seg)) * 100 + lines).astype(np.uint32)


def iter_npas(arr: DncArray) -> Iterator[tuple[int, np.ndarray]]:
    """(npa, sorted local numbers) of every area code of an array, one at a time."""
    for npa in npas_of(arr):
        yield npa, npa_numbers(arr, npa)


def replace(tmp: Path, final: Path) -> None:
    """Atomically publish ``tmp`` as ``final`` (same directory) and sync the directory."""
    os.replace(tmp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
