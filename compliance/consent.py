"""Consent records (prior express written consent) and their revocation (COMPLIANCE.md §5).

A record names the consumer's number, the sellers (buyers) it authorizes, when it was
captured and, optionally, when it expires (exchange policy) and an address. Revocation sets
``revoked_ns``; it is never undone, and an earlier revocation is kept over a later one.
Times are integer UNIX nanoseconds; the store keeps no clock.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .geo import address_state
from .instants import parse_rfc3339
from .numbers import parse_number


class Consent(NamedTuple):
    token: str
    phone: str | None  # E.164 when the captured number parses, else None (never matches)
    sellers: frozenset[str]
    created_ns: int | None
    expires_ns: int | None = None
    revoked_ns: int | None = None
    address_state: str | None = None  # the state the address names (state or ZIP)
    vendor: str = ""
    cert_id: str = ""
    publisher: str = ""
    revocation_channel: str = ""
    extra: dict[str, Any] = {}


class ConsentStore:
    """(token, publisher) -> Consent: each publisher's tokens are its own namespace (the
    operator's records, publisher "", are exchange-wide), so a publisher posting a token learns
    nothing of another's. ``version`` changes on every write (it is logged as evidence)."""

    __slots__ = ("_by_token", "version")

    def __init__(self) -> None:
        self._by_token: dict[str, dict[str, Consent]] = {}  # token -> publisher -> record
        self.version = 0

    def get(self, token: str, publisher: str | None = None) -> Consent | None:
        """The record ``token`` names for ``publisher``: its own, else the operator's; with no
        publisher (the harness, the operator) the operator's record, else the first posted."""
        records = self._by_token.get(token)
        if not records:
            return None
        if publisher:
            return records.get(publisher) or records.get("")
        return records.get("") or next(iter(records.values()))

    def record(self, token: str, publisher: str) -> Consent | None:
        """Exactly ``publisher``'s record of ``token`` (no fallback)."""
        records = self._by_token.get(token)
        return records.get(publisher) if records else None

    def all(self, token: str) -> list[Consent]:
        """Every record of ``token``, whichever publisher posted it."""
        return list(self._by_token.get(token, {}).values())

    def add(self, consent: Consent) -> str:
        """"created", "unchanged" (same record again) or "conflict" (the token already names
        another record of the same publisher)."""
        records = self._by_token.setdefault(consent.token, {})
        prior = records.get(consent.publisher)
        if prior is not None:
            same = prior._replace(revoked_ns=None, revocation_channel="") == consent._replace(revoked_ns=None, revocation_channel="")
            return "unchanged" if same else "conflict"
        records[consent.publisher] = consent
        self.version += 1
        return "created"

    def revoke(self, token: str, at_ns: int, channel: str = "", publisher: str | None = None) -> Consent | None:
        """Mark ``publisher``'s record (None: every record of the token) revoked from ``at_ns``
        (the earliest revocation wins); returns the one ``get`` would, None if unknown."""
        records = self._by_token.get(token)
        if not records:
            return None
        if publisher is not None and publisher not in records:
            return None
        for who in [publisher] if publisher is not None else list(records):
            prior = records[who]
            if prior.revoked_ns is not None and prior.revoked_ns <= at_ns:
                continue
            records[who] = prior._replace(revoked_ns=at_ns, revocation_channel=channel or prior.revocation_channel)
            self.version += 1
        return records[publisher] if publisher is not None else self.get(token)

    def forget_phone(self, e164: str) -> int:
        """The number was erased: its records keep no number (and so match no call); how many."""
        n = 0
        for records in self._by_token.values():
            for who, c in list(records.items()):
                if c.phone == e164:
                    records[who] = c._replace(phone=None)
                    n += 1
        if n:
            self.version += 1
        return n

    def __len__(self) -> int:
        return sum(len(r) for r in self._by_token.values())


def consent_from_record(token: str, rec: dict[str, Any], publisher: str = "") -> Consent:
    """A ``Consent`` from its wire/harness form (COMPLIANCE.md §7); ValueError when malformed.

    ``phone`` that does not parse is kept as None (it then matches no number); timestamps
    must be RFC 3339 with a zone; ``address`` may give ``state`` and/or ``zip``.
    """
    if not isinstance(token, str) or not token or not isinstance(rec, dict):
        raise ValueError("a consent needs a token and an object")
    sellers = rec.get("sellers") or []
    if not isinstance(sellers, list) or not all(isinstance(s, str) for s in sellers):
        raise ValueError(f"consent {token}: sellers must be a list of buyer ids")

    def when(name: str) -> int | None:
        raw = rec.get(name)
        if raw is None:
            return None
        at = parse_rfc3339(raw)
        if at is None:
            raise ValueError(f"consent {token}: {name} must be an RFC 3339 time with a zone")
        return at

    phone = parse_number(rec.get("phone"))
    addr = rec.get("address")
    state = address_state(addr.get("state"), addr.get("zip")) if isinstance(addr, dict) else None
    known = {"vendor", "cert_id", "phone", "sellers", "created_at", "expires_at", "revoked_at", "address",
             "revocation_channel", "publisher"}
    return Consent(
        token=token, phone=phone.e164 if phone is not None else None, sellers=frozenset(sellers),
        created_ns=when("created_at"), expires_ns=when("expires_at"), revoked_ns=when("revoked_at"),
        address_state=state, vendor=str(rec.get("vendor") or ""), cert_id=str(rec.get("cert_id") or ""),
        publisher=str(rec.get("publisher") or publisher), revocation_channel=str(rec.get("revocation_channel") or ""),
        extra={k: v for k, v in rec.items() if k not in known},
    )
