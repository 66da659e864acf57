"""The audit chain, pure: canonical encoding and the hash that links each record to the last.

Every record is numbered (``seq`` from 1) and its hash is

    hash = SHA-256(prev_hash || canonical(seq, at_ns, kind, call_id, number, body))

where ``canonical`` is msgspec's JSON with object keys sorted, and ``prev_hash`` of the first
record is 32 zero bytes. The body is stored as exactly those canonical bytes, so ``verify``
recomputes each hash from the stored row alone and names the first record whose hash or link
does not match: an edit, a deletion or an insertion anywhere breaks the chain from there on.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple
from collections.abc import Iterable

import msgspec

from .records import AuditEvent

GENESIS = bytes(32)
_encode = msgspec.json.Encoder(order="sorted").encode


class AuditRow(NamedTuple):
    seq: int
    at_ns: int
    kind: str
    call_id: str | None
    number: str | None
    body: str  # canonical JSON text
    prev_hash: bytes
    hash: bytes


def canonical_body(body: Any) -> str:
    return _encode(body).decode()


def link(prev_hash: bytes, seq: int, at_ns: int, kind: str, call_id: str | None, number: str | None, body: str) -> bytes:
    head = _encode([seq, at_ns, kind, call_id, number])
    return hashlib.sha256(prev_hash + head + body.encode()).digest()


class Chain:
    """Numbers and hashes audit events in the order they are written (one writer per chain)."""

    __slots__ = ("seq", "last_hash")

    def __init__(self, seq: int = 0, last_hash: bytes = GENESIS) -> None:
        self.seq, self.last_hash = seq, last_hash

    def append(self, ev: AuditEvent) -> AuditRow:
        raw = _encode(ev.body)  # (``link`` inlined: the body is hashed as encoded, not decoded and encoded again)
        self.seq = seq = self.seq + 1
        at_ns, kind, call_id, number, prev = ev.at_ns, ev.kind, ev.call_id, ev.number, self.last_hash
        h = hashlib.sha256(prev + _encode([seq, at_ns, kind, call_id, number]) + raw).digest()
        self.last_hash = h
        return AuditRow(seq, at_ns, kind, call_id, number, raw.decode(), prev, h)


class Break(NamedTuple):
    seq: int
    problem: str


def verify(rows: Iterable[AuditRow], prev: tuple[int, bytes] = (0, GENESIS),
           before: bytes | None = None) -> tuple[int, bytes, Break | None]:
    """Walk rows in ``seq`` order; returns (last good seq, its hash, first break or None).

    ``prev`` is the last record already verified and ``before`` the stored ``prev_hash`` of that
    record (both from the previous page). A record whose link does not match the record before
    it is told apart from a record before it that was edited and re-hashed: if the record's own
    hash agrees with the link it stores, it is intact and the record before it is the one at
    fault (its contents and hash were rewritten), so that one is named."""
    seq, last = prev
    for r in rows:
        if r.seq != seq + 1:
            return seq, last, Break(seq + 1, f"record {seq + 1} is missing (next stored record is {r.seq})")
        stored_prev = bytes(r.prev_hash)
        own = link(stored_prev, r.seq, r.at_ns, r.kind, r.call_id, r.number, r.body) == bytes(r.hash)
        if stored_prev != last:
            if own and seq > 0 and before is not None:
                return seq - 1, before, Break(seq, f"it was rewritten and re-hashed: record {r.seq} links to "
                                                   f"{stored_prev.hex()[:16]}..., not to its hash {last.hex()[:16]}...")
            return seq, last, Break(r.seq, "its prev_hash does not match the previous record's hash")
        if not own:
            return seq, last, Break(r.seq, "its contents do not match its hash (the record was altered)")
        seq, last, before = r.seq, bytes(r.hash), stored_prev
    return seq, last, None
