"""Consumer numbers at rest: envelope encryption with one data key per number, and blind indexes.

- A **data key** (AES-256-GCM) belongs to one consumer number. A number is stored as
  ``enc1:<kid>:<base64url(nonce ‖ ciphertext ‖ tag)>``, the associated data being the key id.
  Keys live in the ``privacy_keys`` table, each wrapped (AES-GCM) by the operator's **master
  key** and naming it by its id (``master_kid``). Destroying a number's rows there
  (crypto-shredding) makes every stored trace of it unreadable; nothing else has to change,
  so the audit chain, which covers the ciphertext, still verifies.
- A **blind index** ``h1:<32 hex>`` (HMAC-SHA-256, truncated to 128 bits) stands in for the
  number wherever the exchange looks numbers up (the audit's ``number`` column, suppressions,
  the shared frequency counter). Its key, the *index key*, is derived from the master key when
  the database is first opened and kept in ``privacy_meta`` wrapped by it like the data keys:
  rotating the master key re-wraps it, so every stored blind index stays valid.
- A data key seals for one ``epoch`` (a day) after it was made, then the number gets a new
  one: retention shreds whole keys, so a key must not cover data of very different ages.
- The vault makes keys in memory (no I/O on the writer's path); the writer stores each new
  key's row in the same transaction as the first record it sealed (``unsaved``). Opening
  needs the keys loaded first (``load``, async, from the store); a key that is gone opens as
  ``ERASED``.

Master keys come from ``EXCHANGE_MASTER_KEY`` (or ``EXCHANGE_MASTER_KEY_FILE``): one or more
32-byte keys, base64 or hex, separated by commas or new lines; the first seals, the others
only unwrap (a rotation in progress). A key's id is the first 16 hex digits of SHA-256 over a
label and the key, so the id of the wrong key never matches the stored one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEALED_PREFIX = "enc1:"
BLIND_PREFIX = "h1:"
ERASED = "erased"
INDEX_NAME = "index"
DAY_NS = 86_400 * 1_000_000_000
SEALED_RE = re.compile(r"enc1:([0-9a-f]{16}):")
HOT_CIPHERS = 1024  # AES-GCM ciphers kept ready (~1.3 KB each, 1.3 MB in all; the rest are rebuilt from the key's bytes, ~1 µs)
RANDOM_BLOCK = 8192  # bytes read from the OS at once for data keys and nonces (see Vault._random)


class MasterKeyError(RuntimeError):
    """The master key is missing, malformed, or cannot unwrap the keys the database holds:
    the exchange refuses to start rather than write data it could not read back."""


class MasterKey(NamedTuple):
    kid: str
    key: bytes


class KeyRow(NamedTuple):
    """A row of ``privacy_keys``."""

    kid: str
    blind: str
    master_kid: str
    wrapped: str  # base64(nonce ‖ AES-GCM(master, data key))
    created_ns: int


def master_kid(key: bytes) -> str:
    return hashlib.sha256(b"dce-master-key-id\x00" + key).hexdigest()[:16]


def _decode_key(text: str) -> bytes:
    t = text.strip()
    for decode in (bytes.fromhex, lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)), base64.b64decode):
        try:
            raw = decode(t)
        except (ValueError, binascii.Error):
            continue
        if len(raw) == 32:
            return raw
    raise MasterKeyError("a master key must be 32 bytes, written as 64 hex digits or base64 (44 characters)")


def parse_master_keys(text: str) -> list[MasterKey]:
    """Keys separated by commas or new lines (blank lines and ``#`` comments skipped)."""
    parts = [p for line in text.splitlines() for p in line.split(",")]
    keys = [_decode_key(p) for p in parts if p.strip() and not p.strip().startswith("#")]
    if not keys:
        raise MasterKeyError("no master key given")
    return [MasterKey(master_kid(k), k) for k in keys]


def new_master_key_text() -> str:
    return base64.b64encode(AESGCM.generate_key(256)).decode()


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(raw: bytes) -> str:
    """base64url without padding (``base64.urlsafe_b64encode`` less its two Python calls)."""
    return binascii.b2a_base64(raw, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def is_sealed(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(SEALED_PREFIX)


def kids_in(text: str) -> set[str]:
    """Key ids of every sealed value in ``text`` (a stored body, a journal line)."""
    return set(SEALED_RE.findall(text))


class _Mac:
    """HMAC-SHA-256 with one key, its padded key already absorbed into two SHA-256 states that
    each message copies (RFC 2104 on ``hashlib``: no Python ``hmac`` object per message, and
    unlike ``hmac.digest`` it keeps the GIL for a short message)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(x ^ 0x36 for x in key))
        self._outer = hashlib.sha256(bytes(x ^ 0x5C for x in key))

    def digest(self, msg: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(msg)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class Vault:
    """The master keys, the index key and the data keys in use, cached (bounded)."""

    def __init__(self, masters: list[MasterKey], index_key: bytes, cache_size: int = 100_000,
                 epoch_ns: int = DAY_NS) -> None:
        if not masters:
            raise MasterKeyError("no master key")
        self.masters = masters
        self._by_master = {m.kid: m for m in masters}
        self.index_key = index_key
        self.cache_size, self.epoch_ns = cache_size, epoch_ns
        # blind -> [kid, key, created_ns, nonce prefix, counter]: a sealing key is only ever made here, so its
        # nonces are a random 4-byte prefix and a counter (never repeated under one key, no syscall per seal).
        # Keys are cached as their 32 bytes (a used AESGCM object holds ~1.3 KB of OpenSSL context): the
        # ciphers of the most recent keys only are kept (_ciphers).
        self._sealing: OrderedDict[str, list[Any]] = OrderedDict()
        self._ciphers: OrderedDict[str, AESGCM] = OrderedDict()  # kid -> cipher, the last HOT_CIPHERS keys used
        self._hot = min(HOT_CIPHERS, cache_size)
        self._seen: set[int] = set()  # marks of numbers sealed once (their keys are not cached until they come back)
        self._last_blind = ("", "")  # (e164, blind): a decision asks for its consumer's index more than once
        self._wrappers = {m.kid: AESGCM(m.key) for m in masters}
        # The blind index's HMAC with the index key already absorbed: each number copies it. Neither
        # ``hmac.digest`` nor ``os.urandom`` is called per number on the event loop: both release the GIL,
        # and on SQLite the store's thread then takes it (tens of µs per call, measured with bench.privacy).
        self._index_mac = _Mac(index_key)
        self._pool, self._pool_at = b"", 0  # random bytes from the OS, each handed out once (_random)
        self._opening: OrderedDict[str, tuple[str, bytes] | None] = OrderedDict()  # kid -> (blind, key) | None: gone
        self.unsaved: dict[str, KeyRow] = {}  # keys made here whose rows are not committed yet
        self.keys_made = 0

    def set_masters(self, masters: list[MasterKey]) -> None:
        """Adopt new master keys (a rotation: the first seals from now on); the rows of keys
        made here but not stored yet are re-wrapped under it."""
        if not masters:
            raise MasterKeyError("no master key")
        old = self._by_master
        self.masters, self._by_master = masters, {m.kid: m for m in masters}
        self._wrappers = {m.kid: AESGCM(m.key) for m in masters}
        for kid, r in list(self.unsaved.items()):
            m = old.get(r.master_kid) or self._by_master.get(r.master_kid)
            if m is None:
                continue
            key = AESGCM(m.key).decrypt(base64.b64decode(r.wrapped)[:12], base64.b64decode(r.wrapped)[12:], f"{kid}|{r.blind}".encode())
            mkid, wrapped = self.wrap(kid, r.blind, key)
            self.unsaved[kid] = r._replace(master_kid=mkid, wrapped=wrapped)

    @property
    def current(self) -> MasterKey:
        return self.masters[0]

    # ------------------------------------------------------------------ blind indexes
    @property
    def index_id(self) -> str:
        """Names the index key (not the key): a line sealed elsewhere is told from one of this database."""
        return hmac.new(self.index_key, b"dce-index-key-id", hashlib.sha256).hexdigest()[:16]

    def blind(self, e164: str) -> str:
        last = self._last_blind
        if last[0] == e164:
            return last[1]
        b = BLIND_PREFIX + self._index_mac.digest(e164.encode())[:16].hex()
        self._last_blind = (e164, b)
        return b

    def _random(self, n: int) -> bytes:
        """``n`` bytes from the OS's generator, read ``RANDOM_BLOCK`` at a time (one system call per
        ~150 data keys); no byte is handed out twice."""
        at = self._pool_at
        if at + n > len(self._pool):
            self._pool, at = os.urandom(max(RANDOM_BLOCK, n)), 0
        self._pool_at = at + n
        return self._pool[at:at + n]

    def _cipher(self, kid: str, key: bytes) -> AESGCM:
        c = self._ciphers.get(kid)
        return c if c is not None else self._keep(kid, AESGCM(key))

    def _keep(self, kid: str, cipher: AESGCM) -> AESGCM:
        """Keep ``cipher`` among the hot ones (the oldest goes past ``HOT_CIPHERS``)."""
        self._ciphers[kid] = cipher
        if len(self._ciphers) > self._hot:
            self._ciphers.popitem(last=False)
        return cipher

    # ------------------------------------------------------------------ wrapping
    def wrap(self, kid: str, blind: str, key: bytes, master: MasterKey | None = None) -> tuple[str, str]:
        """(master kid, wrapped) of a data key."""
        return self._wrap(kid, blind, key, self._random(12), master or self.current)

    def _wrap(self, kid: str, blind: str, key: bytes, nonce: bytes, m: MasterKey) -> tuple[str, str]:
        wrapper = self._wrappers.get(m.kid) or AESGCM(m.key)
        return m.kid, binascii.b2a_base64(nonce + wrapper.encrypt(nonce, key, f"{kid}|{blind}".encode()), newline=False).decode()

    def unwrap(self, kid: str, blind: str, mkid: str, wrapped: str) -> bytes:
        m = self._by_master.get(mkid)
        if m is None:
            raise MasterKeyError(f"data key {kid} is wrapped by master key {mkid}, which is not configured "
                                 f"(configured: {', '.join(self._by_master)})")
        raw = base64.b64decode(wrapped)
        try:
            return (self._wrappers.get(mkid) or AESGCM(m.key)).decrypt(raw[:12], raw[12:], f"{kid}|{blind}".encode())
        except InvalidTag:
            raise MasterKeyError(f"data key {kid} does not unwrap with master key {mkid} (altered?)") from None

    # ------------------------------------------------------------------ sealing (the writer's edge)
    def seal(self, e164: str, now_ns: int) -> str:
        """``e164`` encrypted under its number's data key (made now if none is in use)."""
        b = self.blind(e164)
        ent = self._sealing.get(b)
        if ent is None or now_ns - ent[2] >= self.epoch_ns:
            ent = self._new_key(b, now_ns, admit=ent is not None)
            cipher = AESGCM(ent[1])
            if self._sealing.get(b) is ent:  # kept for the number's next seals (a one-time number's is not)
                self._keep(ent[0], cipher)
        else:
            self._sealing.move_to_end(b)
            cipher = self._cipher(ent[0], ent[1])
        kid = ent[0]
        ent[4] += 1
        nonce = ent[3] + ent[4].to_bytes(8, "big")
        return f"{SEALED_PREFIX}{kid}:{_b64(nonce + cipher.encrypt(nonce, e164.encode(), kid.encode()))}"

    def _new_key(self, b: str, now_ns: int, admit: bool) -> list[Any]:
        """A new data key for ``b``. It is cached for the number's next seals only when the
        number comes back (seen before, or its cached key expired): most consumers call once,
        and a cached key costs ~0.4 KB, so one-time numbers cost a small mark instead (and a
        repeat caller one extra key)."""
        raw = self._random(56)
        key, kid, prefix = raw[:32], raw[32:40].hex(), raw[40:44]
        mkid, wrapped = self._wrap(kid, b, key, raw[44:], self.current)
        self.unsaved[kid] = KeyRow(kid, b, mkid, wrapped, now_ns)
        ent = [kid, key, now_ns, prefix, 0]
        mark = hash(b)
        if admit or mark in self._seen:
            self._sealing[b] = ent
            if len(self._sealing) > self.cache_size:
                self._sealing.popitem(last=False)
        else:
            if len(self._seen) >= self.cache_size:
                self._seen.clear()
            self._seen.add(mark)
        self.keys_made += 1
        return ent

    def _remember(self, kid: str, value: tuple[str, bytes] | None) -> None:
        self._opening[kid] = value
        self._opening.move_to_end(kid)
        if len(self._opening) > self.cache_size:
            self._opening.popitem(last=False)

    def unsaved_rows(self, kids: Iterable[str]) -> list[KeyRow]:
        u = self.unsaved
        return [u[k] for k in kids if k in u]

    def saved(self, rows: Iterable[KeyRow]) -> None:
        for r in rows:
            self.unsaved.pop(r.kid, None)

    # ------------------------------------------------------------------ opening (reads, at the edges)
    def missing(self, kids: Iterable[str]) -> list[str]:
        return [k for k in kids if k not in self._opening and k not in self.unsaved]

    def learn(self, rows: Iterable[tuple[str, str, str, str]], asked: Iterable[str]) -> None:
        """Cache the keys of ``rows`` (kid, blind, master_kid, wrapped); every other ``asked``
        kid is gone (shredded)."""
        found = set()
        for kid, blind, mkid, wrapped in rows:
            self._remember(kid, (blind, self.unwrap(kid, blind, mkid, wrapped)))
            found.add(kid)
        for kid in asked:
            if kid in found:
                continue
            row = self.unsaved.get(kid)  # made here, its row not stored yet
            if row is not None:
                self._remember(kid, (row.blind, self.unwrap(kid, row.blind, row.master_kid, row.wrapped)))
            else:
                self._remember(kid, None)

    def open(self, value: str) -> str:
        """The number in a sealed value (its key must have been ``load``-ed): ``ERASED`` when
        the key is gone. A value that is not sealed is returned as it is."""
        if not is_sealed(value):
            return value
        kid, _, rest = value[len(SEALED_PREFIX):].partition(":")
        if kid not in self._opening:
            row = self.unsaved.get(kid)
            if row is None:
                raise KeyError(f"data key {kid} is not loaded")
            self.learn([], [kid])
        ent = self._opening[kid]
        if ent is None:
            return ERASED
        raw = _unb64(rest)
        try:
            return self._cipher(kid, ent[1]).decrypt(raw[:12], raw[12:], kid.encode()).decode()
        except InvalidTag:
            return ERASED

    def forget(self, blind: str) -> list[str]:
        """Drop every cached key of ``blind`` (an erasure); the kids dropped from memory."""
        ent = self._sealing.pop(blind, None)
        gone = [k for k, v in self._opening.items() if v is not None and v[0] == blind]
        gone += [k for k, r in self.unsaved.items() if r.blind == blind]
        if ent is not None:
            gone.append(ent[0])
        for k in set(gone):
            self.unsaved.pop(k, None)
            self._ciphers.pop(k, None)
            self._remember(k, None)
        return gone

    def forget_kids(self, kids: Iterable[str]) -> None:
        """The keys ``kids`` were shredded (retention): they open as erased from now on."""
        dead = set(kids)
        for k in dead:
            self._ciphers.pop(k, None)
            if k in self._opening:
                self._opening[k] = None
        for b in [b for b, ent in self._sealing.items() if ent[0] in dead]:
            del self._sealing[b]

    def sealing_kid(self, blind: str) -> str | None:
        ent = self._sealing.get(blind)
        return ent[0] if ent is not None else None
