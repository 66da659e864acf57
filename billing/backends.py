"""Opening a ledger store by URL: PostgreSQL (``postgresql://``) or the embedded SQLite
(``sqlite:///path``, ``sqlite://:memory:``; ``?synchronous=normal`` trades the fsync of every
commit for durability against a crash of the process only, not of the machine). Kept apart from ``store`` so the backends import
the shared base without the base importing them back."""

from __future__ import annotations

from .store import Store


def open_store(url: str) -> Store:
    if url.startswith(("postgresql://", "postgres://")):
        from .pgstore import PgStore

        return PgStore(url)
    if url.startswith("sqlite://"):
        from .sqlitestore import SqliteStore

        path, _, query = url.partition("?")
        options = dict(part.partition("=")[::2] for part in query.split("&") if part)
        sync = options.pop("synchronous", "full").upper()
        if options or sync not in ("FULL", "NORMAL"):
            raise ValueError(f"unsupported SQLite URL option in {url!r}: only synchronous=full|normal")
        return SqliteStore(":memory:" if path == "sqlite://:memory:" else path[len("sqlite:///"):], synchronous=sync)
    raise ValueError(f"unsupported database URL {url!r}: use postgresql://... or sqlite:///path")
