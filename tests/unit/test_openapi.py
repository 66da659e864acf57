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
