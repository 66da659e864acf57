"""HTTP bidders' pure half: a ping compiled (errors with JSON paths), rendered, and an answer
mapped; the mapper fuzzed with Hypothesis (any bytes, any JSON: a bid within bounds or a
known no_bid reason, never an exception)."""

from __future__ import annotations

import json
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from exchange.pingspec import (MAX_CENTS, NO_BID_REASONS, CallView, PingMap, PingSpec, Priced, compile_ping, parse_path, read_answer,
                               render)
from routing.standing import CampaignError

VIEW = CallView("call_1", "call_1.0", "c1", "auto_insurance", "CA", 415, "inbound", 1250, 80, "+14155550100", {"src": 'a"b', "n": 3})


def plan(url: str = "https://bidder.example/ping", **kw):
    m = kw.pop("map", PingMap(bid_cents="$.bid"))
    return compile_ping(PingSpec(url=url, map=m, **kw), True)


def refused(**kw) -> str:
    with pytest.raises(CampaignError) as exc:
        plan(**kw)
    return exc.value.path


def test_errors_name_the_json_path_of_the_field_at_fault():
    assert refused(map=PingMap(bid_cents="bid")) == "$.ping.map.bid_cents"
    assert refused(map=PingMap(bid_cents="$.a", min_duration_s="$.x..y")) == "$.ping.map.min_duration_s"
    assert refused(map=PingMap(bid_cents="$.a", accepted="$[")) == "$.ping.map.accepted"
    assert refused(body_template={"lead": [{"x": "{ssn}"}]}) == "$.ping.body_template.lead[0].x"
    assert refused(body_template={"a b": "{nope}"}) == '$.ping.body_template["a b"]'
    assert refused(body_template="state={state}&x={zip}") == "$.ping.body_template"
    assert refused(url="gopher://x/") == "$.ping.url"
    assert refused(url="https://user:pw@x/") == "$.ping.url"
    assert refused(url="https://x/{state}/ping") == "$.ping.url"  # placeholders in the query only
    assert refused(method="GET", body_template={"a": 1}) == "$.ping.body_template"
    assert refused(headers={"Content-Length": "3"}) == '$.ping.headers["Content-Length"]'
    assert refused(headers={"Content-Type": "text/xml"}, body_template={"a": 1}) == "$.ping.headers"
    deep: dict = {"a": "x"}
    for _ in range(10):
        deep = {"a": deep}
    assert refused(body_template=deep).startswith("$.ping.body_template.a.a")
    with pytest.raises(CampaignError) as exc:
        compile_ping(PingSpec(url="https://x/", map=PingMap(bid_cents="$.a")), False)
    assert exc.value.path == "$.ping"


def test_json_paths():
    assert parse_path("$.a.b[2]['c d'][\"e\"]", "$") == ("a", "b", 2, "c d", "e")
    assert parse_path("$", "$") == ()


def test_object_template_keeps_types_and_escapes_nothing_twice():
    p = plan(body_template={"st": "{state}", "ac": "{area_code}", "who": "{caller}", "src": "{tags.src}", "missing": "{tags.none}",
                            "txt": "{vertical}/{floor_dollars}", "k": [True, None, 1.5]})
    url, body = render(p, VIEW, None)
    assert url == "https://bidder.example/ping"
    assert json.loads(body) == {"st": "CA", "ac": 415, "who": "+14155550100", "src": 'a"b', "missing": None,
                                "txt": "auto_insurance/12.50", "k": [True, None, 1.5]}


def test_text_templates_escape_for_their_content_type():
    _, body = render(plan(body_template='{"src":"{tags.src}","ac":{area_code}}'), VIEW, None)
    assert json.loads(body) == {"src": 'a"b', "ac": 415}
    form = plan(body_template="src={tags.src}&st={state}", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert render(form, VIEW, None)[1] == b"src=a%22b&st=CA"
    url, body = render(plan(url="https://x.example/p?st={state}&src={tags.src}", method="GET"), VIEW, None)
    assert url == "https://x.example/p?st=CA&src=a%22b" and body == b""


def test_native_body_is_the_bid_request_without_the_caller():
    _, body = render(plan(), VIEW, {"type": "bid_request", "request_id": "call_1.0"})
    assert b"4155550100" not in body and json.loads(body)["type"] == "bid_request"


@pytest.mark.parametrize("answer,unit,want", [
    (b'{"bid": 2500}', "cents", Priced(2500, None, None)),
    (b'{"bid": "2500"}', "cents", Priced(2500, None, None)),
    (b'{"bid": 25.5}', "dollars", Priced(2550, None, None)),
    (b'{"bid": "25.999"}', "dollars", Priced(2599, None, None)),  # a fraction of a cent: rounded down
    (b'{"bid": 0.1}', "dollars", Priced(10, None, None)),  # exact, not 9.999...
    (b'{"bid": "$12"}', "dollars", Priced(1200, None, None)),
    (b'{"bid": 0}', "cents", "declined"),
    (b'{"bid": null}', "cents", "declined"),
    (b'{"bid": -1}', "cents", "out_of_range"),
    (b'{"bid": 10000.01}', "dollars", "out_of_range"),
    (b'{"bid": true}', "cents", "wrong_type"),
    (b'{"bid": [1]}', "cents", "wrong_type"),
    (b'{"price": 1}', "cents", "unmapped"),
    (b'[1,2]', "cents", "unmapped"),
    (b'{"bid": 1', "cents", "malformed"),
    (b'', "cents", "malformed"),
])
def test_answers_map_to_a_bid_or_a_reason(answer, unit, want):
    assert read_answer(plan(bid_unit=unit), 200, answer) == want


def test_destination_duration_and_accepted():
    p = plan(map=PingMap(bid_cents="$.r.bid", destination="$.r.to", min_duration_s="$.r.dur", accepted="$.ok"))
    assert read_answer(p, 200, b'{"ok": true, "r": {"bid": 900, "to": "(415) 555-0101", "dur": "90"}}') == Priced(900, "+14155550101", 90)
    assert read_answer(p, 200, b'{"ok": "yes", "r": {"bid": 900, "to": "sip:buyer@pbx.example"}}') == Priced(900, "sip:buyer@pbx.example", None)
    assert read_answer(p, 200, b'{"ok": false, "r": {"bid": 900}}') == "declined"
    assert read_answer(p, 200, b'{"ok": "maybe", "r": {"bid": 900}}') == "wrong_type"
    assert read_answer(p, 200, b'{"r": {"bid": 900, "to": "call me"}}') == "wrong_type"
    assert read_answer(p, 200, b'{"r": {"bid": 900, "dur": 999999}}') == "wrong_type"
    assert read_answer(p, 500, b'{"r": {"bid": 900}}') == "http_status"
    assert read_answer(p, 302, b"") == "http_status"


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(doc=st.one_of(st.binary(max_size=200), json_values.map(lambda v: msgspec.json.encode(v))),
       unit=st.sampled_from(["cents", "dollars"]), status=st.sampled_from([200, 204, 301, 404, 500]))
def test_mapper_never_raises_and_bids_stay_in_bounds(doc, unit, status):
    p = plan(bid_unit=unit, map=PingMap(bid_cents="$.bid", destination="$.to", min_duration_s="$.d", accepted="$.ok"))
    got = read_answer(p, status, doc)
    if isinstance(got, str):
        assert got in NO_BID_REASONS
    else:
        assert 1 <= got.bid_cents <= MAX_CENTS and isinstance(got.bid_cents, int)
        assert got.min_duration_s is None or 0 <= got.min_duration_s <= 86_400
        assert got.destination is None or got.destination.startswith(("+", "sip:", "sips:"))


@settings(max_examples=200, deadline=None)
@given(bid=st.decimals(min_value=0, max_value=10_000, places=4, allow_nan=False))
def test_dollars_are_cents_rounded_down(bid: Decimal):
    got = read_answer(plan(bid_unit="dollars"), 200, b'{"bid": %s}' % str(bid).encode())
    cents = int((bid * 100).to_integral_value("ROUND_FLOOR"))
    assert got == (Priced(cents, None, None) if cents else "declined")


@pytest.mark.parametrize("answer,m,unit,want", [  # the README's ready-made mappings, verbatim
    ({"bid": 12.5, "phone": "8005550199"}, {"bid_cents": "$.bid", "destination": "$.phone"}, "dollars", Priced(1250, "+18005550199", None)),
    ({"bid_cents": 1250, "destination": "+18005550199", "min_duration_s": 90},
     {"bid_cents": "$.bid_cents", "destination": "$.destination", "min_duration_s": "$.min_duration_s"}, "cents", Priced(1250, "+18005550199", 90)),
    ({"accepted": True, "payout": "12.50", "number": "(800) 555-0199", "duration": 120},
     {"bid_cents": "$.payout", "destination": "$.number", "min_duration_s": "$.duration", "accepted": "$.accepted"}, "dollars",
     Priced(1250, "+18005550199", 120)),
    ({"status": "accepted", "result": {"price": 1250, "sip": "sip:queue@pbx.buyer.example"}},
     {"bid_cents": "$.result.price", "destination": "$.result.sip", "accepted": "$.status"}, "cents", Priced(1250, "sip:queue@pbx.buyer.example", None)),
    ({"status": "rejected", "result": {"price": 1250}}, {"bid_cents": "$.result.price", "accepted": "$.status"}, "cents", "declined"),
    ({"data": [{"bid": {"amount": "12.50"}, "routing": {"phone_number": "+18005550199", "buffer": 60}}]},
     {"bid_cents": "$.data[0].bid.amount", "destination": "$.data[0].routing.phone_number", "min_duration_s": "$.data[0].routing.buffer"},
     "dollars", Priced(1250, "+18005550199", 60)),
    ({"Rejected": False, "BidAmount": 12.5}, {"bid_cents": "$.BidAmount"}, "dollars", Priced(1250, None, None)),
    ({"Rejected": True, "BidAmount": 0}, {"bid_cents": "$.BidAmount"}, "dollars", "declined"),
])
def test_ready_made_mappings(answer, m, unit, want):
    assert read_answer(plan(map=PingMap(**m), bid_unit=unit), 200, json.dumps(answer).encode()) == want
