"""The instruction-count bench's own parts, run without valgrind: its quantile and the writer op's
worker (what it counts must run, sealed and not, and store every call)."""

import shutil
import sqlite3

import pytest

from bench import instructions


def test_quantile_is_the_nearest_rank():
    xs = list(range(1, 101))
    assert instructions.quantile(xs, 0.5) == 50
    assert instructions.quantile(xs, 0.99) == 99
    assert instructions.quantile(xs, 1.0) == 100
    assert instructions.quantile([7], 0.99) == 7
    assert instructions.quantile([3, 1, 2], 0.0) == 1


@pytest.mark.parametrize("mode", ["off", "distinct", "pool"])
def test_the_writer_op_stores_every_call_it_counts(mode, tmp_path, monkeypatch):
    made = []
    real = instructions.tempfile.mkdtemp
    monkeypatch.setattr(instructions.tempfile, "mkdtemp", lambda prefix="": made.append(real(dir=tmp_path)) or made[-1])
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)  # (the worker removes its database; read it first)
    instructions.WORKERS[f"writer_{mode}"](100)
    db = sqlite3.connect(f"{made[0]}/ledger.db")
    assert db.execute("SELECT count(*) FROM call_outcomes").fetchone()[0] == 200  # the warm-up's 100 and the counted 100
    sealed = db.execute("SELECT count(*) FROM audit WHERE body LIKE '%enc1:%'").fetchone()[0]
    keys = db.execute("SELECT count(*) FROM privacy_keys").fetchone()[0]
    if mode == "off":
        assert sealed == 0 and keys == 0
    else:
        assert sealed == 200  # every decision record carries its caller sealed
        assert keys == 200 if mode == "distinct" else 0 < keys < 200  # a key per number: repeat callers share theirs
