"""Events through the outbox and the NATS JetStream relay; webhook deliveries with 1,000
endpoints registered, and their effect on decisions (on vs off, one run).

    python -m bench.integrations [--calls 1500] [--rounds 5] [--concurrency 4] [--rate 300] [--endpoints 1000] [--live 2]
                                 [--delivery process|loop] [--skip-relay] [--skip-webhooks] [--backlog-calls 400] [--pg]
                                 [--out FILE]

The store is the embedded SQLite file, or with ``--pg`` PostgreSQL (``EXCHANGE_TEST_DATABASE_URL``,
default postgresql://postgres@127.0.0.1:5432/test) on a schema of its own, dropped after.

Relay: one exchange with ``EXCHANGE_NATS_URL`` (a stream and subject of its own, deleted after)
takes ``--calls`` calls, each connected and completed (billable): every fact is an audit record
written with its ledger rows, and the relay publishes its events. Events/s is the events relayed
over the time from the first call to the relay's last publish (the rate the load offers, if the
relay keeps up). Catch-up: ``--backlog-calls`` such calls go to an exchange without a relay; a
second exchange on the same store then starts with one and relays the backlog: events/s while it
catches up is what the outbox and the relay carry at most.

Webhooks: a second exchange (``EXCHANGE_WEBHOOK_ALLOW_LOOPBACK=true``; deliveries in the delivery
worker process, or with ``--delivery loop`` in the exchange's own loop) gets ``--endpoints`` webhooks,
20 for each of ``endpoints/20`` publishers, all pointing at a local HTTP/1.1 keep-alive receiver
(another process) that answers 200 at once and counts what it answered; ``--live`` of each
publisher's 20 take ``call.decided``, the others ``call.completed`` (which these calls never reach:
registered, delivering nothing; ``--live 0`` is the control: nothing to deliver). As many publishers
have no webhook. Each round has an *off* phase (``--calls`` calls spread over the publishers without
webhooks) and an *on* phase (the same over the publishers with: each ``call.decided`` goes to
``--live`` endpoints while the calls go on), in alternating order, both offered at ``--rate``
calls/s (0: as fast as the clients go; a closed loop would offer less load in the phase whose
calls are slower), each after every earlier delivery is done. Deliveries/s is deliveries made over
the time from the phase's first call until none is left; CPU per call of the exchange's process and
per delivery of the worker's come from /proc. The target is the median over rounds of each round's
on/off ratio of the decision's p99 (``decision_us``), <= 1.1x. JSON out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import secrets
import statistics
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

from bench.httpbidders import PingServer, pcts
from exchange.messages import Campaign, json_encoder
from loadtest.target import free_port, proc_cpu_s, start_exchange
from loadtest.workload import us_caller

VERT = "bench_hooks"
NATS_URL = "nats://127.0.0.1:4222"
PG_BASE = os.environ.get("EXCHANGE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def store_env(args: argparse.Namespace, schemas: list[str]) -> dict[str, str]:
    if not args.pg:
        return {}
    schema = f"bench_{secrets.token_hex(5)}"
    schemas.append(schema)
    import base64

    return {"EXCHANGE_DATABASE_URL": f"{PG_BASE}{'&' if '?' in PG_BASE else '?'}schema={schema}",
            "EXCHANGE_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}  # PostgreSQL: no key file beside the database


async def drop_schemas(schemas: list[str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_BASE.split("?")[0])
    try:
        for schema in schemas:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


class CountingServer(PingServer):
    """The ping endpoint, counting the requests it answered in a shared counter."""

    counter: Any = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        write, counter = transport.write, CountingServer.counter

        def counted(data: bytes) -> None:
            counter.value += 1
            write(data)

        self.t = SimpleNamespace(write=counted)


def receiver_main(port: int, started: Any, counter: Any) -> None:
    import uvloop

    CountingServer.counter = counter

    async def main() -> None:
        await asyncio.get_running_loop().create_server(CountingServer, "127.0.0.1", port, backlog=4096)
        started.set()
        await asyncio.Event().wait()

    uvloop.run(main())


def account(t: Any, kind: str, name: str) -> tuple[str, str]:
    r = t.http.post("/v1/accounts", json={"kind": kind, "name": name})
    r.raise_for_status()
    a = r.json()
    if kind == "buyer":
        t.http.post(f"/v1/accounts/{a['id']}/deposits", json={"amount_cents": 10**11, "reference": f"bench-{name}"}).raise_for_status()
    return a["id"], a["api_key"]


def standing_buyer(t: Any) -> Any:
    """A buyer with a standing campaign on an open socket (kept open: its notices are read)."""
    from websockets.sync.client import connect

    _, key = account(t, "buyer", "bench-buyer")
    ws = connect(f"{t.base.replace('http', 'ws')}/v1/buyers/ws", additional_headers={"Authorization": f"Bearer {key}"},
                 max_size=None).__enter__()
    ws.send(json_encoder.encode(Campaign(id="c", vertical=VERT, bid_cents=2500, min_duration_s=30, destination="+18005550199",
                                         seq=1)).decode())
    threading.Thread(target=_drain, args=(ws,), daemon=True).start()
    return ws


def _drain(ws: Any) -> None:
    """Read and drop the socket's notices: unread, they pause the client's reading, its keepalive
    pings then go unanswered, and it closes the socket (1011) some 40 s in."""
    from websockets.exceptions import ConnectionClosed

    try:
        while True:
            ws.recv()
    except (ConnectionClosed, OSError):
        pass


async def calls(url: str, keys: list[str], n: int, concurrency: int, seed: int, complete: bool, rate: float = 0) -> dict[str, Any]:
    """``n`` calls from ``concurrency`` clients; with ``rate``, call i starts no sooner than i/rate s
    after the first (the same offered load whatever the phase, while the exchange keeps up)."""
    import random

    rng = random.Random(seed)
    todo = [(keys[i % len(keys)], us_caller(rng)[0]) for i in range(n)][::-1]
    dec: list[float] = []
    wall: list[float] = []
    bad = 0
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=concurrency * 2)) as client:
        async def worker() -> None:
            nonlocal bad
            while todo:
                due = start + (n - len(todo)) / rate if rate else 0
                key, caller = todo.pop()
                if rate and (wait := due - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)
                auth = {"Authorization": f"Bearer {key}"}
                t0 = time.perf_counter()
                r = await client.post("/v1/calls", json={"caller": caller, "vertical": VERT}, headers=auth)
                wall.append((time.perf_counter() - t0) * 1e6)
                d = r.json()
                if d.get("decision") != "routed":
                    bad += 1
                    continue
                dec.append(d["decision_us"])
                if complete:
                    for ev in ({"event": "connected"}, {"event": "completed", "duration_s": 95}):
                        e = await client.post(f"/v1/calls/{d['call_id']}/events", json=ev,
                                              headers={**auth, "Idempotency-Key": f"{d['call_id']}-{ev['event']}"})
                        e.raise_for_status()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"calls": n, "not_routed": bad, "decision_us": pcts(dec), "wall_us": pcts(wall),
            "calls_per_s": round(n / (time.perf_counter() - start), 1)}


def gauge(t: Any, name: str) -> float:
    return (t.metrics() or {}).get(f"exchange_{name}", 0.0)


def settle(t: Any, name: str, quiet_s: float = 1.5, limit_s: float = 300) -> tuple[float, float]:
    """Poll a counter until it stops moving for ``quiet_s``; (its value, when it last moved)."""
    value, moved = gauge(t, name), time.monotonic()
    end = moved + limit_s
    while time.monotonic() < end:
        time.sleep(0.25)
        v = gauge(t, name)
        if v != value:
            value, moved = v, time.monotonic()
        elif time.monotonic() - moved >= quiet_s:
            break
    return value, moved


def bench_relay_catchup(args: argparse.Namespace) -> dict[str, Any]:
    import shutil
    import tempfile

    tag = secrets.token_hex(4).upper()
    stream, subject = f"BENCH_{tag}", f"bench.{tag.lower()}"
    tmp = tempfile.mkdtemp(prefix="bench-relay-")
    store = store_env(args, args.schemas) or {"EXCHANGE_DATABASE_URL": f"sqlite:///{tmp}/ledger.db"}
    a = start_exchange(Path("bench/results/integrations-backlog.log"), {"EXCHANGE_LOG_LEVEL": "warning", **store})
    try:
        ws = standing_buyer(a)
        _, pub = account(a, "publisher", "bench-pub")
        asyncio.run(calls(a.base, [pub], args.backlog_calls, args.concurrency, 11, complete=True))
        ws.close()
    finally:
        a.stop()
    b = start_exchange(Path("bench/results/integrations-catchup.log"),
                       {"EXCHANGE_NATS_URL": NATS_URL, "EXCHANGE_NATS_STREAM": stream, "EXCHANGE_NATS_SUBJECT": subject,
                        "EXCHANGE_LOG_LEVEL": "warning", **store})
    try:
        value, _ = settle(b, "events_relayed", quiet_s=1.5, limit_s=120)
        n, span = asyncio.run(_stream_span(stream))  # JetStream's own timestamps of the first and last message stored
        return {"backlog_calls": args.backlog_calls, "events_relayed": value, "stream_messages": n, "catchup_s": round(span, 3),
                "catchup_events_per_s": round((n - 1) / span, 1) if span > 0 else None}
    finally:
        b.stop()
        asyncio.run(_drop_stream(stream))
        shutil.rmtree(tmp, ignore_errors=True)


def bench_relay(args: argparse.Namespace) -> dict[str, Any]:
    tag = secrets.token_hex(4).upper()
    stream, subject = f"BENCH_{tag}", f"bench.{tag.lower()}"
    t = start_exchange(Path("bench/results/integrations-relay.log"),
                       {"EXCHANGE_NATS_URL": NATS_URL, "EXCHANGE_NATS_STREAM": stream, "EXCHANGE_NATS_SUBJECT": subject,
                        "EXCHANGE_LOG_LEVEL": "warning", **store_env(args, args.schemas)})
    try:
        ws = standing_buyer(t)
        _, pub = account(t, "publisher", "bench-pub")
        start_events = gauge(t, "events_relayed")
        t0 = time.monotonic()
        load = asyncio.run(calls(t.base, [pub], args.calls, args.concurrency, 7, complete=True))
        load_s = time.monotonic() - t0
        relayed, last = settle(t, "events_relayed")
        events = relayed - start_events
        out = {"calls": args.calls, "load_s": round(load_s, 2), "calls_per_s": round(args.calls / load_s, 1), "events_relayed": events,
               "events_per_call": round(events / args.calls, 1), "events_per_s": round(events / (last - t0), 1),
               "relay_lag_after_load_s": round(max(0.0, last - t0 - load_s), 2), "decision_us": load["decision_us"]}
        ws.close()
        return out
    finally:
        t.stop()
        asyncio.run(_drop_stream(stream))


async def _stream_span(stream: str) -> tuple[int, float]:
    """(messages in the stream, seconds between the first and the last one's store times)."""
    import nats

    nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0, allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=5)
        state = (await js.stream_info(stream)).state
        first, last = await js.get_msg(stream, seq=state.first_seq), await js.get_msg(stream, seq=state.last_seq)
        return state.messages, (last.time - first.time).total_seconds()
    finally:
        await nc.close()


async def _drop_stream(stream: str) -> None:
    import nats

    nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
    try:
        await nc.jetstream().delete_stream(stream)
    except Exception:  # noqa: BLE001 - already gone
        pass
    finally:
        await nc.close()


def settle_count(counter: Any, quiet_s: float = 1.5, limit_s: float = 300) -> tuple[int, float]:
    """Wait until the receiver's count stops moving for ``quiet_s``; (the count, when it last moved)."""
    value, moved = counter.value, time.monotonic()
    end = moved + limit_s
    while time.monotonic() < end:
        time.sleep(0.1)
        v = counter.value
        if v != value:
            value, moved = v, time.monotonic()
        elif time.monotonic() - moved >= quiet_s:
            break
    return value, moved


def worker_pid(t: Any) -> int | None:
    """The exchange's child running ``exchange deliver`` (the delivery worker), if any."""
    try:
        kids = Path(f"/proc/{t.pid}/task/{t.pid}/children").read_text().split()
        return next((int(k) for k in kids if b"deliver" in Path(f"/proc/{k}/cmdline").read_bytes()), None)
    except OSError:
        return None


def cpu(t: Any) -> tuple[float, float]:
    """CPU seconds so far of (the exchange's process, the delivery worker's)."""
    w = worker_pid(t)
    return proc_cpu_s(t.pid) or 0.0, (proc_cpu_s(w) or 0.0) if w else 0.0


def bench_webhooks(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    started = multiprocessing.Event()
    counter = multiprocessing.RawValue("q", 0)  # deliveries the receiver answered
    rx = multiprocessing.Process(target=receiver_main, args=(port, started, counter), daemon=True)
    rx.start()
    assert started.wait(30)
    t = start_exchange(Path("bench/results/integrations-webhooks.log"),
                       {"EXCHANGE_WEBHOOK_ALLOW_LOOPBACK": "true", "EXCHANGE_LOG_LEVEL": "warning",
                        "EXCHANGE_WEBHOOK_DELIVERY": args.delivery, **store_env(args, args.schemas)})
    try:
        ws = standing_buyer(t)
        # as many publishers without webhooks as with (the off phase's calls spread alike: a
        # publisher's own windows, e.g. its quality signals, grow with its calls)
        quiet = [account(t, "publisher", f"bench-quiet-{p}")[1] for p in range(max(1, args.endpoints // 20))]
        hooked = []
        for p in range(max(1, args.endpoints // 20)):
            _, key = account(t, "publisher", f"bench-hooked-{p}")
            hooked.append(key)
            for k in range(20):
                kind = "call.decided" if k < args.live else "call.completed"
                r = t.http.post("/v1/webhooks", json={"url": f"http://127.0.0.1:{port}/b{p * 20 + k}", "events": [kind]},
                                headers={"Authorization": f"Bearer {key}"})
                r.raise_for_status()
        registered = len(t.http.get("/v1/webhooks").json()["webhooks"])
        time.sleep(2.0)  # the worker has seen every endpoint
        asyncio.run(calls(t.base, quiet, 200, args.concurrency, 1, complete=False))  # warm
        asyncio.run(calls(t.base, hooked, 200, args.concurrency, 2, complete=False))
        settle_count(counter)
        runs = []
        for r in range(args.rounds):
            phases: dict[str, Any] = {}
            for phase in (("off", "on") if r % 2 == 0 else ("on", "off")):  # alternated: drift over the run cancels
                before, t0 = settle_count(counter)[0], time.monotonic()
                cpu0 = cpu(t)
                keys = hooked if phase == "on" else quiet
                phases[phase] = asyncio.run(calls(t.base, keys, args.calls, args.concurrency, 100 * (phase == "on") + r, complete=False,
                                                  rate=args.rate))
                phases[phase]["phase_s"] = round(time.monotonic() - t0, 2)
                cpu1 = cpu(t)
                phases[phase]["exchange_cpu_us_per_call"] = round((cpu1[0] - cpu0[0]) / args.calls * 1e6)
                phases[phase]["worker_cpu_s_in_phase"] = round(cpu1[1] - cpu0[1], 3)
                if phase == "on":
                    done, last = settle_count(counter)
                    phases[phase]["worker_cpu_us_per_delivery"] = round((cpu(t)[1] - cpu0[1]) / max(1, done - before) * 1e6)
                    phases[phase]["deliveries"] = done - before
                    phases[phase]["deliveries_per_s"] = round((done - before) / max(1e-9, last - t0), 1)
                    phases[phase]["drain_after_phase_s"] = round(max(0.0, last - t0 - phases[phase]["phase_s"]), 2)
            on, off = phases["on"], phases["off"]
            run = {"off": off, "on": on, "deliveries": on["deliveries"], "deliveries_per_s": on["deliveries_per_s"],
                   "ratio_decision_p99": round(on["decision_us"]["p99"] / max(1, off["decision_us"]["p99"]), 3),
                   "ratio_wall_p99": round(on["wall_us"]["p99"] / max(1, off["wall_us"]["p99"]), 3)}
            print(f"round {r}: {json.dumps(run)}", flush=True)
            runs.append(run)
        ws.close()

        def med(f: Any) -> float:
            return statistics.median(f(x) for x in runs)

        summary = {
            "delivery": args.delivery,
            "offered_calls_per_s": args.rate or "as fast as the clients go",
            "endpoints_registered": registered,
            "deliveries_per_call": args.live,
            "deliveries_per_s": med(lambda x: x["deliveries_per_s"]),
            "decision_us_p99": {"off": med(lambda x: x["off"]["decision_us"]["p99"]), "on": med(lambda x: x["on"]["decision_us"]["p99"])},
            "decision_us_p50": {"off": med(lambda x: x["off"]["decision_us"]["p50"]), "on": med(lambda x: x["on"]["decision_us"]["p50"])},
            "wall_us_p99": {"off": med(lambda x: x["off"]["wall_us"]["p99"]), "on": med(lambda x: x["on"]["wall_us"]["p99"])},
            "exchange_cpu_us_per_call": {"off": med(lambda x: x["off"]["exchange_cpu_us_per_call"]),
                                         "on": med(lambda x: x["on"]["exchange_cpu_us_per_call"])},
            "worker_cpu_us_per_delivery": med(lambda x: x["on"]["worker_cpu_us_per_delivery"]),
            # the target: the median over rounds of each round's on/off ratio of the decision's p99
            "median_ratio_decision_p99_on_over_off": med(lambda x: x["ratio_decision_p99"]),
            "median_ratio_wall_p99_on_over_off": med(lambda x: x["ratio_wall_p99"]),
            "ratios_decision_p99": [x["ratio_decision_p99"] for x in runs],
        }
        return {"median": summary, "runs": runs}
    finally:
        t.stop()
        rx.terminate()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rate", type=float, default=300, help="webhooks: calls/s offered in each phase (0: closed loop)")
    ap.add_argument("--delivery", choices=("process", "loop"), default="process",
                    help="where deliveries run: the delivery worker process (default) or the exchange's own loop (the old way)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--endpoints", type=int, default=1000)
    ap.add_argument("--live", type=int, default=2)
    ap.add_argument("--skip-relay", action="store_true")
    ap.add_argument("--skip-webhooks", action="store_true")
    ap.add_argument("--pg", action="store_true")
    ap.add_argument("--backlog-calls", type=int, default=400)
    ap.add_argument("--out", default="bench/results/integrations.json")
    args = ap.parse_args()
    result: dict[str, Any] = {"benchmark": "integrations", "args": vars(args), "store": "postgresql" if args.pg else "sqlite"}
    args.schemas = []
    try:
        if not args.skip_relay:
            result["relay"] = bench_relay(args)
            print("relay:", json.dumps(result["relay"]), flush=True)
            if args.backlog_calls:
                result["relay_catchup"] = bench_relay_catchup(args)
                print("relay catch-up:", json.dumps(result["relay_catchup"]), flush=True)
        if not args.skip_webhooks:
            result["webhooks"] = bench_webhooks(args)
            print("webhooks:", json.dumps(result["webhooks"]["median"]), flush=True)
    finally:
        if args.schemas:
            asyncio.run(drop_schemas(args.schemas))
    del args.schemas
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
