"""Signed checkpoints of the audit chain's head, kept where the database cannot reach them.

The hash chain proves every record links to the one before it, but not that the chain was not
cut short (its last records deleted) or rewritten from some record on (each re-hashed): both
leave a chain that verifies. A checkpoint is the head (seq, hash, time) signed with an HMAC
key the database does not hold; written to a file of the operator's choice (one JSON line per
checkpoint, appended) it pins the chain: ``audit verify --checkpoint FILE`` refuses a chain
that ends before a checkpoint's record (CUT) or whose record there has another hash
(REWRITTEN), and a line whose signature does not match (forged).

The key: ``EXCHANGE_CHECKPOINT_KEY`` (text) or ``EXCHANGE_CHECKPOINT_KEY_FILE`` (a file
holding it); the file: ``EXCHANGE_CHECKPOINT_FILE``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from .store import Store


class BadCheckpoint(ValueError):
    """A checkpoint line that is not one, or not signed with the key."""


class NoKey(ValueError):
    """No checkpoint key is configured."""


class Checkpoint(NamedTuple):
    seq: int
    hash: bytes
    at_ns: int


def key_from(env: Mapping[str, str] | None = None, key_file: str | None = None) -> bytes:
    """The signing key: ``key_file``, else ``EXCHANGE_CHECKPOINT_KEY``, else the file named by
    ``EXCHANGE_CHECKPOINT_KEY_FILE``; NoKey if none is set (or it is empty)."""
    env = os.environ if env is None else env
    path = key_file or env.get("EXCHANGE_CHECKPOINT_KEY_FILE")
    key = env.get("EXCHANGE_CHECKPOINT_KEY") if not key_file else None
    if not key and path:
        try:
            key = Path(path).read_text().strip()
        except OSError as exc:
            raise NoKey(f"cannot read the checkpoint key file {path!r}: {exc}") from None
    if not key:
        raise NoKey("no checkpoint key: set EXCHANGE_CHECKPOINT_KEY or EXCHANGE_CHECKPOINT_KEY_FILE")
    return key.encode()


def _message(seq: int, hash_hex: str, at_ns: int) -> bytes:
    return f"dce-audit-checkpoint:v1:{seq}:{hash_hex}:{at_ns}".encode()


def sign(cp: Checkpoint, key: bytes) -> str:
    """One JSON line (no newline) for ``cp``."""
    hash_hex = cp.hash.hex()
    mac = hmac.new(key, _message(cp.seq, hash_hex, cp.at_ns), hashlib.sha256).hexdigest()
    at = datetime.fromtimestamp(cp.at_ns / 1e9, UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"seq": cp.seq, "hash": hash_hex, "at_ns": cp.at_ns, "time": at, "mac": mac})


def parse(line: str, key: bytes) -> Checkpoint:
    try:
        d = json.loads(line)
        seq, hash_hex, at_ns, mac = int(d["seq"]), str(d["hash"]), int(d["at_ns"]), str(d["mac"])
        digest = bytes.fromhex(hash_hex)
    except (ValueError, KeyError, TypeError) as exc:
        raise BadCheckpoint(f"not a checkpoint: {exc}") from None
    want = hmac.new(key, _message(seq, hash_hex, at_ns), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, mac):
        raise BadCheckpoint(f"the checkpoint of record {seq} is not signed with the checkpoint key (forged or another key)")
    return Checkpoint(seq, digest, at_ns)


def read(path: str | Path, key: bytes) -> list[Checkpoint]:
    """Every checkpoint in the file, in order; BadCheckpoint naming the first bad line."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(parse(line, key))
            except BadCheckpoint as exc:
                raise BadCheckpoint(f"{path} line {n}: {exc}") from None
    return out


def append(path: str | Path, line: str) -> None:
    """Append one line and make it durable before returning."""
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


async def head(store: Store) -> tuple[int, bytes]:
    return await store.last_audit()


async def check(store: Store, checkpoints: list[Checkpoint]) -> list[str]:
    """What the stored chain contradicts, checkpoint by checkpoint (empty: it agrees with all)."""
    problems = []
    last_seq, _ = await store.last_audit()
    for cp in checkpoints:
        at = datetime.fromtimestamp(cp.at_ns / 1e9, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        rows = await store.fetch("SELECT hash FROM audit WHERE seq = ?", cp.seq)
        if not rows:
            problems.append(f"CUT: the checkpoint of {at} signed record {cp.seq} (hash {cp.hash.hex()}), "
                            f"but the stored chain ends at record {last_seq}")
        elif bytes(rows[0][0]) != cp.hash:
            problems.append(f"REWRITTEN: record {cp.seq} has hash {bytes(rows[0][0]).hex()}, "
                            f"the checkpoint of {at} signed {cp.hash.hex()}")
    return problems
