"""DNC import: both number forms, zip/gzip, change lists, rejects counted, atomic swap, CLI."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from compliance.dncarray import from_keys
from compliance.dncfile import DncFileError, open_array, write_keys
from compliance.gate import Gate
from compliance.importer import ImportAborted
from compliance.runtime import ComplianceRuntime

ROOT = Path(__file__).resolve().parents[2]


def numbers(path: Path) -> list[int]:
    return open_array(path).numbers().tolist()


@pytest.fixture
def rt(tmp_path) -> ComplianceRuntime:
    return ComplianceRuntime(Gate(), tmp_path / "data")


def test_full_list_in_both_forms_with_rejects_counted(rt, tmp_path):
    src = tmp_path / "ftc.txt"
    src.write_bytes(b"2127365000\r\n212,7365001\n1-212-736-5002\n(305) 358-1234\nnot a number\n12345\n\n"
                    b"0127365000\n2121365000\n2127365000\n\"405\",\"5550100\",Jane Roe,73102\n")
    r = rt.import_list("national", [src], "2026-04-10")
    assert numbers(Path(r.path)) == [2127365000, 2127365001, 2127365002, 3053581234, 4055550100]
    assert (r.lines, r.rejected, r.duplicates, r.numbers) == (10, 4, 1, 5)
    assert [n for n, _ in r.reject_samples] == [5, 6, 8, 9]  # physical line numbers
    assert open_array(Path(r.path)).meta["snapshot_date"] == "2026-04-10"


@pytest.mark.parametrize("wrap", ["zip", "gzip", "plain"])
def test_fixed_width_files_zipped_or_not(rt, tmp_path, wrap):
    rng = np.random.default_rng(5)
    keys = np.unique(rng.integers(2_000_000_000, 9_999_999_999, 50_000))
    keys = keys[(keys // 10_000) % 1000 >= 200]
    text = "".join(f"{k // 10_000_000},{k % 10_000_000:07d}\n" for k in keys.tolist()).encode()
    src = tmp_path / f"list.{wrap}"
    if wrap == "zip":
        with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("a.txt", text[: len(text) // 2])  # one file per area code range, in one archive
            z.writestr("b.txt", text[len(text) // 2:])
    elif wrap == "gzip":
        src.write_bytes(gzip.compress(text))
    else:
        src.write_bytes(text)
    r = rt.import_list("national", [src], "2026-04-10")
    assert r.rejected == 0 and numbers(Path(r.path)) == keys.tolist()


def test_change_list_applies_additions_and_deletions(rt, tmp_path):
    full = tmp_path / "full.txt"
    full.write_text("2127365000\n2127365001\n3053581234\n")
    rt.import_list("national", [full], "2026-04-10")
    changes = tmp_path / "changes.txt"
    changes.write_text("212,7365000,D,20260411\n4055550100,A,20260411\nbogus,X\n"
                       "2125550199,A\n2125550199,D\n3053581234,ADD\n")
    r = rt.import_list("national", [changes], "2026-04-11", changes=True)
    assert numbers(Path(r.path)) == [2127365001, 3053581234, 4055550100]
    assert (r.added, r.deleted, r.rejected) == (1, 1, 1)
    assert open_array(Path(r.path)).meta["snapshot_date"] == "2026-04-11"


def test_corrupt_or_unusable_input_leaves_the_previous_list(rt, tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("2127365000\n3053581234\n")
    first = rt.import_list("national", [good], "2026-04-10")
    before = (numbers(Path(first.path)), Path(first.path).stat().st_ino)
    ok_zip = tmp_path / "ok.zip"
    with zipfile.ZipFile(ok_zip, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.txt", "".join(f"21273{i:05d}\n" for i in range(20000)))
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(ok_zip.read_bytes()[: ok_zip.stat().st_size // 2])
    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(os.urandom(5000).replace(b"\n", b"x") + b"\n" + b"nonsense\n" * 50)
    for bad in (truncated, garbage):
        with pytest.raises(ImportAborted):
            rt.import_list("national", [bad], "2026-04-12")
        assert (numbers(Path(first.path)), Path(first.path).stat().st_ino) == before
    big = rt.import_list("national", [ok_zip], "2026-04-12")
    assert big.numbers == 20000
    with pytest.raises(ImportAborted, match="less than half"):  # a list that shrank by half: truncated?
        rt.import_list("national", [good], "2026-04-13")
    assert rt.import_list("national", [good], "2026-04-13", force=True).numbers == 2
    assert not list((tmp_path / "data").glob(".*tmp")) and not list((tmp_path / "data").glob("dnc-spool-*"))


def test_runtime_swaps_a_new_snapshot_and_keeps_the_old_one_on_a_corrupt_file(tmp_path):
    gate = Gate()
    rt = ComplianceRuntime(gate, tmp_path)
    write_keys(tmp_path / "national.dnc", np.array([2127365000], np.int64), {"list": "national", "snapshot_date": "2026-04-10"})
    rt.apply(rt.scan())
    assert gate.stores.national.has("+12127365000") and gate.evidence()["dnc_snapshot_date"] == "2026-04-10"
    tmp = tmp_path / "next.dnc"
    write_keys(tmp, np.array([3053581234], np.int64), {"list": "national", "snapshot_date": "2026-04-11"})
    data = bytearray(tmp.read_bytes())
    data[-1] ^= 0xFF  # corrupt
    (tmp_path / "bad.dnc").write_bytes(data)
    os.replace(tmp_path / "bad.dnc", tmp_path / "national.dnc")
    with pytest.raises(DncFileError):
        open_array(tmp_path / "national.dnc")
    rt.apply(rt.scan())
    assert gate.stores.national.has("+12127365000") and gate.evidence()["dnc_snapshot_date"] == "2026-04-10"
    os.replace(tmp, tmp_path / "national.dnc")
    rt.apply(rt.scan())
    assert gate.stores.national.has("+13053581234") and not gate.stores.national.has("+12127365000")
    assert gate.evidence()["dnc_snapshot_date"] == "2026-04-11"


def test_state_lists_litigators_rnd_flags_and_the_journal_reload(tmp_path):
    gate = Gate()
    rt = ComplianceRuntime(gate, tmp_path)
    tx = tmp_path / "tx.csv"
    tx.write_text("phone,name,zip\n2145551234,Jo,75001\n(972) 555-0000,Al,75002\n")
    r = rt.import_list("state", [tx], "2026-04-01", state="TX")
    assert (r.numbers, r.rejected) == (2, 1)  # the header line is a rejected line
    lit = tmp_path / "lit.txt"
    lit.write_text("+1 212 736 5000\n")
    rt.import_list("litigators", [lit], None)
    (tmp_path / "rnd.csv").write_text("number,disconnected_date\n+13053581234,2026-04-01\n")
    (tmp_path / "flags.json").write_text(json.dumps({"emergency_states": ["LA"], "abandon_campaigns": ["c1"]}))
    rt.add_consent("tok", {"phone": "+12127365000", "sellers": ["b"], "created_at": "2026-04-01T00:00:00Z"}, "p1")
    gate.stores.suppressions.add("+13125550100", "exchange", 5, "ivr")
    rt.revoke("tok", 10, "sms_stop", "exchange", "op")
    rt.apply(rt.scan())
    st = gate.stores
    assert st.state_lists.hit(9725550000) == "TX" and st.litigators.has("+12127365000")
    assert st.rnd.disconnected == {"+13053581234": 739707} and st.flags.emergency_states == {"LA"}
    # a second process replays the journal: the consent, its revocation and both opt-outs
    other = Gate()
    rt2 = ComplianceRuntime(other, tmp_path)
    rt2.apply(rt2.scan())
    assert other.stores.consents.get("tok").revoked_ns == 10
    assert other.suppressions.hit("+13125550100", None, 5) is not None
    assert other.suppressions.hit("+12127365000", None, 10) is not None
    assert other.stores.state_lists.hit(2145551234) == "TX"


def test_cli_imports_and_prints_a_summary(tmp_path):
    src = tmp_path / "ftc.txt"
    src.write_text("2127365000\n212,7365001\nbad line\n")
    env = {**os.environ, "EXCHANGE_COMPLIANCE_DIR": str(tmp_path / "data")}
    out = subprocess.run([sys.executable, "-m", "exchange", "dnc", "import", "--national", str(src), "--snapshot-date", "2026-04-10"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "2 numbers in force" in out.stdout and "rejected 1" in out.stdout and "bad line" in out.stdout
    assert numbers(tmp_path / "data" / "national.dnc") == [2127365000, 2127365001]
    out = subprocess.run([sys.executable, "-m", "exchange", "dnc", "import", "--state", "TX", str(src), "--snapshot-date",
                          "2026-04-01", "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout)["rejected"] == 1
    missing = subprocess.run([sys.executable, "-m", "exchange", "dnc", "import", "--national", str(src)],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "snapshot-date" in missing.stderr
    trunc = tmp_path / "t.zip"
    trunc.write_bytes(b"PK\x03\x04garbage")
    aborted = subprocess.run([sys.executable, "-m", "exchange", "dnc", "import", "--national", str(trunc), "--snapshot-date",
                              "2026-04-12"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert aborted.returncode == 1 and "unchanged" in aborted.stderr
    assert numbers(tmp_path / "data" / "national.dnc") == [2127365000, 2127365001]


def test_the_runtime_takes_its_directory_prefix_and_upload_limit_from_settings(tmp_path):
    from exchange.settings import SettingsError, load

    env = {"EXCHANGE_COMPLIANCE_DIR": str(tmp_path / "c"), "EXCHANGE_REDIS_PREFIX": "p7:", "EXCHANGE_MAX_DNC_UPLOAD_BYTES": "4096"}
    rt = ComplianceRuntime.from_settings(Gate(), load(env))
    assert (rt.persistent, rt.dir, rt.redis_prefix, rt.max_upload_bytes) == (True, tmp_path / "c", "p7:", 4096)
    default = ComplianceRuntime.from_settings(Gate(), load({}))
    assert (default.persistent, default.redis_prefix, default.max_upload_bytes) == (False, "dce:", 8 << 30)
    with pytest.raises(SettingsError, match="EXCHANGE_MAX_DNC_UPLOAD_BYTES"):
        load({"EXCHANGE_MAX_DNC_UPLOAD_BYTES": "lots"})


def test_in_memory_and_file_arrays_agree(tmp_path):
    rng = np.random.default_rng(9)
    keys = np.unique(rng.integers(2_000_000_000, 9_999_999_999, 20_000))
    keys = keys[(keys // 10_000) % 1000 >= 200]
    write_keys(tmp_path / "x.dnc", keys, {})
    disk, mem = open_array(tmp_path / "x.dnc"), from_keys(keys)
    probes = np.concatenate([keys[:2000], rng.integers(2_000_000_000, 9_999_999_999, 5000)]).tolist()
    assert [p in disk for p in probes] == [p in mem for p in probes] == [p in set(keys.tolist()) for p in probes]


def test_membership_is_exact_at_the_edges_of_blocks_and_codes(tmp_path):
    members = [2002000000, 2002000009, 2002009999, 2129999999, 9999999999, 9992000000, 4055550100, 4055550108]
    write_keys(tmp_path / "e.dnc", np.array(sorted(members), np.int64), {})
    disk, mem = open_array(tmp_path / "e.dnc"), from_keys(members)
    near = {m + d for m in members for d in (-9, -8, -1, 1, 8, 10_000, -10_000, 10_000_000)}
    outside = [0, -1, 1_999_999_999, 10_000_000_000, 2001999999, 2121999999, 3055550100]
    for arr in (disk, mem):
        assert all(m in arr for m in members) and len(arr) == len(members)
        assert [k for k in near | set(outside) if k in arr] == [k for k in near if k in set(members)]
        assert arr.has("+14055550100") and arr.has("+12002009999")
        for text in ("+1405555010", "+140555501000", "+1405555010x", "+1 405555010", "+1-405555010", "14055550100",
                     "+1405555\u0661100", "+1\uff14\uff10\uff155550100"):
            assert not arr.has(text), text
        assert arr.npas() == [200, 212, 405, 999]
        assert arr.npa_numbers(405).tolist() == [5550100, 5550108] and arr.npa_numbers(201).tolist() == []
        assert arr.numbers().tolist() == sorted(members)
    # 1,250 bytes per NPA-NXX prefix present (and one zero block) after the 4 MB index
    prefixes = len({m // 10_000 for m in members})
    assert (tmp_path / "e.dnc").stat().st_size == 4096 + 4 * 1_000_000 + (prefixes + 1) * 1250


def test_a_file_whose_header_or_index_lies_is_refused(tmp_path):
    import zlib

    keys = np.array([2127365000, 2127365001, 3053581234], np.int64)
    write_keys(tmp_path / "ok.dnc", keys, {"list": "national"})
    raw = bytearray((tmp_path / "ok.dnc").read_bytes())
    n = int.from_bytes(raw[8:12], "little")
    meta = json.loads(raw[12:12 + n])

    def with_meta(**change) -> bytearray:
        head = json.dumps({**meta, **change}, sort_keys=True).encode()
        out = bytearray(raw)
        out[12:4096] = b"\0" * (4096 - 12)
        out[8:12] = len(head).to_bytes(4, "little")
        out[12:12 + len(head)] = head
        return out

    cases = {"count": with_meta(count=4), "format": with_meta(format=2), "blocks": with_meta(nblocks=2),
             "truncated": raw[:-1], "magic": b"DNCARR02" + raw[8:]}
    # an index entry pointing into the middle of a block, with its checksum made to match
    index = bytearray(raw[4096:4096 + 4_000_000])
    index[4 * 212_736:4 * 212_737] = (7).to_bytes(4, "little")
    cases["index"] = with_meta(crc_index=zlib.crc32(bytes(index)))
    cases["index"][4096:4096 + 4_000_000] = index
    # a block of another prefix set to ones: the count no longer matches
    ones = bytearray(raw)
    ones[-1250:] = b"\xff" * 1250
    cases["bits"] = with_meta(crc_bits=zlib.crc32(bytes(ones[4096 + 4_000_000:])))
    cases["bits"][-1250:] = b"\xff" * 1250
    for name, data in cases.items():
        (tmp_path / f"{name}.dnc").write_bytes(bytes(data))
        with pytest.raises(DncFileError):
            open_array(tmp_path / f"{name}.dnc")
    assert open_array(tmp_path / "ok.dnc").numbers().tolist() == keys.tolist()


def test_blocks_built_by_sorting_or_by_flags_agree_and_changes_match_set_arithmetic(rt, tmp_path):
    from compliance.dncarray import npa_blocks, sorted_unique

    rng = np.random.default_rng(3)
    local = rng.integers(2_000_000, 10_000_000, 80_000)  # one area code: the flag path (>= 50,000)
    nxx_f, blocks_f = npa_blocks(local)
    nxx_s = np.unique(local // 10_000)
    flags = np.zeros((len(nxx_s), 10_000), bool)
    flags[np.searchsorted(nxx_s, local // 10_000), local % 10_000] = True
    assert nxx_f.tolist() == nxx_s.tolist() and blocks_f.tobytes() == np.packbits(flags, axis=1, bitorder="little").tobytes()
    for a in (local, local[:1], local[:0], np.concatenate([local[:100], local[:100]])):
        assert sorted_unique(a).tolist() == np.unique(a).tolist()
    small = local[:3000]
    nxx_a, blocks_a = npa_blocks(small)  # the sort path
    nxx_b, blocks_b = npa_blocks(np.concatenate([small, small]))
    assert nxx_a.tolist() == nxx_b.tolist() and blocks_a.tobytes() == blocks_b.tobytes()

    full = set((212 * 10_000_000 + local).tolist()) | {3055550100, 3055550101}
    src = tmp_path / "full.txt"
    src.write_text("".join(f"{k}\n" for k in sorted(full)))
    rt.import_list("national", [src], "2026-04-10")
    present = sorted(full)
    dels = set(rng.choice(present, 5000, replace=False).tolist()) | {3055550100, 3055550101}  # 305-555 emptied
    dels |= {2122000000 + i for i in range(3)} - full  # absent numbers: deleting them changes nothing
    adds = set((rng.integers(2_000_000_000, 9_999_999_999, 4000)).tolist())
    adds = {k for k in adds if (k // 10_000) % 1000 >= 200 and k // 10_000 != 305_555} - dels
    changes = tmp_path / "changes.txt"
    changes.write_text("".join(f"{k},D\n" for k in sorted(dels)) + "".join(f"{k},A\n" for k in sorted(adds)))
    r = rt.import_list("national", [changes], "2026-04-11", changes=True)
    want = (full - dels) | adds
    assert numbers(Path(r.path)) == sorted(want)
    assert (r.deleted, r.added, r.numbers) == (len(full & dels), len(adds - full), len(want))
    assert 555 not in open_array(Path(r.path)).blocks(305)[0].tolist()  # an emptied prefix keeps no block


def test_an_xml_file_is_refused_not_guessed_at(rt, tmp_path):
    """The FTC's XML download has no documented layout here (COMPLIANCE.md §8 item 2): its
    lines are rejected and, with no valid number, the import aborts."""
    xml = tmp_path / "ftc.xml"
    xml.write_text('<?xml version="1.0"?>\n<DNCList>\n<Record><AreaCode>212</AreaCode><Phone>7365000</Phone></Record>\n'
                   "<Record><PhoneNumber>2127365001</PhoneNumber></Record>\n</DNCList>\n")
    with pytest.raises(ImportAborted, match="no valid number"):
        rt.import_list("national", [xml], "2026-04-10")
    assert not (tmp_path / "data" / "national.dnc").exists()


def test_consent_tokens_are_per_publisher_and_replay_so(tmp_path):
    """Two publishers may hold the same token (issue 13): each its own record, a publisher's
    revocation touches its own, and a second process replaying the journal agrees."""
    gate = Gate()
    rt = ComplianceRuntime(gate, tmp_path)
    rec = {"sellers": ["b"], "created_at": "2026-04-01T00:00:00Z"}
    assert rt.add_consent("lead-1", {**rec, "phone": "+12127365000"}, "p1") == "created"
    assert rt.add_consent("lead-1", {**rec, "phone": "+12127365001"}, "p2") == "created"
    assert rt.add_consent("lead-1", {**rec, "phone": "+12127365002"}, "p2") == "conflict"  # p2's own record
    consents = gate.stores.consents
    assert consents.get("lead-1", "p1").phone == "+12127365000" and consents.get("lead-1", "p2").phone == "+12127365001"
    assert consents.get("lead-1", "p3") is None and len(consents) == 2
    assert rt.revoke("lead-1", 10, "sms_stop", "exchange", "p2", "p2").phone == "+12127365001"
    other = Gate()
    rt2 = ComplianceRuntime(other, tmp_path)
    rt2.apply(rt2.scan())
    for st in (consents, other.stores.consents):
        assert st.record("lead-1", "p2").revoked_ns == 10 and st.record("lead-1", "p1").revoked_ns is None
    assert rt.revoke("lead-1", 20, "api", "exchange", "op").phone == "+12127365000"  # the operator: every record
    assert consents.record("lead-1", "p1").revoked_ns == 20 and consents.record("lead-1", "p2").revoked_ns == 10
