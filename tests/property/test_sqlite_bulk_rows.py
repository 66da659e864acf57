"""The embedded store writes a batch's rows one statement per table (``billing.sqlitestore.insert_rows``:
integers in a JSON array, text and bytes in one buffer): what it stores must be exactly what
``executemany`` stores, for any text (NUL, astral, JSON specials), any 64-bit integer, bytes and
NULLs, and rows that a statement cannot carry (an int past 64 bits, two kinds in a column) still go in."""

from __future__ import annotations

import sqlite3

from hypothesis import given, settings, strategies as st

from billing.sqlitestore import insert_rows

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
INT64 = st.integers(-(2**63), 2**63 - 1)
ROW = st.tuples(TEXT, st.one_of(st.none(), INT64), st.one_of(st.none(), st.binary(max_size=40)), st.one_of(st.none(), TEXT),
                st.booleans())


def stored(rows: list[tuple], bulk: bool) -> list[tuple]:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("CREATE TABLE t (a TEXT NOT NULL, n INTEGER, b BLOB, c TEXT, f INTEGER NOT NULL)")
    cur = db.cursor()
    if bulk:
        insert_rows(cur, "INSERT INTO t", "", rows)
    else:
        cur.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)", rows)
    out = db.execute("SELECT a, typeof(a), n, typeof(n), b, typeof(b), c, typeof(c), f FROM t ORDER BY rowid").fetchall()
    db.close()
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(ROW, min_size=1, max_size=12))
def test_one_statement_stores_what_executemany_stores(rows):
    assert stored(rows, bulk=True) == stored(rows, bulk=False)


@given(st.lists(ROW, min_size=1, max_size=5), st.integers(2**63, 2**70))
def test_values_a_statement_cannot_carry_still_go_in(rows, huge):
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("CREATE TABLE t (a, n, b, c, f)")
    mixed = [*rows, ("x", "a text where integers were", None, None, True)]
    insert_rows(db.cursor(), "INSERT INTO t", "", mixed)
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == len(mixed)
    try:
        insert_rows(db.cursor(), "INSERT INTO t", "", [("y", huge, None, None, False)])
    except OverflowError:
        pass  # as executemany: sqlite3 cannot bind it either
    else:
        raise AssertionError("an int past 64 bits went in silently")


def test_a_conflict_clause_applies_to_every_row():
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("CREATE TABLE bal (account TEXT PRIMARY KEY, cents INTEGER NOT NULL)")
    insert_rows(db.cursor(), "INSERT INTO bal", "ON CONFLICT (account) DO UPDATE SET cents = cents + excluded.cents", [("a\x00", 5), ("b", 7)])
    insert_rows(db.cursor(), "INSERT INTO bal", "ON CONFLICT (account) DO UPDATE SET cents = cents + excluded.cents", [("a\x00", -2), ("c", 1)])
    assert db.execute("SELECT account, cents FROM bal ORDER BY account").fetchall() == [("a\x00", 3), ("b", 7), ("c", 1)]
