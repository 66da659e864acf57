"""Fuzzing the HTTP API of a live exchange (issue 6, item 4).

Two parts, each against its own real server process with its own SQLite ledger:

* **schemathesis** reads ``/openapi.json`` from the running server and generates requests for
  every operation, in both modes: *positive* (data the schema allows) and *negative* (data it
  forbids). Requests carry real keys for the roles each operation admits (now and then none or
  a wrong one) and, half of the time, real account and call ids (a routed call, a charged one)
  instead of generated ones. Every answer must pass ``not_a_server_error`` (no 5xx),
  ``status_code_conformance``, ``content_type_conformance`` and
  ``response_schema_conformance``; negative data must be refused (``negative_data_rejection``).
  Money moves here (deposits, events, refunds are allowed), so the check is that the books
  still reconcile afterwards.
* **hostile inputs** written by hand: malformed JSON, wrong content types, huge and negative
  money, unicode, unknown ids, a reused Idempotency-Key with another body, oversized bodies,
  missing and wrong auth. Each must get a clear 4xx with the standard error body
  ``{"error": {"code", "message", "path"?}}`` and move no money: balances, holds, the number of
  ledger entries and calls are the same after every one, and after the server stops
  ``python -m exchange billing reconcile`` passes on its database.

``schemathesis.pytest.from_fixture`` cannot be used with pytest 9 (it sets ``Function._nodeid``,
gone from pytest), so the operations' Hypothesis strategies (``APIOperation.as_strategy``) are
driven from plain parametrized tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from schemathesis import checks as C
from schemathesis import GenerationMode

from exchange.openapi import document
from tests.e2e.conftest import ROOT
from tests.e2e.wsclient import Buyer
from tests.faults.test_fuzz_ws import Live, launch, metrics, shutdown

VERT = "fuzz_http"
PRICE = 2500
EXAMPLES = int(os.environ.get("FUZZ_HTTP_EXAMPLES", "25"))
OPERATIONS = [(method.upper(), path) for path, ops in document()["paths"].items() for method in ops]
ROLES: dict[tuple[str, str], tuple[str, ...]] = {
    ("POST", "/v1/accounts"): ("operator",),
    ("POST", "/v1/accounts/{account_id}/deposits"): ("operator",),
    ("POST", "/v1/accounts/{account_id}/payouts"): ("operator",),
    ("GET", "/v1/accounts/{account_id}/balance"): ("operator", "owner"),
    ("GET", "/v1/accounts/{account_id}/statement"): ("operator", "owner"),
    ("POST", "/v1/calls"): ("publisher",),
    ("GET", "/v1/calls/{call_id}"): ("publisher", "operator", "buyer"),
    ("GET", "/v1/calls/{call_id}/auction"): ("operator", "buyer", "publisher"),
    ("POST", "/v1/calls/{call_id}/events"): ("publisher", "operator"),
    ("POST", "/v1/calls/{call_id}/refund"): ("operator",),
    ("GET", "/v1/audit"): ("operator",),
    ("POST", "/v1/suppressions"): ("operator", "buyer"),
    ("GET", "/v1/calls"): ("operator", "publisher", "buyer"),
    ("GET", "/v1/reports"): ("operator", "publisher", "buyer"),
    ("GET", "/v1/events"): ("operator", "publisher", "buyer"),
    ("POST", "/v1/webhooks"): ("operator", "publisher", "buyer"),
    ("GET", "/v1/webhooks"): ("operator", "publisher", "buyer"),
    ("DELETE", "/v1/webhooks/{webhook_id}"): ("operator", "publisher", "buyer"),
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): ("operator", "publisher", "buyer"),
    ("GET", "/v1/pings"): ("operator", "buyer"),
    ("POST", "/v1/campaigns"): ("buyer",),
    ("POST", "/v1/dnc/national"): ("operator",),
    ("POST", "/v1/dnc/state/{state}"): ("operator",),
    ("POST", "/v1/consents"): ("operator", "publisher"),
    ("POST", "/v1/consents/{token}/revoke"): ("operator", "publisher", "buyer"),
    ("POST", "/v1/privacy/erasures"): ("operator",),
    ("POST", "/v1/privacy/holds"): ("operator",),
    ("GET", "/v1/privacy/holds"): ("operator",),
    ("DELETE", "/v1/privacy/holds/{number_hash}"): ("operator",),
    ("POST", "/v1/privacy/key-rotations"): ("operator",),
}


def reconcile(live: Live) -> subprocess.CompletedProcess:
    env = {**os.environ, "EXCHANGE_DATABASE_URL": live.database_url}
    return subprocess.run([sys.executable, "-m", "exchange", "billing", "reconcile"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


class Exchange:
    """A live server with a buyer (and its campaign), a publisher, a routed call and a charged one."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.buyer_id, self.buyer_key = live.account("buyer", "http-buyer", deposit=10_000_000)
        self.pub_id, self.pub_key = live.account("publisher", "http-pub")
        self.other_pub_id, self.other_pub_key = live.account("publisher", "http-pub-2")
        self.ws = Buyer(live.ws_url, self.buyer_key)
        assert type(self.ws.request(lambda s: {"type": "campaign", "id": "hc", "vertical": VERT, "bid_cents": PRICE,
                                               "min_duration_s": 60, "destination": "+18005550199", "seq": s})).__name__ == "Ack"
        self.routed = self.call("+13125550101")
        self.charged = self.call("+13125550102")
        r = self.post(f"/v1/calls/{self.charged}/events", {"event": "completed", "duration_s": 120}, self.pub, {"Idempotency-Key": "setup-done"})
        assert r.status_code == 200 and r.json()["billable"], r.text

    @property
    def pub(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.pub_key}"}

    @property
    def buyer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.buyer_key}"}

    def post(self, path: str, body: Any, auth: dict, extra: dict | None = None) -> httpx.Response:
        return self.live.http.post(path, json=body, headers={**auth, **(extra or {})})

    def call(self, caller: str) -> str:
        r = self.post("/v1/calls", {"caller": caller, "vertical": VERT, "state": "IL"}, self.pub)
        assert r.status_code == 200 and r.json()["decision"] == "routed", r.text
        return r.json()["call_id"]

    def key_for(self, role: str, account_id: str | None) -> str | None:
        return {"operator": self.live.admin["Authorization"].split()[1], "publisher": self.pub_key, "buyer": self.buyer_key,
                "owner": self.pub_key if account_id == self.pub_id else self.buyer_key,
                "other": self.other_pub_key, "bogus": "dce_" + "x" * 43, "none": None}[role]

    def close(self) -> None:
        if self.ws is not None:
            ws, self.ws = self.ws, None
            try:
                ws.close()
            except Exception:  # the server is gone already
                pass


# ================================================================= schemathesis against /openapi.json
@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Exchange, Any]]:
    live = launch(tmp_path_factory.mktemp("fuzz-openapi"), EXCHANGE_ROUTE_TTL_S="3600")
    try:
        ex = Exchange(live)
        served = live.http.get("/openapi.json")
        assert served.status_code == 200 and served.headers["content-type"].startswith("application/json")
        yield ex, schemathesis.openapi.from_url(f"{live.url}/openapi.json")
        ex.close()
        assert not live.problems(), "the server logged a crash:\n" + live.log_tail()
    finally:
        shutdown(live)


UNCHECKED_KEY = {("POST", "/v1/calls"), ("POST", "/v1/calls/{call_id}/refund")}
POSITIVE_CHECKS = [C.not_a_server_error, C.status_code_conformance, C.content_type_conformance, C.response_schema_conformance]
NEGATIVE_CHECKS = POSITIVE_CHECKS + [C.negative_data_rejection]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_schemathesis(api, faults, method: str, path: str, mode: GenerationMode) -> None:
    ex, schema = api
    op = schema[path][method]
    spec = document()["paths"][path][method.lower()]
    if mode == GenerationMode.NEGATIVE and not (spec["parameters"] or "requestBody" in spec):
        pytest.skip("nothing in this operation to make invalid")
    roles = ROLES.get((method, path), ("none",))
    params = [p["name"] for p in spec["parameters"] if p["in"] == "path"]
    real_ids = {"account_id": [ex.buyer_id, ex.pub_id], "call_id": [ex.routed, ex.charged], "state": ["TX", "CA"], "token": ["tok-fuzz-1", "tok-fuzz-2"],
                "webhook_id": ["wh_fuzz_1", "wh_fuzz_2"], "number_hash": ["h1:" + "0" * 32, "h1:" + "f" * 32]}
    fives: list[str] = []
    # POST /v1/calls and refunds take an Idempotency-Key of any length, the document says at most
    # 128 (see test_repro_long_idempotency_key_is_refused): pinned here so the rest gets fuzzed
    pinned = {"Idempotency-Key": "fuzz-key"} if mode == GenerationMode.NEGATIVE and (method, path) in UNCHECKED_KEY else None

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture, HealthCheck.large_base_example])
    @given(case=op.as_strategy(mode, headers=pinned), role=st.sampled_from(roles) | st.sampled_from(["none", "bogus", "other"]) if roles != ("none",) else st.just("none"),
           real=st.booleans(), pick=st.integers(0, 1))
    def run(case, role: str, real: bool, pick: int) -> None:
        if real and params:
            case.path_parameters = {**(case.path_parameters or {}), **{p: real_ids[p][pick] for p in params}}
        key = ex.key_for(role, (case.path_parameters or {}).get("account_id"))
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if not key and case.headers:
            case.headers = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}
        note(f"role={role} {case.method} {case.formatted_path} path={case.path_parameters} query={case.query} headers={case.headers} body={case.body!r:.400}")
        response = case.call(headers=headers, timeout=15)
        note(f"-> {response.status_code} {response.text[:400]}")
        if response.status_code >= 500:
            faults.server_errors(1)
            fives.append(f"{case.method} {case.formatted_path} -> {response.status_code} {response.text[:200]}")
        elif response.status_code >= 400:
            faults.bad_input(f"http schemathesis {mode}: {method} {path}")
        case.validate_response(response, checks=NEGATIVE_CHECKS if mode == GenerationMode.NEGATIVE else POSITIVE_CHECKS)

    faults.server_errors(0)  # (so that the summary shows the count even when it is 0)
    run()
    assert not fives, fives
    assert ex.live.proc.poll() is None and ex.live.http.get("/readyz").status_code == 200
    assert not ex.live.problems(), "the server logged a crash:\n" + ex.live.log_tail()


def test_books_reconcile_after_schemathesis(api, faults) -> None:
    """After all of the above (money moved: deposits, payouts, events, refunds): stop the server;
    the offline reconciliation must find nothing wrong."""
    ex, _ = api
    assert not ex.live.problems(), "the server logged a crash:\n" + ex.live.log_tail()
    ex.close()
    shutdown(ex.live)
    check_books(ex.live, faults)


def check_books(live: Live, faults) -> None:
    rec = reconcile(live)
    if rec.returncode != 0:
        faults.discrepancies(max(1, rec.stdout.count("[FAIL")))
    assert rec.returncode == 0, rec.stdout + rec.stderr
    assert "ledger sums to zero" in rec.stdout, rec.stdout


# ================================================================= hand-written hostile inputs
@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    live = launch(tmp_path_factory.mktemp("fuzz-hostile"), EXCHANGE_ROUTE_TTL_S="3600")
    try:
        ex = Exchange(live)
        yield ex
        ex.close()
    finally:
        shutdown(live)


def money(ex: Exchange) -> dict[str, int]:
    """Everything that moves when money or calls move."""
    out: dict[str, int] = {}
    for name, acct in (("buyer", ex.buyer_id), ("pub", ex.pub_id), ("pub2", ex.other_pub_id)):
        b = ex.live.http.get(f"/v1/accounts/{acct}/balance", headers=ex.live.admin).json()
        out[f"{name}_balance_cents"], out[f"{name}_held_cents"] = b["balance_cents"], b["held_cents"]
    m = metrics(ex.live)
    out.update({k: m[k] for k in ("ledger_entries", "calls_in_memory", "calls_active", "book_campaigns")})
    for c in (ex.routed, ex.charged):
        d = ex.live.http.get(f"/v1/calls/{c}", headers=ex.live.admin).json()
        out[f"{c}:status"], out[f"{c}:charged"], out[f"{c}:events"] = hash(d["status"]), d["charged_cents"], len(d["events"])
    return out


def error_body(r: httpx.Response) -> dict:
    """The standard error body, checked field by field."""
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) <= {"code", "message", "path"} and {"code", "message"} <= set(err), err
    assert isinstance(err["code"], str) and err["code"] and isinstance(err["message"], str) and err["message"], err
    assert "path" not in err or (isinstance(err["path"], str) and err["path"].startswith("$")), err
    return err


def hostile_cases(ex: Exchange) -> list[tuple[str, str, str, dict, int, str | None]]:
    """(name, method, url, request kwargs, status, code): each must be refused just so."""
    admin, pub, buyer = ex.live.admin, ex.pub, ex.buyer
    B, P = ex.buyer_id, ex.pub_id
    dep, pay = f"/v1/accounts/{B}/deposits", f"/v1/accounts/{P}/payouts"
    ev = f"/v1/calls/{ex.routed}/events"
    call = {"caller": "+13125550199", "vertical": VERT}
    idem = {"Idempotency-Key": "hostile-1"}
    raw = lambda body, auth, ct="application/json": {"content": body, "headers": {**auth, "content-type": ct}}  # noqa: E731
    deep = b'{"caller":"+13125550199","vertical":"x","z":' + b"[" * 5000 + b"]" * 5000 + b"}"
    return [
        # malformed JSON and wrong content types
        ("truncated JSON", "POST", "/v1/calls", raw(b'{"caller":', pub), 422, "malformed_json"),
        ("empty body", "POST", dep, raw(b"", admin), 422, "malformed_json"),
        ("JSON with NaN", "POST", dep, raw(b'{"amount_cents":NaN,"reference":"r"}', admin), 422, "malformed_json"),
        ("trailing garbage", "POST", dep, raw(b'{"amount_cents":5,"reference":"r"}xx', admin), 422, "malformed_json"),
        ("form body", "POST", "/v1/calls", raw(b"caller=%2B13125550199&vertical=x", pub, "application/x-www-form-urlencoded"), 422, "malformed_json"),
        ("XML body", "POST", dep, raw(b"<deposit amount='5'/>", admin, "application/xml"), 422, "malformed_json"),
        ("JSON array instead of object", "POST", dep, {"json": [5, "r"], "headers": admin}, 422, "invalid_message"),
        ("JSON string instead of object", "POST", "/v1/calls", {"json": "call me", "headers": pub}, 422, "invalid_message"),
        ("invalid UTF-8 in a string", "POST", "/v1/accounts", raw(b'{"kind":"buyer","name":"\xff\xfe"}', admin), 422, None),
        ("nested 5000 deep", "POST", "/v1/calls", raw(deep, pub), 422, None),
        # huge and negative money
        ("negative deposit", "POST", dep, {"json": {"amount_cents": -100, "reference": "neg"}, "headers": admin}, 422, "invalid_message"),
        ("zero deposit", "POST", dep, {"json": {"amount_cents": 0, "reference": "zero"}, "headers": admin}, 422, "invalid_message"),
        ("deposit over the limit", "POST", dep, {"json": {"amount_cents": 10**11 + 1, "reference": "big"}, "headers": admin}, 422, "invalid_message"),
        ("deposit of 10^400", "POST", dep, raw(b'{"amount_cents":1' + b"0" * 400 + b',"reference":"huge"}', admin), 422, "invalid_message"),
        ("deposit of 1e400", "POST", dep, raw(b'{"amount_cents":1e400,"reference":"inf"}', admin), 422, "invalid_message"),
        ("fractional deposit", "POST", dep, {"json": {"amount_cents": 10.5, "reference": "frac"}, "headers": admin}, 422, "invalid_message"),
        ("deposit as a string", "POST", dep, {"json": {"amount_cents": "100", "reference": "str"}, "headers": admin}, 422, "invalid_message"),
        ("deposit as a bool", "POST", dep, {"json": {"amount_cents": True, "reference": "bool"}, "headers": admin}, 422, "invalid_message"),
        ("deposit without reference", "POST", dep, {"json": {"amount_cents": 100}, "headers": admin}, 422, "invalid_message"),
        ("deposit to a publisher", "POST", f"/v1/accounts/{P}/deposits", {"json": {"amount_cents": 100, "reference": "p"}, "headers": admin}, 422, "invalid_account"),
        ("negative payout", "POST", pay, {"json": {"amount_cents": -1, "reference": "np"}, "headers": admin}, 422, "invalid_message"),
        ("payout over what is owed", "POST", pay, {"json": {"amount_cents": 10**9, "reference": "rich"}, "headers": admin}, 422, "insufficient_balance"),
        ("payout to a buyer", "POST", f"/v1/accounts/{B}/payouts", {"json": {"amount_cents": 1, "reference": "b"}, "headers": admin}, 422, "invalid_account"),
        ("negative refund", "POST", f"/v1/calls/{ex.charged}/refund", {"json": {"amount_cents": -5, "reference": "nr"}, "headers": admin}, 422, "invalid_message"),
        ("refund over the charge", "POST", f"/v1/calls/{ex.charged}/refund", {"json": {"amount_cents": PRICE + 1, "reference": "over"}, "headers": admin}, 422, "refund_exceeds_charge"),
        ("refund of an unbilled call", "POST", f"/v1/calls/{ex.routed}/refund", {"json": {"reference": "unb"}, "headers": admin}, 409, "call_not_billed"),
        ("refund without reference", "POST", f"/v1/calls/{ex.charged}/refund", {"json": {"amount_cents": 1}, "headers": admin}, 400, "missing_reference"),
        ("negative floor", "POST", "/v1/calls", {"json": {**call, "floor_cents": -5}, "headers": pub}, 422, "invalid_message"),
        ("floor of 2^64", "POST", "/v1/calls", {"json": {**call, "floor_cents": 2**64}, "headers": pub}, 422, "invalid_message"),
        ("tmax of 10^30", "POST", "/v1/calls", {"json": {**call, "tmax_ms": 10**30}, "headers": pub}, 422, "invalid_message"),
        ("negative duration", "POST", ev, {"json": {"event": "completed", "duration_s": -90}, "headers": {**pub, "Idempotency-Key": "neg-d"}}, 422, "invalid_message"),
        ("completed without duration", "POST", ev, {"json": {"event": "completed"}, "headers": {**pub, "Idempotency-Key": "no-d"}}, 422, "invalid_message"),
        ("unknown event", "POST", ev, {"json": {"event": "billed", "duration_s": 90}, "headers": {**pub, "Idempotency-Key": "bill"}}, 422, "invalid_message"),
        ("route index out of range", "POST", ev, {"json": {"event": "failed", "route_index": 1001}, "headers": {**pub, "Idempotency-Key": "ri"}}, 422, "invalid_message"),
        ("stale route index", "POST", ev, {"json": {"event": "failed", "route_index": 7}, "headers": {**pub, "Idempotency-Key": "ri7"}}, 409, "stale_route"),
        ("credit limit negative", "POST", "/v1/accounts", {"json": {"kind": "buyer", "name": "x", "credit_limit_cents": -1}, "headers": admin}, 422, "invalid_message"),
        # unicode
        ("emoji caller", "POST", "/v1/calls", {"json": {**call, "caller": "\U0001f4de\U0001f4de"}, "headers": pub}, 422, "invalid_number"),
        ("RTL override in a vertical", "POST", "/v1/calls", {"json": {**call, "vertical": "auto\u202e"}, "headers": pub}, 422, "invalid_message"),
        ("fullwidth digits caller", "POST", "/v1/calls", {"json": {**call, "caller": "\uff0b\uff11\uff13\uff11\uff12"}, "headers": pub}, 422, "invalid_number"),
        ("NUL in a state", "POST", "/v1/calls", {"json": {**call, "state": "C\x00"}, "headers": pub}, 422, "invalid_message"),
        ("unicode account kind", "POST", "/v1/accounts", {"json": {"kind": "bùyer", "name": "x"}, "headers": admin}, 422, "invalid_message"),
        ("unicode suppression number", "POST", "/v1/suppressions", {"json": {"number": "\u0661\u0662\u0663"}, "headers": admin}, 422, "invalid_number"),
        # unknown ids
        ("unknown account balance", "GET", "/v1/accounts/b_nope/balance", {"headers": admin}, 404, "unknown_account"),
        ("unknown account deposit", "POST", "/v1/accounts/b_nope/deposits", {"json": {"amount_cents": 5, "reference": "u"}, "headers": admin}, 404, "unknown_account"),
        ("unicode account id", "GET", "/v1/accounts/%E2%98%83/statement", {"headers": admin}, 404, "unknown_account"),
        ("NUL in an account id", "GET", "/v1/accounts/%E2%98%83%00/statement", {"headers": admin}, 422, "invalid_message"),
        ("unknown call", "GET", "/v1/calls/call_nope", {"headers": pub}, 404, "unknown_call"),
        ("event on an unknown call", "POST", "/v1/calls/call_nope/events", {"json": {"event": "completed", "duration_s": 90}, "headers": {**pub, **idem}}, 404, "unknown_call"),
        ("refund of an unknown call", "POST", "/v1/calls/call_nope/refund", {"json": {"reference": "x"}, "headers": admin}, 404, "unknown_call"),
        ("another publisher's call", "GET", f"/v1/calls/{ex.routed}", {"headers": {"Authorization": f"Bearer {ex.other_pub_key}"}}, 404, "unknown_call"),
        ("event on another publisher's call", "POST", ev, {"json": {"event": "completed", "duration_s": 90}, "headers": {"Authorization": f"Bearer {ex.other_pub_key}", **idem}}, 404, "unknown_call"),
        ("another account's balance", "GET", f"/v1/accounts/{P}/balance", {"headers": buyer}, 404, "unknown_account"),
        ("unknown route", "GET", "/v1/nothing", {"headers": admin}, 404, "not_found"),
        ("wrong method", "DELETE", "/v1/calls", {"headers": pub}, 405, "method_not_allowed"),
        ("audit without a filter", "GET", "/v1/audit", {"headers": admin}, 422, "invalid_query"),
        ("audit with a bad limit", "GET", "/v1/audit?call_id=x&limit=ten", {"headers": admin}, 422, "invalid_query"),
        ("statement from yesterday", "GET", f"/v1/accounts/{B}/statement?from=yesterday", {"headers": admin}, 422, "invalid_query"),
        # idempotency keys
        ("event without Idempotency-Key", "POST", ev, {"json": {"event": "connected"}, "headers": pub}, 400, "missing_idempotency_key"),
        ("Idempotency-Key of 129 chars", "POST", ev, {"json": {"event": "connected"}, "headers": {**pub, "Idempotency-Key": "k" * 129}}, 400, "missing_idempotency_key"),
        ("event key reused with another body", "POST", f"/v1/calls/{ex.charged}/events", {"json": {"event": "failed"}, "headers": {**pub, "Idempotency-Key": "setup-done"}}, 409, "idempotency_conflict"),
        ("deposit reference reused with another amount", "POST", dep, {"json": {"amount_cents": 7, "reference": "init-http-buyer"}, "headers": admin}, 409, "idempotency_conflict"),
        # oversized bodies
        ("oversized body", "POST", "/v1/calls", raw(b'{"caller":"' + b"1" * (300 << 10) + b'"}', pub), 413, "body_too_large"),
        ("oversized chunked body", "POST", dep, {"content": iter([b'{"amount_cents":5,"reference":"'] + [b"r" * 4096] * 80 + [b'"}']), "headers": admin}, 413, "body_too_large"),
        # missing and wrong auth
        ("no Authorization", "POST", dep, {"json": {"amount_cents": 5, "reference": "na"}}, 401, "unauthorized"),
        ("unknown key", "POST", dep, {"json": {"amount_cents": 5, "reference": "uk"}, "headers": {"Authorization": "Bearer dce_" + "z" * 43}}, 401, "unauthorized"),
        ("Basic auth", "POST", dep, {"json": {"amount_cents": 5, "reference": "ba"}, "headers": {"Authorization": "Basic YWRtaW46YWRtaW4="}}, 401, "unauthorized"),
        ("Bearer without key", "GET", f"/v1/accounts/{B}/balance", {"headers": {"Authorization": "Bearer"}}, 401, "unauthorized"),
        ("key in lower case", "GET", f"/v1/accounts/{B}/balance", {"headers": {"Authorization": f"bearer {ex.buyer_key.upper()}"}}, 401, "unauthorized"),
        ("buyer key depositing", "POST", dep, {"json": {"amount_cents": 5, "reference": "self"}, "headers": buyer}, 403, "forbidden"),
        ("publisher key refunding", "POST", f"/v1/calls/{ex.charged}/refund", {"json": {"reference": "pr"}, "headers": pub}, 403, "forbidden"),
        ("buyer key submitting a call", "POST", "/v1/calls", {"json": call, "headers": buyer}, 403, "forbidden"),
        ("publisher key creating accounts", "POST", "/v1/accounts", {"json": {"kind": "buyer", "name": "x"}, "headers": pub}, 403, "forbidden"),
        ("buyer key on the audit", "GET", f"/v1/audit?call_id={ex.charged}", {"headers": buyer}, 403, "forbidden"),
    ]


def test_hostile_inputs_get_a_clear_4xx_and_move_no_money(hostile: Exchange, faults) -> None:
    ex = hostile
    faults.server_errors(0)
    before = money(ex)
    failures: list[str] = []
    client = httpx.Client(base_url=ex.live.url, timeout=15, limits=httpx.Limits(max_keepalive_connections=0))
    try:
        for name, method, url, kwargs, status, code in hostile_cases(ex):
            faults.bad_input(f"http hostile: {name}")
            try:
                r = client.request(method, url, **kwargs)
            except httpx.HTTPError as exc:
                failures.append(f"{name}: no answer ({exc!r})")
                continue
            if r.status_code >= 500:
                faults.server_errors(1)
            try:
                assert r.status_code == status, f"{r.status_code} (expected {status}): {r.text[:300]}"
                err = error_body(r)
                assert code is None or err["code"] == code, f"code {err['code']!r} (expected {code!r})"
                now = money(ex)
                assert now == before, f"state moved: { {k: (before[k], now[k]) for k in now if now[k] != before.get(k)} }"
            except AssertionError as exc:
                failures.append(f"{name}: {exc}")
                before = money(ex)
    finally:
        client.close()
    assert ex.live.proc.poll() is None and ex.live.http.get("/readyz").status_code == 200
    assert not failures, "\n".join(failures)
    assert not ex.live.problems(), "the server logged a crash:\n" + ex.live.log_tail()


def test_replays_and_reused_keys_move_no_money(hostile: Exchange, faults) -> None:
    """A reused Idempotency-Key with the same body is a replay (same answer); with another body a
    409. Either way no second call, charge or deposit."""
    ex = hostile
    http = ex.live.http
    body = {"caller": "+13125550177", "vertical": VERT, "state": "IL"}
    first = http.post("/v1/calls", json=body, headers={**ex.pub, "Idempotency-Key": "call-key-1"})
    assert first.status_code == 200 and first.json()["decision"] == "routed", first.text
    before = money(ex)
    replay = http.post("/v1/calls", json=body, headers={**ex.pub, "Idempotency-Key": "call-key-1"})
    assert replay.status_code == 200 and replay.json()["call_id"] == first.json()["call_id"]
    faults.bad_input("http hostile: Idempotency-Key reused with another body", 4)
    other = http.post("/v1/calls", json={**body, "caller": "+13125550178"}, headers={**ex.pub, "Idempotency-Key": "call-key-1"})
    assert other.status_code == 409 and error_body(other)["code"] == "idempotency_conflict", other.text
    assert money(ex) == before
    call_id = first.json()["call_id"]
    done = http.post(f"/v1/calls/{call_id}/events", json={"event": "completed", "duration_s": 90}, headers={**ex.pub, "Idempotency-Key": "ev-1"})
    assert done.status_code == 200 and done.json()["billable"], done.text
    before = money(ex)
    again = http.post(f"/v1/calls/{call_id}/events", json={"event": "completed", "duration_s": 90}, headers={**ex.pub, "Idempotency-Key": "ev-1"})
    assert again.status_code == 200 and again.json() == done.json()
    for body2 in ({"event": "completed", "duration_s": 91}, {"event": "failed"}):
        r = http.post(f"/v1/calls/{call_id}/events", json=body2, headers={**ex.pub, "Idempotency-Key": "ev-1"})
        assert r.status_code == 409 and error_body(r)["code"] == "idempotency_conflict", r.text
    r = http.post(f"/v1/calls/{call_id}/events", json={"event": "completed", "duration_s": 95}, headers={**ex.pub, "Idempotency-Key": "ev-2"})
    assert r.status_code == 409 and error_body(r)["code"] == "call_finished", r.text  # a second completion charges nothing
    refund = http.post(f"/v1/calls/{call_id}/refund", json={"amount_cents": 100, "reference": "rf-1"}, headers=ex.live.admin)
    assert refund.status_code == 201, refund.text
    before = money(ex)
    assert http.post(f"/v1/calls/{call_id}/refund", json={"amount_cents": 100, "reference": "rf-1"}, headers=ex.live.admin).status_code == 200
    r = http.post(f"/v1/calls/{call_id}/refund", json={"amount_cents": 200, "reference": "rf-1"}, headers=ex.live.admin)
    assert r.status_code == 409 and error_body(r)["code"] == "idempotency_conflict", r.text
    assert money(ex) == before


def test_books_reconcile_after_the_hostile_run(hostile: Exchange, faults) -> None:
    """Last: stop the server, then the offline reconciliation must find nothing wrong."""
    assert not hostile.live.problems(), "the server logged a crash:\n" + hostile.live.log_tail()
    hostile.close()
    shutdown(hostile.live)
    check_books(hostile.live, faults)


# ================================================================= reproductions of bugs found here
@pytest.mark.parametrize("query", ["from=0001-01-01T00:00:00Z", "to=9999-12-31T23:59:59Z", "from=1677-01-01T00:00:00Z"])
def test_repro_statement_far_dates_are_a_4xx(hostile_fresh: Exchange, query: str) -> None:
    r = hostile_fresh.live.http.get(f"/v1/accounts/{hostile_fresh.buyer_id}/statement?{query}", headers=hostile_fresh.live.admin)
    assert r.status_code < 500, r.text


def test_repro_audit_huge_after_seq_is_a_4xx(hostile_fresh: Exchange) -> None:
    r = hostile_fresh.live.http.get("/v1/audit?call_id=x&after_seq=" + "9" * 30, headers=hostile_fresh.live.admin)
    assert r.status_code < 500, r.text


@pytest.mark.parametrize("where", ["created_at", "revoked_at"])
def test_repro_consent_time_at_the_edge_of_the_calendar_is_a_4xx(hostile_fresh: Exchange, where: str) -> None:
    http, admin, edge = hostile_fresh.live.http, hostile_fresh.live.admin, "9999-12-31T23:59:59-23:59"
    body = {"token": f"edge-{where}", "phone": "+13125550100", "sellers": ["s1"], "created_at": "2026-01-01T00:00:00Z"}
    if where == "created_at":
        r = http.post("/v1/consents", json={**body, "created_at": edge}, headers=admin)
    else:
        assert http.post("/v1/consents", json=body, headers=admin).status_code == 201
        r = http.post(f"/v1/consents/{body['token']}/revoke", json={"revoked_at": edge}, headers=admin)
    assert r.status_code < 500, r.text


@pytest.fixture(scope="module")
def hostile_fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    """A throwaway server for the reproductions (a 500 must not disturb the hostile run's books)."""
    live = launch(tmp_path_factory.mktemp("fuzz-repro"))
    try:
        yield Exchange(live)
    finally:
        shutdown(live)


@pytest.mark.parametrize("endpoint", ["/v1/calls", "refund"])
def test_repro_long_idempotency_key_is_refused(hostile_fresh: Exchange, endpoint: str) -> None:
    ex = hostile_fresh
    key = {"Idempotency-Key": "k" * 4000}
    if endpoint == "/v1/calls":
        r = ex.post("/v1/calls", {"caller": "+13125550188", "vertical": VERT}, ex.pub, key)
    else:
        r = ex.post(f"/v1/calls/{ex.charged}/refund", {"amount_cents": 1}, ex.live.admin, key)
    assert r.status_code == 400, r.text
