"""Accounts and API keys: keys are shown once, stored as SHA-256 digests, never logged.

A key carries 256 bits of entropy, so a single unsalted SHA-256 is a sound digest (no
dictionary to attack) and lets authentication be one dict lookup. The operator's key is
compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Literal, NamedTuple

Role = Literal["operator", "buyer", "publisher"]
TenantKind = Literal["buyer", "publisher"]


class Account(NamedTuple):
    id: str
    kind: Role
    name: str
    credit_limit_cents: int = 0


OPERATOR = Account("operator", "operator", "operator")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "dce_" + secrets.token_urlsafe(32)


class Accounts:
    def __init__(self, admin_key: str) -> None:
        self._admin_digest = digest(admin_key).encode()
        self._by_digest: dict[str, Account] = {}
        self.by_id: dict[str, Account] = {}

    def restore(self, account_id: str, kind: Role, name: str, key_digest: str, credit_limit_cents: int) -> Account:
        """Re-admit an account loaded from the durable store (only its key's digest was kept)."""
        acct = Account(account_id, kind, name, credit_limit_cents)
        self.by_id[account_id] = acct
        self._by_digest[key_digest] = acct
        return acct

    def create(self, kind: TenantKind, name: str, credit_limit_cents: int = 0) -> tuple[Account, str]:
        prefix = "b_" if kind == "buyer" else "p_"
        while True:
            account_id = prefix + secrets.token_hex(6)
            if account_id not in self.by_id:
                break
        key = new_key()
        acct = Account(account_id, kind, name, credit_limit_cents)
        self.by_id[account_id] = acct
        self._by_digest[digest(key)] = acct
        return acct, key

    def forget(self, account_id: str, key: str) -> None:
        """Drop an account the store refused to keep (its creation was refused to the caller)."""
        self.by_id.pop(account_id, None)
        self._by_digest.pop(digest(key), None)

    def authenticate(self, key: str | None) -> Account | None:
        if not key:
            return None
        d = digest(key)
        if hmac.compare_digest(d.encode(), self._admin_digest):
            return OPERATOR
        return self._by_digest.get(d)


def bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None
