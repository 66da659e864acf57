"""The load test's pure parts: workload generation, histograms, frames, metrics parsing and
the pass/fail checks (the smoke test runs the whole thing against a real exchange)."""

from __future__ import annotations

import random
import struct

import msgspec
import pytest

from compliance.numbers import parse_number
from exchange.messages import Bid, buyer_json, json_encoder
from loadtest.collect import Collector, Hist, bucket
from loadtest.plan import Account, Plan, decode_plan, encode_plan
from loadtest.target import parse_prometheus
from loadtest.wire import OP_TEXT, FrameRing, client_frame, mask
from loadtest.workload import (
    CallMaker, bid_payloads, buyer_campaigns, call_duration_s, campaign_frames, suppressed_numbers,
)


def test_campaigns_are_valid_wire_messages_with_one_rtb_each():
    camps = buyer_campaigns(3, 200, seed=1, rtb=2)
    assert [c.id for c in camps] == [f"c{j}" for j in range(200)]
    assert [c.rtb for c in camps].count(True) == 2
    for seq, frame in campaign_frames(camps, per_frame=64):
        decoded = buyer_json.decode(frame)  # the exchange's own decoder validates every field
        assert isinstance(decoded, list) and decoded[-1].seq == seq
        assert all(m.seq is None for m in decoded[:-1])
    assert buyer_campaigns(3, 200, seed=1, rtb=2) == camps  # deterministic


@pytest.mark.parametrize("batch", [1, 7, 100])
def test_bid_payloads_reprice_only_streamable_campaigns(batch):
    camps = buyer_campaigns(0, 50, seed=2, rtb=1)
    payloads = bid_payloads(camps, batch, ring_bids=700, seed=3)
    assert len(payloads) == 700 // batch
    ids = {c.id for c in camps if not c.rtb}
    prices = set()
    for p in payloads:
        got = buyer_json.decode(p)
        msgs = [got] if batch == 1 else got
        assert batch == 1 and isinstance(got, Bid) or len(got) == batch
        for m in msgs:
            assert isinstance(m, Bid) and m.campaign in ids and 100 <= m.bid_cents <= 9_900
            prices.add(m.bid_cents)
    assert len(prices) > 10  # a random walk, not a constant


def test_calls_are_valid_and_the_mix_is_realistic():
    maker = CallMaker(random.Random(5), suppressed_numbers(5))
    kinds: dict[str, int] = {}
    for _ in range(3000):
        kind, call = maker.next()
        kinds[kind] = kinds.get(kind, 0) + 1
        consumer = call.caller if call.direction == "inbound" else call.callee
        info = parse_number(consumer)
        assert info is not None, consumer
        if kind == "inbound" or kind == "outbound":
            assert info.region == "US" and info.geographic
        msgspec.json.decode(json_encoder.encode(call))  # encodes to JSON
    assert 0.75 < kinds["inbound"] / 3000 < 0.85
    noncompliant = sum(v for k, v in kinds.items() if k.startswith("noncompliant"))
    assert 0.07 < noncompliant / 3000 < 0.13
    durations = [call_duration_s(random.Random(i)) for i in range(2000)]
    assert 60 < sorted(durations)[1000] < 160 and min(durations) >= 1


def test_hist_quantiles_and_merge():
    h = Hist()
    for v in range(1, 1001):
        h.add(v)
    assert h.quantile(0.5) == 500 and h.quantile(0.99) == 990 and h.n == 1000
    assert bucket(12_345) == 12_300 and bucket(999) == 999 and bucket(1_004) == 1_000
    other = Hist(dict(h.counts))
    other.merge(h.wire())
    assert other.n == 2000 and other.quantile(0.5) == 500


def test_collector_drain_absorb_and_window():
    worker, master = Collector(), Collector()
    worker.count("bids", 100)
    worker.observe("decision_us", 40)
    master.absorb(msgspec.msgpack.decode(msgspec.msgpack.encode(worker.drain())))  # as Locust ships it
    assert master.counts["bids"] == 100 and master.hists["decision_us"].n == 1
    assert worker.counts == {} and worker.hists["decision_us"].n == 0
    (s,) = master.secs
    assert master.window(s, s + 1)["counts"] == {"bids": 100}
    assert master.window(s + 1, s + 2)["counts"] == {}
    assert master.series()[0]["decision_us_p99"] == 40


def test_frame_ring_slices_whole_masked_frames():
    payloads = [json_encoder.encode(Bid(campaign=f"c{i}", bid_cents=100 + i)) for i in range(5)]
    key = b"\x01\x02\x03\x04"
    ring = FrameRing(payloads, 1, key)
    got = b"".join(bytes(x) for x in ring.take(7))  # wraps around: frames 0..4, 0, 1
    expect = b"".join(client_frame(payloads[i % 5], OP_TEXT, key) for i in range(7))
    assert got == expect
    f = client_frame(payloads[0], OP_TEXT, key)
    assert f[0] == 0x81 and f[1] == 0x80 | len(payloads[0]) and mask(f[6:], key) == payloads[0]
    big = client_frame(b"x" * 70_000, OP_TEXT, key)
    assert big[1] == 0x80 | 127 and struct.unpack("!Q", big[2:10])[0] == 70_000


def test_plan_round_trip_and_prometheus_parsing():
    plan = Plan(host="http://127.0.0.1:1", buyers=[Account("b1", "k", 0)], publishers=[], bids_per_s=10)
    assert decode_plan(encode_plan(plan)) == plan
    m = parse_prometheus('# HELP x\nexchange_calls_total{decision="routed",reason="ok"} 3\n'
                         'exchange_calls_total{decision="rejected",reason="x"} 2\nexchange_bids_ingested_total 7\n'
                         'exchange_decision_us_bucket{le="5"} 1\n')
    assert m["exchange_calls_total"] == 5 and m["exchange_bids_ingested_total"] == 7
    assert "exchange_decision_us_bucket" not in m


def _fake(bids_per_s: float, p99: int, failures: int = 0) -> dict:
    """What report.build needs from a run, at a steady rate over a 10 s window."""
    samples = [{"t": 100.0 + i, "metrics": {"exchange_bids_ingested_total": bids_per_s * i, "exchange_calls_total": 50.0 * i,
                                            "exchange_book_campaigns": 10.0},
                "server_cpu_s": 0.3 * i, "locust_cpu_s": {"master": 0.01 * i, "worker0": 0.2 * i},
                "machine": (0.6 * i, 2.0 * i), "server_alive": True} for i in range(16)]
    final = {"window": [102.0, 112.0], "phase": "done",
             "window_figures": {"counts": {"bids": int(bids_per_s * 10), "calls": 500},
                                "latency_us": {"decision_us": {"n": 500, "p50": 40, "p99": p99}}},
             "totals": {"counts": {"bids": int(bids_per_s * 15)}}, "series": [],
             "locust": {"failures": failures, "entries": {}, "errors": [], "exceptions": []}}
    return {"samples": samples, "final": final}


@pytest.mark.parametrize("bids,p99,failures,passed", [
    (100_000, 200, 0, True), (99_950, 200, 0, True), (99_000, 200, 0, False), (100_000, 1000, 0, False),
    (100_000, 200, 1, False),
])
def test_checks_follow_the_thresholds(bids, p99, failures, passed, tmp_path):
    from loadtest import report
    from loadtest.runner import Config

    class T:
        base, local = "http://127.0.0.1:1", True

    f = _fake(bids, p99, failures)
    cfg = Config(calls_per_s=50)
    plan = Plan(host=T.base, buyers=[Account("b", "k", 0)], publishers=[Account("p", "k", 0)])
    res = report.build(cfg, plan, T(), f["final"], f["samples"], {}, True, [], 100.0, {}, {"cpus": 2})
    assert res["passed"] is passed, res["checks"]
    assert res["figures"]["bids_per_s"] == pytest.approx(bids)
    assert res["figures"]["cpu_exchange_pct"] == pytest.approx(30.0)
    report.write(tmp_path, res)
    assert (tmp_path / "summary.txt").read_text().startswith("=== loadtest run: " + ("PASS" if passed else "FAIL"))
    assert (tmp_path / "chart.png").stat().st_size > 1000


def test_users_stop_cleanly_after_a_set_up_that_failed_part_way():
    """Seen on a busy machine: a buyer whose handshake failed in ``on_start`` raised
    ``AttributeError: 'BuyerUser' object has no attribute 'reader'`` in ``on_stop``."""
    import subprocess
    import sys
    from pathlib import Path

    # (Locust monkey-patches the process with gevent on import: a child of its own)
    code = ("from loadtest.locustfile import BuyerUser, PublisherUser\n"
            "for cls in (BuyerUser, PublisherUser):\n"
            "    cls.__new__(cls).on_stop()  # as Locust leaves a user whose on_start raised before its sockets existed\n"
            "print('stopped')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(Path(__file__).resolve().parents[2]))
    assert out.returncode == 0 and out.stdout.strip() == "stopped", out.stderr[-2000:]


def _run(passed: bool, misses: list[str], **fig: object) -> dict:
    checks = [{"name": n, "ok": n not in misses, "value": 0, "want": ""} for n in ("bids_per_s", "decision_p99_us", "errors")]
    return {"passed": passed, "config": {"nodes": fig.pop("nodes", 0)}, "machine": {"cpus": 2}, "figures": fig,
            "checks": checks, "ceiling": fig.pop("ceiling", None)}


def test_a_failed_run_says_when_the_host_had_no_room_left():
    from loadtest.report import diagnosis

    assert diagnosis(_run(True, [], cpu_exchange_pct=99.0)) is None  # a pass needs no excuse
    assert diagnosis(_run(False, ["errors"], cpu_exchange_pct=80.0, machine_busy_cores=1.3)) is None  # room left: the exchange's miss
    cpu = diagnosis(_run(False, ["errors"], cpu_exchange_pct=97.6, machine_busy_cores=1.3))
    assert cpu is not None and cpu.startswith("exchange CPU-bound") and "98% of a core" in cpu
    assert diagnosis(_run(False, ["errors"], cpu_exchange_pct=97.6, nodes=3)) is None  # several processes: one core is no ceiling
    host = diagnosis(_run(False, ["errors"], cpu_exchange_pct=70.0, machine_busy_cores=1.95))
    assert host is not None and host.startswith("host saturated") and "1.95 of 2 cores" in host
    bound = diagnosis(_run(False, ["bids_per_s"], bids_per_s=96_000, ceiling={"bids_per_s": 98_000}))
    assert bound is not None and bound.startswith("host-bound")
    assert diagnosis(_run(False, ["bids_per_s"], bids_per_s=50_000, ceiling={"bids_per_s": 98_000})) is None  # the exchange fell short
    # with the main thread's CPU measured, that is the ceiling (the store's thread works beside it, off the GIL)
    loop = diagnosis(_run(False, ["errors"], cpu_exchange_pct=108.0, cpu_exchange_loop_pct=96.0, machine_busy_cores=1.4))
    assert loop is not None and "event loop at 96% of a core (the process 108%)" in loop
    assert diagnosis(_run(False, ["errors"], cpu_exchange_pct=108.0, cpu_exchange_loop_pct=80.0, machine_busy_cores=1.4)) is None
    # ready to run with no core free: the host (session 8 at 100,000 campaigns: the loop 8 %, the store's thread 17 %)
    short = diagnosis(_run(False, ["errors"], cpu_exchange_pct=103.0, cpu_exchange_loop_pct=83.0, exchange_runqueue_pct=25.0,
                           machine_busy_cores=1.53))
    assert short is not None and short.startswith("host short of cores") and "waited for a core 25%" in short
    assert diagnosis(_run(False, ["errors"], cpu_exchange_pct=103.0, cpu_exchange_loop_pct=83.0, exchange_runqueue_pct=4.0,
                          machine_busy_cores=1.53)) is None


def test_a_threads_cpu_is_read_from_proc():
    import os
    import threading
    import time

    from loadtest.target import proc_cpu_s, thread_cpu_s

    main0, proc0 = thread_cpu_s(os.getpid(), os.getpid()), proc_cpu_s(os.getpid())
    stop = time.thread_time() + 0.3

    def spin() -> None:
        while time.thread_time() < stop + 0.0:
            pass

    t = threading.Thread(target=spin)
    t.start()
    t.join()
    main1, proc1 = thread_cpu_s(os.getpid(), os.getpid()), proc_cpu_s(os.getpid())
    assert main0 is not None and main1 is not None and proc0 is not None and proc1 is not None
    assert proc1 - proc0 >= 0.2 and main1 - main0 < 0.1  # the other thread's CPU counts for the process, not the main thread
    assert thread_cpu_s(os.getpid(), 2**22 + 7) is None  # no such thread


def test_a_process_waiting_for_a_core_is_read_from_proc():
    """More runnable processes than cores: this one's thread waits on the run queue, and it shows."""
    import os
    import subprocess
    import sys
    import time

    from loadtest.target import proc_wait_s

    w0 = proc_wait_s(os.getpid())
    spin = "import time\nend = time.monotonic() + 1.0\nwhile time.monotonic() < end: pass"
    hogs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2 * (os.cpu_count() or 1))]
    try:
        end = time.monotonic() + 0.8
        while time.monotonic() < end:
            pass
    finally:
        for h in hogs:
            h.wait()
    w1 = proc_wait_s(os.getpid())
    assert w0 is not None and w1 is not None and w1 - w0 > 0.01
    assert proc_wait_s(2**22 + 7) is None  # no such process
