"""``python -m exchange demo``: the exchange with simulated buyers and publishers, in-process.

The server runs on a real port in this process; buyers are real WebSocket clients that
upsert campaigns, stream reprices in batched frames and answer live bid requests; publishers
post calls over HTTP (a realistic mix, some non-compliant or malformed) and follow each
routed call with lifecycle events. At the end a summary of routing, money and latency.
"""

from __future__ import annotations

import asyncio
import random
import socket
import tempfile
import time
from collections import Counter
from datetime import datetime, UTC

import httpx
import uvicorn
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from billing.postings import EXCHANGE_REVENUE

from .app import build_app
from .messages import Bid, BidRequest, Campaign, Caps, NoBid, RtbBid, Schedule, Weekday, exchange_json, json_encoder
from .server import uvicorn_config
from .service import Exchange
from .settings import Settings

VERTICALS = ["auto_insurance", "health_insurance", "medicare", "home_services", "legal", "debt_relief", "solar"]
# area codes by state, for realistic callers
AREA = {"CA": [213, 415, 619, 916], "TX": [214, 512, 713, 915], "FL": [305, 407, 813], "NY": [212, 518, 718],
        "IL": [312, 773], "GA": [404, 770], "AZ": [480, 602], "OH": [216, 614], "PA": [215, 412], "WA": [206, 509]}
STATES = list(AREA)
ZONES = ["America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALL_WEEK: dict[Weekday, list[tuple[str, str]]] = {d: [("00:00", "24:00")] for d in WEEKDAYS}
BUSINESS: dict[Weekday, list[tuple[str, str]]] = {d: [("08:00", "20:00")] for d in WEEKDAYS[:5]} | {"sat": [("09:00", "17:00")]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _campaigns(rng: random.Random, buyer_no: int, rtb: bool) -> list[Campaign]:
    out = []
    for k in range(rng.randint(3, 6)):
        vertical = rng.choice(VERTICALS[:-1]) if k else VERTICALS[buyer_no % (len(VERTICALS) - 1)]
        states = [] if rng.random() < 0.35 else rng.sample(STATES, rng.randint(1, 4))
        out.append(Campaign(
            id=f"cmp{k}", vertical=vertical, bid_cents=rng.randrange(800, 6000, 25), states=states,
            schedule=Schedule(tz=rng.choice(ZONES), hours=ALL_WEEK if rng.random() < 0.7 else BUSINESS),
            caps=Caps(concurrency=rng.choice([2, 5, 10, 50]), daily=rng.choice([None, 200, 1000])),
            daily_budget_cents=rng.choice([None, 500_000, 2_000_000]), min_duration_s=rng.choice([60, 90, 120]),
            dedupe_days=rng.choice([0, 7, 30]), destination=f"+1800555{1000 + buyer_no * 10 + k:04d}",
            accepts_outbound=rng.random() < 0.4, rtb=rtb and k == 0, seq=k + 1,
        ))
    return out


class Tally:
    def __init__(self) -> None:
        self.submitted = self.events = self.wins = self.rtb_answered = 0
        self.client_us: list[int] = []
        self.refused: Counter[str] = Counter()  # answers other than 200 (not decided), by error code


async def _buyer(url: str, key: str, camps: list[Campaign], rng: random.Random, stop: asyncio.Event, tally: Tally) -> None:
    async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}, subprotocols=[Subprotocol("dce.json.v1")], max_size=None) as ws:
        await ws.send(json_encoder.encode(camps).decode())
        standing = [c for c in camps if not c.rtb]

        async def reader() -> None:
            async for raw in ws:
                msgs = exchange_json.decode(raw)
                for m in msgs if isinstance(msgs, list) else [msgs]:
                    if isinstance(m, BidRequest):
                        asyncio.create_task(_answer(ws, m, rng, tally))
                    elif type(m).__name__ == "Win":
                        tally.wins += 1

        task = asyncio.create_task(reader())
        while not stop.is_set():  # stream reprices: batched frames, as a real bidder does
            if standing:
                batch = [Bid(campaign=c.id, bid_cents=max(100, c.bid_cents + rng.randrange(-300, 301, 5))) for c in rng.choices(standing, k=50)]
                await ws.send(json_encoder.encode(batch).decode())
            await asyncio.sleep(0.02)
        task.cancel()


async def _answer(ws, req: BidRequest, rng: random.Random, tally: Tally) -> None:
    roll = rng.random()
    if roll < 0.1:
        await ws.send(json_encoder.encode(NoBid(request_id=req.request_id, reason="not interested")).decode())
        return
    await asyncio.sleep(rng.uniform(0.002, 0.03) if roll < 0.9 else req.tmax_ms / 1000 + 0.05)  # 10 % answer too late
    tally.rtb_answered += 1
    bid = RtbBid(request_id=req.request_id, bid_cents=max(req.floor_cents, rng.randrange(1500, 7000, 50)))
    try:
        await ws.send(json_encoder.encode(bid).decode())
    except Exception:
        pass


def _caller(rng: random.Random) -> tuple[str, str]:
    state = rng.choice(STATES)
    return f"+1{rng.choice(AREA[state])}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}", state


def _call_body(rng: random.Random, suppressed: list[str]) -> dict:
    roll = rng.random()
    caller, _ = _caller(rng)
    body: dict = {"caller": caller, "vertical": rng.choice(VERTICALS), "direction": "inbound"}
    if roll < 0.04:
        body["caller"] = rng.choice(["555-0100", "+1212555", "anonymous", "+44 20"])  # malformed: a 422
    elif roll < 0.08:
        body.update(direction="outbound", caller="+18885550100", callee=rng.choice(suppressed))  # opted out
    elif roll < 0.11:
        body.update(direction="outbound", caller="+18885550100", callee="+18005550123")  # toll-free: not placeable
    elif roll < 0.25:
        body.update(direction="outbound", caller="+18885550100", callee=_caller(rng)[0])  # callback leg
    if rng.random() < 0.05:
        body["floor_cents"] = 9000  # a publisher asking more than anyone pays
    if rng.random() < 0.3:
        body["tmax_ms"] = 50
    return body


async def _publisher(base: str, key: str, rate: float, rng: random.Random, stop: asyncio.Event, tally: Tally, suppressed: list[str]) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as http:
        pending: set[asyncio.Task] = set()
        while not stop.is_set():
            t = asyncio.create_task(_one_call(http, rng, tally, suppressed))
            pending.add(t)
            t.add_done_callback(pending.discard)
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*pending, return_exceptions=True)


async def _one_call(http: httpx.AsyncClient, rng: random.Random, tally: Tally, suppressed: list[str]) -> None:
    t0 = time.perf_counter_ns()
    r = await http.post("/v1/calls", json=_call_body(rng, suppressed))
    tally.submitted += 1
    if r.status_code != 200:
        tally.refused[f"{r.status_code} {r.json()['error']['code']}"] += 1
        return
    tally.client_us.append((time.perf_counter_ns() - t0) // 1000)
    d = r.json()
    if d["decision"] != "routed":
        return
    ev = f"/v1/calls/{d['call_id']}/events"
    index = 0
    for hop in range(1 + len(d["fallbacks"])):
        await asyncio.sleep(rng.uniform(0.05, 0.3))
        if rng.random() < 0.12:  # the buyer's line is busy: move down the plan
            r = await http.post(ev, json={"event": "failed", "route_index": index}, headers={"Idempotency-Key": f"f{hop}"})
            tally.events += 1
            if r.json().get("status") != "routed":
                return
            index = r.json()["route_index"]
            continue
        await http.post(ev, json={"event": "connected", "route_index": index}, headers={"Idempotency-Key": "c"})
        await asyncio.sleep(rng.uniform(0.05, 0.4))
        duration = int(rng.lognormvariate(4.6, 0.9))  # median ~100 s: some short, some long
        r = await http.post(ev, json={"event": "completed", "duration_s": duration, "route_index": index}, headers={"Idempotency-Key": "done"})
        # a publisher retrying the same event must not be charged twice
        await http.post(ev, json={"event": "completed", "duration_s": duration, "route_index": index}, headers={"Idempotency-Key": "done"})
        tally.events += 3
        return


async def _load_national_dnc(http: httpx.AsyncClient, rng: random.Random, count: int = 5000) -> None:
    """A small national DNC snapshot dated today (UTC), imported as an operator does: an FTC-style
    flat file (``NXXNXXXXXX`` per line) uploaded to ``POST /v1/dnc/national``. Without one the
    gate refuses every outbound call with ``dnc_snapshot_stale``; with it they are decided on
    their merits (opt-outs, registry hits, consent, calling hours)."""
    today = datetime.now(UTC).date().isoformat()
    with tempfile.TemporaryFile() as f:
        f.write("".join(f"{_caller(rng)[0][2:]}\n" for _ in range(count)).encode())
        f.seek(0)
        r = await http.post(f"/v1/dnc/national?snapshot_date={today}", content=f.read())
    r.raise_for_status()
    print(f"demo: national DNC snapshot of {today} imported: {r.json()['numbers']:,} numbers", flush=True)


def _pct(values: list[int], q: float) -> int:
    if not values:
        return 0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _run(settings: Settings, seconds: float, calls_per_s: float, seed: int) -> int:
    rng = random.Random(seed)
    port = _free_port()
    db = settings.database_url or f"sqlite:///{tempfile.mkdtemp(prefix='dce-demo-')}/ledger.db"  # a fresh ledger per demo
    settings = Settings(**{**{f: getattr(settings, f) for f in settings.__struct_fields__}, "port": port, "host": "127.0.0.1",
                           "database_url": db})
    exchange = Exchange(settings)
    server = uvicorn.Server(uvicorn_config(build_app(settings, exchange), settings))
    serve_task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    base, ws_url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/v1/buyers/ws"
    admin = {"Authorization": f"Bearer {exchange.admin_key}"}
    tally, stop = Tally(), asyncio.Event()
    suppressed = [f"+1{rng.choice(AREA[s])}555{rng.randint(1000, 9999)}" for s in STATES]
    async with httpx.AsyncClient(base_url=base, headers=admin) as http:
        for n in suppressed:
            await http.post("/v1/suppressions", json={"number": n, "scope": "exchange"})
        await _load_national_dnc(http, random.Random(f"dnc-{seed}"))
        buyers = []
        for i in range(12):
            acct = (await http.post("/v1/accounts", json={"kind": "buyer", "name": f"Call Center {i}", "credit_limit_cents": 50_000})).json()
            await http.post(f"/v1/accounts/{acct['id']}/deposits", json={"amount_cents": rng.choice([200_000, 1_000_000, 5_000_000]), "reference": "opening"})
            buyers.append((acct["api_key"], _campaigns(rng, i, rtb=i % 4 == 0)))
        pubs = [(await http.post("/v1/accounts", json={"kind": "publisher", "name": f"Affiliate {i}"})).json()["api_key"] for i in range(4)]
    n_campaigns = sum(len(c) for _, c in buyers)
    print(f"demo: exchange on {base}; {len(buyers)} buyers with {n_campaigns} campaigns in {len(VERTICALS)} verticals, "
          f"{len(pubs)} publishers, {calls_per_s:g} calls/s for {seconds:g} s ...", flush=True)
    tasks = [asyncio.create_task(_buyer(ws_url, key, camps, random.Random(rng.random()), stop, tally)) for key, camps in buyers]
    await asyncio.sleep(0.5)
    bids_before, t_start = exchange.metrics.bids_ingested, time.monotonic()
    tasks += [asyncio.create_task(_publisher(base, key, calls_per_s / len(pubs), random.Random(rng.random()), stop, tally, suppressed)) for key in pubs]
    progress = asyncio.create_task(_progress(exchange, tally, seconds, stop))
    await asyncio.sleep(seconds)
    stop.set()
    await progress
    bids, elapsed = exchange.metrics.bids_ingested - bids_before, time.monotonic() - t_start
    await asyncio.gather(*tasks, return_exceptions=True)
    _summary(exchange, tally, bids / elapsed, elapsed)
    server.should_exit = True
    await serve_task
    return 0 if exchange.core.ledger.total() == 0 else 1


def routed_outcomes(ex: Exchange) -> Counter[str]:
    """Where every routed call of the run ended: billable, short (completed under its
    ``min_duration_s`` or a repeat caller), failed with no fallback left, expired (no ending
    event in time) or still open (routed or connected when the demo stopped)."""
    out: Counter[str] = Counter()
    for rec in ex.core.calls.values():
        if rec.decision is None or rec.decision.decision != "routed":
            continue
        if rec.status == "completed":
            out["billable" if rec.billable else "short"] += 1
        else:
            out[{"failed": "failed", "expired": "expired"}.get(rec.status, "open")] += 1
    return out


def _summary(ex: Exchange, tally: Tally, bids_per_s: float, elapsed: float) -> None:
    st, ledger, m = ex.core.stats, ex.core.ledger, ex.metrics
    refused = sum(tally.refused.values())
    q = m.decision_us.quantiles()
    dollars = lambda c: f"${c / 100:,.2f}"  # noqa: E731
    ended = routed_outcomes(ex)
    print("\n=== Exchange demo summary " + "=" * 40)
    print(f"calls submitted      {tally.submitted:>8,}   ({tally.submitted / elapsed:.0f}/s) = routed + rejected + refused")
    print(f"routed               {st.routed:>8,}   fill rate {st.routed / max(1, st.calls):.1%} of the calls decided")
    for label, key, note in (("billable", "billable", "completed at or past min_duration_s"),
                             ("short", "short", "completed under min_duration_s, or a repeat caller"),
                             ("failed, no fallback", "failed", "every route of the plan failed"),
                             ("expired", "expired", "no ending event before expires_at"),
                             ("still open", "open", "routed or connected when the demo stopped")):
        print(f"    {label:<28} {ended[key]:>6,}   {note}")
    print(f"rejected             {st.rejected:>8,}   (decided: no route)")
    for reason, n in sorted(st.by_reason.items(), key=lambda kv: -kv[1]):
        if reason != "ok":
            print(f"    {reason:<28} {n:>6,}")
    print(f"refused              {refused:>8,}   (not decided: the request was bad, HTTP 4xx)")
    for code, n in sorted(tally.refused.items(), key=lambda kv: -kv[1]):
        print(f"    {code:<28} {n:>6,}")
    print(f"fallbacks used       {st.fallbacks_used:>8,}   (winner failed, next route rang)")
    print(f"billable calls       {st.billable:>8,}")
    print(f"buyers charged       {dollars(st.charged_cents):>12}")
    print(f"publishers paid      {dollars(st.payout_cents):>12}")
    print(f"exchange margin      {dollars(ledger.balance(EXCHANGE_REVENUE)):>12}   (take rate {ex.settings.take_rate_bps / 100:g} %)")
    print(f"ledger check         sum of all balances = {ledger.total()} cents; charged = paid + margin: "
          f"{st.charged_cents == st.payout_cents + st.margin_cents}")
    print(f"bids ingested        {m.bids_ingested:>8,}   ({bids_per_s:,.0f} bids/s while calls ran)")
    print(f"RTB                  {m.rtb_requests:,} bid requests, {m.rtb_answers:,} answered in time, {m.rtb_timeouts:,} timed out")
    print(f"decision latency     p50 {q.get('p50', 0)} µs   p99 {q.get('p99', 0)} µs   p99.9 {q.get('p99.9', 0)} µs   "
          f"(server, {m.decision_us.n:,} decisions)")
    print(f"HTTP round trip      p50 {_pct(tally.client_us, .5)} µs   p99 {_pct(tally.client_us, .99)} µs   (client side, RTB waits included)")


async def _progress(ex: Exchange, tally: Tally, seconds: float, stop: asyncio.Event, every_s: float = 2.0) -> None:
    """One line every ``every_s`` while the demo runs: time, calls, routed, billable, bids."""
    t0 = time.monotonic()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except TimeoutError:
            pass
        st = ex.core.stats
        print(f"demo: {min(time.monotonic() - t0, seconds):4.0f}/{seconds:g} s  calls {tally.submitted:,}  routed {st.routed:,}  "
              f"rejected {st.rejected:,}  refused {sum(tally.refused.values()):,}  billable {st.billable:,}  "
              f"bids {ex.metrics.bids_ingested:,}", flush=True)


def run_demo(settings: Settings, seconds: float = 20.0, calls_per_s: float = 40.0, seed: int = 7) -> int:
    import uvloop

    return uvloop.run(_run(settings, seconds, calls_per_s, seed))
