"""Fuzzing the WebSocket edges of a live exchange (issue 6, item 4).

Hypothesis generates frames -- random bytes and text, random JSON / MessagePack values, deep
nesting, huge arrays, and structurally plausible messages with wrong types, out-of-range values,
unknown types and missing fields, mixed with valid messages in one batch -- and sends them as
text and binary frames, over both subprotocols, to a real server process's ``/v1/buyers/ws``
and ``/v1/publishers/ws``.

Every fuzz frame is followed by a sentinel ``ping``; what arrives before its ``pong`` is the
frame's answer. It must be one ``error`` per bad message (carrying the message's ``seq``), an
``ack``/``pong`` per good message with a ``seq``, and nothing else -- or a close with 1009
(oversized) or 1008 (abuse). Around every example the state that matters is snapshotted: the
book and ingest counters and the ledger gauges of ``/metrics``, the fuzzing buyer's balance,
and the routing of a control call. Rejected messages aim at the control campaign (a bad
``campaign`` for it also tries to lower its bid and pause it), so one that slipped through
would change the control call's route; good messages aim elsewhere, so their effect is known
exactly (a new campaign: +1 in the book, a bid: +1 ingested, a publisher call: +1 call). A
second buyer stays connected and must keep working, ``/readyz`` must stay 200 and the server's
log must stay free of tracebacks.

The server is started here with its output in a file: ``tests/e2e/conftest.start_server``
gives it a stderr pipe nobody reads, which fills after about 64 KiB of log (tracebacks of
500s, for instance) and then blocks the whole event loop.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import msgspec
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from routing.standing import US_STATES
from exchange.messages import MAX_CENTS, buyer_json_one, buyer_msgpack_one, publisher_json_one
from tests.e2e.conftest import ADMIN, ROOT, Server, free_port
from tests.e2e.wsclient import Buyer

JSON_P, MSGPACK_P = "dce.json.v1", "dce.msgpack.v1"
BUYERS, PUBLISHERS = "/v1/buyers/ws", "/v1/publishers/ws"
CTL_VERT, OK_VERT, PUB_VERT = "fuzz_ctl", "fuzz_ok", "fuzz_pub"
BASE_BID, OTHER_BID = 3000, 2000
MAX_FRAME = 1 << 20  # Settings.max_frame_bytes
DEST = "+18005550199"
BUYER_TYPES = frozenset({"campaign", "bid", "pause", "resume", "rtb_bid", "no_bid", "ping"})
PUBLISHER_TYPES = frozenset({"call", "ping"})
NOTICES = frozenset({"win", "loss", "call", "bid_request"})
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much, HealthCheck.large_base_example],
    database=None,
)


# ---------------------------------------------------------------- a live server with its log in a file
class Live(Server):
    def __init__(self, port: int, proc: subprocess.Popen, log: Path, db: Path) -> None:
        super().__init__(port, proc)
        self.log, self.db = log, db
        self.database_url = f"sqlite:///{db}"

    def problems(self) -> list[str]:
        """Log lines that betray a crash: tracebacks, error-level records, ASGI exceptions."""
        text = self.log.read_text(errors="replace")
        return [ln for ln in text.splitlines() if "Traceback" in ln or '"level": "error"' in ln or "Exception in ASGI" in ln]

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]


def launch(tmp: Path, **env: str) -> Live:
    """``python -m exchange serve`` on a free port, SQLite ledger and log under ``tmp``."""
    tmp.mkdir(parents=True, exist_ok=True)
    port, db, log = free_port(), tmp / "ledger.db", tmp / "server.log"
    full = {**os.environ, "EXCHANGE_ADMIN_KEY": ADMIN, "EXCHANGE_PORT": str(port), "EXCHANGE_DATABASE_URL": f"sqlite:///{db}", **env}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "exchange", "serve"], cwd=ROOT, env=full, stdout=out, stderr=subprocess.STDOUT)
    live = Live(port, proc, log, db)
    end = time.monotonic() + 20
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {live.log_tail()}")
        try:
            if live.http.get("/readyz").status_code == 200:
                return live
        except Exception:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server did not become ready: {live.log_tail()}")


def shutdown(live: Live) -> int:
    live.http.close()
    live.proc.terminate()
    try:
        return live.proc.wait(15)
    except subprocess.TimeoutExpired:
        live.proc.kill()
        return live.proc.wait(5)


def metrics(live: Live) -> dict[str, int]:
    text = live.http.get("/metrics").text
    return {name: int(v) for name, v in re.findall(r"^exchange_(\w+) (-?\d+)$", text, re.M)}


# ---------------------------------------------------------------- a fuzzing socket
@dataclass
class Closed:
    code: int | None
    reason: str


SENTINELS = itertools.count(9_000_000_000_000)
SEQS = itertools.count(1)
FRESH = itertools.count(1)


class Sock:
    """One WebSocket connection that sends a frame plus a sentinel ping and collects the answer."""

    def __init__(self, live: Live, path: str, key: str, subprotocol: str) -> None:
        self.url = f"{live.ws_url}{path}"
        self.key, self.subprotocol = key, subprotocol
        self.binary = subprotocol == MSGPACK_P
        self.leftover: list[dict] = []  # answers read with the sentinel's pong, after it
        self.ws = self._connect()

    def _connect(self):
        ws = connect(self.url, additional_headers={"Authorization": f"Bearer {self.key}"}, subprotocols=[self.subprotocol],
                     max_size=None, open_timeout=10, close_timeout=2).__enter__()
        assert ws.subprotocol == self.subprotocol
        return ws

    def reopen(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        self.leftover = []
        self.ws = self._connect()

    def encode(self, obj: object) -> str | bytes:
        return msgspec.msgpack.encode(obj) if self.binary else json.dumps(obj)

    def decode(self, data: str | bytes) -> list[dict]:
        """Replies decoded leniently (any value), flattened; each must be an object with a type."""
        assert isinstance(data, bytes if self.binary else str), f"{self.subprotocol} answered with a {type(data).__name__} frame"
        value = msgspec.msgpack.decode(data) if self.binary else msgspec.json.decode(data)
        items = value if isinstance(value, list) else [value]
        for m in items:
            assert isinstance(m, dict) and isinstance(m.get("type"), str), f"not a message: {m!r}"
            if m["type"] == "error":
                assert isinstance(m.get("code"), str) and m["code"], m
                assert isinstance(m.get("message"), str), m
                assert m.get("path") is None or isinstance(m["path"], str), m
            if "seq" in m:
                assert m["seq"] is None or isinstance(m["seq"], int), m
        return items

    def roundtrip(self, frame: str | bytes, timeout: float = 15.0) -> list[dict] | Closed:
        """Send ``frame`` then a sentinel ping; return what came before the pong (notices left out)."""
        sentinel = next(SENTINELS)
        got: list[dict] = self.leftover
        self.leftover = []
        try:
            self.ws.send(frame)
            self.ws.send(self.encode({"type": "ping", "seq": sentinel}))
            end = time.monotonic() + timeout
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no pong for the sentinel within {timeout}s; got {got!r}")
                try:
                    data = self.ws.recv(timeout=left)
                except TimeoutError:
                    continue
                items = self.decode(data)
                for i, m in enumerate(items):
                    if m["type"] == "pong" and m.get("seq") == sentinel:
                        # what queued up after it shares its frame: read next, as if in the next frame
                        self.leftover = [x for x in items[i + 1:] if x["type"] not in NOTICES]
                        return got
                    if m["type"] not in NOTICES:
                        got.append(m)
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            return Closed(rcvd.code if rcvd is not None else None, rcvd.reason if rcvd is not None else str(exc))

    def collect(self, pred, timeout: float = 10.0) -> list[dict]:
        """Keep reading until ``pred(messages so far)`` holds (answers that come after the sentinel)."""
        got: list[dict] = self.leftover
        self.leftover = []
        end = time.monotonic() + timeout
        while not pred(got):
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"answers still missing after {timeout}s; got {got!r}")
            try:
                data = self.ws.recv(timeout=left)
            except TimeoutError:
                continue
            got.extend(m for m in self.decode(data) if m["type"] not in NOTICES)
        return got

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass


# ---------------------------------------------------------------- the world the fuzzers run in
@dataclass
class World:
    live: Live
    fuzz_id: str
    fuzz_key: str
    other_id: str
    other_key: str
    pub_id: str
    pub_key: str
    anchor: Buyer  # the fuzzing buyer's oldest connection: its notices (wins) go here
    other: Buyer  # a second buyer that must keep working
    route: tuple = ()
    last_call: dict = field(default_factory=dict)
    callers: Iterator[int] = field(default_factory=lambda: itertools.count(0))
    socks: dict = field(default_factory=dict)

    def sock(self, path: str, subprotocol: str) -> Sock:
        key = (path, subprotocol)
        if key not in self.socks:
            self.socks[key] = Sock(self.live, path, self.fuzz_key if path == BUYERS else self.pub_key, subprotocol)
        return self.socks[key]

    def control_call(self) -> tuple:
        n = next(self.callers) % 10_000
        r = self.live.http.post("/v1/calls", json={"caller": f"+1312555{n:04d}", "vertical": CTL_VERT, "state": "IL"},
                                headers={"Authorization": f"Bearer {self.pub_key}"})
        assert r.status_code == 200, r.text
        d = self.last_call = r.json()
        route = d.get("route") or {}
        return (d["decision"], d["reason"], route.get("buyer"), route.get("campaign"), route.get("payout_cents"),
                route.get("destination"), route.get("min_duration_s"),
                tuple((f["buyer"], f["campaign"], f["payout_cents"]) for f in d["fallbacks"]))

    def snapshot(self) -> Counter:
        self.drain()
        m = metrics(self.live)
        state = Counter({k: m[k] for k in ("book_campaigns", "calls_active", "calls_in_memory", "rtb_rounds_open",
                                            "ledger_entries", "bids_ingested_total", "campaign_upserts_total")})
        for who, acct in (("fuzz", self.fuzz_id), ("other", self.other_id)):
            bal = self.live.http.get(f"/v1/accounts/{acct}/balance", headers=self.live.admin).json()
            state[f"{who}_balance_cents"], state[f"{who}_held_cents"] = bal["balance_cents"], bal["held_cents"]
        return state

    def drain(self) -> None:
        for b in (self.anchor, self.other):
            b.inbox.clear()
            while True:
                try:
                    b.recv(timeout=0)
                except TimeoutError:
                    break

    def healthy(self) -> None:
        """The server lives, is ready, the other buyer is served and rejected input moved nothing."""
        assert self.live.proc.poll() is None, f"the server died: {self.live.log_tail()}"
        assert self.live.http.get("/readyz").status_code == 200
        assert type(self.other.request(lambda s: {"type": "ping", "seq": s})).__name__ == "Pong"
        assert type(self.other.request(lambda s: {"type": "bid", "campaign": "other", "bid_cents": OTHER_BID, "seq": s})).__name__ == "Ack"
        if self.control_call() != self.route:
            bal = self.live.http.get(f"/v1/accounts/{self.fuzz_id}/balance", headers=self.live.admin).json()
            audit = self.live.http.get("/v1/audit", params={"call_id": self.last_call["call_id"]}, headers=self.live.admin).json()
            raise AssertionError(f"a rejected message changed the control campaign: expected {self.route}, got {self.last_call}; "
                                 f"fuzzing buyer's balance {bal}; audit {json.dumps(audit)[:3000]}")
        problems = self.live.problems()
        assert not problems, "the server logged a crash:\n" + self.live.log_tail()


def campaign(cid: str, vertical: str, bid: int, **kw: Any) -> dict:
    return {"type": "campaign", "id": cid, "vertical": vertical, "bid_cents": bid, "min_duration_s": 60, "destination": DEST, **kw}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    live = launch(tmp_path_factory.mktemp("fuzz-ws"), EXCHANGE_ROUTE_TTL_S="3600",  # no hold expires mid-run
                  EXCHANGE_MAX_CAMPAIGNS_PER_BUYER="1000000")  # the fuzzer creates campaigns by the thousand
    try:
        fuzz_id, fuzz_key = live.account("buyer", "fuzz-buyer", deposit=100_000_000)
        other_id, other_key = live.account("buyer", "fuzz-other", deposit=100_000_000)
        pub_id, pub_key = live.account("publisher", "fuzz-pub")
        anchor, other = Buyer(live.ws_url, fuzz_key), Buyer(live.ws_url, other_key)
        for b, c in ((anchor, campaign("fz_base", CTL_VERT, BASE_BID)), (anchor, campaign("fz_ok", OK_VERT, 100)),
                     (other, campaign("other", CTL_VERT, OTHER_BID))):
            assert type(b.request(lambda s, c=c: {**c, "seq": s})).__name__ == "Ack"
        w = World(live, fuzz_id, fuzz_key, other_id, other_key, pub_id, pub_key, anchor, other)
        w.route = w.control_call()
        assert w.route[:4] == ("routed", "ok", fuzz_id, "fz_base") and w.route[7][0][:2] == (other_id, "other"), w.route
        yield w
        for s in w.socks.values():
            s.close()
        anchor.close()
        other.close()
        assert not live.problems(), "the server logged a crash:\n" + live.log_tail()
    finally:
        shutdown(live)


# ---------------------------------------------------------------- message strategies
@dataclass
class Item:
    """One message of a frame, and what the exchange must do with it."""

    msg: Any
    good: bool
    seq: str = "seq"  # "seq": a fresh valid seq is set; "none": no seq; "keep": msg's own (corrupt) seq, or not an object
    delta: Counter = field(default_factory=Counter)
    answer: str | None = None  # for a good message with a seq: "ack" / "pong" / "decision"
    semantic: bool = False  # bad, but only after decoding (the exchange refuses it in its core)


def _without(d: dict, k: str) -> dict:
    return {x: v for x, v in d.items() if x != k}


def _matches(pattern: str, s: str) -> bool:
    return re.search(pattern, s) is not None  # msgspec checks patterns with re.search


NON_STR = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
                    st.lists(st.integers(0, 9), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2))
NON_INT = st.one_of(st.none(), st.booleans(), st.text(max_size=8), st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer()),
                    st.lists(st.integers(0, 9), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2))
NON_BOOL = st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=5), st.lists(st.booleans(), max_size=2))
NON_LIST = st.one_of(st.booleans(), st.integers(-5, 5), st.text(max_size=5), st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2))
NON_OBJ = st.one_of(st.booleans(), st.integers(-5, 5), st.text(max_size=5), st.lists(st.integers(0, 9), max_size=2))
BIG = st.one_of(st.integers(-(2**63), -1), st.integers(MAX_CENTS + 1, 2**64 - 1))
ID_RE, VERT_RE = r"^[A-Za-z0-9_.:\-]+$", r"^[a-z0-9_]+$"
DEST_RE = r"^(\+[1-9][0-9]{6,14}|sips?:[^\s]+)$"

# a bad `campaign` for the control campaign: each also lowers its bid to 1 and pauses it, so if
# the exchange took it the control call would be routed elsewhere
BAD_BASE = {**campaign("fz_base", CTL_VERT, 1), "paused": True}
BAD_CAMPAIGN_VALUES = [
    ("bid_cents", -1), ("bid_cents", MAX_CENTS + 1), ("bid_cents", 2**63), ("bid_cents", -(2**63)), ("bid_cents", 1.5),
    ("bid_cents", "100"), ("bid_cents", None), ("bid_cents", True), ("bid_cents", []), ("bid_cents", {}),
    ("min_duration_s", -1), ("min_duration_s", 86_401), ("min_duration_s", "60"),
    ("destination", ""), ("destination", "12345"), ("destination", "+0123456789"), ("destination", "sip:"),
    ("destination", "+1" + "9" * 300), ("destination", 18005550199), ("destination", "+1 800 555 0199"),
    ("vertical", ""), ("vertical", "UPPER"), ("vertical", "a" * 49), ("vertical", "has space"), ("vertical", None),
    ("id", ""), ("id", "x" * 65), ("id", "bad id!"), ("id", 7),
    ("states", ["ca"]), ("states", "CA"), ("states", [1]), ("states", ["CA"] * 61), ("states", None),
    ("area_codes", [199]), ("area_codes", [1000]), ("area_codes", ["415"]), ("area_codes", [415] * 1001),
    ("schedule", {"tz": "UTC", "hours": {"xyz": []}}), ("schedule", {"tz": "UTC", "hours": {"mon": [["25:00", "26:00"]]}}),
    ("schedule", {"tz": ""}), ("schedule", {"hours": {}}), ("schedule", "always"), ("schedule", {"tz": "UTC", "hours": {"mon": [["09:00"]]}}),
    ("caps", {"concurrency": 0}), ("caps", {"hourly": -1}), ("caps", {"monthly": 10**9}), ("caps", []),
    ("daily_budget_cents", -1), ("daily_budget_cents", 10**11 + 1), ("dedupe_days", 366), ("dedupe_days", -1),
    ("expires_at", "tomorrow"), ("expires_at", "2026-01-01T00:00:00"), ("expires_at", 1_700_000_000),
    ("paused", "yes"), ("rtb", 1), ("accepts_outbound", "no"),
    ("type", "campaign2"), ("type", 5), ("type", None), ("type", "Campaign"), ("type", ""),
]
# decodable, but refused by the book: nothing may change
SEMANTIC_CAMPAIGN_VALUES = [
    ("states", ["ZZ"]), ("states", ["CA", "XX"]), ("schedule", {"tz": "Mars/Olympus_Mons", "hours": {}}),
    ("schedule", {"tz": "../../etc/passwd"}), ("schedule", {"tz": "UTC", "hours": {"mon": [["17:00", "09:00"]]}}),
    ("schedule", {"tz": "UTC", "hours": {"tue": [["09:00", "09:00"]]}}),
]
SCHEMA_FIELDS = {"id": NON_STR.filter(lambda v: not (isinstance(v, str))), "vertical": NON_STR, "destination": NON_STR,
                 "bid_cents": NON_INT, "min_duration_s": NON_INT, "dedupe_days": NON_INT, "paused": NON_BOOL, "rtb": NON_BOOL,
                 "accepts_outbound": NON_BOOL, "states": NON_LIST, "area_codes": NON_LIST, "schedule": NON_OBJ, "caps": NON_OBJ,
                 "daily_budget_cents": NON_INT}


def _decodes_as_buyer(msg: object) -> bool:
    """Whether either subprotocol's decoder takes ``msg`` (then it is no bad message)."""
    for decode in (lambda: buyer_json_one.decode(json.dumps(msg)), lambda: buyer_msgpack_one.decode(msgspec.msgpack.encode(msg))):
        try:
            decode()
            return True
        except (msgspec.MsgspecError, ValueError, RecursionError, OverflowError):
            pass
    return False


def WIRE_TEXT(max_size: int) -> st.SearchStrategy[str]:  # noqa: N802 - a strategy, named like the others
    """Text a wire text field takes: no C0 control character (issue 13)."""
    return st.text(st.characters(min_codepoint=0x20, blacklist_categories=("Cs",)), max_size=max_size)


def bad_text(pattern: str, max_size: int = 70) -> st.SearchStrategy[str]:
    return st.text(max_size=max_size).filter(lambda s: not _matches(pattern, s))


@st.composite
def bad_campaign(draw) -> Item:
    how = draw(st.sampled_from(["value", "semantic", "missing", "wrong_type", "range", "pattern"]))
    if how == "value":
        k, v = draw(st.sampled_from(BAD_CAMPAIGN_VALUES))
        return Item({**BAD_BASE, k: v}, good=False)
    if how == "semantic":
        k, v = draw(st.sampled_from(SEMANTIC_CAMPAIGN_VALUES))
        return Item({**BAD_BASE, k: v}, good=False, semantic=True)
    if how == "missing":
        return Item(_without(BAD_BASE, draw(st.sampled_from(["id", "vertical", "bid_cents", "min_duration_s", "destination", "type"]))), good=False)
    if how == "wrong_type":
        k = draw(st.sampled_from(sorted(SCHEMA_FIELDS)))
        v = draw(SCHEMA_FIELDS[k])
        if k in ("schedule", "caps", "area_codes", "daily_budget_cents") and v is None:
            v = "none"  # null is the default there
        return Item({**BAD_BASE, k: v}, good=False)
    if how == "range":
        k, s = draw(st.sampled_from([
            ("bid_cents", BIG), ("min_duration_s", st.one_of(st.integers(-(2**63), -1), st.integers(86_401, 2**63))),
            ("dedupe_days", st.one_of(st.integers(-(2**31), -1), st.integers(366, 2**40))),
            ("daily_budget_cents", st.one_of(st.integers(-(2**63), -1), st.integers(10**11 + 1, 2**64 - 1))),
            ("area_codes", st.lists(st.one_of(st.integers(-(2**31), 199), st.integers(1000, 2**31)), min_size=1, max_size=5)),
        ]))
        return Item({**BAD_BASE, k: draw(s)}, good=False)
    k, s = draw(st.sampled_from([("vertical", bad_text(VERT_RE)), ("destination", bad_text(DEST_RE, 300)), ("id", bad_text(ID_RE))]))
    return Item({**BAD_BASE, k: draw(s)}, good=False)


@st.composite
def bad_other(draw) -> Item:
    """Bad bids, pauses, RTB answers, pings, unknown types and non-objects."""
    kind = draw(st.sampled_from(["bid", "bid_unknown", "pause", "pause_unknown", "rtb", "no_bid", "unknown_type", "no_type", "not_object", "seq"]))
    if kind == "bid":
        k, v = draw(st.sampled_from([("bid_cents", BIG), ("bid_cents", NON_INT), ("campaign", NON_STR), ("campaign", bad_text(ID_RE))]))
        msg = {"type": "bid", "campaign": "fz_base", "bid_cents": 1, k: draw(v)}
        if draw(st.booleans()):
            msg = _without(msg, draw(st.sampled_from(["campaign", "bid_cents"])))
        return Item(msg, good=False)
    if kind == "bid_unknown":
        return Item({"type": "bid", "campaign": draw(st.from_regex(r"\Anope_[a-z0-9]{1,10}\Z")), "bid_cents": draw(st.integers(0, MAX_CENTS))},
                    good=False, semantic=True)
    if kind == "pause":
        return Item({"type": draw(st.sampled_from(["pause", "resume"])), "campaign": draw(st.one_of(NON_STR, bad_text(ID_RE)))}, good=False)
    if kind == "pause_unknown":
        return Item({"type": draw(st.sampled_from(["pause", "resume"])), "campaign": "nope_campaign"}, good=False, semantic=True)
    if kind == "rtb":
        msg = {"type": "rtb_bid", "request_id": draw(st.from_regex(r"\Areq_[a-z0-9]{1,12}\Z")), "bid_cents": draw(st.integers(0, MAX_CENTS))}
        broken = draw(st.sampled_from([None, "bid_cents", "destination", "min_duration_s", "request_id"]))
        if broken is None:  # well formed, but no such bid_request is open
            return Item(msg, good=False, semantic=True)
        value = {"bid_cents": BIG, "destination": bad_text(DEST_RE), "min_duration_s": st.integers(86_401, 2**40), "request_id": NON_STR}[broken]
        return Item({**msg, broken: draw(value)}, good=False)
    if kind == "no_bid":
        if draw(st.booleans()):
            return Item({"type": "no_bid", "request_id": "req_none", "reason": draw(WIRE_TEXT(20))}, good=False, semantic=True)
        return Item({"type": "no_bid", "request_id": "req_none", "reason": "r" * draw(st.integers(129, 2000))}, good=False)
    if kind == "unknown_type":
        t = draw(st.one_of(st.text(max_size=12).filter(lambda s: s not in BUYER_TYPES),
                           st.sampled_from(["ack", "error", "win", "call", "decision", "PING"]),
                           NON_STR.filter(lambda v: not isinstance(v, str))))
        return Item({"type": t, "campaign": "fz_base", "bid_cents": 1}, good=False)
    if kind == "no_type":
        return Item({"campaign": "fz_base", "bid_cents": 1}, good=False)
    if kind == "not_object":
        return Item(draw(st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=10),
                                   st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3), st.just([{"type": "ping"}]))),
                    good=False, seq="keep")
    # a good message whose seq is broken must be refused whole (a bid on fz_ok must not be ingested)
    good = draw(good_item())
    seq = draw(st.one_of(st.integers(-(2**63), -1), st.integers(2**63, 2**64 - 1), st.text(max_size=4), st.booleans(),
                         st.floats(allow_nan=False, allow_infinity=False), st.lists(st.integers(-(2**63), 2**63 - 1), max_size=2)))
    return Item({**good.msg, "seq": seq}, good=False, seq="keep")


DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
SPANS = [[], [["09:00", "17:30"]], [["00:00", "06:00"], ["18:00", "24:00"]], [["00:00", "24:00"]]]


@st.composite
def good_item(draw) -> Item:
    kind = draw(st.sampled_from(["ping", "bid", "pause", "campaign"]))
    with_seq = draw(st.booleans())
    seq = "seq" if with_seq else "none"
    if kind == "ping":
        return Item({"type": "ping"}, good=True, seq=seq, answer="pong")
    if kind == "bid":
        return Item({"type": "bid", "campaign": "fz_ok", "bid_cents": draw(st.integers(0, MAX_CENTS))}, good=True, seq=seq,
                    delta=Counter(bids_ingested_total=1), answer="ack" if with_seq else None)
    if kind == "pause":
        return Item({"type": draw(st.sampled_from(["pause", "resume"])), "campaign": "fz_ok"}, good=True, seq=seq, answer="ack" if with_seq else None)
    msg = draw(st.fixed_dictionaries(
        {"type": st.just("campaign"), "id": st.just("fresh"), "vertical": st.just(OK_VERT), "bid_cents": st.integers(0, MAX_CENTS),
         "min_duration_s": st.integers(0, 86_400),
         "destination": st.sampled_from([DEST, "+442071838750", "sip:buyer@example.com", "sips:queue@10.0.0.1:5061"])},
        optional={"states": st.lists(st.sampled_from(sorted(US_STATES)), max_size=60),
                  "area_codes": st.lists(st.integers(200, 999), max_size=20),
                  "caps": st.fixed_dictionaries({}, optional={"concurrency": st.integers(1, 100_000), "hourly": st.integers(0, 10**7),
                                                              "daily": st.integers(0, 10**7), "monthly": st.integers(0, 10**8)}),
                  "daily_budget_cents": st.integers(0, 10**11), "dedupe_days": st.integers(0, 365),
                  "accepts_outbound": st.booleans(), "rtb": st.booleans(), "paused": st.booleans(),
                  "schedule": st.fixed_dictionaries({"tz": st.sampled_from(["UTC", "America/New_York", "America/Los_Angeles"]),
                                                     "hours": st.dictionaries(st.sampled_from(DAYS), st.sampled_from(SPANS), max_size=7)}),
                  "x_future_field": st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=5))}))
    return Item(msg, good=True, seq=seq, delta=Counter(book_campaigns=1, campaign_upserts_total=1), answer="ack" if with_seq else None)


BAD_ITEM = st.one_of(bad_campaign(), bad_other()).filter(lambda it: it.seq == "keep" and not isinstance(it.msg, dict) or it.semantic or not _decodes_as_buyer(it.msg))
ITEM = st.one_of(good_item(), BAD_ITEM)


def materialize(items: list[Item]) -> list[Item]:
    """Fresh seqs and fresh campaign ids (so each good campaign adds exactly one to the book)."""
    out = []
    for it in items:
        msg = it.msg
        if isinstance(msg, dict):
            msg = dict(msg)
            if it.seq == "seq":
                msg["seq"] = next(SEQS)
            elif it.seq == "none":
                msg.pop("seq", None)
            if it.good and msg.get("id") == "fresh":
                msg["id"] = f"ok_{next(FRESH)}"
        out.append(Item(msg, it.good, it.seq, it.delta, it.answer, it.semantic))
    return out


@dataclass
class Expect:
    errors: int | None  # exact number of errors, or None if not known
    most: int  # most answers
    least: int = 0  # fewest errors
    error_seqs: Counter = field(default_factory=Counter)
    answers: dict = field(default_factory=dict)  # seq -> "ack" | "pong" | "decision"
    unseq: Counter = field(default_factory=Counter)  # answers without seq, by type
    delta: Counter = field(default_factory=Counter)
    exact: bool = True


def expect_items(items: list[Item]) -> Expect:
    e = Expect(errors=0, most=0)
    for it in items:
        seq = it.msg.get("seq") if isinstance(it.msg, dict) and it.seq == "seq" else None
        if it.good:
            e.delta.update(it.delta)
            if seq is not None:
                e.answers[seq] = it.answer
            elif it.answer == "pong":
                e.unseq["pong"] += 1
        else:
            e.errors += 1
            if seq is not None:
                e.error_seqs[seq] += 1
    e.most = e.errors + len(e.answers) + sum(e.unseq.values())
    return e


def check(e: Expect, got: list[dict]) -> None:
    errors = [m for m in got if m["type"] == "error"]
    rest = [m for m in got if m["type"] != "error"]
    assert len(got) <= e.most, f"{len(got)} answers, at most {e.most} expected"
    if e.errors is not None:
        assert len(errors) == e.errors, f"{len(errors)} errors, {e.errors} expected: {errors[:5]}"
    assert len(errors) >= e.least, f"{len(errors)} errors, at least {e.least} expected"
    seen = Counter(m.get("seq") for m in errors if m.get("seq") is not None)
    missing = e.error_seqs - seen
    assert not missing, f"errors without their message's seq: {sorted(missing)[:5]}"
    if e.exact:
        answers = {m["seq"]: m["type"] for m in rest if m.get("seq") is not None}
        assert answers == e.answers, f"answers {answers} != expected {e.answers}"
        assert Counter(m["type"] for m in rest if m.get("seq") is None) == e.unseq
    for m in rest:
        assert m["type"] in ("ack", "pong", "decision"), m


# ---------------------------------------------------------------- raw frames: an independent oracle
def raw_expect(frame: str | bytes, binary: bool, types: frozenset[str], whole: bool = False) -> Expect:
    """What any frame must get, judged without the exchange's typed decoders."""
    if not binary and isinstance(frame, bytes):
        try:
            frame.decode()
        except UnicodeDecodeError:
            return Expect(errors=1, most=1)  # JSON that is not UTF-8 anywhere: one malformed_json for the frame
    try:
        value = msgspec.msgpack.decode(frame) if binary else msgspec.json.decode(frame)
    except msgspec.ValidationError:
        # a number out of range: the exchange's decoder skips such values in fields it
        # ignores, so the frame may hold good messages too
        return Expect(errors=None, most=10**6, exact=False)
    except msgspec.DecodeError as exc:
        if binary and "UTF-8" in str(exc):
            # a MessagePack string that is not UTF-8: validated where a field is read, skipped
            # (as a length) where it is not, so the frame may hold good messages too
            return Expect(errors=None, most=10**6, exact=False)
        return Expect(errors=1, most=1)
    except (msgspec.MsgspecError, ValueError, TypeError, RecursionError):
        return Expect(errors=1, most=1)  # malformed, or nested too deep: one error for the frame
    items = value if isinstance(value, list) else [value]
    known = [it for it in items if isinstance(it, dict) and isinstance(it.get("type"), str) and it["type"] in types]
    if not known:
        if whole and len(items) > 1:  # a socket that refuses a bad batch whole: one error, or one per item
            return Expect(errors=None, most=len(items), least=1)
        return Expect(errors=len(items), most=len(items))
    return Expect(errors=None, most=len(items), exact=False)


JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
              st.sampled_from(sorted(BUYER_TYPES | PUBLISHER_TYPES))),
    lambda kids: st.one_of(st.lists(kids, max_size=5), st.dictionaries(st.one_of(st.text(max_size=6), st.just("type"), st.just("seq")), kids, max_size=5)),
    max_leaves=20,
)
# shallow, or deeper than any recursion limit (Hypothesis raises the test process's own, so depths
# near the server's limit of 1000 would be judged differently by the two)
DEPTH = st.one_of(st.integers(1, 300), st.integers(20_000, 200_000))


@st.composite
def raw_frame(draw, binary: bool) -> str | bytes:
    """A frame for a connection (text or binary, whichever the subprotocol does not expect, too)."""
    kind = draw(st.sampled_from(["bytes", "text", "value", "value", "deep", "numbers", "utf8"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "text":
        return draw(st.text(max_size=300))
    if kind == "value":
        v = draw(JSON_VALUE)
        if binary:
            try:
                return msgspec.msgpack.encode(v)
            except OverflowError:
                return msgspec.msgpack.encode(str(v))
        return json.dumps(v)
    if kind == "deep":
        d = draw(DEPTH)
        if binary:
            nest = draw(st.sampled_from([b"\x91" * d + b"\xc0", b"\x81\xa1a" * d + b"\x01"]))
            return draw(st.sampled_from([nest, b"\x83\xa4type\xa4ping\xa3seq\x01\xa1x" + nest, b"\x92\x82\xa4type\xa4ping\xa3seq\x01" + nest]))
        nest = draw(st.sampled_from(["[" * d + "]" * d, '{"a":' * d + "1" + "}" * d]))
        return draw(st.sampled_from([nest, '{"type":"ping","seq":1,"x":' + nest + "}", '[{"type":"ping","seq":1},' + nest + "]", "[1," + nest + "]"]))
    if kind == "numbers":
        n = draw(st.sampled_from(["1e400", "-1e400", "NaN", "Infinity", "1" + "0" * 400, "-0", "0x10", "1.0", "01", "1e-400"]))
        # (an unknown campaign: some of these numbers are valid -- "-0" is 0 -- and must not reprice anything)
        return draw(st.sampled_from([f'{{"type":"bid","campaign":"nope_num","bid_cents":{n},"seq":7}}', f'{{"type":"ping","seq":{n}}}', f"[{n}]"]))
    # JSON whose strings are not UTF-8 (a binary frame can carry anything)
    bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]))
    return draw(st.sampled_from([b'{"type":"' + bad + b'"}', b'[1,{"type":"' + bad + b'"}]', b'{"type":"ping","x":"' + bad + b'"}',
                                 b'{"type":"bid","campaign":"' + bad + b'","bid_cents":1,"seq":3}', b'["' + bad + b'"]']))


def _frame(items: list[Item], batch: bool, sock: Sock) -> str | bytes:
    msgs = [it.msg for it in items]
    single = not batch and len(msgs) == 1 and not isinstance(msgs[0], list)  # a lone list would be a batch itself
    return sock.encode(msgs[0] if single else msgs)


def rate_limited(got: list[dict]) -> bool:
    """The one answer to a frame the account's rate limit refused (none of its messages apply)."""
    return len(got) == 1 and got[0]["type"] == "error" and got[0]["code"] == "rate_limited"


def moved(before: Counter, after: Counter) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after.keys() | before.keys() if after[k] != before[k]}


def _apply(world: World, sock: Sock, frames: list[tuple[str | bytes, Expect]], label: str) -> None:
    """Send the frames, check every answer, then check the state moved exactly as expected.
    (Raw frames cannot change a campaign: random keys are at most 6 characters, too short for
    ``campaign``, and the hand-written ones name no campaign of the buyer's -- so they must move
    nothing even where their answers are not known.)"""
    try:
        _send_and_check(world, sock, frames, label)
    except BaseException:
        sock.reopen()  # late answers must not spill into the next example while Hypothesis shrinks
        raise


def _send_and_check(world: World, sock: Sock, frames: list[tuple[str | bytes, Expect]], label: str) -> None:
    before = world.snapshot()
    delta, exact = Counter(), True
    for frame, e in frames:
        note(f"{label} frame ({len(frame)} bytes): {frame[:300]!r}")
        got = sock.roundtrip(frame)
        if isinstance(got, Closed):
            sock.reopen()  # (before asserting, so that Hypothesis can go on shrinking)
            size = len(frame.encode() if isinstance(frame, str) else frame)
            assert (got.code == 1009 and size > MAX_FRAME) or got.code == 1008, f"closed with {got.code} {got.reason!r} after {size} bytes"
            exact = exact and got.code == 1009  # an oversized frame is never read; an abuse close may cut a batch short
            continue
        if rate_limited(got):
            continue  # refused whole by the account's rate limit: nothing of it applies
        check(e, got)
        delta.update(e.delta)
    after = world.snapshot()
    if exact:
        assert moved(before, after) == {k: v for k, v in delta.items() if v}, "state moved otherwise than the good messages say"
    else:
        m = moved(before, after)
        for k in ("ledger_entries", "calls_in_memory", "calls_active", "fuzz_balance_cents", "fuzz_held_cents", "other_balance_cents"):
            assert k not in m, f"{k} moved by {m[k]}"
    world.healthy()


# ---------------------------------------------------------------- buyer fuzzing
@pytest.mark.parametrize("subprotocol", [JSON_P, MSGPACK_P])
@FUZZ
@given(frames=st.lists(st.tuples(st.lists(ITEM, min_size=1, max_size=8), st.booleans()), min_size=1, max_size=4))
def test_buyer_messages_good_and_bad_mixed(world: World, faults, subprotocol: str, frames) -> None:
    """Plausible messages, good and bad mixed in batches: one answer each, only good ones apply."""
    sock = world.sock(BUYERS, subprotocol)
    sent = []
    for items, batch in frames:
        items = materialize(items)
        sent.append((_frame(items, batch, sock), expect_items(items)))
        faults.bad_input(f"ws buyer {subprotocol}: bad message", sum(not it.good for it in items))
    _apply(world, sock, sent, "buyer")


@pytest.mark.parametrize("subprotocol", [JSON_P, MSGPACK_P])
@FUZZ
@given(data=st.data())
def test_buyer_raw_frames(world: World, faults, subprotocol: str, data) -> None:
    """Random bytes, text, JSON / MessagePack values, deep nesting, odd numbers, broken UTF-8,
    as text and as binary frames: each gets its errors and nothing changes."""
    sock = world.sock(BUYERS, subprotocol)
    binary = sock.binary
    frames = data.draw(st.lists(st.one_of(raw_frame(binary), raw_frame(not binary)), min_size=1, max_size=4))
    sent = [(f, raw_expect(f, binary, BUYER_TYPES)) for f in frames]
    faults.bad_input(f"ws buyer {subprotocol}: raw frame", len(frames))
    _apply(world, sock, sent, "buyer raw")


HUGE_TEMPLATES = [
    (Item({"type": "bid", "campaign": "fz_base", "bid_cents": -1}, good=False, seq="none"), "bad bid"),
    (Item({"type": "nope"}, good=False, seq="none"), "unknown type"),
    (Item(0, good=False, seq="keep"), "not an object"),
    (Item({"type": "bid", "campaign": "nope_huge", "bid_cents": 5}, good=False, seq="none", semantic=True), "unknown campaign"),
    (Item({"type": "bid", "campaign": "fz_ok", "bid_cents": 7}, good=True, seq="none", delta=Counter(bids_ingested_total=1)), "good bid"),
    (Item({"type": "ping"}, good=True, seq="none", answer="pong"), "ping"),
]


@pytest.mark.parametrize("subprotocol", [JSON_P, MSGPACK_P])
@settings(FUZZ, max_examples=max(4, FUZZ.max_examples // 6))
@given(template=st.sampled_from(HUGE_TEMPLATES), n=st.one_of(st.integers(500, 5_000), st.just(40_000)), bad_at=st.none() | st.integers(0, 10**6))
def test_buyer_huge_batches(world: World, faults, subprotocol: str, template, n: int, bad_at) -> None:
    """Batches of thousands of messages (one bad one hidden among good ones, too); over the
    frame limit the socket is closed with 1009 and nothing of the batch applies."""
    sock = world.sock(BUYERS, subprotocol)
    item, label = template
    items = [item] * n
    if bad_at is not None:
        items = list(items)
        items[bad_at % n] = Item({"type": "bid", "campaign": "fz_base", "bid_cents": MAX_CENTS + 1}, good=False, seq="none")
    frame = _frame(items, True, sock)
    faults.bad_input(f"ws buyer {subprotocol}: huge batch frame")
    _apply(world, sock, [(frame, expect_items(items))], "huge")


# ---------------------------------------------------------------- publisher fuzzing
CALLERS = ["+13125550100", "+12125550143", "+14155550123", "+17185550199"]
BAD_CALL_VALUES = [
    ("caller", 13125550100), ("caller", ""), ("caller", "1" * 33), ("caller", None), ("vertical", "UPPER"), ("vertical", ""),
    ("vertical", 5), ("direction", "sideways"), ("direction", None), ("state", "ca"), ("state", "CAL"), ("state", 6),
    ("zip", "9411"), ("zip", 94110), ("tmax_ms", -1), ("tmax_ms", 60_001), ("tmax_ms", "100"), ("floor_cents", -1),
    ("floor_cents", MAX_CENTS + 1), ("floor_cents", 1.5), ("tags", {str(i): i for i in range(33)}), ("tags", {"a": [1]}),
    ("tags", []), ("consent_token", ""), ("consent_token", "t" * 129), ("origin", "mars"), ("dial_mode", "robot"),
    ("callee", 5), ("type", "calls"), ("type", None), ("type", "ping2"),
    # control characters in any text field (issue 13)
    ("caller", "+1312555\x000100"), ("consent_token", "t\x1b"), ("tags", {"k\x00": 1}), ("tags", {"k": "line\nfeed"}),
]
SEMANTIC_CALL_VALUES = [{"caller": "not-a-number"}, {"caller": "+1"}, {"caller": "\U0001f600"}, {"direction": "outbound"},
                        {"direction": "outbound", "callee": "abc"}]


def _decodes_as_publisher(msg: object) -> bool:
    try:
        publisher_json_one.decode(json.dumps(msg))
    except (msgspec.MsgspecError, ValueError, RecursionError):
        return False
    return True


@st.composite
def publisher_item(draw) -> Item:
    kind = draw(st.sampled_from(["good", "good", "ping", "bad", "bad_random", "semantic", "not_object"]))
    base = {"type": "call", "caller": draw(st.sampled_from(CALLERS)), "vertical": PUB_VERT}
    if kind == "good":
        extra = draw(st.fixed_dictionaries({}, optional={
            "state": st.sampled_from(sorted(US_STATES)), "zip": st.from_regex(r"\A[0-9]{5}\Z"),
            "tags": st.dictionaries(WIRE_TEXT(8), st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), WIRE_TEXT(8)), max_size=32),
            "tmax_ms": st.integers(0, 50), "floor_cents": st.integers(0, MAX_CENTS), "x_future": st.integers(0, 9)}))
        return Item({**base, **extra}, good=True, delta=Counter(calls_in_memory=1), answer="decision")
    if kind == "ping":
        return Item({"type": "ping"}, good=True, answer="pong")
    if kind == "bad":
        k, v = draw(st.sampled_from(BAD_CALL_VALUES))
        return Item({**base, k: v}, good=False)
    if kind == "bad_random":
        k = draw(st.sampled_from(["caller", "vertical", "floor_cents", "tmax_ms", "tags", "state"]))
        v = draw({"caller": NON_STR, "vertical": NON_STR, "state": NON_STR, "floor_cents": NON_INT, "tmax_ms": NON_INT, "tags": NON_OBJ}[k])
        msg = {**base, k: v}
        return Item(msg, good=False) if not _decodes_as_publisher(msg) else Item({**base, "caller": None}, good=False)
    if kind == "semantic":
        return Item({**base, **draw(st.sampled_from(SEMANTIC_CALL_VALUES))}, good=False, semantic=True)
    return Item(draw(st.one_of(st.integers(0, 9), st.text(max_size=5), st.none())), good=False, seq="keep")


@pytest.mark.parametrize("subprotocol", [JSON_P, MSGPACK_P])
@FUZZ
@given(frames=st.lists(st.tuples(st.lists(publisher_item(), min_size=1, max_size=6), st.booleans()), min_size=1, max_size=3))
def test_publisher_calls_good_and_bad_mixed(world: World, faults, subprotocol: str, frames) -> None:
    """Publisher frames, in either subprotocol: each good call gets its decision (and is one more
    call), each bad one of a batch its own error and nothing (the good ones still go on); the
    calls made are exactly the decisions sent."""
    sock = world.sock(PUBLISHERS, subprotocol)
    before = world.snapshot()
    decisions = 0
    for items, batch in frames:
        items = materialize(items)
        faults.bad_input(f"ws publisher {subprotocol}: bad message", sum(not it.good for it in items))
        frame = _frame(items, batch, sock)
        note(f"publisher frame: {frame[:400]!r}")
        got = sock.roundtrip(frame)
        assert not isinstance(got, Closed), got
        if rate_limited(got):
            continue
        e = expect_items(items)  # each message answered: pings at once, calls (decisions or errors) when decided
        got = got + sock.collect(lambda ms: len(got) + len(ms) >= e.most, timeout=10)
        check(e, got)
        decisions += sum(m["type"] == "decision" for m in got)
    after = world.snapshot()
    assert after["calls_in_memory"] - before["calls_in_memory"] == decisions
    for k in ("book_campaigns", "ledger_entries", "fuzz_balance_cents", "fuzz_held_cents", "bids_ingested_total"):
        assert after[k] == before[k], k
    world.healthy()


@pytest.mark.parametrize("subprotocol", [JSON_P, MSGPACK_P])
@FUZZ
@given(data=st.data())
def test_publisher_raw_frames(world: World, faults, subprotocol: str, data) -> None:
    """Garbage on the publisher socket, as text and as binary frames: errors, no call, the
    socket and the server live on."""
    sock = world.sock(PUBLISHERS, subprotocol)
    binary = sock.binary
    frames = data.draw(st.lists(st.one_of(raw_frame(binary), raw_frame(not binary)), min_size=1, max_size=4))
    faults.bad_input(f"ws publisher {subprotocol}: raw frame", len(frames))
    # (a raw frame cannot hold a good call: its generators cannot spell ``vertical`` as a key)
    _apply(world, sock, [(f, raw_expect(f, binary, PUBLISHER_TYPES, whole=True)) for f in frames], "publisher raw")


# ---------------------------------------------------------------- limits: oversized frames, floods
@pytest.mark.parametrize("path", [BUYERS, PUBLISHERS])
@pytest.mark.parametrize("subprotocol", [JSON_P, MSGPACK_P])
def test_oversized_frame_is_closed_1009_and_the_exchange_carries_on(world: World, faults, path: str, subprotocol: str) -> None:
    before = world.snapshot()
    sock = Sock(world.live, path, world.fuzz_key if path == BUYERS else world.pub_key, subprotocol)
    try:
        pad = "a" * (MAX_FRAME - 200)  # just under the limit: answered
        got = sock.roundtrip(sock.encode({"type": "ping", "seq": 1, "pad": pad}))
        assert not isinstance(got, Closed) and [m["type"] for m in got] == ["pong"], got
        over = sock.encode([{"type": "bid", "campaign": "fz_base", "bid_cents": 1, "pad": "b" * 1000}] * (MAX_FRAME // 1000 + 1))
        faults.bad_input(f"ws {path} {subprotocol}: oversized frame")
        got = sock.roundtrip(over)
        assert isinstance(got, Closed) and got.code == 1009, got
    finally:
        sock.close()
    assert world.snapshot() == before
    world.healthy()


@pytest.mark.parametrize("path", [BUYERS, PUBLISHERS])
def test_flood_of_bad_frames_is_answered_or_closed_1008(world: World, faults, path: str) -> None:
    """2,000 bad frames without reading: every one answered in order, or a 1008 close for abuse."""
    n = 2_000
    sock = Sock(world.live, path, world.fuzz_key if path == BUYERS else world.pub_key, JSON_P)
    before = world.snapshot()
    try:
        faults.bad_input(f"ws {path}: flood frame", n)
        try:
            for i in range(n):
                sock.ws.send('{"type":"bid","campaign":"fz_base","bid_cents":-1,"seq":%d}' % i if path == BUYERS else '{"type":"call","seq":%d}' % i)
            got = sock.roundtrip('{"type":"ping"}')
        except ConnectionClosed as exc:
            got = Closed(exc.rcvd.code if exc.rcvd else None, str(exc))
        if isinstance(got, Closed):
            assert got.code == 1008, got
        else:
            got = [m for m in got if not (m["type"] == "pong" and m.get("seq") is None)]
            assert len(got) == n and all(m["type"] == "error" for m in got)
            assert [m.get("seq") for m in got] == list(range(n)) or path == PUBLISHERS
    finally:
        sock.close()
    assert world.snapshot() == before
    world.healthy()


# ---------------------------------------------------------------- reproductions of the bugs found
def test_repro_deep_nesting_gets_an_error_not_a_dropped_socket(world: World, faults) -> None:
    """Found by the fuzzer: 1,000 nested arrays (2 KB) made the buyer socket's decoder raise
    RecursionError, which killed the connection without a close frame (fixed in messages.py)."""
    for subprotocol, frame in ((JSON_P, "[" * 5000 + "]" * 5000), (JSON_P, "[1," + "[" * 5000 + "]" * 5000 + "]"),
                               (MSGPACK_P, b"\x91" * 5000 + b"\xc0")):
        sock = world.sock(BUYERS, subprotocol)
        faults.bad_input("ws buyer: deep nesting")
        got = sock.roundtrip(frame)
        assert not isinstance(got, Closed), got
        assert [m["type"] for m in got] == ["error"], got


def test_repro_text_frame_on_msgpack_and_bad_utf8_get_an_error(world: World, faults) -> None:
    """Found by the fuzzer: a text frame on a dce.msgpack.v1 buyer socket (TypeError) and a binary
    frame of JSON with invalid UTF-8 in a string on dce.json.v1 (UnicodeDecodeError) dropped the
    connection without a close frame (fixed in messages.py)."""
    for subprotocol, frame in ((MSGPACK_P, '{"type":"ping","seq":1}'), (JSON_P, b'{"type":"\xff"}'), (JSON_P, b'[1,{"type":"\xff"}]')):
        sock = world.sock(BUYERS, subprotocol)
        faults.bad_input("ws buyer: wrong frame kind or bad UTF-8")
        got = sock.roundtrip(frame)
        assert not isinstance(got, Closed), got
        assert got and all(m["type"] == "error" for m in got), got


BAD_UTF8_FOUND = [b'[1,{"type":"\xff"}]', b'{"type":"ping","x":"\xff"}', b'{"type":"\xff"}', b'["\xc3\x28"]',
                  b'{"type":"bid","campaign":"\xed\xa0\x80","bid_cents":1,"seq":3}', b'[{"type":"ping","seq":1},"\xf8\x88\x80\x80\x80"]']


@pytest.mark.parametrize("path", [BUYERS, PUBLISHERS])
@pytest.mark.parametrize("frame", BAD_UTF8_FOUND)
def test_repro_invalid_utf8_anywhere_is_one_malformed_json(world: World, faults, path: str, frame: bytes) -> None:
    """Found by the fuzzer: ``[1,{"type":"\xff"}]`` got two errors (``invalid_message`` for
    ``$[0]``, then ``malformed_json``) and ``{"type":"ping","x":"\xff"}`` a ``pong``, because
    msgspec validates only the strings it reads. A JSON frame that is not UTF-8 anywhere now gets
    exactly one ``malformed_json`` and nothing of it applies, on both sockets."""
    sock = world.sock(path, JSON_P)
    faults.bad_input("ws: invalid UTF-8")
    before = world.snapshot()
    got = sock.roundtrip(frame)
    assert not isinstance(got, Closed), got
    assert [(m["type"], m.get("code")) for m in got] == [("error", "malformed_json")], got
    assert world.snapshot() == before


def test_publisher_msgpack_ping_is_answered(world: World) -> None:
    sock = Sock(world.live, PUBLISHERS, world.pub_key, MSGPACK_P)
    try:
        sock.ws.send(msgspec.msgpack.encode({"type": "ping", "seq": 6}))
        got = sock.collect(lambda ms: len(ms) >= 1, timeout=3)
        assert got[0]["type"] == "pong" and got[0].get("seq") == 6, got
    finally:
        sock.close()


def test_repro_trailing_newline_is_refused(world: World, faults) -> None:
    """``"destination": "+18005550199\\n"`` (or an id, vertical, state, zip, HH:MM with a trailing
    newline) passes the ``^...$`` patterns: msgspec checks them with ``re.search``, where ``$``
    matches before a final newline. The newline then reaches routes, wins and the telephony side."""
    sock = world.sock(BUYERS, JSON_P)
    faults.bad_input("ws buyer: trailing newline")
    got = sock.roundtrip(json.dumps({**campaign("nl_test", OK_VERT, 10, destination=DEST + "\n"), "seq": 77}))
    assert [m["type"] for m in got] == ["error"], got


def test_repro_error_echoes_only_valid_seqs(world: World) -> None:
    """An error must not echo a seq that the wire types forbid (a client decoding the answer with
    ``exchange_json`` would choke on it)."""
    from exchange.messages import exchange_json

    sock = world.sock(BUYERS, JSON_P)
    for seq in (-1, 2**63):
        got = sock.roundtrip(json.dumps({"type": "ping", "seq": seq}))
        assert [m["type"] for m in got] == ["error"]
        exchange_json.decode(json.dumps(got[0]))
