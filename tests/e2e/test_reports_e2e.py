"""Reports and lists over a real server: GET /v1/calls (cursor pages, CSV, scoped to the
caller), the winning buyer's read of GET /v1/calls/{id}, and GET /v1/reports grouped and
scoped the same way, rebuilt from the audit trail after a restart."""

from __future__ import annotations

import csv
import io
import tempfile

import pytest

from exchange.messages import Campaign
from tests.e2e.conftest import start_server, stop_server
from tests.e2e.wsclient import Buyer

V = "rep_auto"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def world(request):
    schema = None
    if request.param == "postgres":  # the restart's rebuild reads the audit trail with each store's SQL
        from tests.integration.conftest import pg_schema_url

        schema = pg_schema_url("rep")
        db = next(schema)
    else:
        db = f"sqlite:///{tempfile.mkdtemp(prefix='dce-rep-')}/ledger.db"
    env = {"EXCHANGE_DATABASE_URL": db}
    s = start_server(env)
    a_id, a_key = s.account("buyer", "rep-a", deposit=100_000)
    b_id, b_key = s.account("buyer", "rep-b", deposit=100_000)
    p1_id, p1_key = s.account("publisher", "rep-p1")
    p2_id, p2_key = s.account("publisher", "rep-p2")
    a, b = Buyer(s.ws_url, a_key), Buyer(s.ws_url, b_key)
    for ws, cid, bid in ((a, "ca", 3000), (b, "cb", 2000)):
        ack = ws.request(lambda q, cid=cid, bid=bid: Campaign(id=cid, vertical=V, bid_cents=bid, destination="+18005550199", min_duration_s=60, seq=q))
        assert type(ack).__name__ == "Ack", ack
    h1, h2 = {"Authorization": f"Bearer {p1_key}"}, {"Authorization": f"Bearer {p2_key}"}

    def call(h, n, vertical=V, state="CA"):
        r = s.http.post("/v1/calls", json={"caller": f"+1415555{n:04d}", "vertical": vertical, "state": state}, headers=h)
        assert r.status_code == 200, r.text
        return r.json()

    def event(h, cid, key, **body):
        r = s.http.post(f"/v1/calls/{cid}/events", json=body, headers={**h, "Idempotency-Key": key})
        assert r.status_code == 200, r.text
        return r.json()

    c1, c2, c3 = (call(h1, n) for n in (1, 2, 3))
    c4 = call(h1, 4, vertical="rep_nobody")
    c5 = call(h2, 5, state="TX")
    assert [c["decision"] for c in (c1, c2, c3, c4, c5)] == ["routed"] * 3 + ["rejected", "routed"]
    event(h1, c1["call_id"], "k1", event="completed", duration_s=90)  # billable on A: 3000
    moved = event(h1, c2["call_id"], "k2", event="failed", route_index=0)  # to B
    assert moved["route_index"] == 1 and moved["route"]["buyer"] == b_id
    event(h1, c2["call_id"], "k3", event="completed", duration_s=120)  # billable on B: 2000
    event(h2, c5["call_id"], "k4", event="completed", duration_s=30)  # short: not billable
    ids = {n: c["call_id"] for n, c in zip(("c1", "c2", "c3", "c4", "c5"), (c1, c2, c3, c4, c5))}
    w = {"s": s, "env": env, "ids": ids, "a": (a_id, {"Authorization": f"Bearer {a_key}"}), "b": (b_id, {"Authorization": f"Bearer {b_key}"}),
         "p1": (p1_id, h1), "p2": (p2_id, h2), "ws": (a, b)}
    yield w
    for ws in (a, b):
        try:
            ws.close()
        except Exception:  # the server they were connected to was restarted
            pass
    stop_server(w["s"])
    if schema is not None:
        next(schema, None)  # drops the schema


def _list(s, h, **q):
    r = s.http.get("/v1/calls", params=q, headers=h)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_publisher_lists_its_own_calls_newest_first_in_cursor_pages(world):
    s, ids, (_, h1) = world["s"], world["ids"], world["p1"]
    first = _list(s, h1, limit=2)
    assert [c["call_id"] for c in first["calls"]] == [ids["c4"], ids["c3"]] and first["next_cursor"]
    second = _list(s, h1, limit=2, cursor=first["next_cursor"])
    assert [c["call_id"] for c in second["calls"]] == [ids["c2"], ids["c1"]]
    assert _list(s, h1, limit=2, cursor=second["next_cursor"])["calls"] == [] if second["next_cursor"] else True
    assert [c["call_id"] for c in _list(s, world["p2"][1])["calls"]] == [ids["c5"]]
    assert [c["call_id"] for c in _list(s, h1, status="rejected")["calls"]] == [ids["c4"]]
    assert [c["call_id"] for c in _list(s, h1, status="completed")["calls"]] == [ids["c2"], ids["c1"]]
    full = _list(s, h1)["calls"][-1]
    assert full["status"] == "completed" and full["charged_cents"] == 3000 and full["decision"]["decision"] == "routed"


def test_lists_refuse_bad_queries_in_plain_words(world):
    s, (_, h1) = world["s"], world["p1"]
    r = s.http.get("/v1/calls", params={"status": "won"}, headers=h1)
    assert r.status_code == 422 and r.json()["error"]["path"] == "$.status"
    assert "routed, connected, completed, failed, expired, rejected" in r.json()["error"]["message"]
    r = s.http.get("/v1/calls", params={"limit": "0"}, headers=h1)
    assert r.status_code == 422 and r.json()["error"]["path"] == "$.limit"
    assert s.http.get("/v1/calls").status_code == 401


def test_calls_list_as_csv(world):
    s, ids, (_, h1) = world["s"], world["ids"], world["p1"]
    r = s.http.get("/v1/calls", headers={**h1, "Accept": "text/csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [x["call_id"] for x in rows] == [ids[k] for k in ("c4", "c3", "c2", "c1")]
    assert rows[-1]["charged_cents"] == "3000" and rows[-1]["billable"] == "true" and rows[0]["reason"] == "no_eligible_bid"


def test_a_buyer_lists_and_reads_the_calls_its_routes_rang_and_nothing_else(world):
    s, ids = world["s"], world["ids"]
    (a_id, ha), (_, hb) = world["a"], world["b"]
    assert [c["call_id"] for c in _list(s, ha)["calls"]] == [ids[k] for k in ("c5", "c3", "c2", "c1")]
    assert [c["call_id"] for c in _list(s, hb)["calls"]] == [ids["c2"]]
    mine = s.http.get(f"/v1/calls/{ids['c2']}", headers=hb)
    assert mine.status_code == 200, mine.text
    v = mine.json()
    assert v["status"] == "completed" and v["billable"] and v["charged_cents"] == 2000
    assert [r["route_index"] for r in v["routes"]] == [1] and v["routes"][0]["price_cents"] == 2000
    assert {e["route_index"] for e in v["events"]} == {1}
    text = mine.text
    assert a_id not in text and "evidence" not in v and "payout_cents" not in text  # never other buyers' bids
    assert [r["campaign"] for r in v["routes"]] == ["cb"]
    moved = s.http.get(f"/v1/calls/{ids['c2']}", headers=ha).json()
    assert moved["status"] == "moved" and not moved["billable"] and [r["route_index"] for r in moved["routes"]] == [0]
    assert s.http.get(f"/v1/calls/{ids['c1']}", headers=hb).status_code == 404  # B only stood behind A: never rang
    assert s.http.get(f"/v1/calls/{ids['c4']}", headers=ha).status_code == 404
    assert s.http.get(f"/v1/calls/{ids['c5']}", headers=world["p1"][1]).status_code == 404  # another publisher's


def _report(s, h, group_by, csv_=False):
    r = s.http.get("/v1/reports", params={"group_by": group_by}, headers={**h, **({"Accept": "text/csv"} if csv_ else {})})
    assert r.status_code == 200, r.text
    return r if csv_ else {row["key"]: row for row in r.json()["rows"]}


def test_the_operator_report_by_publisher_adds_up(world):
    s = world["s"]
    (p1, _), (p2, _) = world["p1"], world["p2"]
    rows = _report(s, s.admin, "publisher")
    assert (rows[p1]["calls"], rows[p1]["routed"], rows[p1]["rejected"], rows[p1]["billable"]) == (4, 3, 1, 2)
    assert (rows[p1]["revenue_cents"], rows[p1]["payout_cents"], rows[p1]["margin_cents"]) == (5000, 4000, 1000)
    assert rows[p1]["fill_rate"] == 0.75 and rows[p1]["avg_duration_s"] == 105.0
    assert (rows[p2]["calls"], rows[p2]["billable"], rows[p2]["revenue_cents"], rows[p2]["avg_duration_s"]) == (1, 0, 0, 30.0)


def test_a_publisher_sees_its_own_rows_without_the_buyers_price(world):
    s, (p1, h1) = world["s"], world["p1"]
    rows = _report(s, h1, "reason")
    assert set(rows) == {"ok", "no_eligible_bid"} and rows["ok"]["calls"] == 3 and rows["no_eligible_bid"]["rejected"] == 1
    assert rows["ok"]["payout_cents"] == 4000 and rows["ok"]["revenue_cents"] is None and rows["ok"]["margin_cents"] is None
    assert set(_report(s, h1, "state")) == {"CA"}
    assert set(_report(s, h1, "publisher")) == {p1}
    by_vertical = _report(s, h1, "vertical")
    assert by_vertical[V]["calls"] == 3 and by_vertical["rep_nobody"]["calls"] == 1
    hours = _report(s, h1, "hour")
    assert sum(r["calls"] for r in hours.values()) == 4 and all(k.endswith(":00:00Z") for k in hours)


def test_buyers_see_their_pings_wins_and_spend_only(world):
    s = world["s"]
    (a_id, ha), (b_id, hb) = world["a"], world["b"]
    a = _report(s, ha, "campaign")
    assert set(a) == {"ca"} and (a["ca"]["calls"], a["ca"]["wins"], a["ca"]["billable"], a["ca"]["revenue_cents"]) == (4, 4, 1, 3000)
    assert a["ca"]["payout_cents"] is None and a["ca"]["win_rate"] == 1.0
    b = _report(s, hb, "reason")
    assert set(b) == {"fallback"} and (b["fallback"]["calls"], b["fallback"]["wins"], b["fallback"]["revenue_cents"]) == (4, 1, 2000)
    assert set(_report(s, hb, "buyer")) == {b_id}
    op = _report(s, s.admin, "buyer")
    assert op[a_id]["calls"] == 4 and op[b_id]["calls"] == 4 and op[a_id]["revenue_cents"] + op[b_id]["revenue_cents"] == 5000


def test_reports_refuse_an_unknown_group_and_speak_csv(world):
    s = world["s"]
    r = s.http.get("/v1/reports", params={"group_by": "colour"}, headers=s.admin)
    assert r.status_code == 422 and r.json()["error"]["path"] == "$.group_by"
    assert "buyer, publisher, campaign, vertical, state, hour, reason" in r.json()["error"]["message"]
    text = _report(s, s.admin, "vertical", csv_=True).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {x["key"]: x["calls"] for x in rows} == {V: "4", "rep_nobody": "1"}


def test_reports_come_back_after_a_restart(world):
    s = world["s"]
    before = {g: _report(s, s.admin, g) for g in ("publisher", "buyer", "reason")}
    stop_server(s)
    world["s"] = s2 = start_server(world["env"])
    for g, rows in before.items():
        assert _report(s2, s2.admin, g) == {k: {**r, "rtb_requests": 0} for k, r in rows.items()}, g


def test_a_live_bidders_report_counts_its_requests_answers_and_silence(world):
    import threading

    from exchange.messages import NoBid, RtbBid

    s = world["s"]
    r_id, r_key = s.account("buyer", "rep-rtb", deposit=50_000)
    rtb = Buyer(s.ws_url, r_key)
    try:
        ack = rtb.request(lambda q: Campaign(id="live", vertical="rep_rtb", bid_cents=0, destination="+18005550199", min_duration_s=60,
                                             rtb=True, seq=q))
        assert type(ack).__name__ == "Ack", ack
        _, pub_key = s.account("publisher", "rep-rtb-pub")
        h = {"Authorization": f"Bearer {pub_key}"}
        for n, answer in enumerate(("bid", "no_bid", "silence")):
            def respond(answer=answer) -> None:
                m = rtb.wait_for(lambda m: type(m).__name__ == "BidRequest", timeout=10)
                if answer == "bid":
                    rtb.send(RtbBid(request_id=m.request_id, bid_cents=3300))
                elif answer == "no_bid":
                    rtb.send(NoBid(request_id=m.request_id))

            t = threading.Thread(target=respond)
            t.start()
            d = s.http.post("/v1/calls", json={"caller": f"+1212555{n:04d}", "vertical": "rep_rtb",
                                               "tmax_ms": 2000 if answer != "silence" else 50}, headers=h).json()
            t.join(10)
            assert d["decision"] == ("routed" if answer == "bid" else "rejected"), d
        rows = _report(s, {"Authorization": f"Bearer {r_key}"}, "reason")
        assert {k: (r["calls"], r["rtb_requests"]) for k, r in rows.items()} == {"won": (1, 1), "no_bid": (1, 1), "timeout": (1, 1)}
        assert rows["won"]["rtb_answer_p50_ms"] is not None and rows["no_bid"]["rtb_answer_p50_ms"] is not None
        assert rows["timeout"]["rtb_answer_p50_ms"] is None
        assert _report(s, s.admin, "buyer")[r_id]["rtb_requests"] == 3
    finally:
        rtb.close()
