"""Locust users of the exchange: ``BuyerUser`` (the bid stream) and ``PublisherUser`` (calls).

Run it through ``python -m loadtest run`` (which starts the exchange, provisions accounts,
and starts Locust's master and workers), or by hand with a plan::

    LOCUST_DCE_PLAN=@plan.json locust -f loadtest/locustfile.py --headless -u 14 -r 14

BuyerUser
    Opens ``/v1/buyers/ws`` with a raw RFC 6455 client (``loadtest.wire``: cheaper per frame
    than ``websocket-client``, see ``python -m loadtest clientcost``), upserts its campaigns
    (500 per frame, acked by ``seq``), then streams ``bid`` reprices at
    ``bids_per_s / buyer_users`` in frames of ``batch`` bids. The frames are encoded once,
    at start, from ``exchange.messages.Bid`` into a ring of pre-masked frames (a random walk
    of prices over all the user's campaigns); every tick (10 ms) the frames due are sent with
    one ``sendall``, followed by a ``ping`` with a fresh ``seq``. When the ``pong`` comes
    back every frame of that tick has been applied by the exchange: each frame is logged to
    Locust as one request named ``bid x{batch}`` whose response time is that round trip.
    It answers every ``bid_request`` at once with ``rtb_bid`` (or ``no_bid``) and counts
    wins, losses and call notices; any ``error`` message is a Locust failure.

PublisherUser
    Posts calls (``POST /v1/calls``) as a Poisson process at ``calls_per_s /
    publisher_users``: realistic callers, verticals and states, and a share of non-compliant
    calls that must be rejected. Each routed call is followed (in its own greenlet) by
    ``connected`` and ``completed`` events with ``Idempotency-Key`` headers; durations are
    realistic (log-normal, median ~100 s) and played ``time_scale`` times faster. Some
    winners fail (busy) and the call moves down its routing plan; some completions are sent
    twice (a retry) and must return the same answer.

Both record the server's ``decision_us`` and the client-observed latency in microseconds
(``loadtest.collect``), which Locust's millisecond statistics cannot resolve; the master
merges the workers' figures and writes them for the report.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from typing import Any

import gevent
import gevent.event
import gevent.pool
import locust.runners
import msgspec
from locust import User, constant, events, task
from locust.contrib.fasthttp import FastHttpSession, FastHttpUser
from locust.runners import LocalRunner, MasterRunner, WorkerRunner

from exchange.messages import (
    Ack, BidRequest, CallEvent, CallNotice, DecisionResponse, Error, EventResponse, Loss, NoBid, Ping, Pong, RtbBid,
    Win, exchange_json, json_encoder,
)
from loadtest.collect import Collector
from loadtest.plan import Plan, decode_plan
from loadtest.wire import Closed, FrameRing, WsClient
from loadtest.workload import CallMaker, CallMix, bid_payloads, buyer_campaigns, call_duration_s, campaign_frames

locust.runners.WORKER_REPORT_INTERVAL = 1.0  # workers ship figures every second (default 3)

COOLDOWN_S = 2.0
COLLECTOR = Collector()
GO = gevent.event.Event()  # set when every buyer is ready: publishers start calling
_decision = msgspec.json.Decoder(DecisionResponse)
_event = msgspec.json.Decoder(EventResponse)
_plans: dict[str, Plan] = {}
_slots = {"BuyerUser": itertools.count(), "PublisherUser": itertools.count()}
_ready = {"buyers": 0, "publishers": 0}
EXPECTED_REJECT = {"noncompliant_dnc": "internal_dnc", "noncompliant_tollfree": "non_geographic_number",
                   "noncompliant_canada": "non_us_number"}


# ---------------------------------------------------------------- options and plan
@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--dce-plan", type=str, env_var="LOCUST_DCE_PLAN", default="",
                        help="load plan: inline JSON or @path (written by python -m loadtest run)")


def plan_of(environment: Any) -> Plan:
    text = getattr(environment.parsed_options, "dce_plan", "") or os.environ.get("LOCUST_DCE_PLAN", "")
    if not text:
        raise RuntimeError("no load plan: pass --dce-plan or LOCUST_DCE_PLAN (python -m loadtest run does)")
    plan = _plans.get(text)
    if plan is None:
        plan = _plans[text] = decode_plan(text)
    return plan


def _slot(user: User, kind: str) -> int:
    """A distinct number per user across all workers (Locust spreads users round-robin)."""
    runner = user.environment.runner
    k = next(_slots[kind])
    if isinstance(runner, WorkerRunner):
        workers = max(1, int(getattr(user.environment.parsed_options, "expect_workers", 1) or 1))
        return runner.worker_index + k * workers
    return k


def log_frames(environment: Any, name: str, n: int, rt_ms: float, nbytes: int) -> None:
    """Log ``n`` frames that took ``rt_ms`` each, as ``n`` Locust requests. One frame goes
    through Locust's own ``log_request``; the other n-1 are added to the same counters in
    bulk, which is what n calls would do, at a thousandth of the cost at high frame rates."""
    stats = environment.stats
    per = nbytes // n
    stats.log_request("WS", name, rt_ms, per)
    if n == 1:
        return
    m = n - 1
    from locust.stats import bucket_response_time

    rounded = bucket_response_time(rt_ms)
    t = int(time.time())
    for e in (stats.total, stats.get(name, "WS")):
        e.num_requests += m
        e.num_reqs_per_sec[t] += m
        e.total_response_time += rt_ms * m
        e.response_times[rounded] += m
        e.total_content_length += per * m


def fail(environment: Any, rtype: str, name: str, exc: Exception | str, rt_ms: float = 0.0) -> None:
    environment.events.request.fire(request_type=rtype, name=name, response_time=rt_ms, response_length=0,
                                    exception=exc if isinstance(exc, Exception) else Exception(exc), context={})


def node_of(plan: Plan, slot: int) -> str:
    """The node a user's slot lands on: users spread over the seller and its edges."""
    nodes = [plan.host, *plan.edges]
    return nodes[slot % len(nodes)]


# ---------------------------------------------------------------- buyers
class BuyerUser(User):
    """A buyer's bidder: one WebSocket, its campaigns, a paced bid stream, live answers."""

    fixed_count = 1
    wait_time = constant(0)

    def on_start(self) -> None:
        plan = self.plan = plan_of(self.environment)
        slot = _slot(self, "BuyerUser")
        self.account = plan.buyers[slot % len(plan.buyers)]
        self.rng = random.Random(plan.seed * 7_777 + slot)
        self.campaigns = buyer_campaigns(self.account.number, plan.campaigns_per_buyer, plan.seed, plan.rtb_per_buyer,
                                         plan.ineligible, not self.account.funded, plan.weekday)
        # Building a buyer's book and bid ring takes ~0.5 s of CPU at 10,000 campaigns, and the
        # users' on_start run back to back: without a turn of gevent's loop between them the
        # worker sent no heartbeat for seconds, the master took it for lost, and its buyers never
        # started (set-up timed out with 0 buyers ready). A real sleep lets the loop run timers.
        gevent.sleep(0.001)
        self.base = {c.id: c.bid_cents for c in self.campaigns}
        ring_bids = max(plan.ring_bids - plan.ring_bids % plan.batch, plan.batch)
        payloads = bid_payloads(self.campaigns, plan.batch, ring_bids, plan.seed * 1009 + slot)
        gevent.sleep(0.001)
        self.ring = FrameRing(payloads, plan.batch) if payloads else None
        self.frame_name = f"bid x{plan.batch}"
        self.waiters: dict[int, gevent.event.AsyncResult] = {}
        self.inflight: dict[int, tuple[float, int, int]] = {}  # ping seq -> (t0, frames, bytes)
        self.seq = itertools.count(1_000_000_000)
        self.stopping = False
        ws_url = node_of(plan, slot).replace("http://", "ws://", 1).rstrip("/") + "/v1/buyers/ws"
        t0 = time.perf_counter()
        deadline = t0 + plan.setup_timeout_s
        while True:  # a busy machine may be slow to accept: retry the handshake until set-up's deadline
            try:
                self.ws = WsClient(ws_url, self.account.key)
                break
            except Exception as exc:
                if time.perf_counter() + 0.5 >= deadline:
                    fail(self.environment, "WS", "connect", exc, (time.perf_counter() - t0) * 1000)
                    COLLECTOR.count("ws_errors")
                    raise
                COLLECTOR.count("ws_connect_retries")
                gevent.sleep(0.5)
        self.environment.events.request.fire(request_type="WS", name="connect", response_time=(time.perf_counter() - t0) * 1000,
                                             response_length=0, exception=None, context={})
        self.reader = gevent.spawn(self._read)
        for seq, frame in campaign_frames(self.campaigns, 500):
            res = self.waiters[seq] = gevent.event.AsyncResult()
            t0 = time.perf_counter()
            self.ws.send(frame)
            try:
                got = res.get(timeout=plan.setup_timeout_s)
            except gevent.Timeout:
                got = Exception(f"no ack for campaign frame seq={seq}")
            rt = (time.perf_counter() - t0) * 1000
            if isinstance(got, Exception):
                fail(self.environment, "WS", "campaign upsert", got, rt)
                COLLECTOR.count("ws_errors")
            else:
                self.environment.events.request.fire(request_type="WS", name="campaign upsert", response_time=rt,
                                                     response_length=len(frame), exception=None, context={})
        COLLECTOR.count("campaigns_upserted", len(self.campaigns))
        _ready["buyers"] += 1
        COLLECTOR.gauges["buyers_ready"] = _ready["buyers"]

    def on_stop(self) -> None:
        """Also runs after an ``on_start`` that failed part-way: only what was made is closed."""
        self.stopping = True
        ws, reader = getattr(self, "ws", None), getattr(self, "reader", None)
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass
        if reader is not None:
            reader.kill(block=False)

    @task
    def stream(self) -> None:
        plan, ws, ring = self.plan, self.ws, self.ring
        if ring is None or plan.bids_per_s <= 0:
            gevent.sleep(3600)
            return
        fps = plan.bids_per_s / max(1, plan.buyer_users) / plan.batch
        max_backlog = max(1, int(fps * plan.max_backlog_s))
        tick, batch = plan.tick_s, plan.batch
        count, inflight = COLLECTOR.count, self.inflight
        t_start = time.perf_counter()
        sent = 0
        while True:
            now = time.perf_counter()
            due = int((now - t_start) * fps) - sent
            if due > max_backlog:  # more than max_backlog_s behind: skip ahead, say so
                count("bids_skipped", (due - max_backlog) * batch)
                sent += due - max_backlog
                due = max_backlog
            if due > 0:
                seq = next(self.seq)
                inflight[seq] = (now, due, 0)
                nbytes = ws.send_raw(ring.take(due))
                inflight[seq] = (now, due, nbytes)
                ws.send(json_encoder.encode(Ping(seq=seq)))
                sent += due
                count("frames", due)
                count("bids", due * batch)
            gevent.sleep(max(0.0, tick - (time.perf_counter() - now)))

    # ------------------------------------------------------------ what the exchange sends
    def _read(self) -> None:
        ws, env = self.ws, self.environment
        try:
            while True:
                for _op, payload in ws.recv():
                    got = exchange_json.decode(payload)
                    for m in got if isinstance(got, list) else (got,):
                        self._on(m)
        except Closed as exc:
            if not self.stopping:
                fail(env, "WS", "closed by exchange", exc)
                COLLECTOR.count("ws_errors")
                COLLECTOR.sample("ws_closed", str(exc))
        except (OSError, msgspec.DecodeError) as exc:
            if not self.stopping:
                fail(env, "WS", "read", exc)
                COLLECTOR.count("ws_errors")
                COLLECTOR.sample("ws_read", repr(exc))

    def _on(self, m: Any) -> None:
        t = type(m)
        if t is Pong or t is Ack:
            seq = m.seq
            sent = self.inflight.pop(seq, None)
            if sent is not None:
                rt_s = time.perf_counter() - sent[0]
                log_frames(self.environment, self.frame_name, sent[1], rt_s * 1000, sent[2])
                COLLECTOR.observe("ack_us", int(rt_s * 1e6))
                return
            w = self.waiters.pop(seq, None)
            if w is not None:
                w.set(m)
        elif t is BidRequest:
            self._answer(m)
        elif t is Win:
            COLLECTOR.count("wins")
        elif t is Loss:
            COLLECTOR.count(f"loss_{m.reason}")
        elif t is CallNotice:
            COLLECTOR.count(f"notice_{m.status}")
            if m.billable and m.status == "completed":
                COLLECTOR.count("billable_calls")
                COLLECTOR.count("charged_cents", m.charged_cents)
        elif t is Error:
            COLLECTOR.count("ws_errors")
            COLLECTOR.sample("ws_error", {"code": m.code, "message": m.message, "path": m.path, "seq": m.seq})
            fail(self.environment, "WS", f"error {m.code}", f"{m.code}: {m.message} at {m.path}")
            w = self.waiters.pop(m.seq, None) if m.seq is not None else None
            if w is not None:
                w.set(Exception(f"{m.code}: {m.message}"))

    def _answer(self, req: BidRequest) -> None:
        t0 = time.perf_counter()
        if self.rng.random() < self.plan.rtb_no_bid:
            msg: Any = NoBid(request_id=req.request_id, reason="not interested")
            COLLECTOR.count("rtb_no_bid")
        else:
            base = self.base.get(req.campaign, 2500)
            msg = RtbBid(request_id=req.request_id, bid_cents=max(req.floor_cents, base + self.rng.randrange(-200, 400, 5)))
            COLLECTOR.count("rtb_bids")
        self.ws.send(json_encoder.encode(msg))
        us = int((time.perf_counter() - t0) * 1e6)
        COLLECTOR.observe("rtb_answer_us", us)
        if us > req.tmax_ms * 1000:
            COLLECTOR.count("rtb_late")


# ---------------------------------------------------------------- publishers
class PublisherUser(FastHttpUser):
    """An affiliate posting calls and reporting their lifecycle."""

    fixed_count = 1
    wait_time = constant(0)
    concurrency = 64  # HTTP connections of this user
    network_timeout = 30.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        plan = self.plan = plan_of(self.environment)
        slot = _slot(self, "PublisherUser")
        self.account = plan.publishers[slot % len(plan.publishers)]
        self.rng = random.Random(plan.seed * 5_003 + slot)
        self.maker = CallMaker(self.rng, plan.suppressed, CallMix(noncompliant=plan.noncompliant, outbound=plan.outbound))
        self.auth = {"Authorization": f"Bearer {self.account.key}", "Content-Type": "application/json"}
        self.via_edge = node_of(plan, slot) != plan.host  # a node of a market that forwards to the seller
        if self.via_edge:
            self.client = FastHttpSession(base_url=node_of(plan, slot), request_event=self.environment.events.request,
                                          network_timeout=self.network_timeout, connection_timeout=self.connection_timeout,
                                          concurrency=self.concurrency, user=self)
        self.in_flight = gevent.pool.Group()
        _ready["publishers"] += 1
        COLLECTOR.gauges["publishers_ready"] = _ready["publishers"]

    def on_stop(self) -> None:
        in_flight = getattr(self, "in_flight", None)
        if in_flight is not None:
            in_flight.kill(block=False)

    @task
    def calls(self) -> None:
        plan = self.plan
        if plan.calls_per_s <= 0:
            gevent.sleep(3600)
            return
        GO.wait(plan.setup_timeout_s)
        rate = plan.calls_per_s / max(1, plan.publisher_users)
        rng, group = self.rng, self.in_flight
        next_t = time.perf_counter()
        while True:
            next_t += rng.expovariate(rate)
            delay = next_t - time.perf_counter()
            if delay > 0:
                gevent.sleep(delay)
            elif delay < -1.0:  # more than a second behind: the generator is saturated
                COLLECTOR.count("calls_skipped")
                next_t = time.perf_counter()
                continue
            if len(group) >= plan.max_calls_in_flight:
                COLLECTOR.count("calls_skipped")
                continue
            group.spawn(self._guarded_call)

    def _guarded_call(self) -> None:
        """A call's greenlet: an exception in it is a client crash, counted as an error (it used to
        be logged by gevent and nowhere else)."""
        try:
            self._call()
        except Exception as exc:  # noqa: BLE001 - counted and sampled, never lost
            COLLECTOR.count("client_crashes")
            COLLECTOR.sample("client_crash", repr(exc)[:300])

    def _call(self) -> None:
        kind, req = self.maker.next()
        body = json_encoder.encode(req)
        t0 = time.perf_counter()
        with self.client.post("/v1/calls", data=body, headers=self.auth, name="POST /v1/calls", catch_response=True) as r:
            us = int((time.perf_counter() - t0) * 1e6)
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {(r.text or '')[:200]}")
                COLLECTOR.count("call_errors")
                COLLECTOR.sample("call_error", {"status": r.status_code, "body": (r.text or "")[:300], "request": body.decode()})
                return
            try:
                d = _decision.decode(r.content)
            except msgspec.MsgspecError as exc:
                r.failure(f"bad decision body: {exc}")
                COLLECTOR.count("call_errors")
                return
            if kind in EXPECTED_REJECT and d.decision != "rejected":
                r.failure(f"{kind} call was {d.decision} ({d.reason})")
                COLLECTOR.count("compliance_leaks")
                COLLECTOR.sample("compliance_leak", {"kind": kind, "decision": d.decision, "reason": d.reason})
        c = COLLECTOR
        c.count("calls")
        c.count(f"calls_{d.decision}")
        c.count(f"reason_{d.reason}")
        c.count(f"kind_{kind}")
        c.observe("decision_us", d.decision_us)
        c.observe("call_rtb_us" if d.rtb_wait_us is not None else "call_us", us)
        if self.via_edge:  # the cross-node round trip: a call sent to an edge, decided at the seller
            c.observe("edge_call_us", us)
        if d.decision == "routed":
            self._lifecycle(d)

    def _event(self, call_id: str, ev: CallEvent, key: str) -> EventResponse | None:
        t0 = time.perf_counter()
        headers = {**self.auth, "Idempotency-Key": key}
        with self.client.post(f"/v1/calls/{call_id}/events", data=json_encoder.encode(ev), headers=headers,
                              name=f"POST /v1/calls/{{id}}/events {ev.event}", catch_response=True) as r:
            COLLECTOR.observe("event_us", int((time.perf_counter() - t0) * 1e6))
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {(r.text or '')[:200]}")
                COLLECTOR.count("event_errors")
                COLLECTOR.sample("event_error", {"status": r.status_code, "body": (r.text or "")[:300], "event": ev.event})
                return None
            COLLECTOR.count(f"event_{ev.event}")
            return _event.decode(r.content)

    def _lifecycle(self, d: DecisionResponse) -> None:
        rng, scale, call_id = self.rng, self.plan.time_scale, d.call_id
        index = 0
        hops = 1 + len(d.fallbacks)
        for hop in range(hops):
            gevent.sleep(rng.uniform(2, 20) / scale)  # ringing
            if rng.random() < 0.08 and hop + 1 < hops:  # busy: the next route of the plan rings
                out = self._event(call_id, CallEvent(event="failed", route_index=index), f"{call_id}:failed:{index}")
                if out is None or out.status != "routed":
                    return
                index = out.route_index
                continue
            if self._event(call_id, CallEvent(event="connected", route_index=index), f"{call_id}:connected:{index}") is None:
                return
            duration = call_duration_s(rng)
            gevent.sleep(duration / scale)
            done = CallEvent(event="completed", duration_s=duration, route_index=index)
            key = f"{call_id}:completed:{index}"
            first = self._event(call_id, done, key)
            if first is not None and rng.random() < 0.05:  # the publisher retries: same answer, no money moves
                again = self._event(call_id, done, key)
                if again is not None and (again.charged_cents, again.billable) != (first.charged_cents, first.billable):
                    COLLECTOR.count("idempotency_mismatch")
                    fail(self.environment, "HTTP", "completed replay", f"replay answered {again} after {first}")
            if first is not None and first.billable:
                COLLECTOR.count("billable")
                COLLECTOR.count("payout_cents", first.payout_cents)
            return


# ---------------------------------------------------------------- master / local: merge, pace, write
_worker_gauges: dict[str, dict[str, int]] = {}


@events.init.add_listener
def _on_init(environment: Any, **_kw: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner.register_message("dce_go", lambda environment, msg, **kw: GO.set())
        return
    if environment.parsed_options is None or not getattr(environment.parsed_options, "dce_plan", ""):
        return
    plan = plan_of(environment)
    BuyerUser.fixed_count = plan.buyer_users
    PublisherUser.fixed_count = plan.publisher_users
    environment.host = environment.host or plan.host


@events.report_to_master.add_listener
def _report(client_id: str, data: dict[str, Any], **_kw: Any) -> None:
    data["dce"] = COLLECTOR.drain()
    data["dce"]["gauges"] = {"buyers_ready": _ready["buyers"], "publishers_ready": _ready["publishers"]}


@events.worker_report.add_listener
def _worker_report(client_id: str, data: dict[str, Any], **_kw: Any) -> None:
    got = data.get("dce")
    if got:
        _worker_gauges[client_id] = got.get("gauges", {})
        COLLECTOR.absorb(got)


def _ready_counts(runner: Any) -> tuple[int, int]:
    if isinstance(runner, MasterRunner):
        return (sum(g.get("buyers_ready", 0) for g in _worker_gauges.values()),
                sum(g.get("publishers_ready", 0) for g in _worker_gauges.values()))
    return _ready["buyers"], _ready["publishers"]


@events.test_start.add_listener
def _on_test_start(environment: Any, **_kw: Any) -> None:
    if isinstance(environment.runner, (MasterRunner, LocalRunner)) and getattr(environment.parsed_options, "dce_plan", ""):
        gevent.spawn(_conduct, environment)


def _write(path: str | None, obj: dict[str, Any]) -> None:
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(msgspec.json.encode(obj))
    os.replace(tmp, path)


def _conduct(environment: Any) -> None:
    """Wait for every buyer to be ready, let the warm-up pass, measure ``duration_s``, then
    stop the users, wait for the workers' last figures, write them and quit."""
    plan, runner = plan_of(environment), environment.runner
    t_spawn = time.time()
    info: dict[str, Any] = {"phase": "setup", "spawned_at": t_spawn, "buyer_users": plan.buyer_users,
                            "publisher_users": plan.publisher_users, "pid": os.getpid()}

    def live() -> None:
        b, p = _ready_counts(runner)
        info.update(t=time.time(), buyers_ready=b, publishers_ready=p, counts=dict(COLLECTOR.counts),
                    last=COLLECTOR.series(last=4), failures=runner.stats.total.num_failures,
                    requests=runner.stats.total.num_requests, workers=len(getattr(runner, "clients", {}) or {}))
        _write(plan.live_path, info)

    while True:
        b, p = _ready_counts(runner)
        if b >= plan.buyer_users and p >= plan.publisher_users:
            break
        crashed = _exceptions(runner)
        if time.time() - t_spawn > plan.setup_timeout_s or crashed:
            info.update(phase="setup_timeout", error=f"only {b}/{plan.buyer_users} buyers and {p}/{plan.publisher_users} "
                                                     f"publishers ready after {time.time() - t_spawn:.0f}s"
                                                     + (f"; users crashed: {crashed[0]['msg']}" if crashed else ""))
            live()
            _finish(environment, plan, info)
            return
        live()
        gevent.sleep(0.25)
    info["ready_at"] = time.time()
    GO.set()
    if isinstance(runner, MasterRunner):
        runner.send_message("dce_go", {})
    start = float(int(info["ready_at"] + plan.warmup_s) + 1)  # whole seconds: the per-second buckets align
    end = start + plan.duration_s
    info.update(phase="warmup", window=[start, end])
    while time.time() < end:
        info["phase"] = "measure" if time.time() >= start else "warmup"
        live()
        gevent.sleep(0.25)
    info["phase"] = "cooldown"  # load goes on a little, so the window's edges lie inside steady load
    live()
    gevent.sleep(COOLDOWN_S)
    info["phase"] = "drain"
    live()
    _finish(environment, plan, info)


def _exceptions(runner: Any) -> list[dict[str, Any]]:
    """Unhandled exceptions in users (a crashed user is an error, like a failed request)."""
    return [{"count": e.get("count", 1), "msg": str(e.get("msg", ""))[:300], "traceback": str(e.get("traceback", ""))[-1500:]}
            for e in (getattr(runner, "exceptions", None) or {}).values()]


def _finish(environment: Any, plan: Plan, info: dict[str, Any]) -> None:
    runner = environment.runner
    info["stopped_at"] = time.time()
    try:
        runner.stop()
    except Exception:  # already stopping
        pass
    gevent.sleep(2.5 if isinstance(runner, MasterRunner) else 0.2)  # the workers' last reports
    st = runner.stats
    entries = {}
    for (name, method), e in sorted(st.entries.items()):
        entries[f"{method} {name}"] = {
            "requests": e.num_requests, "failures": e.num_failures, "avg_ms": round(e.avg_response_time, 3),
            "p50_ms": e.get_response_time_percentile(0.5), "p99_ms": e.get_response_time_percentile(0.99),
            "max_ms": e.max_response_time, "bytes": e.total_content_length,
        }
    window = info.get("window")
    out = {
        **info,
        "phase": info["phase"] if info["phase"] == "setup_timeout" else "done",
        "totals": COLLECTOR.totals(),
        "window_figures": COLLECTOR.window(*window) if window else None,
        "series": COLLECTOR.series(),
        "locust": {"entries": entries, "requests": st.total.num_requests, "failures": st.total.num_failures,
                   "exceptions": _exceptions(runner),
                   "errors": [{"method": e.method, "name": e.name, "error": str(e.error), "occurrences": e.occurrences}
                              for e in st.errors.values()]},
    }
    _write(plan.out_path, out)
    _write(plan.live_path, {**info, "phase": out["phase"], "t": time.time()})
    if out["phase"] == "setup_timeout":
        environment.process_exit_code = 3
    runner.quit()
