"""Opening a ledger store by URL: PostgreSQL (``postgresql://``) or the embedded SQLite
(``sqlite:///path``, ``sqlite://:memory:``). Kept apart from ``store`` so the backends import
the shared base without the base importing them back."""

from __future__ import annotations

from .store import Store


def open_store(url: str) -> Store:
    if url.startswith(("postgresql://", "postgres://")):
        from .pgstore import PgStore

        return PgStore(url)
    if url.startswith("sqlite://"):
        from .sqlitestore import SqliteStore

        return SqliteStore(":memory:" if url == "sqlite://:memory:" else url[len("sqlite:///"):])
    raise ValueError(f"unsupported database URL {url!r}: use postgresql://... or sqlite:///path")
