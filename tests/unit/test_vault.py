"""The vault alone: sealing, blind indexes, wrapping, shredding in memory, rotation."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.vault import (ERASED, MasterKeyError, Vault, _b64, _Mac, _unb64, is_sealed, kids_in, new_master_key_text,
                           parse_master_keys)

DAY = 86_400 * 1_000_000_000


def vault(**kw) -> Vault:
    return Vault(parse_master_keys(new_master_key_text()), os.urandom(32), **kw)


def test_a_sealed_number_opens_back_and_shows_none_of_its_digits():
    v = vault()
    sealed = v.seal("+14155550100", 0)
    assert is_sealed(sealed) and "4155550100" not in sealed
    assert v.open(sealed) == "+14155550100"
    assert kids_in(f'{{"caller":"{sealed}"}}') == {sealed.split(":")[1]}


def test_a_number_that_comes_back_keeps_one_key_and_its_blind_index():
    v = vault()
    once, a, b = v.seal("+14155550100", 0), v.seal("+14155550100", 1), v.seal("+14155550100", 2)
    assert len({once, a, b}) == 3 and a.split(":")[1] == b.split(":")[1]  # cached from its second seal on
    assert once.split(":")[1] != a.split(":")[1] and len(v.unsaved) == 2
    assert v.blind("+14155550100") == v.blind("+14155550100") != v.blind("+14155550101")
    assert all(v.open(x) == "+14155550100" for x in (once, a, b))


def test_a_key_seals_for_one_epoch_then_the_number_gets_a_new_one():
    v = vault()
    v.seal("+14155550100", 0)
    first = v.seal("+14155550100", 0).split(":")[1]
    assert v.seal("+14155550100", DAY - 1).split(":")[1] == first
    assert v.seal("+14155550100", DAY).split(":")[1] != first


def test_forgetting_a_number_makes_its_sealed_values_erased_and_the_next_seal_uses_a_new_key():
    v = vault()
    old = v.seal("+14155550100", 0)
    other = v.seal("+12125550100", 0)
    v.forget(v.blind("+14155550100"))
    assert v.open(old) == ERASED and v.open(other) == "+12125550100"
    new = v.seal("+14155550100", 1)
    assert new.split(":")[1] != old.split(":")[1] and v.open(new) == "+14155550100"
    assert all(r.blind != v.blind("+14155550100") or r.kid == new.split(":")[1] for r in v.unsaved.values())


def test_a_data_key_unwraps_only_with_its_master_key_and_names_it():
    v = vault()
    mkid, wrapped = v.wrap("00" * 8, "h1:x", b"k" * 32)
    assert mkid == v.current.kid
    assert v.unwrap("00" * 8, "h1:x", mkid, wrapped) == b"k" * 32
    other = vault()
    with pytest.raises(MasterKeyError, match="not configured"):
        other.unwrap("00" * 8, "h1:x", mkid, wrapped)
    with pytest.raises(MasterKeyError, match="does not unwrap"):  # the key id matches but the bytes were altered
        v.unwrap("00" * 8, "h1:y", mkid, wrapped)


def test_master_keys_parse_from_hex_base64_and_lists_and_refuse_anything_else():
    hexkey = "ab" * 32
    keys = parse_master_keys(f"{new_master_key_text()}\n# old key\n{hexkey}")
    assert len(keys) == 2 and keys[1].key == bytes.fromhex(hexkey)
    for bad in ("", "short", "ab" * 31):
        with pytest.raises(MasterKeyError):
            parse_master_keys(bad)


def test_a_rotation_rewraps_the_keys_not_stored_yet_under_the_new_master():
    v = vault()
    v.seal("+14155550100", 0)
    row = next(iter(v.unsaved.values()))
    new = parse_master_keys(new_master_key_text())
    v.set_masters(new + v.masters)
    moved = v.unsaved[row.kid]
    assert moved.master_kid == new[0].kid
    only_new = Vault(new, v.index_key)
    assert only_new.unwrap(moved.kid, moved.blind, moved.master_kid, moved.wrapped) == v.unwrap(
        row.kid, row.blind, row.master_kid, row.wrapped)


def test_the_cache_is_bounded():
    v = vault(cache_size=16)
    for i in range(100):
        v.seal(f"+1415555{i:04d}", 0)
        v.seal(f"+1415555{i:04d}", 0)  # (each seen twice: cached)
    assert len(v._sealing) <= 16 and len(v._opening) <= 16 and len(v._ciphers) <= 16 and len(v._seen) <= 16


def test_a_key_evicted_before_its_row_is_stored_still_opens_what_it_sealed():
    v = vault(cache_size=16)
    first = v.seal("+14155550100", 0)
    for i in range(40):  # push the first key out of both caches
        v.seal(f"+1212555{i:04d}", 0)
    kid = first.split(":")[1]
    assert v.missing([kid]) == []  # the store need not be asked: its row is still here, unsaved
    assert v.open(first) == "+14155550100"
    second = v.seal("+13125550100", 0)
    v.saved(list(v.unsaved.values()))
    assert v.missing([second.split(":")[1]]) == [second.split(":")[1]]  # stored, never opened here: loaded from the store


def test_the_decision_path_does_no_cryptography():
    """Sealing happens in the writer (billing.trail.seal_audit); the pure core imports none of it."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    pure = [*(root / "routing").glob("*.py"), root / "exchange/pipeline.py", root / "exchange/core.py",
            root / "exchange/lifecycle.py", root / "compliance/gate.py", root / "compliance/suppression.py"]
    banned = ("cryptography", "billing.vault", "billing.keystore", "billing.trail")
    for path in pure:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for n in names:
                assert not n.startswith(banned), f"{path.name} imports {n}"


@given(key=st.binary(min_size=0, max_size=100), msg=st.binary(max_size=300))
def test_the_blind_index_mac_is_hmac_sha256(key, msg):
    """Blind indexes already stored were made with ``hmac``: the pre-keyed states give the same digests."""
    import hmac

    assert _Mac(key).digest(msg) == hmac.digest(key, msg, "sha256")


@given(raw=st.binary(max_size=80))
def test_sealed_base64_is_unpadded_base64url(raw):
    import base64

    assert _b64(raw) == base64.urlsafe_b64encode(raw).rstrip(b"=").decode() and _unb64(_b64(raw)) == raw
