"""An exact, compact set of NANP numbers: one 10,000-bit block per NPA-NXX prefix present.

A 10-digit number NPA NXX XXXX is split into its 6-digit prefix q (NPA NXX) and its 4-digit
line. Every prefix that holds at least one member gets a block of 10,000 bits (1,250 bytes),
bit ``line`` set for each member. Layout (the same in memory and in a memory-mapped file,
see ``compliance.dncfile``):

* ``index`` uint32[1,000,000]: ``index[q]`` is the byte offset of prefix q's block in
  ``bits``, 0 (block 0) when the prefix has no member;
* ``bits``  uint8[(nblocks + 1) * 1250]: block 0 is all zeros, then one block per prefix;
  bit ``line & 7`` of byte ``line >> 3`` (little-endian bit order).

A lookup is one index read and one byte read, with no branch on absent prefixes (they lead
to the zero block): about 0.15 µs of Python on a warm cache, plus one random memory access
into ``bits``. Membership is exact (no false positive, no false negative). Size: 1,250 bytes
per prefix present plus the 4 MB index, so never more than 0.8 GB whatever the count (all
640,000 NANP prefixes full); the US registry at 250 million numbers over ~290,000 prefixes
takes about 0.34 GiB. Building needs numpy; looking up does not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NPA_SPAN = 10_000_000
PREFIXES = 1_000_000  # NPA NXX, the index's length
LINES = 10_000  # per prefix
BLOCK = LINES // 8  # bytes per prefix
_SMALL = 50_000  # fewer numbers than this in one area code: build its blocks by sorting


class DncArray:
    __slots__ = ("_index", "_bits", "count", "meta", "_owner")

    def __init__(self, index: memoryview, bits: memoryview, meta: dict[str, Any], owner: object = None) -> None:
        self._index, self._bits = index, bits
        self.count = int(meta.get("count", 0))
        self.meta = meta
        self._owner = owner  # keeps the backing buffer (an mmap or arrays) alive

    def __len__(self) -> int:
        return self.count

    def contains(self, key: int) -> bool:
        """``key`` is the 10-digit national number (NPA NXX XXXX) as an int. The gate calls
        this method: from Python code a method call costs about half of the ``in`` operator,
        which enters the function from C."""
        if 2_000_000_000 <= key <= 9_999_999_999:
            line = key % LINES
            return (self._bits[self._index[key // LINES] + (line >> 3)] >> (line & 7)) & 1 == 1
        return False

    __contains__ = contains

    def has(self, e164: str) -> bool:
        """Membership of an E.164 string; anything but ``+1`` and ten ASCII digits is absent."""
        if len(e164) != 12 or e164[0] != "+" or e164[1] != "1" or not e164.isascii():
            return False
        try:
            key = int(e164[2:])
        except ValueError:
            return False
        # int() also takes a sign, "_" and spaces; with one of them ten characters hold at most
        # nine digits, which the range check of ``contains`` refuses
        return self.contains(key)

    def _offsets(self) -> np.ndarray:
        return np.frombuffer(self._index, np.uint32)

    def npas(self) -> list[int]:
        """The area codes with at least one member, ascending."""
        return np.flatnonzero(self._offsets().reshape(-1, 1000).any(axis=1)).tolist()

    def blocks(self, npa: int) -> tuple[np.ndarray, np.ndarray]:
        """(NXX present, their blocks as rows of 1,250 bytes) of one area code."""
        offs = self._offsets()[npa * 1000:(npa + 1) * 1000]
        nxx = np.flatnonzero(offs)
        rows = np.frombuffer(self._bits, np.uint8).reshape(-1, BLOCK)
        return nxx, rows[offs[nxx] // BLOCK]

    def npa_numbers(self, npa: int) -> np.ndarray:
        """The sorted local numbers (NXX * 10000 + line, uint32) of one area code."""
        nxx, blocks = self.blocks(npa)
        hit_block, line = np.nonzero(np.unpackbits(blocks, axis=1, bitorder="little"))
        return (nxx[hit_block] * LINES + line).astype(np.uint32)

    def numbers(self) -> np.ndarray:
        """Every member as sorted int64 national numbers (for merges and tests)."""
        parts = [npa * NPA_SPAN + self.npa_numbers(npa).astype(np.int64) for npa in self.npas()]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def npa_blocks(local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(NXX present, their blocks as rows of 1,250 bytes) for the 7-digit local numbers
    (NXX * 10000 + line) of one area code, in any order, duplicates allowed."""
    local = np.asarray(local, dtype=np.int64)
    if len(local) < _SMALL:  # sort the few
        local = sorted_unique(local)
        nxx, first = np.unique(local // LINES, return_index=True)  # with an index numpy sorts
        flags = np.zeros((len(nxx), LINES), np.bool_)
        flags[np.repeat(np.arange(len(nxx)), np.diff(np.append(first, len(local)))), local % LINES] = True
    else:  # mark the many in a flag per possible number (10 MB), no sort
        every = np.zeros((1000, LINES), np.bool_)
        every.reshape(-1)[local] = True
        nxx = np.flatnonzero(every.any(axis=1))
        flags = every[nxx]
    return nxx, np.packbits(flags, axis=1, bitorder="little")


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique`` of an integer array by sorting: numpy 2.4 answers ``np.unique`` with a hash
    table, which is 100 times slower on millions of distinct numbers."""
    a = np.sort(np.asarray(a).reshape(-1))
    if len(a) < 2:
        return a
    keep = np.empty(len(a), np.bool_)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


def popcount(blocks: np.ndarray) -> int:
    """Members held by some blocks (rows of bytes)."""
    return int(np.bitwise_count(np.asarray(blocks, np.uint8)).sum(dtype=np.int64))


def layout(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index, bits) for int64 national numbers with NPA and NXX in 2-9."""
    keys = np.asarray(keys, dtype=np.int64)
    npa = keys // NPA_SPAN
    order = np.argsort(npa, kind="stable")
    npa = npa[order]
    present, first = np.unique(npa, return_index=True)
    ends = np.append(first[1:], len(npa))
    index = np.zeros(PREFIXES, np.uint32)
    parts = [np.zeros((1, BLOCK), np.uint8)]
    nblocks = 1
    for code, lo, hi in zip(present.tolist(), first.tolist(), ends.tolist()):
        nxx, b = npa_blocks(keys[order[lo:hi]] - code * NPA_SPAN)
        index[code * 1000 + nxx] = (nblocks + np.arange(len(nxx), dtype=np.uint32)) * BLOCK
        nblocks += len(nxx)
        parts.append(b)
    return index, np.concatenate(parts).reshape(-1)


def normalize_keys(raw: np.ndarray) -> np.ndarray:
    """Sorted unique int64 national numbers with NPA and NXX in 2-9 (others dropped)."""
    keys = sorted_unique(np.asarray(raw, dtype=np.int64))
    ok = (keys >= 2_000_000_000) & (keys <= 9_999_999_999) & ((keys // 10_000) % 1000 >= 200)
    return keys[ok]


def from_keys(keys: Any, meta: dict[str, Any] | None = None) -> DncArray:
    """An in-memory array from national numbers (any order, duplicates allowed)."""
    k = normalize_keys(np.fromiter(keys, dtype=np.int64) if not isinstance(keys, np.ndarray) else keys)
    index, bits = layout(k)
    return DncArray(index.data.cast("B").cast("I"), bits.data, dict(meta or {}, count=len(k)), (index, bits))


EMPTY = from_keys([], {"empty": True})


def national_key(text: object) -> int | None:
    """A number as stored: digits only, a leading 1 dropped from 11 digits, NPA/NXX 2-9."""
    if not isinstance(text, str):
        return None
    digits = "".join(c for c in text if "0" <= c <= "9")
    if len(digits) == 11 and digits[0] == "1":
        digits = digits[1:]
    if len(digits) != 10 or digits[0] < "2" or digits[3] < "2":
        return None
    return int(digits)
