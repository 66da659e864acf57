"""Nodes of one market as real processes on real PostgreSQL and Redis: the registry refuses
a second process with a live id, a node on another database of the market, and a process
without an id beside live nodes; a node whose lease is lost takes no call (fail closed) and
takes calls again once it holds its lease; an edge forwards the HTTP API to the seller."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import redis

from exchange.settings import SettingsError, load, nats_names
from tests.cluster.conftest import REDIS_URL, ROOT, Market, refused_start, start_node
from tests.e2e.conftest import ADMIN, free_port, stop_server
from tests.integration.conftest import _drop, schema_url


def wait(pred, timeout_s: float = 10, what: str = "") -> None:
    end = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def call(http: httpx.Client, key: str) -> httpx.Response:
    return http.post("/v1/calls", json={"caller": "+14155550100", "vertical": "solar", "state": "CA"},
                     headers={"Authorization": f"Bearer {key}"})


def test_every_shared_name_is_scoped_by_the_market() -> None:
    from compliance.runtime import ComplianceRuntime
    from compliance.gate import Gate

    assert nats_names(load({})) == ("DCE_EVENTS", "dce.events")  # the defaults as before
    m = load({"EXCHANGE_MARKET": "blue-1"})
    assert nats_names(m) == ("BLUE_1_EVENTS", "blue-1.events")
    assert ComplianceRuntime.from_settings(Gate(), m).redis_prefix == "blue-1:"
    assert nats_names(load({"EXCHANGE_MARKET": "blue", "EXCHANGE_NATS_SUBJECT": "x.y"}))[1] == "x.y"


def test_a_node_id_needs_postgresql_and_redis() -> None:
    try:
        load({"EXCHANGE_NODE_ID": "n1"})
    except SettingsError as exc:
        text = str(exc)
    assert "EXCHANGE_NODE_ID needs EXCHANGE_REDIS_URL" in text and "needs a PostgreSQL EXCHANGE_DATABASE_URL" in text
    try:
        load({"EXCHANGE_NODE_ID": "bad id!", "EXCHANGE_MARKET": ""})
    except SettingsError as exc:
        assert "EXCHANGE_NODE_ID" in str(exc)


def test_the_registry_refuses_a_live_id_another_database_and_a_process_without_an_id(market: Market) -> None:
    a = start_node(market, "a")
    try:
        assert a.http.get("/readyz").json()["role"] == "seller"
        code, out = refused_start(market, "a")
        assert code == 2 and f"node id 'a' is already alive in market '{market.name}'" in out, out
        other = market.database_url.rsplit("schema=", 1)[1] + "_other"
        try:
            code, out = refused_start(market, "b", EXCHANGE_DATABASE_URL=schema_url(other))
        finally:
            asyncio.run(_drop(other))  # made by the refused node's check of its database
        assert code == 2 and f"market '{market.name}' uses the database" in out, out
        code, out = refused_start(market, None)
        assert code == 2 and f"used by the live nodes {market.name}/a" in out, out
    finally:
        stop_server(a)
    b = start_node(market, "a")  # the id is free once its holder stopped (its lease released)
    stop_server(b)


def test_a_node_whose_lease_is_lost_takes_no_call_until_it_holds_it_again(market: Market) -> None:
    node = start_node(market, "n1")
    r = redis.Redis.from_url(REDIS_URL)
    try:
        _, pub = node.account("publisher", "lease-pub")
        assert call(node.http, pub).status_code == 200
        key = f"{market.name}:node:n1"
        r.delete(key)  # lapsed (as after a Redis restart): the next renewal takes it again
        wait(lambda: r.exists(key) == 1, what="the lease taken again")
        assert call(node.http, pub).status_code == 200
        r.set(key, "someone-else|{}")  # taken over by another process: this node must stop selling
        wait(lambda: node.http.get("/readyz").status_code == 503, what="/readyz 503")
        res = call(node.http, pub)
        assert res.status_code == 503 and res.json()["error"]["code"] == "node_stale", res.text
        assert res.headers["retry-after"] == "1"
        dep = node.http.post("/v1/accounts", json={"kind": "buyer", "name": "x"}, headers=node.admin)
        assert dep.status_code == 503 and dep.json()["error"]["code"] == "node_stale"
        assert node.http.get("/v1/accounts/x/balance", headers=node.admin).status_code != 503  # reads still served
    finally:
        r.close()
        stop_server(node)


def test_an_edge_forwards_the_api_to_the_seller_and_refuses_unknown_keys_itself(market: Market) -> None:
    seller = start_node(market, "s")
    edge = start_node(market, "e")
    try:
        assert edge.http.get("/readyz").json()["role"] == "edge"
        made = edge.http.post("/v1/accounts", json={"kind": "publisher", "name": "via-edge"}, headers=edge.admin)
        assert made.status_code == 201, made.text  # made by the seller, answered through the edge
        pub = made.json()["api_key"]
        res = call(edge.http, pub)  # a key the edge never saw: read from the store, the call decided by the seller
        assert res.status_code == 200 and res.json()["reason"] == "no_eligible_bid", res.text
        listed = seller.http.get("/v1/calls", headers={"Authorization": f"Bearer {pub}"}).json()["calls"]
        assert [c["call_id"] for c in listed] == [res.json()["call_id"]]
        bad = edge.http.post("/v1/calls", json={}, headers={"Authorization": f"Bearer {pub}"})
        assert bad.status_code == 422 and bad.json()["error"]["path"] is not None  # the seller's validation, passed back
        unknown = call(edge.http, "dce_not_a_key")
        assert unknown.status_code == 401 and unknown.headers["www-authenticate"] == "Bearer"  # refused at the edge
        assert edge.http.get("/metrics").status_code == 200
    finally:
        stop_server(edge)
        stop_server(seller)


def test_cluster_command_starts_n_nodes_and_stops_them(market: Market) -> None:
    base = free_port()
    env = {**os.environ, "EXCHANGE_ADMIN_KEY": ADMIN, **market.env(None)}
    bare = subprocess.run([sys.executable, "-m", "exchange", "cluster", "--nodes", "2"], cwd=ROOT, capture_output=True, text=True,
                          env={k: v for k, v in env.items() if k not in ("EXCHANGE_DATABASE_URL", "EXCHANGE_REDIS_URL")}, timeout=30)
    assert bare.returncode == 2 and "EXCHANGE_REDIS_URL" in bare.stderr and "cannot be shared" in bare.stderr, bare.stderr
    keyless = subprocess.run([sys.executable, "-m", "exchange", "cluster", "--nodes", "2"], cwd=ROOT, capture_output=True, text=True,
                             env={k: v for k, v in env.items() if not k.startswith("EXCHANGE_MASTER_KEY")}, timeout=30)
    assert keyless.returncode == 2 and "EXCHANGE_MASTER_KEY" in keyless.stderr, keyless.stderr  # said before any node starts
    if free_port() == base + 1:  # (rare) the port after base is taken: pick another
        base = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "exchange", "cluster", "--nodes", "2", "--port", str(base)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        roles = {}
        end = time.monotonic() + 60
        while len(roles) < 2 and time.monotonic() < end:
            for i in range(2):
                try:
                    r = httpx.get(f"http://127.0.0.1:{base + i}/readyz", timeout=1)
                    if r.status_code == 200:
                        roles[i] = (r.json()["node"], r.json()["role"])
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        assert roles == {0: ("node-1", "seller"), 1: ("node-2", "edge")}
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
