"""An exact, compact set of NANP numbers: sorted arrays under a bucket index.

A 10-digit number NPA NXX XXXX is split into its area code (NPA), a bucket (the 5 digits
NXX + the first two line digits) and the last two digits. Layout (the same in memory and in
a memory-mapped file, see ``compliance.dncfile``):

* ``slot``  int32[1000]: the slot of each area code present, -1 when absent;
* ``offs``  uint32[nslots * 100001]: for slot s and bucket b, ``offs[s*100001 + b]`` is where
  that bucket's entries start in ``lines``; ``offs[s*100001 + 100000]`` ends the area code;
* ``lines`` uint8[count]: the last two digits, sorted within each bucket.

One byte per number plus 400 KB per area code present: 250 million numbers over ~360 US
area codes take about 0.39 GB. Membership is exact (no false positive, no false negative):
two index reads and one C byte scan over at most 100 entries (about 7 when the registry is
full). Building needs numpy; looking up does not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_BYTE = [bytes((i,)) for i in range(256)]
NPA_SPAN = 10_000_000
BUCKETS = 100_000  # per area code: NXX and the first two line digits
SLOT_WIDTH = BUCKETS + 1


class DncArray:
    __slots__ = ("_slot", "_offs", "_lines", "_base", "_find", "_at", "count", "meta", "_owner")

    def __init__(self, slot: memoryview, offs: memoryview, lines: memoryview, meta: dict[str, Any], owner: object = None,
                 find: Any = None, at: int = 0) -> None:
        self._slot, self._offs, self._lines = slot, offs, lines
        # ``find(byte, start, end)`` of the buffer holding ``lines`` at offset ``at`` (an mmap or
        # bytes): a bucket holds at most 100 sorted bytes, one C scan beats a bisect there
        if find is None:
            data = bytes(lines)
            find, at = data.find, 0
        self._find, self._at = find, at
        # per area code: the index of bucket 0 of that code, minus npa * BUCKETS, so that the
        # bucket of a number is ``_base[npa] + number // 100`` (None: code absent)
        self._base: list[int | None] = [None if slot[n] < 0 else slot[n] * SLOT_WIDTH - n * BUCKETS for n in range(1000)]
        self.count = len(lines)
        self.meta = meta
        self._owner = owner  # keeps the backing buffer (an mmap or arrays) alive

    def __len__(self) -> int:
        return self.count

    def __contains__(self, key: int) -> bool:
        """``key`` is the 10-digit national number (NPA NXX XXXX) as an int."""
        if not 2_000_000_000 <= key <= 9_999_999_999:
            return False
        q = key // 100
        base = self._base[q // BUCKETS]
        if base is None:
            return False
        b = base + q
        offs = self._offs
        lo = offs[b]
        hi = offs[b + 1]
        if lo == hi:
            return False
        at = self._at
        return self._find(_BYTE[key - q * 100], at + lo, at + hi) >= 0

    def has(self, e164: str, _byte: list[bytes] = _BYTE) -> bool:
        """Membership of an E.164 string; anything but ``+1`` and ten digits is absent."""
        if len(e164) != 12 or e164[0] != "+" or e164[1] != "1":
            return False
        try:
            q, last = divmod(int(e164[2:]), 100)
        except ValueError:
            return False
        if q < 20_000_000:  # int() also takes "+", "-", "_" and spaces: only plain digits pass
            return False
        base = self._base[q // BUCKETS]
        if base is None:
            return False
        b = base + q
        offs = self._offs
        lo = offs[b]
        hi = offs[b + 1]
        if lo == hi:
            return False
        at = self._at
        return self._find(_byte[last], at + lo, at + hi) >= 0

    def numbers(self) -> np.ndarray:
        """Every member as sorted int64 national numbers (for merges and tests)."""
        slot = np.frombuffer(self._slot, dtype=np.int32)
        offs = np.frombuffer(self._offs, dtype=np.uint32).astype(np.int64)
        lines = np.frombuffer(self._lines, dtype=np.uint8).astype(np.int64)
        if not len(lines):
            return np.zeros(0, np.int64)
        counts = np.diff(np.append(offs, len(lines)))  # per (slot, bucket); bucket 100000 has 0
        npas = np.flatnonzero(slot >= 0)
        npa_of_slot = np.empty(len(npas), np.int64)
        npa_of_slot[slot[npas]] = npas
        g = np.arange(len(offs))
        prefix = npa_of_slot[g // SLOT_WIDTH] * BUCKETS + g % SLOT_WIDTH
        return np.repeat(prefix, counts) * 100 + lines


def layout(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(slot, offs, lines) for sorted, unique int64 national numbers."""
    keys = np.asarray(keys, dtype=np.int64)
    npa = keys // NPA_SPAN
    present = np.unique(npa)
    slot = np.full(1000, -1, np.int32)
    slot[present] = np.arange(len(present), dtype=np.int32)
    g = slot[npa].astype(np.int64) * SLOT_WIDTH + (keys // 100) % BUCKETS
    counts = np.bincount(g, minlength=len(present) * SLOT_WIDTH)
    offs = np.zeros(len(present) * SLOT_WIDTH, np.uint32)
    if len(offs):
        np.cumsum(counts[:-1], out=offs[1:])
    lines = (keys % 100).astype(np.uint8)
    return slot, offs, lines


def normalize_keys(raw: np.ndarray) -> np.ndarray:
    """Sorted unique int64 national numbers with NPA and NXX in 2-9 (others dropped)."""
    keys = np.unique(np.asarray(raw, dtype=np.int64))
    ok = (keys >= 2_000_000_000) & (keys <= 9_999_999_999) & ((keys // 10_000) % 1000 >= 200)
    return keys[ok]


def from_keys(keys: Any, meta: dict[str, Any] | None = None) -> DncArray:
    """An in-memory array from national numbers (any order, duplicates allowed)."""
    k = normalize_keys(np.fromiter(keys, dtype=np.int64) if not isinstance(keys, np.ndarray) else keys)
    slot, offs, lines = layout(k)
    return DncArray(memoryview(slot).cast("B").cast("i"), memoryview(offs).cast("B").cast("I"),
                    memoryview(lines).cast("B"), dict(meta or {}, count=len(lines)), (slot, offs, lines))


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
