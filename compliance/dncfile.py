"""The on-disk form of a ``DncArray``: one file, memory-mapped read-only by every process.

Layout: a 4096-byte header (``DNCARR03``, a little-endian u32 length, then JSON metadata:
list kind and id, snapshot date, count, block count, CRC-32s of the index and of the bit
blocks), then ``index`` uint32[1,000,000] and ``bits`` uint8[(nblocks+1)*1250] (see
``compliance.dncarray``). Several processes mapping the same file share one copy in the page
cache; the mapping is populated when it is opened (off the event loop), so the first lookups
do not take page faults.

Files are written to a temporary name in the same directory, fsynced, checked, and only
then renamed over the live name (``os.replace`` is atomic), so a reader sees the old file
or the new one, never a partial one. ``open_array`` verifies size, magic, both CRCs, every
index entry (a whole block inside the file), the zero block and the member count before
anything is swapped in: a corrupt or truncated file raises ``DncFileError`` and the caller
keeps the list it had.
"""

from __future__ import annotations

import json
import mmap
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .dncarray import BLOCK, NPA_SPAN, PREFIXES, DncArray, npa_blocks, popcount, sorted_unique

MAGIC = b"DNCARR03"
HEADER = 4096
INDEX_BYTES = 4 * PREFIXES


class DncFileError(ValueError):
    pass


class DncWriter:
    """Streams a list, one area code at a time, into ``path`` (a temporary name)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.index = np.zeros(PREFIXES, np.uint32)
        self.count = 0
        self.nblocks = 1  # block 0: the zero block every absent prefix points at
        zero = bytes(BLOCK)
        self._crc_bits = zlib.crc32(zero)
        self._f = open(path, "wb")
        self._f.write(b"\0" * (HEADER + INDEX_BYTES))
        self._f.write(zero)

    def add(self, npa: int, local: np.ndarray) -> None:
        """The 7-digit local numbers (NXX*10000 + line) of one area code, any order."""
        nxx, blocks = npa_blocks(local)
        self.add_blocks(npa, nxx, blocks)

    def add_blocks(self, npa: int, nxx: np.ndarray, blocks: np.ndarray) -> None:
        """One area code as blocks: ``blocks[i]`` holds the lines of prefix NXX ``nxx[i]``."""
        if not 200 <= npa <= 999 or self.index[npa * 1000:(npa + 1) * 1000].any():
            raise ValueError(f"area code {npa}: invalid, or added twice")
        nxx = np.asarray(nxx, np.int64)
        if len(nxx) and (nxx.min() < 200 or nxx.max() > 999 or len(sorted_unique(nxx)) != len(nxx)):
            raise ValueError(f"area code {npa}: bad NXX")
        self.index[npa * 1000 + nxx] = (self.nblocks + np.arange(len(nxx), dtype=np.uint32)) * BLOCK
        self.nblocks += len(nxx)
        self.count += popcount(blocks)
        data = np.ascontiguousarray(blocks, np.uint8).tobytes()
        self._crc_bits = zlib.crc32(data, self._crc_bits)
        self._f.write(data)

    def finish(self, meta: dict[str, Any]) -> dict[str, Any]:
        index = self.index.data.cast("B")
        meta = dict(meta, format=3, count=self.count, nblocks=self.nblocks, crc_index=zlib.crc32(index),
                    crc_bits=self._crc_bits)
        head = json.dumps(meta, sort_keys=True).encode()
        if len(head) > HEADER - 12:
            raise ValueError("metadata too large for the header")
        self._f.seek(0)
        self._f.write(MAGIC + len(head).to_bytes(4, "little") + head)
        self._f.seek(HEADER)
        self._f.write(index)
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return meta

    def abort(self) -> None:
        self._f.close()
        self.path.unlink(missing_ok=True)


def write_keys(path: Path, keys: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
    """Write int64 national numbers with NPA and NXX in 2-9, any order (tests, benchmarks)."""
    keys = np.asarray(keys, dtype=np.int64)
    if len(keys) > 1 and bool((keys[1:] < keys[:-1]).any()):
        keys = np.sort(keys)
    npa = keys // NPA_SPAN
    w = DncWriter(path)
    try:
        for n in sorted_unique(npa).tolist():
            lo, hi = np.searchsorted(npa, n), np.searchsorted(npa, n, side="right")
            w.add(n, keys[lo:hi] - n * NPA_SPAN)
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
    if not isinstance(meta, dict) or meta.get("format") != 3:
        raise DncFileError(f"{path}: unknown format")
    return meta


def _map(fd: int) -> mmap.mmap:
    """A read-only shared mapping, its page table filled at once where the OS allows."""
    flags = getattr(mmap, "MAP_SHARED", 1) | getattr(mmap, "MAP_POPULATE", 0)
    try:
        return mmap.mmap(fd, 0, flags=flags, prot=mmap.PROT_READ)
    except (AttributeError, TypeError, ValueError, OSError):
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)


def _popcount(bits: memoryview) -> int:
    b = np.frombuffer(bits, np.uint8)
    step = 1 << 24
    return sum(popcount(b[i:i + step]) for i in range(0, len(b), step))


def open_array(path: Path, verify: bool = True) -> DncArray:
    """Map ``path`` read-only and check it; raises ``DncFileError`` when it is not whole."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < HEADER + INDEX_BYTES + BLOCK:
            raise DncFileError(f"{path}: truncated ({size} bytes)")
        mm = _map(f.fileno())
    try:
        meta = _meta(mm[:HEADER], path)
        count, nblocks = int(meta["count"]), int(meta["nblocks"])
        bits_at = HEADER + INDEX_BYTES
        if nblocks < 1 or size != bits_at + nblocks * BLOCK:
            raise DncFileError(f"{path}: {size} bytes, the header promises {bits_at + max(nblocks, 1) * BLOCK}")
        view = memoryview(mm)
        index = view[HEADER:bits_at]
        bits = view[bits_at:]
        if verify:
            if zlib.crc32(index) != meta["crc_index"] or zlib.crc32(bits) != meta["crc_bits"]:
                raise DncFileError(f"{path}: checksum mismatch")
            offs = np.frombuffer(index, np.uint32)
            if (offs % BLOCK).any() or int(offs.max()) >= nblocks * BLOCK:
                raise DncFileError(f"{path}: inconsistent index")
            if np.frombuffer(bits[:BLOCK], np.uint8).any() or _popcount(bits) != count:
                raise DncFileError(f"{path}: the bit blocks do not hold {count} numbers")
        arr = DncArray(index.cast("I"), bits, meta, mm)
    except DncFileError:
        raise  # the mapping goes with its views when they are collected
    except Exception as exc:
        raise DncFileError(f"{path}: {exc}") from None
    return arr


def replace(tmp: Path, final: Path) -> None:
    """Atomically publish ``tmp`` as ``final`` (same directory) and sync the directory."""
    os.replace(tmp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
