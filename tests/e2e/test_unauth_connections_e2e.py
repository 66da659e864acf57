"""Connections that have not presented a valid key are bounded per client address (issue 13,
deliverable 5): a flood of silent or key-guessing connections from one address is refused with a
429 once it holds ``EXCHANGE_HTTP_UNAUTH_PER_ADDRESS`` of them, while another address (a real
publisher) is served, and a connection stops counting once it authenticates. A real server
process and raw sockets; the hostile address is 127.0.0.2 (all of 127/8 is this host)."""

from __future__ import annotations

import socket
import time
from contextlib import ExitStack

import httpx
import pytest
from websockets.sync.client import connect

from tests.e2e.conftest import start_server, stop_server

LIMIT = 4
HOSTILE = "127.0.0.2"


@pytest.fixture(scope="module")
def server():
    s = start_server({"EXCHANGE_HTTP_UNAUTH_PER_ADDRESS": str(LIMIT), "EXCHANGE_HTTP_HEADER_TIMEOUT_S": "30"})
    yield s
    stop_server(s)


def _open(server, source: str = HOSTILE) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=(source, 0))
    sock.settimeout(10)
    return sock


def _read_response(sock: socket.socket) -> bytes:
    got = b""
    while b"\r\n\r\n" not in got:
        data = sock.recv(65536)
        if not data:
            return got
        got += data
    head, _, rest = got.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            break
        rest += data
    return head + b"\r\n\r\n" + rest


def _refused(sock: socket.socket) -> bytes:
    """What a refused connection reads: the 429, then the close."""
    got = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        got += data
    return got


def _get(sock: socket.socket, auth: str | None, path: str = "/v1/calls?limit=1") -> bytes:
    head = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
    if auth is not None:
        head += b"Authorization: Bearer " + auth.encode() + b"\r\n"
    sock.sendall(head + b"\r\n")
    return _read_response(sock)


def test_silent_connections_beyond_the_limit_are_refused_and_others_are_served(server):
    _, key = server.account("publisher", "unauth-real")
    held = [_open(server) for _ in range(LIMIT)]
    time.sleep(0.2)
    extra = _open(server)
    got = _refused(extra)
    assert got.startswith(b"HTTP/1.1 429"), got[:200]
    assert b'"too_many_connections"' in got
    # another address is not affected: a real publisher goes on working
    r = httpx.get(f"{server.url}/v1/calls?limit=1", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 200, r.text
    metrics = httpx.get(f"{server.url}/metrics", headers=server.admin, timeout=10).text
    assert "exchange_http_unauth_refused_total 1" in metrics.replace(".0", ""), metrics[-2000:]
    # a held connection that closes frees its place
    held.pop().close()
    time.sleep(0.2)
    again = _open(server)
    assert _get(again, key).startswith(b"HTTP/1.1 200")
    for s in held + [again]:
        s.close()


def test_a_wrong_key_keeps_counting_and_a_valid_one_frees_the_place(server):
    time.sleep(0.3)  # the previous test's sockets are gone
    _, key = server.account("publisher", "unauth-mixed")
    guessing = [_open(server) for _ in range(LIMIT)]
    for s in guessing:
        got = _get(s, "not-a-key")
        assert got.startswith(b"HTTP/1.1 401"), got[:200]
    # each is still open (kept alive) and still unauthenticated: the next is refused
    assert _refused(_open(server)).startswith(b"HTTP/1.1 429")
    # one of them presents a valid key: it stops counting, so a new connection is accepted
    assert _get(guessing[0], key).startswith(b"HTTP/1.1 200")
    time.sleep(0.1)
    fresh = _open(server)
    assert _get(fresh, key).startswith(b"HTTP/1.1 200")
    # the authenticated connections stay usable, and do not count again
    assert _get(guessing[0], key).startswith(b"HTTP/1.1 200")
    for s in guessing + [fresh]:
        s.close()


def test_websocket_handshakes_leave_the_count(server):
    time.sleep(0.3)
    _, key = server.account("buyer", "unauth-ws")
    with ExitStack() as stack:  # more sockets than the limit, held at once from one address
        sockets = [stack.enter_context(connect(f"{server.ws_url}/v1/buyers/ws", additional_headers={"Authorization": f"Bearer {key}"},
                                               source_address=(HOSTILE, 0))) for _ in range(LIMIT + 2)]
        for ws in sockets:
            ws.send('{"type":"ping","seq":1}')
            assert '"pong"' in str(ws.recv(timeout=5))
    # a burst of upgrades from the hostile address: each leaves the count once upgraded
    for _ in range(LIMIT * 3):
        with connect(f"{server.ws_url}/v1/buyers/ws", additional_headers={"Authorization": f"Bearer {key}"},
                     source_address=(HOSTILE, 0)) as ws:
            ws.send('{"type":"ping","seq":2}')
            assert '"pong"' in str(ws.recv(timeout=5))
