"""The OpenAPI document lists every route the app serves, and nothing else."""

from __future__ import annotations

import tempfile

from exchange.app import build_app
from exchange.openapi import document
from exchange.settings import Settings


def _routes() -> tuple[set[tuple[str, str]], set[str]]:
    app = build_app(Settings(database_url=f"sqlite:///{tempfile.mkdtemp(prefix='dce-openapi-')}/unused.db"))
    http: set[tuple[str, str]] = set()
    sockets: set[str] = set()
    for r in app.routes:
        methods = getattr(r, "methods", None)
        if methods is None:
            sockets.add(r.path)
        else:
            http.update((m.lower(), r.path) for m in methods if m != "HEAD")
    return http, sockets


def test_every_http_route_is_an_operation_of_the_document():
    http, sockets = _routes()
    doc = document()
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert http == documented, f"undocumented: {sorted(http - documented)}; documented but not served: {sorted(documented - http)}"
    assert sockets == set(doc["x-websockets"])


def test_every_operation_says_what_it_is_and_how_it_fails():
    for path, ops in document()["paths"].items():
        for method, op in ops.items():
            assert op["summary"], (method, path)
            assert "4XX" in op["responses"] or path in ("/healthz", "/readyz", "/metrics", "/openapi.json"), (method, path)
            names = [p["name"] for p in op["parameters"] if p["in"] == "path"]
            assert names == [seg[1:-1] for seg in path.split("/") if seg.startswith("{")], (method, path)


def test_validation_messages_are_plain_words_with_the_allowed_values():
    import pytest

    from exchange.codec import decode_body, decode_buyer_frame
    from exchange.errors import Invalid
    from exchange.messages import AccountCreate, CallRequest

    def refusal(raw: bytes, t: type) -> tuple[str | None, str]:
        with pytest.raises(Invalid) as e:
            decode_body(raw, t)
        return e.value.path, e.value.message

    assert refusal(b'{"caller":"+14155550100","vertical":"Auto"}', CallRequest) == (
        "$.vertical", "must be lowercase letters, digits and _ only (like auto_insurance)")
    assert refusal(b'{"caller":"+14155550100","vertical":"auto","direction":"up"}', CallRequest) == (
        "$.direction", "'up' is not an allowed value; use one of: inbound, outbound")
    assert refusal(b'{"kind":"seller","name":"x"}', AccountCreate)[1].endswith("use one of: buyer, publisher")
    assert refusal(b'{"caller":"+14155550100","vertical":"auto","tmax_ms":99999999}', CallRequest)[1] == "must be at most 60000"
    assert refusal(b'{"caller":"+14155550100"}', CallRequest) == ("$.vertical", "the field vertical is required")
    _, errors, _ = decode_buyer_frame(b'{"type":"campaign","id":"c1","vertical":"auto","bid_cents":1,"destination":"+18005550199",'
                                      b'"min_duration_s":1,"schedule":{"tz":"UTC","hours":{"monday":[["09:00","17:00"]]}}}')
    assert errors[0].message == "'monday' is not an allowed value; use one of: mon, tue, wed, thu, fri, sat, sun"
    _, errors, _ = decode_buyer_frame(b'{"type":"bids"}')
    assert errors[0].code == "unknown_type" and "use one of: campaign, bid, pause, resume" in errors[0].message
    for raw in (b'{"type":"campaign","id":"c 1"}', b'[{"type":"bid","campaign":"c","bid_cents":-1}]'):
        _, errors, _ = decode_buyer_frame(raw)
        assert "regex" not in errors[0].message and "`" not in errors[0].message, errors[0].message
