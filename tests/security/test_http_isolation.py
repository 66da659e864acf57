"""Tenant isolation over HTTP, on a real server: every route of the app has a role policy
here and named tests proving that one tenant cannot read or change another's data through
it. The routes are enumerated from ``exchange.app.build_app(...).routes``, so a new endpoint
without a policy and an isolation test fails the suite.
"""

from __future__ import annotations

import ast
import json
import secrets
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from exchange.app import build_app
from exchange.messages import Campaign, Ping, PublisherCall, exchange_json, json_encoder
from exchange.settings import Settings
from tests.e2e.conftest import ADMIN, Server, stop_server
from tests.e2e.wsclient import Buyer
from tests.e2e.clockshift import outbound_plan
from tests.security.kit import Tenant, Tenants, bearer, make_tenants, start

pytestmark = pytest.mark.e2e

PUBLIC = None  # no key needed
OPERATOR = frozenset({"operator"})
# (method, path) -> the roles whose keys the route accepts ("WS": the WebSocket handshake).
POLICY: dict[tuple[str, str], frozenset[str] | None] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/"): PUBLIC,  # a redirect to /dashboard
    ("GET", "/dashboard"): PUBLIC,  # the page holds no data; the key is typed into it
    ("GET", "/v1/dashboard/stream"): frozenset({"operator", "buyer", "publisher"}),
    ("GET", "/v1/calls/{call_id}/auction"): frozenset({"operator", "buyer"}),
    ("POST", "/v1/accounts"): OPERATOR,
    ("POST", "/v1/accounts/{account_id}/deposits"): OPERATOR,
    ("POST", "/v1/accounts/{account_id}/payouts"): OPERATOR,
    ("GET", "/v1/accounts/{account_id}/balance"): frozenset({"operator", "buyer", "publisher"}),
    ("GET", "/v1/accounts/{account_id}/statement"): frozenset({"operator", "buyer", "publisher"}),
    ("POST", "/v1/calls"): frozenset({"publisher"}),
    ("GET", "/v1/calls"): frozenset({"operator", "buyer", "publisher"}),
    ("GET", "/v1/calls/{call_id}"): frozenset({"operator", "buyer", "publisher"}),
    ("GET", "/v1/reports"): frozenset({"operator", "buyer", "publisher"}),
    ("POST", "/v1/calls/{call_id}/events"): frozenset({"operator", "publisher"}),
    ("POST", "/v1/calls/{call_id}/refund"): OPERATOR,
    ("GET", "/v1/audit"): OPERATOR,
    ("GET", "/v1/events"): frozenset({"operator", "buyer", "publisher"}),
    ("POST", "/v1/webhooks"): frozenset({"operator", "buyer", "publisher"}),
    ("GET", "/v1/webhooks"): frozenset({"operator", "buyer", "publisher"}),
    ("DELETE", "/v1/webhooks/{webhook_id}"): frozenset({"operator", "buyer", "publisher"}),
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): frozenset({"operator", "buyer", "publisher"}),
    ("GET", "/v1/pings"): frozenset({"operator", "buyer"}),
    ("POST", "/v1/campaigns"): frozenset({"buyer"}),
    ("POST", "/v1/suppressions"): frozenset({"operator", "buyer"}),
    ("POST", "/v1/dnc/national"): OPERATOR,
    ("POST", "/v1/dnc/state/{state}"): OPERATOR,
    ("POST", "/v1/consents"): frozenset({"operator", "publisher"}),
    ("POST", "/v1/consents/{token}/revoke"): frozenset({"operator", "buyer", "publisher"}),
    ("POST", "/v1/privacy/erasures"): OPERATOR,
    ("POST", "/v1/privacy/holds"): OPERATOR,
    ("GET", "/v1/privacy/holds"): OPERATOR,
    ("DELETE", "/v1/privacy/holds/{number_hash}"): OPERATOR,
    ("POST", "/v1/privacy/key-rotations"): OPERATOR,
    ("WS", "/v1/buyers/ws"): frozenset({"buyer"}),
    ("WS", "/v1/publishers/ws"): frozenset({"publisher"}),
}
ROLES_TEST = "test_every_route_enforces_its_roles"
OPERATOR_ONLY_TEST = "test_operator_only_endpoints_refuse_tenant_keys_and_change_nothing"
# (method, path) -> the tests (anywhere in tests/security) proving isolation through it.
ISOLATION: dict[tuple[str, str], list[str]] = {
    ("GET", "/healthz"): ["test_public_endpoints_reveal_no_tenant_data"],
    ("GET", "/readyz"): ["test_public_endpoints_reveal_no_tenant_data"],
    ("GET", "/metrics"): ["test_public_endpoints_reveal_no_tenant_data"],
    ("GET", "/openapi.json"): ["test_public_endpoints_reveal_no_tenant_data"],
    ("GET", "/"): ["test_public_endpoints_reveal_no_tenant_data"],
    ("GET", "/dashboard"): ["test_public_endpoints_reveal_no_tenant_data"],
    ("GET", "/v1/dashboard/stream"): [ROLES_TEST, "test_a_dashboard_stream_shows_a_tenant_its_own_data_only"],
    ("GET", "/v1/calls/{call_id}/auction"): [ROLES_TEST, "test_an_auction_replay_shows_a_buyer_its_own_candidates_only"],
    ("POST", "/v1/accounts"): [ROLES_TEST, OPERATOR_ONLY_TEST],
    ("POST", "/v1/accounts/{account_id}/deposits"): [ROLES_TEST, OPERATOR_ONLY_TEST],
    ("POST", "/v1/accounts/{account_id}/payouts"): [ROLES_TEST, OPERATOR_ONLY_TEST],
    ("GET", "/v1/accounts/{account_id}/balance"): [ROLES_TEST, "test_balances_and_statements_are_the_owners_only",
                                                   "test_restored_accounts_and_recorded_answers_stay_isolated"],
    ("GET", "/v1/accounts/{account_id}/statement"): [ROLES_TEST, "test_balances_and_statements_are_the_owners_only"],
    ("POST", "/v1/calls"): [ROLES_TEST, "test_call_idempotency_keys_are_per_publisher"],
    ("GET", "/v1/calls"): [ROLES_TEST, "test_call_lists_and_reports_are_scoped_to_the_caller"],
    ("GET", "/v1/calls/{call_id}"): [ROLES_TEST, "test_calls_are_the_publishers_only",
                                     "test_publisher_socket_calls_are_the_publishers_only",
                                     "test_a_buyer_reads_only_its_own_leg_of_a_call"],
    ("GET", "/v1/reports"): [ROLES_TEST, "test_call_lists_and_reports_are_scoped_to_the_caller"],
    ("POST", "/v1/calls/{call_id}/events"): [ROLES_TEST, "test_calls_are_the_publishers_only",
                                             "test_restored_accounts_and_recorded_answers_stay_isolated"],
    ("POST", "/v1/calls/{call_id}/refund"): [ROLES_TEST, OPERATOR_ONLY_TEST],
    ("GET", "/v1/audit"): [ROLES_TEST, OPERATOR_ONLY_TEST],
    ("GET", "/v1/events"): [ROLES_TEST, "test_events_are_their_addressees_only"],
    ("POST", "/v1/webhooks"): [ROLES_TEST, "test_webhooks_are_their_owners_only"],
    ("GET", "/v1/webhooks"): [ROLES_TEST, "test_webhooks_are_their_owners_only"],
    ("DELETE", "/v1/webhooks/{webhook_id}"): [ROLES_TEST, "test_webhooks_are_their_owners_only"],
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): [ROLES_TEST, "test_webhooks_are_their_owners_only"],
    ("GET", "/v1/pings"): [ROLES_TEST, "test_http_bidder_campaigns_are_their_owners_only"],
    ("POST", "/v1/campaigns"): [ROLES_TEST, "test_http_bidder_campaigns_are_their_owners_only"],
    ("POST", "/v1/suppressions"): [ROLES_TEST, "test_suppressions_stay_in_the_buyers_scope"],
    ("POST", "/v1/dnc/national"): [ROLES_TEST, OPERATOR_ONLY_TEST],
    ("POST", "/v1/dnc/state/{state}"): [ROLES_TEST, OPERATOR_ONLY_TEST],
    ("POST", "/v1/consents"): [ROLES_TEST, "test_consents_cannot_be_taken_over_or_revoked_by_another_tenant"],
    ("POST", "/v1/consents/{token}/revoke"): [ROLES_TEST, "test_consents_cannot_be_taken_over_or_revoked_by_another_tenant"],
    ("POST", "/v1/privacy/erasures"): [ROLES_TEST, OPERATOR_ONLY_TEST],
    ("POST", "/v1/privacy/holds"): [ROLES_TEST, OPERATOR_ONLY_TEST],
    ("GET", "/v1/privacy/holds"): [ROLES_TEST, OPERATOR_ONLY_TEST],
    ("DELETE", "/v1/privacy/holds/{number_hash}"): [ROLES_TEST, OPERATOR_ONLY_TEST],
    ("POST", "/v1/privacy/key-rotations"): [ROLES_TEST, OPERATOR_ONLY_TEST],
    ("WS", "/v1/buyers/ws"): [ROLES_TEST, "test_buyer_messages_cannot_touch_another_buyers_campaigns",
                              "test_rtb_answers_cannot_be_given_for_another_buyer",
                              "test_wins_and_call_notices_go_only_to_the_owner"],
    ("WS", "/v1/publishers/ws"): [ROLES_TEST, "test_publisher_socket_calls_are_the_publishers_only"],
}
IN, OUT = "sec_http_in", "sec_http_out"


def app_routes() -> set[tuple[str, str]]:
    app = build_app(Settings(database_url=f"sqlite:///{tempfile.mkdtemp(prefix='dce-routes-')}/unused.db"))
    out: set[tuple[str, str]] = set()
    for r in app.routes:
        methods = getattr(r, "methods", None)
        if methods is None:
            out.add(("WS", r.path))
        else:
            out.update((m, r.path) for m in methods if m != "HEAD")
    return out


def security_test_names() -> set[str]:
    names: set[str] = set()
    for f in Path(__file__).parent.glob("test_*.py"):
        tree = ast.parse(f.read_text())
        names.update(n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_"))
    return names


# ---------------------------------------------------------------- the world these tests share
class World:
    def __init__(self, server: Server, t: Tenants, billed_call: str, numbers: list[str]) -> None:
        self.server, self.t, self.billed_call, self.numbers = server, t, billed_call, numbers
        self.http = server.http

    def call_in(self, p: Tenant, caller: str, **headers: str) -> dict:
        r = self.http.post("/v1/calls", json={"caller": caller, "vertical": IN}, headers={**p.auth, **headers})
        assert r.status_code == 200, r.text
        return r.json()

    def call_out(self, callee: str, token: str | None, p: Tenant | None = None) -> dict:
        body = {"caller": "+18885550100", "callee": callee, "direction": "outbound", "vertical": OUT}
        if token:
            body["consent_token"] = token
        r = self.http.post("/v1/calls", json=body, headers=(p or self.t.p1).auth)
        assert r.status_code == 200, r.text
        return r.json()

    def consent(self, token: str, phone: str, sellers: list[str]) -> dict:
        created = (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"token": token, "phone": phone, "sellers": sellers, "created_at": created}

    def balance(self, account_id: str) -> int:
        return self.http.get(f"/v1/accounts/{account_id}/balance", headers=self.server.admin).json()["balance_cents"]


def today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    plan = outbound_plan()
    server, _ = start({"EXCHANGE_WEBHOOK_ALLOW_LOOPBACK": "true", "EXCHANGE_PING_ALLOW_LOOPBACK": "true"}, plan)
    buyers: list[Buyer] = []
    try:
        t = make_tenants(server, "http")
        for who, bid in ((t.a, 3000), (t.b, 2000)):
            ws = Buyer(server.ws_url, who.key)
            buyers.append(ws)
            for cid, vertical, outbound in (("in", IN, False), ("out", OUT, True)):
                ack = ws.request(lambda s: Campaign(id=cid, vertical=vertical, bid_cents=bid, destination="+18005550199",
                                                    min_duration_s=30, accepts_outbound=outbound, seq=s))
                assert type(ack).__name__ == "Ack", ack
        # outbound calls need a national DNC snapshot in force (this one lists none of our callees)
        r = server.http.post(f"/v1/dnc/national?snapshot_date={today()}", content=b"2025550177\n", headers=server.admin)
        assert r.status_code == 201, r.text
        w = World(server, t, "", plan.numbers(4))
        d = w.call_in(t.p1, "+13125550142")
        assert d["route"]["buyer"] == t.a.id, d
        ev = f"/v1/calls/{d['call_id']}/events"
        assert w.http.post(ev, json={"event": "connected"}, headers={**t.p1.auth, "Idempotency-Key": "b1"}).status_code == 200
        done = w.http.post(ev, json={"event": "completed", "duration_s": 75}, headers={**t.p1.auth, "Idempotency-Key": "b2"})
        assert done.json()["charged_cents"] == 3000, done.text
        w.billed_call = d["call_id"]
        yield w
    finally:
        for b in buyers:
            b.close()
        stop_server(server)


# ---------------------------------------------------------------- every route, every role
def test_every_route_has_a_policy_and_isolation_tests():
    routes = app_routes()
    assert routes == set(POLICY), f"routes without a role policy: {routes - set(POLICY)}; policies of no route: {set(POLICY) - routes}"
    assert set(ISOLATION) == routes, f"routes without isolation tests: {routes - set(ISOLATION)}"
    missing = {n for names in ISOLATION.values() for n in names} - security_test_names()
    assert not missing, f"isolation tests named here but not written: {missing}"


def _path(path: str, account_id: str, call_id: str) -> str:
    return (path.replace("{account_id}", account_id).replace("{call_id}", call_id)
            .replace("{token}", "tok-nobody").replace("{state}", "TX").replace("{number_hash}", "h1:" + "0" * 32))


def test_every_route_enforces_its_roles(world: World):
    """No key, an unknown key, a malformed header: 401. A role the route does not accept: 403,
    whatever the body. An accepted role gets past authentication (bodies here are invalid, so
    nothing changes)."""
    t, http = world.t, world.http
    keys = {"operator": ADMIN, "buyer": t.a.key, "publisher": t.p1.key}
    own = {"operator": t.a.id, "buyer": t.a.id, "publisher": t.p1.id}
    strangers = {"no key": {}, "unknown key": bearer("dce_" + secrets.token_urlsafe(32)),
                 "near miss of the operator key": bearer(ADMIN[:-1] + ("y" if ADMIN[-1] != "y" else "z")),
                 "not a bearer": {"Authorization": f"Basic {ADMIN}"}, "empty bearer": {"Authorization": "Bearer"}}
    checked = 0
    for (method, path), allowed in POLICY.items():
        if allowed is PUBLIC:
            assert http.get(path).status_code == (307 if path == "/" else 200), path
            continue
        if method == "WS":
            for who, headers in [*strangers.items(), *((r, bearer(k)) for r, k in keys.items())]:
                role = who if who in keys else None
                if role in allowed:
                    with connect(f"{world.server.ws_url}{path}", additional_headers=headers) as ws:
                        ws.send(json_encoder.encode(Ping(seq=7)).decode())
                        assert type(exchange_json.decode(ws.recv(timeout=5))).__name__ == "Pong"
                else:
                    with pytest.raises(InvalidStatus) as refused:
                        connect(f"{world.server.ws_url}{path}", additional_headers=headers)
                    # the same answer as HTTP: 401 for a missing or unknown key, 403 for another role; a JSON error
                    status, code = (401, "unauthorized") if role is None else (403, "forbidden")
                    assert refused.value.response.status_code == status, (path, who)
                    assert json.loads(refused.value.response.body)["error"]["code"] == code, (path, who)
                checked += 1
            continue
        for who, headers in strangers.items():
            r = http.request(method, _path(path, t.a.id, world.billed_call), content=b"[]" if method == "POST" else None, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", (method, path, who, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            checked += 1
        for role, key in keys.items():
            url = _path(path, own[role], world.billed_call)
            if path == "/v1/dashboard/stream":  # an endless stream: its status, then hang up
                with http.stream(method, url, headers=bearer(key)) as r:
                    assert r.status_code == 200 if role in allowed else r.status_code == 403, (path, role)
                checked += 1
                continue
            r = http.request(method, url, content=b"[]" if method == "POST" else None, headers=bearer(key))
            if role in allowed:
                assert r.status_code not in (401, 403, 429) and r.status_code < 500, (method, path, role, r.text)
            else:
                assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", (method, path, role, r.text)
            checked += 1
    assert checked >= 100


def test_public_endpoints_reveal_no_tenant_data(world: World):
    t = world.t
    secrets_ = [ADMIN, *(x.key for x in t), *(x.id for x in t), world.billed_call, "+13125550142", "3125550142"]
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/", "/dashboard"):
        r = world.http.get(path)
        assert r.status_code == (307 if path == "/" else 200)
        leaked = [s for s in secrets_ if s in r.text]
        assert not leaked, (path, leaked)


def test_operator_only_endpoints_refuse_tenant_keys_and_change_nothing(world: World):
    t, http, call = world.t, world.http, world.billed_call
    before = {x.id: world.balance(x.id) for x in t}
    dnc = b"".join(n[2:].encode() + b"\n" for n in world.numbers)  # had it been imported, these callees would be on the DNC
    attempts = [
        ("POST", "/v1/accounts", {"json": {"kind": "buyer", "name": "sneaky", "credit_limit_cents": 10**9}}),
        *(("POST", f"/v1/accounts/{x.id}/deposits", {"json": {"amount_cents": 5000, "reference": "free-money"}}) for x in (t.a, t.b)),
        *(("POST", f"/v1/accounts/{x.id}/payouts", {"json": {"amount_cents": 1, "reference": "cash-out"}}) for x in (t.p1, t.p2)),
        ("POST", f"/v1/calls/{call}/refund", {"json": {"reference": "give-it-back"}}),
        ("GET", f"/v1/audit?call_id={call}", {}),
        ("GET", "/v1/audit?number=%2B13125550142", {}),
        ("POST", f"/v1/dnc/national?snapshot_date={today()}&force=true", {"content": dnc}),
        ("POST", f"/v1/dnc/state/TX?snapshot_date={today()}", {"content": dnc}),
        ("POST", "/v1/privacy/erasures", {"json": {"number": world.numbers[0]}}),
        ("POST", "/v1/privacy/holds", {"json": {"number": world.numbers[0], "reason": "mine"}}),
        ("GET", "/v1/privacy/holds", {}),
        ("DELETE", "/v1/privacy/holds/h1:" + "0" * 32, {}),
        ("POST", "/v1/privacy/key-rotations", {}),
    ]
    for tenant in t:
        for method, url, kw in attempts:
            r = http.request(method, url, headers=tenant.auth, **kw)
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", (tenant.id, method, url, r.text)
    for headers in ({}, bearer("dce_" + secrets.token_urlsafe(32)), bearer(ADMIN + "x"), bearer(ADMIN[:-1]), {"Authorization": ADMIN}):
        for method, url, kw in attempts:
            r = http.request(method, url, headers=headers, **kw)
            assert r.status_code == 401, (headers, method, url, r.text)
    assert {x.id: world.balance(x.id) for x in t} == before
    rec = http.get(f"/v1/calls/{call}", headers=world.server.admin).json()
    assert rec["billable"] and rec["charged_cents"] == 3000
    assert rec["request"]["caller"] != "erased"  # no tenant erased a consumer or put one under a hold
    assert http.get("/v1/privacy/holds", headers=world.server.admin).json() == {"holds": []}
    statement = http.get(f"/v1/accounts/{t.a.id}/statement", headers=t.a.auth).json()["lines"]
    assert [x["kind"] for x in statement if x["reference"].startswith(call)] == ["charge"]  # no refund
    # the national list in force is unchanged: an unconsented callee the refused uploads
    # listed is refused for want of consent, not as national_dnc
    assert world.call_out(world.numbers[3], None)["reason"] == "consent_missing"


# ---------------------------------------------------------------- accounts and money
def test_balances_and_statements_are_the_owners_only(world: World):
    t, http = world.t, world.http
    unknown = http.get("/v1/accounts/b_000000000000/balance", headers=t.a.auth)
    assert unknown.status_code == 404
    for owner in t:
        for other in t:
            if other == owner:
                continue
            for url, extra in ((f"/v1/accounts/{owner.id}/balance", {}), (f"/v1/accounts/{owner.id}/statement", {}),
                               (f"/v1/accounts/{owner.id}/statement", {"Accept": "text/csv"}),
                               (f"/v1/accounts/{owner.id}/statement?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z", {})):
                r = http.get(url, headers={**other.auth, **extra})
                assert r.status_code == 404 and r.json()["error"]["code"] == unknown.json()["error"]["code"], (owner, other, url)
                assert "cents" not in r.text and "charge" not in r.text
        assert http.get(f"/v1/accounts/{owner.id}/balance", headers=owner.auth).status_code == 200
        assert http.get(f"/v1/accounts/{owner.id}/statement", headers=owner.auth).status_code == 200
    # the owner sees the charge of its win; nobody else's statement mentions the call
    a_lines = http.get(f"/v1/accounts/{t.a.id}/statement", headers=t.a.auth).json()["lines"]
    assert any(x["reference"].startswith(world.billed_call) for x in a_lines)
    b_statement = http.get(f"/v1/accounts/{t.b.id}/statement", headers=t.b.auth).text
    assert world.billed_call not in b_statement


# ---------------------------------------------------------------- calls
def test_calls_are_the_publishers_only(world: World):
    t, http = world.t, world.http
    d = world.call_in(t.p1, "+13125550150")
    assert d["route"]["buyer"] == t.a.id
    cid = d["call_id"]
    url = f"/v1/calls/{cid}"
    before = http.get(url, headers=t.p1.auth).json()
    nothing = http.get("/v1/calls/call_0000000000000000", headers=t.p2.auth)
    r = http.get(url, headers=t.p2.auth)
    assert (r.status_code, r.json()["error"]["code"]) == (nothing.status_code, nothing.json()["error"]["code"]) == (404, "unknown_call")
    assert "+1312" not in r.text
    own_leg = http.get(url, headers=t.a.auth)  # the winning buyer reads its own leg, never the publisher's record
    assert own_leg.status_code == 200 and "evidence" not in own_leg.json() and "request" not in own_leg.json()
    r = http.get(url, headers=t.b.auth)  # a buyer whose route never rang: as if the call did not exist
    assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_call")
    balance_a = world.balance(t.a.id)
    for i, ev in enumerate(({"event": "connected"}, {"event": "failed", "route_index": 0},
                            {"event": "completed", "duration_s": 600}, {"event": "failed", "route_index": 1})):
        r = http.post(f"{url}/events", json=ev, headers={**t.p2.auth, "Idempotency-Key": f"p2-{i}"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_call", r.text
        r = http.post(f"{url}/events", json=ev, headers={**t.a.auth, "Idempotency-Key": f"a-{i}"})
        assert r.status_code == 403
    after = http.get(url, headers=t.p1.auth).json()
    assert after == before and [e["event"] for e in after["events"]] == ["routed"] and after["status"] == "routed"
    assert world.balance(t.a.id) == balance_a
    # the call was live all along: its publisher moves it, and a replay of that event by
    # the other publisher with the same Idempotency-Key gets nothing of the answer
    ok = http.post(f"{url}/events", json={"event": "connected"}, headers={**t.p1.auth, "Idempotency-Key": "own-1"})
    assert ok.status_code == 200 and ok.json()["status"] == "connected"
    r = http.post(f"{url}/events", json={"event": "connected"}, headers={**t.p2.auth, "Idempotency-Key": "own-1"})
    assert r.status_code == 404 and "status" not in r.json(), r.text


def test_call_idempotency_keys_are_per_publisher(world: World):
    t, http = world.t, world.http
    body1, body2 = {"caller": "+13125550160", "vertical": IN}, {"caller": "+13125550161", "vertical": IN}
    one = http.post("/v1/calls", json=body1, headers={**t.p1.auth, "Idempotency-Key": "shared"})
    assert one.status_code == 200
    two = http.post("/v1/calls", json=body2, headers={**t.p2.auth, "Idempotency-Key": "shared"})
    assert two.status_code == 200, two.text  # not 409: p1's use of the key is invisible to p2
    assert two.json()["call_id"] != one.json()["call_id"]
    same_as_p1 = http.post("/v1/calls", json=body1, headers={**t.p2.auth, "Idempotency-Key": "shared"})
    assert same_as_p1.status_code == 409  # p2's own key, now with another body
    again = http.post("/v1/calls", json=body1, headers={**t.p1.auth, "Idempotency-Key": "shared"})
    assert again.json()["call_id"] == one.json()["call_id"]
    assert http.get(f"/v1/calls/{one.json()['call_id']}", headers=t.p2.auth).status_code == 404


def test_publisher_socket_calls_are_the_publishers_only(world: World):
    t, http, ws_url = world.t, world.http, world.server.ws_url
    with connect(f"{ws_url}/v1/publishers/ws", additional_headers=t.p2.auth) as p2_ws, \
            connect(f"{ws_url}/v1/publishers/ws", additional_headers=t.p1.auth) as p1_ws:
        p1_ws.send(json_encoder.encode(PublisherCall(caller="+13125550170", vertical=IN, seq=1)).decode())
        d = exchange_json.decode(p1_ws.recv(timeout=5))
        assert type(d).__name__ == "Decision" and d.seq == 1 and d.decision == "routed"
        p2_ws.send(json_encoder.encode(Ping(seq=2)).decode())
        assert type(exchange_json.decode(p2_ws.recv(timeout=5))).__name__ == "Pong"  # nothing of p1's before it
    assert http.get(f"/v1/calls/{d.call_id}", headers=t.p1.auth).status_code == 200
    assert http.get(f"/v1/calls/{d.call_id}", headers=t.p2.auth).status_code == 404
    r = http.post(f"/v1/calls/{d.call_id}/events", json={"event": "failed"}, headers={**t.p2.auth, "Idempotency-Key": "x"})
    assert r.status_code == 404
    assert [e["event"] for e in http.get(f"/v1/calls/{d.call_id}", headers=t.p1.auth).json()["events"]] == ["routed"]


# ---------------------------------------------------------------- compliance data
def test_suppressions_stay_in_the_buyers_scope(world: World):
    t, http = world.t, world.http
    n = world.numbers[0]
    tok = "sup-" + secrets.token_hex(4)
    assert http.post("/v1/consents", json=world.consent(tok, n, [t.a.id, t.b.id]), headers=t.p1.auth).status_code == 201
    d = world.call_out(n, tok)
    assert d["route"]["buyer"] == t.a.id and [f["buyer"] for f in d["fallbacks"]] == [t.b.id], d
    r = http.post("/v1/suppressions", json={"number": n, "scope": "buyer"}, headers=t.b.auth)
    assert r.status_code == 201
    d = world.call_out(n, tok)  # b's opt-out binds b only
    assert d["route"]["buyer"] == t.a.id and d["fallbacks"] == [], d
    for tenant, scope in ((t.a, "exchange"), (t.b, "exchange"), (t.p1, "buyer"), (t.p2, "exchange")):
        r = http.post("/v1/suppressions", json={"number": n, "scope": scope}, headers=tenant.auth)
        assert r.status_code == 403, (tenant, scope, r.text)
    d = world.call_out(n, tok)
    assert d["decision"] == "routed" and d["route"]["buyer"] == t.a.id, d  # nothing exchange-wide was added
    # the check can fail: a's own opt-out does stop a
    assert http.post("/v1/suppressions", json={"number": n, "scope": "buyer"}, headers=t.a.auth).status_code == 201
    assert world.call_out(n, tok)["decision"] == "rejected"


def test_consents_cannot_be_taken_over_or_revoked_by_another_tenant(world: World):
    t, http = world.t, world.http
    n = world.numbers[1]
    tok = "iso-" + secrets.token_hex(4)
    consent = world.consent(tok, n, [t.a.id])
    assert http.post("/v1/consents", json=consent, headers=t.p1.auth).status_code == 201
    # tokens are per publisher: p2 posting the same token makes its own record (a 409 would tell
    # it p1 has one), and neither claims nor changes p1's
    theirs = {**consent, "sellers": [t.b.id], "phone": world.numbers[2]}
    r = http.post("/v1/consents", json=theirs, headers=t.p2.auth)
    assert r.status_code == 201, r.text
    r = http.post("/v1/consents", json={**theirs, "sellers": [t.a.id]}, headers=t.p2.auth)
    assert r.status_code == 409, r.text  # a conflict with p2's own record only
    assert http.post("/v1/consents", json={**consent, "sellers": [t.b.id]}, headers=t.b.auth).status_code == 403
    d = world.call_out(n, tok)
    assert d["decision"] == "routed" and d["route"]["buyer"] == t.a.id, d
    # nor borrow it: p2's call citing p1's token (p2's own record names another phone and
    # buyer) is refused as if the token did not exist
    tok2 = "iso-" + secrets.token_hex(4)
    assert http.post("/v1/consents", json={**consent, "token": tok2}, headers=t.p1.auth).status_code == 201
    borrowed = world.call_out(n, tok2, t.p2)
    assert borrowed["decision"] == "rejected" and borrowed["reason"] == world.call_out(n, "no-such-token", t.p2)["reason"], borrowed
    unknown = http.post("/v1/consents/no-such-token/revoke", headers=t.p2.auth)
    assert unknown.status_code == 404
    for tenant, body in ((t.p2, None), (t.p2, {"channel": "sms_stop"}), (t.b, None), (t.b, {"scope": "buyer"})):
        r = http.post(f"/v1/consents/{tok2}/revoke", json=body, headers=tenant.auth)
        assert r.status_code == 404 and r.json()["error"]["code"] == unknown.json()["error"]["code"], (tenant, body, r.text)
    d = world.call_out(n, tok)
    assert d["decision"] == "routed" and d["route"]["buyer"] == t.a.id, d  # still consented, no opt-out added
    # the check can fail: the consent's own publisher revokes it, and the callee is off limits
    r = http.post(f"/v1/consents/{tok}/revoke", json={"channel": "sms_stop"}, headers=t.p1.auth)
    assert r.status_code == 200 and r.json()["scope"] == "exchange"
    assert world.call_out(n, tok)["decision"] == "rejected"


def test_a_buyers_revocation_leaves_the_other_sellers_consent(world: World):
    t, http = world.t, world.http
    n = world.numbers[2]
    tok = "shared-" + secrets.token_hex(4)
    assert http.post("/v1/consents", json=world.consent(tok, n, [t.a.id, t.b.id]), headers=t.p1.auth).status_code == 201
    assert world.call_out(n, tok)["route"]["buyer"] == t.a.id
    r = http.post(f"/v1/consents/{tok}/revoke", json={"scope": "buyer"}, headers=t.a.auth)
    assert r.status_code == 200 and r.json()["scope"] == f"buyer:{t.a.id}"
    d = world.call_out(n, tok)  # a is out; b's consent is b's
    assert d["decision"] == "routed" and d["route"]["buyer"] == t.b.id, d


def test_a_buyer_reads_only_its_own_leg_of_a_call(world: World):
    t, http = world.t, world.http
    d = world.call_in(t.p1, "+13125550170")
    url = f"/v1/calls/{d['call_id']}"
    moved = http.post(f"{url}/events", json={"event": "failed", "route_index": 0}, headers={**t.p1.auth, "Idempotency-Key": "leg-1"})
    assert moved.json()["route"]["buyer"] == t.b.id, moved.text
    a, b = http.get(url, headers=t.a.auth).json(), http.get(url, headers=t.b.auth).json()
    assert a["status"] == "moved" and [r["route_index"] for r in a["routes"]] == [0] and {e["route_index"] for e in a["events"]} == {0}
    assert b["status"] == "routed" and [r["route_index"] for r in b["routes"]] == [1] and {e["route_index"] for e in b["events"]} == {1}
    for view, other in ((a, t.b.id), (b, t.a.id)):
        text = json.dumps(view)
        assert other not in text and "payout_cents" not in text and "bids" not in view and "fallbacks" not in text


def test_call_lists_and_reports_are_scoped_to_the_caller(world: World):
    t, http = world.t, world.http
    d1, d2 = world.call_in(t.p1, "+13125550180"), world.call_in(t.p2, "+13125550181")
    listed = {who.id: {c["call_id"] for c in http.get("/v1/calls", params={"limit": 1000}, headers=who.auth).json()["calls"]}
              for who in (t.p1, t.p2, t.a, t.b)}
    assert d1["call_id"] in listed[t.p1.id] and d1["call_id"] not in listed[t.p2.id]
    assert d2["call_id"] in listed[t.p2.id] and d2["call_id"] not in listed[t.p1.id]
    assert {d1["call_id"], d2["call_id"]} <= listed[t.a.id] and not {d1["call_id"], d2["call_id"]} & listed[t.b.id]
    csv_text = http.get("/v1/calls", headers={**t.p2.auth, "Accept": "text/csv"}).text
    assert d1["call_id"] not in csv_text and d2["call_id"] in csv_text
    for group_by in ("publisher", "buyer", "campaign"):
        rows = {who.id: http.get("/v1/reports", params={"group_by": group_by}, headers=who.auth).json()["rows"] for who in (t.p1, t.a, t.b)}
        if group_by == "publisher":
            assert {r["key"] for r in rows[t.p1.id]} == {t.p1.id}
        if group_by == "buyer":
            assert {r["key"] for r in rows[t.a.id]} == {t.a.id} and {r["key"] for r in rows[t.b.id]} == {t.b.id}
        for r in rows[t.a.id] + rows[t.b.id]:
            assert r["payout_cents"] is None and r["margin_cents"] is None
        for r in rows[t.p1.id]:
            assert r["revenue_cents"] is None and r["margin_cents"] is None
def _events(world: World, headers: dict, **params: str) -> list[dict]:
    out: list[dict] = []
    after = params.pop("after", "0")
    while True:
        r = world.http.get("/v1/events", params={"after": after, "limit": "50", **params}, headers=headers)
        assert r.status_code == 200, r.text
        out += r.json()["events"]
        if r.json()["next_cursor"] is None:
            return out
        after = r.json()["next_cursor"]


def test_events_are_their_addressees_only(world: World):
    """GET /v1/events: a tenant replays the events addressed to it and nothing else, from any
    position and with any filter; a buyer's events name no other tenant, a publisher's no
    other publisher; the operator sees the whole market."""
    t, call = world.t, world.billed_call

    def upto(events: list[dict], last: str) -> list[dict]:  # (decisions are committed just after they are answered)
        return [e for e in events if e["id"] <= last]

    for who in t:
        mine = _events(world, who.auth)
        every = _events(world, world.server.admin)
        assert {e["account"] for e in every} >= {x.id for x in t}
        assert mine == upto([e for e in every if e["account"] == who.id], mine[-1]["id"]), who
        strangers = {x.id for x in t} - {who.id} if who in (t.a, t.b) else {t.p1.id, t.p2.id} - {who.id}
        assert not [e for e in mine if any(s in str(e) for s in strangers)], who
        for k in range(0, len(mine), 3):  # any position: the rest of its own stream
            assert upto(_events(world, who.auth, after=mine[k]["id"]), mine[-1]["id"]) == mine[k + 1:]
        typed = upto(_events(world, who.auth, types="money.charged,money.payout,call.billable"), mine[-1]["id"])
        assert typed == [e for e in mine if e["type"] in ("money.charged", "money.payout", "call.billable")]
    assert not [e for e in _events(world, t.p2.auth) if e.get("call_id") == call]
    assert not [e for e in _events(world, t.b.auth) if e.get("call_id") == call and e["type"] != "call.decided"]
    charged = [e for e in _events(world, t.a.auth) if e["type"] == "money.charged"]
    assert (call, 3000) in [(e["call_id"], e["data"]["amount_cents"]) for e in charged]
    assert all("payout_cents" not in e["data"] for e in _events(world, t.a.auth))
    # another tenant's event id as a position widens nothing
    b_events = _events(world, t.b.auth)
    every = _events(world, world.server.admin)
    theirs = [e for e in every if e["account"] == t.a.id]
    after_theirs = _events(world, t.b.auth, after=theirs[0]["id"])
    assert upto(after_theirs, b_events[-1]["id"]) == [e for e in b_events if e["id"] > theirs[0]["id"]] == upto(
        [e for e in every if e["account"] == t.b.id and e["id"] > theirs[0]["id"]], b_events[-1]["id"])
    bad = world.http.get("/v1/events", params={"after": "evt_1"}, headers=t.a.auth)
    assert bad.status_code == 422 and bad.json()["error"]["path"] == "$.after"


def test_webhooks_are_their_owners_only(world: World):
    """A tenant's webhooks (their URLs, secrets and delivery logs) are its own: another tenant
    neither lists, reads nor deletes them; no listing shows a secret."""
    t, http = world.t, world.http
    r = http.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/a-hook"}, headers=t.a.auth)
    assert r.status_code == 201, r.text
    hook, secret = r.json()["id"], r.json()["secret"]
    for who in (t.b, t.p1, t.p2):
        listed = http.get("/v1/webhooks", headers=who.auth)
        assert listed.status_code == 200 and hook not in listed.text and secret not in listed.text
        assert http.get(f"/v1/webhooks/{hook}/deliveries", headers=who.auth).status_code == 404
        assert http.delete(f"/v1/webhooks/{hook}", headers=who.auth).status_code == 404
    own = http.get("/v1/webhooks", headers=t.a.auth)
    assert hook in own.text and secret not in own.text
    assert http.get(f"/v1/webhooks/{hook}/deliveries", headers=t.a.auth).status_code == 200
    assert http.delete(f"/v1/webhooks/{hook}", headers=t.a.auth).status_code == 204
    assert hook not in http.get("/v1/webhooks", headers=t.a.auth).text


def test_http_bidder_campaigns_are_their_owners_only(world: World):
    """A buyer's HTTP-bidder campaigns (their ping URLs and counts) are listed to it and the
    operator only; another buyer sees none of them."""
    from exchange.pingspec import PingMap, PingSpec

    t, http = world.t, world.http
    ws = Buyer(world.server.ws_url, t.a.key)
    try:
        ack = ws.request(lambda s: Campaign(id="pinged", vertical="sec_pings", bid_cents=0, destination="+18005550199", min_duration_s=30,
                                            rtb=True, ping=PingSpec(url="http://127.0.0.1:9/a-secret-ping", map=PingMap(bid_cents="$.bid")),
                                            seq=s))
        assert type(ack).__name__ == "Ack", ack
    finally:
        ws.close()
    own = http.get("/v1/pings", headers=t.a.auth)
    assert own.status_code == 200 and [c["campaign"] for c in own.json()["campaigns"]] == ["pinged"]
    other = http.get("/v1/pings", headers=t.b.auth)
    assert other.status_code == 200 and other.json() == {"campaigns": []} and "a-secret-ping" not in other.text
    assert "a-secret-ping" in http.get("/v1/pings", headers=world.server.admin).text
    assert http.get("/v1/pings", headers=t.p1.auth).status_code == 403
    # the same campaign id sent over HTTP by the other buyer is that buyer's own campaign: a's is untouched
    theirs = {"id": "pinged", "vertical": "sec_pings", "bid_cents": 0, "destination": "+18005550199", "min_duration_s": 30, "rtb": True,
              "ping": {"url": "http://127.0.0.1:9/b-ping", "map": {"bid_cents": "$.bid"}}}
    r = http.post("/v1/campaigns", json=theirs, headers=t.b.auth)
    assert r.status_code == 200 and r.json()["buyer"] == t.b.id, r.text
    assert [c["url"] for c in http.get("/v1/pings", headers=t.a.auth).json()["campaigns"]] == ["http://127.0.0.1:9/a-secret-ping"]
    assert [c["url"] for c in http.get("/v1/pings", headers=t.b.auth).json()["campaigns"]] == ["http://127.0.0.1:9/b-ping"]
    assert http.post("/v1/campaigns", json=theirs, headers=t.p1.auth).status_code == 403
