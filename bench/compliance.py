"""The compliance gate in-process with every rule active, and the Redis step's cost.

    python -m bench.compliance [--calls 100000] [--national 250000000] [--runs 3] [--out FILE]
                               [--redis-url redis://127.0.0.1:6379/0] [--service-calls 3000]

Stores: a memory-mapped national DNC file (``--national`` numbers), three state lists
(TX 2M, AL and OK 200K), 100K litigators, 100K internal opt-outs (exchange and buyer scope),
200K consents (some revoked or expired), a 50K RND cache, outbound history for every
capped number, holiday calendars, an emergency flag and a tripped campaign.

Series (canonical E.164 numbers over 30 area codes incl. split NPAs and every rule state),
each at two kinds of instant: ``day`` (one call per millisecond from Wednesday 12:00 EDT,
inside most windows) and ``any_time`` (uniformly random instants over a week, so about half
the calls are temporal denials that also compute ``retry_after``):

* ``exchange_*``: ``screen`` (call level) + ``buyer_refusal`` for the call's buyer (the
  routing path);
* ``single_buyer_*``: ``Gate.decide`` (all of §6 for one buyer), same calls.

The calling-window tables (``compliance.windows``) are built on the first call of each
candidate set in each week; the warm-up pass builds most of them, and the cost of building
one is reported separately. Then ``decision_us`` as the exchange reports it
(``CallDesk.submit`` with no sockets) for outbound calls to Florida numbers (a frequency
cap): in-process counter vs the Redis Lua script (skipped without Redis). Prints
p50/p99/p99.9 µs (median of ``--runs``); writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from compliance.consent import Consent
from compliance.dncarray import from_keys, sorted_unique
from compliance.dncfile import open_array, write_keys
from compliance.frequency import FrequencyCounter
from compliance.gate import Gate
from compliance.instants import utc_day
from compliance.numbers import parse_number
from compliance.runtime import number_list
from compliance.stores import Flags, NumberList, Rnd, StateLists
from exchange import gcpolicy

NOW_NS = 1_776_268_800 * 1_000_000_000  # Wednesday 2026-04-15 16:00Z: noon in New York
DAY_NS = 86_400 * 10**9
NPAS = [212, 305, 850, 448, 405, 410, 206, 214, 915, 205, 504, 601, 203, 502, 812, 930, 928, 907, 808, 787,
        401, 617, 313, 612, 505, 702, 415, 312, 303, 602]
BUYERS = [f"b{i}" for i in range(50)]


def build(national_n: int, tmp: Path, rng: np.random.Generator) -> tuple[Gate, list[tuple[SimpleNamespace, str, str, str]]]:
    gate = Gate()
    st = gate.stores
    # exactly ``national_n`` distinct numbers, uniform over NPA and NXX 200-999
    keys = np.zeros(0, np.int64)
    while len(keys) < national_n:
        draw = int((national_n - len(keys)) * 1.05) + 1000
        more = rng.integers(200, 1000, draw) * 10_000_000 + rng.integers(2_000_000, 10_000_000, draw)
        keys = sorted_unique(np.concatenate([keys, more]))
    if len(keys) > national_n:
        keys = np.delete(keys, rng.choice(len(keys), len(keys) - national_n, replace=False))
    path = tmp / "national.dnc"
    write_keys(path, keys, {"list": "national", "snapshot_date": "2026-04-10"})
    st.swap(national=number_list(open_array(path)))

    def npa_keys(npa: int, n: int) -> np.ndarray:
        return npa * 10_000_000 + rng.integers(2_000_000, 9_999_999, n)

    st.swap(state_lists=StateLists.of({
        "TX": NumberList(from_keys(npa_keys(214, 2_000_000)), utc_day(NOW_NS) - 14, "state:TX"),
        "AL": NumberList(from_keys(npa_keys(205, 200_000)), utc_day(NOW_NS) - 14, "state:AL"),
        "OK": NumberList(from_keys(npa_keys(405, 200_000)), utc_day(NOW_NS) - 14, "state:OK"),
    }))
    st.swap(litigators=NumberList(from_keys(rng.integers(2_000_000_000, 9_999_999_999, 100_000)), None, "lit"))
    numbers = [f"+1{rng.choice(NPAS)}{rng.integers(200, 999)}{rng.integers(0, 9999):04d}" for _ in range(200_000)]
    for i in range(100_000):
        st.suppressions.add(f"+1{rng.choice(NPAS)}{rng.integers(200, 999)}{rng.integers(0, 9999):04d}",
                            "exchange" if i % 2 else f"buyer:{BUYERS[i % 50]}", NOW_NS - DAY_NS)
    for i, n in enumerate(numbers):
        sellers = frozenset(random.Random(i).sample(BUYERS, 3))
        revoked = NOW_NS - DAY_NS if i % 50 == 0 else None
        expires = NOW_NS - DAY_NS if i % 70 == 0 else NOW_NS + 90 * DAY_NS
        addr = "FL" if i % 40 == 0 else None
        st.consents.add(Consent(f"tok{i}", n, sellers, NOW_NS - 3 * DAY_NS, expires, revoked, addr))
    st.swap(rnd=Rnd("rnd", {numbers[i]: utc_day(NOW_NS) - (1 if i % 3 else 400) for i in range(0, 150_000, 3)}))
    for i, n in enumerate(numbers):
        if n[2:5] in ("305", "850", "448", "405", "410"):
            for k in range(i % 3):
                st.frequency.record(FrequencyCounter.key("auto", n), NOW_NS - (k + 1) * 3_600 * 10**9)
    st.swap(flags=Flags("bench", frozenset({"LA"}), frozenset({"cmp_tripped"})))
    calls = []
    for i in range(len(numbers)):
        token = f"tok{i}" if i % 25 else None
        fields = SimpleNamespace(direction="outbound", consent_token=token, vertical="auto", origin=None,
                                 dial_mode=None, state=None, zip=None)
        buyer = random.Random(i).choice(BUYERS)
        calls.append((fields, numbers[i], buyer, "cmp_tripped" if i % 200 == 0 else "cmp1"))
    return gate, calls


def pct(s: list[int], q: float) -> float:
    return s[min(len(s) - 1, int(q * len(s)))] / 1000


def summary(samples: list[int]) -> dict:
    s = sorted(samples)
    return {"p50_us": pct(s, 0.5), "p99_us": pct(s, 0.99), "p999_us": pct(s, 0.999), "mean_us": statistics.fmean(s) / 1000, "n": len(s)}


def table_builds(gate: Gate) -> dict:
    """How many week tables the series built, and what building one costs (rebuilt here)."""
    cals = gate.calendars()
    hol = gate.stores.holidays or gate.rules.holidays
    costs = []
    weeks = 0
    for cal in cals:
        for w in cal.weeks():
            weeks += 1
            t0 = time.perf_counter_ns()
            cal.build(w, hol)
            costs.append((time.perf_counter_ns() - t0) / 1000)
    costs.sort()
    return {"calendars": len(cals), "weeks": weeks, "build_p50_us": costs[len(costs) // 2] if costs else 0.0,
            "build_max_us": costs[-1] if costs else 0.0}


def series(gate: Gate, calls: list, n: int, mode: str, any_time: bool, rng: random.Random) -> tuple[list[int], dict]:
    samples, reasons = [], {}
    clock = time.perf_counter_ns
    for i in range(n):
        fields, number, buyer, campaign = calls[i % len(calls)]
        at = NOW_NS + rng.randrange(7 * DAY_NS) if any_time else NOW_NS + i * 1_000_000
        if mode == "exchange":
            t0 = clock()
            consumer, v = gate.screen(fields, parse_number(number), at)
            why = gate.buyer_refusal(buyer, consumer, "outbound", at, campaign) if v.allow else None
            t1 = clock()
            reason = why or v.reason
        else:
            t0 = clock()
            v = gate.decide("outbound", number, at, buyer=buyer, campaign=campaign, vertical="auto",
                            consent_token=fields.consent_token)
            t1 = clock()
            reason = v.reason
        samples.append(t1 - t0)
        reasons[reason] = reasons.get(reason, 0) + 1
    return samples, reasons


async def service_series(redis_url: str | None, calls: int, tmp: Path) -> list[int]:
    from billing.postings import buyer_account, deposit
    from exchange.messages import Campaign, CallRequest
    from exchange.service import Exchange
    from exchange.settings import Settings

    ex = Exchange(Settings(redis_url=redis_url, rtb_tmax_ms=0, database_url=f"sqlite:///{tmp}/ledger-{bool(redis_url)}.db",
                           compliance_dir=str(tmp / ("redis" if redis_url else "local")),
                           redis_prefix=f"bench:{os.getpid()}:{time.time_ns()}:"))
    await ex.start()
    core = ex.core
    core.ledger.post(deposit(buyer_account("b"), 10**12, "dep", 0))
    core.book.upsert("b", Campaign(id="c", vertical="auto", bid_cents=1000, min_duration_s=30, destination="+18005550199",
                                   accepts_outbound=True))
    now = ex.clock.now_ns()
    core.gate.stores.swap(national=NumberList(from_keys([]), utc_day(now), "national:bench"))
    reqs = []
    for i in range(calls):
        n = f"+1305{200 + i // 10000:03d}{i % 10000:04d}"
        core.gate.stores.consents.add(Consent(f"t{i}", n, frozenset({"b"}), now - DAY_NS))
        reqs.append(CallRequest(caller="+18885550100", callee=n, direction="outbound", vertical="auto", consent_token=f"t{i}"))
    pub = SimpleNamespace(id="p", kind="publisher")
    out, reasons = [], {}
    try:
        for r in reqs:
            d = await ex.desk.submit(pub, r)  # type: ignore[arg-type]
            reasons[d.reason] = reasons.get(d.reason, 0) + 1
            out.append(d.decision_us * 1000)
            if d.decision == "routed":
                from exchange.messages import CallEvent

                await ex.desk.event(SimpleNamespace(id="p", kind="publisher"), d.call_id, "k", CallEvent(event="failed"))  # type: ignore[arg-type]
    finally:
        await ex.stop()
    if reasons.get("ok", 0) < len(reqs) * 0.9:
        print(f"   (warning: decisions {reasons}; Miami's window may be closed now)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--national", type=int, default=250_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--redis-url", default=os.environ.get("EXCHANGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--service-calls", type=int, default=3000)
    ap.add_argument("--out", default="bench/results/compliance.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-compliance-"))
    rng = np.random.default_rng(7)
    t = time.perf_counter()
    gate, calls = build(args.national, tmp, rng)
    print(f"stores built in {time.perf_counter() - t:.1f} s: national {len(gate.stores.national.array):,} (mmap), "
          f"states TX/AL/OK, litigators 100K, opt-outs {len(gate.stores.suppressions):,}, consents {len(gate.stores.consents):,}")
    results = {}
    print(f"{'series':<24} {'p50 µs':>8} {'p99 µs':>8} {'p99.9 µs':>9} {'mean µs':>8}   (median of {args.runs} runs x {args.calls} calls)")
    series_modes = (("exchange_day", "exchange", False), ("exchange_any_time", "exchange", True),
                    ("single_buyer_day", "single", False), ("single_buyer_any_time", "single", True))
    for name, mode, any_time in series_modes:
        runs, reasons = [], {}
        for r in range(args.runs):
            series(gate, calls, 2000, mode, any_time, random.Random(r))  # warm
            gc.collect()
            gcpolicy.tune()
            samples, reasons = series(gate, calls, args.calls, mode, any_time, random.Random(r))
            gc.unfreeze()
            runs.append(summary(samples))
        med = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
        results[name] = {"median": med, "runs": runs, "reasons": reasons}
        print(f"{name:<24} {med['p50_us']:>8.1f} {med['p99_us']:>8.1f} {med['p999_us']:>9.1f} {med['mean_us']:>8.1f}")
        print(f"   reasons: {dict(sorted(reasons.items(), key=lambda kv: -kv[1]))}")
    tables = table_builds(gate)
    print(f"calling-window tables: {tables['calendars']} candidate sets, {tables['weeks']} week tables; building one "
          f"takes p50 {tables['build_p50_us']:.0f} µs, max {tables['build_max_us']:.0f} µs (once per set and week)")
    service = {}
    for label, url in (("in_process", None), ("redis", args.redis_url)):
        try:
            s = asyncio.run(service_series(url, args.service_calls, tmp))
        except Exception as exc:  # no Redis: report and go on
            print(f"decision_us {label}: skipped ({exc!r})")
            continue
        service[label] = summary(s)
        m = service[label]
        print(f"decision_us FL outbound, {label:<10} p50 {m['p50_us']:.0f} µs  p99 {m['p99_us']:.0f} µs  p99.9 {m['p999_us']:.0f} µs  (n={m['n']})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "compliance", "python": platform.python_version(), "calls": args.calls,
                               "national_numbers": len(gate.stores.national.array), "gate": results,
                               "window_tables": tables,
                               "decision_us_fl_outbound": service}, indent=2))
    print(f"wrote {out}")
    for p in tmp.rglob("*"):
        if p.is_file():
            p.unlink()


if __name__ == "__main__":
    main()
