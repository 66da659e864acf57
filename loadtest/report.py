"""The results folder of a run: ``results.json`` (every figure), ``summary.txt``,
``chart.png`` (over time: bids/s, calls/s, decision p50/p99, CPU), Locust's CSVs
(``locust_*.csv``, written by Locust itself) and the logs of every process.

Where each figure comes from
* bids/s, frames/s, calls/s *ingested/decided*: the exchange's own counters
  (``/metrics``), sampled every second, interpolated at the window's edges;
* bids/s *offered*, decision and round-trip latencies: the Locust users' collectors
  (``loadtest.collect``), over the whole seconds of the window; ``decision_us`` is the value
  the exchange returned with each call;
* CPU: ``/proc`` of the exchange process and of each Locust process (100 % = one core),
  and of the whole machine (busy cores).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec


if TYPE_CHECKING:
    from .plan import Plan
    from .runner import Config
    from .target import Target

BIDS, FRAMES, CALLS = "exchange_bids_ingested_total", "exchange_buyer_frames_total", "exchange_calls_total"
REJECTED, SLOW = "exchange_messages_rejected_total", "exchange_slow_consumers_closed_total"


def _interp(samples: list[dict[str, Any]], pick: Any, t: float) -> float | None:
    pts = [(s["t"], v) for s in samples if (v := pick(s)) is not None]
    if not pts:
        return None
    if t <= pts[0][0]:
        return pts[0][1]
    for (t0, v0), (t1, v1) in zip(pts, pts[1:]):
        if t0 <= t <= t1:
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1
    return pts[-1][1]


def _metric(name: str) -> Any:
    # a counter the exchange has not exposed yet (no labelled sample so far) is zero
    return lambda s: s["metrics"].get(name, 0.0) if s["metrics"] is not None else None


def _rate_between(samples: list[dict[str, Any]], pick: Any, a: float, b: float) -> float | None:
    va, vb = _interp(samples, pick, a), _interp(samples, pick, b)
    if va is None or vb is None or b <= a:
        return None
    return (vb - va) / (b - a)


def _locust_total(s: dict[str, Any]) -> float | None:
    vals = [v for v in s["locust_cpu_s"].values() if v is not None]
    return sum(vals) if vals else None


def _server_hist(samples: list[dict[str, Any]], a: float, b: float) -> dict[str, Any]:
    """p50/p99 upper bounds from the exchange's own decision histogram over [a, b]."""
    if not samples or samples[-1]["metrics"] is None:
        return {}
    names = [k for k in samples[-1]["metrics"] if k.startswith("exchange_decision_us_bucket{")]
    bounds = []
    for k in names:
        le = k.split('le="', 1)[1].split('"', 1)[0]
        va, vb = _interp(samples, _metric(k), a), _interp(samples, _metric(k), b)
        if va is not None and vb is not None:
            bounds.append((math.inf if le == "+Inf" else float(le), vb - va))
    bounds.sort()
    if not bounds or bounds[-1][1] <= 0:
        return {}
    n = bounds[-1][1]
    out: dict[str, Any] = {"n": round(n)}
    for q in (0.5, 0.99, 0.999):
        for le, cum in bounds:
            if cum >= q * n:
                out[f"p{q * 100:g}_le_us"] = le if le != math.inf else None
                break
    return out


def build(cfg: Config, plan: Plan, target: Target, final: dict[str, Any] | None, samples: list[dict[str, Any]],
          metrics0: dict[str, float] | None, alive: bool, log_problems: list[str], started: float,
          exits: dict[str, Any], env: dict[str, Any]) -> dict[str, Any]:
    th = cfg.thresholds
    window = (final or {}).get("window")
    wf = (final or {}).get("window_figures") or {"counts": {}, "latency_us": {}}
    res: dict[str, Any] = {
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("admin_key", "thresholds")},
        "thresholds": asdict(th),
        "plan": {"buyers": len(plan.buyers), "publishers": len(plan.publishers), "buyer_users": plan.buyer_users,
                 "publisher_users": plan.publisher_users, "campaigns_per_buyer": plan.campaigns_per_buyer,
                 "book_campaigns": plan.campaigns_per_buyer * len(plan.buyers), "batch": plan.batch,
                 "ring_bids": plan.ring_bids, "tick_s": plan.tick_s, "time_scale": plan.time_scale,
                 "noncompliant": plan.noncompliant, "rtb_per_buyer": plan.rtb_per_buyer},
        "exchange": {"url": target.base, "started_here": target.local, "alive_at_end": alive, "exit": exits.get("exchange"),
                     "log_problems": log_problems},
        "machine": env,
        "processes": exits,
        "window": None,
    }
    fig: dict[str, Any] = {}
    if window:
        a, b = window
        span = b - a
        counts = wf["counts"]
        lat = wf["latency_us"]
        fig["window_s"] = span
        fig["bids_per_s"] = _rate_between(samples, _metric(BIDS), a, b)
        fig["frames_per_s"] = _rate_between(samples, _metric(FRAMES), a, b)
        fig["calls_per_s"] = _rate_between(samples, _metric(CALLS), a, b)
        fig["bids_offered_per_s"] = counts.get("bids", 0) / span
        fig["frames_offered_per_s"] = counts.get("frames", 0) / span
        fig["calls_offered_per_s"] = cfg.calls_per_s
        fig["calls_answered_per_s"] = counts.get("calls", 0) / span
        fig["bids_skipped"] = counts.get("bids_skipped", 0)
        fig["calls_skipped"] = counts.get("calls_skipped", 0)
        # steadiness: the worst 5-second stretch of ingest inside the window
        worst = None
        t = a
        while t + 5 <= b + 1e-9:
            r = _rate_between(samples, _metric(BIDS), t, t + 5)
            if r is not None:
                worst = r if worst is None else min(worst, r)
            t += 1
        fig["bids_per_s_worst_5s"] = worst
        fig["decision_us"] = lat.get("decision_us", {"n": 0})
        fig["decision_us_server_histogram"] = _server_hist(samples, a, b)
        fig["call_round_trip_us"] = lat.get("call_us", {"n": 0})
        fig["call_round_trip_rtb_us"] = lat.get("call_rtb_us", {"n": 0})
        fig["event_round_trip_us"] = lat.get("event_us", {"n": 0})
        fig["bid_frames_ack_us"] = lat.get("ack_us", {"n": 0})
        fig["rtb_answer_us"] = lat.get("rtb_answer_us", {"n": 0})
        fig["outcomes"] = {k: v for k, v in sorted(counts.items()) if k.startswith(("calls_", "reason_", "kind_"))}
        fig["buyers"] = {k: counts.get(k, 0) for k in ("wins", "rtb_bids", "rtb_no_bid", "rtb_late", "billable_calls")}
        fig["buyers"]["losses"] = {k[5:]: v for k, v in sorted(counts.items()) if k.startswith("loss_")}
        fig["events"] = {k: v for k, v in sorted(counts.items()) if k.startswith("event_") and not k.endswith("errors")}
        # CPU over the window: 100 % = one core
        sa, sb = _interp(samples, lambda s: s["server_cpu_s"], a), _interp(samples, lambda s: s["server_cpu_s"], b)
        fig["cpu_exchange_pct"] = 100 * (sb - sa) / span if sa is not None and sb is not None else None
        la, lb = _interp(samples, lambda s: s.get("loop_cpu_s"), a), _interp(samples, lambda s: s.get("loop_cpu_s"), b)
        fig["cpu_exchange_loop_pct"] = 100 * (lb - la) / span if la is not None and lb is not None else None  # its main thread
        wa, wb = _interp(samples, lambda s: s.get("wait_s"), a), _interp(samples, lambda s: s.get("wait_s"), b)
        fig["exchange_runqueue_pct"] = 100 * (wb - wa) / span if wa is not None and wb is not None else None  # ready, no core
        per = {}
        for name in (samples[0]["locust_cpu_s"] if samples else {}):
            va = _interp(samples, lambda s, n=name: s["locust_cpu_s"].get(n), a)
            vb = _interp(samples, lambda s, n=name: s["locust_cpu_s"].get(n), b)
            per[name] = 100 * (vb - va) / span if va is not None and vb is not None else None
        fig["cpu_locust_pct"] = {k: (round(v, 1) if v is not None else None) for k, v in per.items()}
        fig["cpu_locust_total_pct"] = sum(v for v in per.values() if v is not None) if per else None
        ma = _interp(samples, lambda s: s["machine"][0] if s["machine"] else None, a)
        mb = _interp(samples, lambda s: s["machine"][0] if s["machine"] else None, b)
        fig["machine_busy_cores"] = (mb - ma) / span if ma is not None and mb is not None else None
        res["window"] = {"start": a, "end": b, "seconds": span}
    # errors over the whole run
    end_metrics = next((s["metrics"] for s in reversed(samples) if s["metrics"]), None) or {}
    m0 = metrics0 or {}
    loc = (final or {}).get("locust", {})
    totals = (final or {}).get("totals", {}).get("counts", {})
    errors = {
        "locust_failures": loc.get("failures", 0),
        "locust_user_exceptions": sum(x.get("count", 1) for x in loc.get("exceptions", [])),
        "client_crashes": int(totals.get("client_crashes", 0)),  # a call's greenlet raised (loadtest.locustfile)
        "exchange_messages_rejected": int(end_metrics.get(REJECTED, 0) - m0.get(REJECTED, 0)),
        "exchange_slow_consumers_closed": int(end_metrics.get(SLOW, 0) - m0.get(SLOW, 0)),
        "exchange_log_problems": len([x for x in log_problems if '"level": "warning"' not in x]),
        "exchange_down": 0 if alive else 1,
        "no_measurement": 0 if window else 1,
    }
    errors["total"] = sum(errors.values())
    errors["by_kind"] = {k: totals.get(k, 0) for k in ("ws_errors", "call_errors", "event_errors", "compliance_leaks",
                                                       "idempotency_mismatch") if totals.get(k)}
    errors["locust_errors"] = loc.get("errors", [])[:20]
    errors["locust_exceptions"] = loc.get("exceptions", [])[:10]
    errors["samples"] = (final or {}).get("totals", {}).get("samples", {})
    if (final or {}).get("error"):
        errors["setup"] = final["error"]
    fig["errors"] = errors
    res["figures"] = fig
    res["locust"] = loc.get("entries", {})
    res["totals"] = totals
    # checks
    checks = []

    def check(name: str, value: Any, ok: bool, want: str) -> None:
        checks.append({"name": name, "value": value, "want": want, "ok": bool(ok)})

    bids = fig.get("bids_per_s")
    floor = th.min_bids_per_s * (1 - th.rate_tolerance)
    check("bids_per_s", round(bids) if bids is not None else None, bids is not None and bids >= floor,
          f">= {th.min_bids_per_s:,.0f}" + (f" within {th.rate_tolerance:.1%}" if th.rate_tolerance else ""))
    sent = totals.get("bids", 0)
    applied = int(end_metrics.get(BIDS, 0) - m0.get(BIDS, 0))
    fig["bids_sent_total"], fig["bids_applied_total"] = sent, applied
    check("bids_applied", f"{applied:,} of {sent:,}", applied >= sent, "every bid sent applied by the exchange")
    p99 = (fig.get("decision_us") or {}).get("p99")
    if cfg.calls_per_s > 0:
        check("decision_p99_us", p99, p99 is not None and p99 < th.max_decision_p99_us, f"< {th.max_decision_p99_us:,.0f}")
        calls = fig.get("calls_per_s")
        check("calls_per_s", round(calls, 1) if calls is not None else None,
              calls is not None and calls >= th.min_calls_ratio * cfg.calls_per_s,
              f">= {th.min_calls_ratio:g} x {cfg.calls_per_s:g} offered")
    check("errors", errors["total"], errors["total"] <= th.max_errors, f"<= {th.max_errors}")
    res["checks"] = checks
    res["passed"] = all(c["ok"] for c in checks)
    res["server_samples"] = [{"t": s["t"], "server_cpu_s": s["server_cpu_s"], "node_cpu_s": s.get("node_cpu_s"), "loop_cpu_s": s.get("loop_cpu_s"), "wait_s": s.get("wait_s"), "locust_cpu_s": s["locust_cpu_s"],
                              "machine_busy_s": s["machine"][0] if s["machine"] else None,
                              "bids": (s["metrics"] or {}).get(BIDS), "frames": (s["metrics"] or {}).get(FRAMES),
                              "calls": (s["metrics"] or {}).get(CALLS), "rejected": (s["metrics"] or {}).get(REJECTED),
                              "book": (s["metrics"] or {}).get("exchange_book_campaigns")} for s in samples]
    res["client_series"] = (final or {}).get("series", [])
    res["started"] = started
    return res


# ---------------------------------------------------------------- writing
def _f(v: Any, unit: str = "", nd: int = 0) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, float)):
        return f"{v:,.{nd}f}{unit}"
    return str(v)


def _lat(h: dict[str, Any]) -> str:
    if not h or not h.get("n"):
        return "n/a"
    return (f"p50 {_f(h.get('p50'))} · p90 {_f(h.get('p90'))} · p99 {_f(h.get('p99'))} · p99.9 {_f(h.get('p999'))} · "
            f"max {_f(h.get('max'))} µs  (n={h['n']:,})")


SATURATED = 0.95  # of a core (the exchange's event loop, else its process) or of the machine's cores: no headroom left
HOST_WAIT = 10.0  # % of the window the exchange's threads spent ready to run with no core free: the host, not the exchange


def diagnosis(res: dict[str, Any]) -> str | None:
    """Why a failed run failed, when the figures say it was the host: the load generator could
    offer no more than the exchange took (the same-run bare-transport ceiling), the exchange's event
    loop (or, unmeasured, its one process) had no core left, its threads waited for a core, or the machine had none. None: nothing to say (or the run passed)."""
    if res["passed"]:
        return None
    c, f, m = res["config"], res["figures"], res["machine"]
    ceiling, bids = res.get("ceiling"), f.get("bids_per_s")
    misses = [ch["name"] for ch in res["checks"] if not ch["ok"]]
    if misses == ["bids_per_s"] and ceiling and bids is not None and bids >= 0.95 * ceiling["bids_per_s"]:
        return "host-bound: the exchange took what this host's load generator could offer; see ceiling"
    ex, busy, cpus = f.get("cpu_exchange_pct"), f.get("machine_busy_cores"), m.get("cpus")
    loop = f.get("cpu_exchange_loop_pct")
    if loop is not None and loop >= 100 * SATURATED and (c.get("nodes") or 0) <= 1:
        whole = f" (the process {ex:.0f}%)" if ex is not None else ""
        return (f"exchange CPU-bound: its event loop at {loop:.0f}% of a core{whole}; "
                "what missed is this host's capacity for this book and load")
    wait = f.get("exchange_runqueue_pct")
    if wait is not None and wait >= HOST_WAIT and (c.get("nodes") or 0) <= 1:
        return (f"host short of cores: the exchange's threads waited for a core {wait:.0f}% of the window "
                f"(event loop at {_f(loop)}% of a core); the exchange and the load generator share {m.get('cpus')} cores")
    if loop is None and ex is not None and ex >= 100 * SATURATED and (c.get("nodes") or 0) <= 1:
        return f"exchange CPU-bound: its one process at {ex:.0f}% of a core; what missed is this host's capacity for this book and load"
    if busy is not None and cpus and busy >= SATURATED * cpus:
        return f"host saturated: {busy:.2f} of {cpus} cores busy (the exchange and the load generator share them)"
    return None


def summary(res: dict[str, Any]) -> str:
    c, p, f, m = res["config"], res["plan"], res["figures"], res["machine"]
    L = []
    why = diagnosis(res)
    verdict = ("PASS" if res["passed"] else "FAIL") + (f" ({why})" if why else "")
    ceiling, bids = res.get("ceiling"), res["figures"].get("bids_per_s")
    L.append(f"=== loadtest run: {verdict} " + "=" * 50)
    L.append(f"offered   {c['bids_per_s']:,.0f} bids/s in frames of {p['batch']} · {c['calls_per_s']:g} calls/s · "
             f"{c['duration']:g} s measured after {c['warmup']:g} s warm-up")
    L.append(f"shape     {p['buyer_users']} buyer WebSockets, {p['publisher_users']} publisher users, "
             f"{p['book_campaigns']:,} campaigns in the book, Locust workers: {c['workers']} local"
             + (f" + {c['expect_remote_workers']} remote" if c.get("expect_remote_workers") else ""))
    if c.get("ineligible") or c.get("unfunded_buyers"):
        L.append(f"book      {c.get('ineligible', 0):.0%} of each buyer's campaigns closed all run; "
                 f"{c.get('unfunded_buyers', 0)} of the buyers unfunded, bidding above everyone")
    L.append(f"exchange  {res['exchange']['url']} ({'started by this run' if res['exchange']['started_here'] else 'remote'})")
    L.append(f"machine   {m.get('cpus')} cores {m.get('cpu_model') or ''} · Python {m.get('python')} · Locust {m.get('locust')} · {m.get('time')}")
    if res["window"]:
        L.append("")
        L.append(f"bids/s    {_f(f.get('bids_per_s'))} ingested by the exchange (offered {_f(f.get('bids_offered_per_s'))}; "
                 f"worst 5 s {_f(f.get('bids_per_s_worst_5s'))}; skipped by saturated users {f.get('bids_skipped', 0):,})")
        L.append(f"frames/s  {_f(f.get('frames_per_s'))} · bid-frame round trip (send → pong) {_lat(f.get('bid_frames_ack_us'))}")
        L.append(f"calls/s   {_f(f.get('calls_per_s'), nd=1)} decided (offered {c['calls_per_s']:g}, answered to Locust "
                 f"{_f(f.get('calls_answered_per_s'), nd=1)}; skipped {f.get('calls_skipped', 0):,})")
        L.append(f"decision  {_lat(f.get('decision_us'))}   [server decision_us]")
        sh = f.get("decision_us_server_histogram") or {}
        if sh:
            L.append(f"          exchange histogram: p50 ≤ {_f(sh.get('p50_le_us'))} µs, p99 ≤ {_f(sh.get('p99_le_us'))} µs "
                     f"(n={sh.get('n', 0):,})")
        L.append(f"call RTT  {_lat(f.get('call_round_trip_us'))}   [client-observed POST /v1/calls]")
        L.append(f"  w/ RTB  {_lat(f.get('call_round_trip_rtb_us'))}   [calls that waited for live bids]")
        L.append(f"events    {_lat(f.get('event_round_trip_us'))}")
        L.append(f"rtb       answer time {_lat(f.get('rtb_answer_us'))}")
        o = f.get("outcomes", {})
        reasons = ", ".join(f"{k[7:]} {v:,}" for k, v in sorted(o.items(), key=lambda kv: -kv[1]) if k.startswith("reason_"))
        L.append(f"outcomes  routed {o.get('calls_routed', 0):,} · rejected {o.get('calls_rejected', 0):,} ({reasons})")
        b = f.get("buyers", {})
        L.append(f"buyers    wins {b.get('wins', 0):,} · rtb bids {b.get('rtb_bids', 0):,} · no-bids {b.get('rtb_no_bid', 0):,} "
                 f"· late {b.get('rtb_late', 0):,} · losses {sum(b.get('losses', {}).values()):,}")
        ev = f.get("events", {})
        L.append("events    " + ", ".join(f"{k[6:]} {v:,}" for k, v in ev.items()))
        lp = ", ".join(f"{k} {_f(v)}%" for k, v in (f.get("cpu_locust_pct") or {}).items())
        ex = f"{_f(f.get('cpu_exchange_pct'))}% of a core" if f.get("cpu_exchange_pct") is not None else "n/a (remote)"
        if f.get("cpu_exchange_loop_pct") is not None and (c.get("nodes") or 0) <= 1:
            ex += f" (event loop {_f(f.get('cpu_exchange_loop_pct'))}%)"
        if f.get("exchange_runqueue_pct") is not None and (c.get("nodes") or 0) <= 1:
            ex += f", its threads waited for a core {_f(f.get('exchange_runqueue_pct'))}%"
        L.append(f"cpu       exchange {ex} · Locust {_f(f.get('cpu_locust_total_pct'))}% "
                 f"({lp}) · machine {_f(f.get('machine_busy_cores'), nd=2)} cores busy")
    e = f.get("errors", {})
    L.append("")
    L.append(f"errors    {e.get('total', 0)}: Locust failures {e.get('locust_failures', 0)}, user crashes "
             f"{e.get('locust_user_exceptions', 0)}, exchange rejected messages "
             f"{e.get('exchange_messages_rejected', 0)}, slow consumers closed {e.get('exchange_slow_consumers_closed', 0)}, "
             f"exchange log errors {e.get('exchange_log_problems', 0)}, exchange down {e.get('exchange_down', 0)}, "
             f"no measurement {e.get('no_measurement', 0)}")
    if e.get("setup"):
        L.append(f"          set-up: {e['setup']}")
    for x in e.get("locust_exceptions", [])[:3]:
        L.append(f"          {x['count']} × user crashed: {x['msg'][:200]}")
    for x in e.get("locust_errors", [])[:5]:
        L.append(f"          {x['occurrences']} × {x['method']} {x['name']}: {x['error'][:160]}")
    for x in res["exchange"].get("log_problems", [])[:5]:
        L.append(f"          exchange log: {x[:200]}")
    L.append("")
    for ch in res["checks"]:
        L.append(f"check     {'ok  ' if ch['ok'] else 'MISS'} {ch['name']:<16} {_f(ch['value'])}  (want {ch['want']})")
    if ceiling:
        share = f"; the exchange took {bids / ceiling['bids_per_s']:.0%} of it" if bids and ceiling["bids_per_s"] else ""
        L.append(f"ceiling   the same Locust buyers offered a bare transport on this host {_f(ceiling['bids_per_s'])} bids/s "
                 f"over {ceiling['seconds']:g} s (skipped {ceiling['bids_skipped']:,}){share}")
    elif "ceiling" in res:
        L.append("ceiling   could not be measured (see ceiling/ in the results folder)")
    return "\n".join(L) + "\n"


def chart(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ss = res["server_samples"]
    if len(ss) < 2:
        return
    t0 = ss[0]["t"]
    xs, bids, calls, scpu, lcpu = [], [], [], [], []
    for a, b in zip(ss, ss[1:]):
        dt = b["t"] - a["t"]
        if dt <= 0:
            continue
        xs.append(b["t"] - t0)
        bids.append(((b["bids"] or 0) - (a["bids"] or 0)) / dt if a["book"] is not None and b["book"] is not None else float("nan"))
        calls.append(((b["calls"] or 0) - (a["calls"] or 0)) / dt if a["book"] is not None and b["book"] is not None else float("nan"))
        scpu.append(100 * (b["server_cpu_s"] - a["server_cpu_s"]) / dt if a["server_cpu_s"] is not None and b["server_cpu_s"] is not None else float("nan"))
        la = [v for v in a["locust_cpu_s"].values() if v is not None]
        lb = [v for v in b["locust_cpu_s"].values() if v is not None]
        lcpu.append(100 * (sum(lb) - sum(la)) / dt if la and lb and len(la) == len(lb) else float("nan"))
    cs = res["client_series"]
    cx = [r["t"] + 0.5 - t0 for r in cs]
    fig, axes = plt.subplots(4, 1, figsize=(11, 11), sharex=True)
    ax = axes[0]
    ax.plot(xs, bids, label="bids/s ingested (exchange /metrics)", color="tab:blue")
    ax.plot(cx, [r.get("bids", 0) for r in cs], label="bids/s sent (Locust)", color="tab:cyan", linestyle="--")
    ax.axhline(res["thresholds"]["min_bids_per_s"], color="tab:red", linewidth=0.8, linestyle=":", label="threshold")
    ax.set_ylabel("bids/s")
    ax.legend(loc="lower right", fontsize=8)
    ax = axes[1]
    ax.plot(xs, calls, label="calls/s decided (exchange)", color="tab:green")
    ax.plot(cx, [r.get("calls", 0) for r in cs], label="calls/s answered (Locust)", color="tab:olive", linestyle="--")
    ax.set_ylabel("calls/s")
    ax.legend(loc="lower right", fontsize=8)
    ax = axes[2]
    dx = [r["t"] + 0.5 - t0 for r in cs if r.get("decision_us_n")]
    ax.plot(dx, [r["decision_us_p50"] for r in cs if r.get("decision_us_n")], label="decision_us p50", color="tab:purple")
    ax.plot(dx, [r["decision_us_p99"] for r in cs if r.get("decision_us_n")], label="decision_us p99", color="tab:red")
    kx = [r["t"] + 0.5 - t0 for r in cs if r.get("call_us_n")]
    ax.plot(kx, [r["call_us_p99"] for r in cs if r.get("call_us_n")], label="call round trip p99 (client)",
            color="tab:gray", linestyle="--")
    ax.axhline(res["thresholds"]["max_decision_p99_us"], color="tab:red", linewidth=0.8, linestyle=":", label="p99 threshold")
    ax.set_yscale("log")
    ax.set_ylabel("µs")
    ax.legend(loc="upper right", fontsize=8)
    ax = axes[3]
    ax.plot(xs, scpu, label="exchange CPU %", color="tab:orange")
    ax.plot(xs, lcpu, label="Locust CPU % (all processes)", color="tab:brown")
    ax.set_ylabel("% of one core")
    ax.set_xlabel("seconds since the exchange was first sampled")
    ax.legend(loc="lower right", fontsize=8)
    if res["window"]:
        for ax in axes:
            ax.axvspan(res["window"]["start"] - t0, res["window"]["end"] - t0, color="tab:green", alpha=0.06)
            ax.grid(True, alpha=0.3)
    p = res["plan"]
    fig.suptitle(f"loadtest: {res['config']['bids_per_s']:,.0f} bids/s offered (batch {p['batch']}), "
                 f"{res['config']['calls_per_s']:g} calls/s, {p['book_campaigns']:,} campaigns — "
                 f"{'PASS' if res['passed'] else 'FAIL'} (shaded: measured window)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(out: Path, res: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_bytes(msgspec.json.format(msgspec.json.encode(res), indent=2) + b"\n")
    (out / "summary.txt").write_text(summary(res))
    try:
        chart(res, out / "chart.png")
    except Exception as exc:  # a missing plotting library must not lose the figures
        (out / "chart.error.txt").write_text(f"{type(exc).__name__}: {exc}\n")


__all__ = ["build", "write", "summary", "chart"]
