"""Read deadlines on the HTTP edge (issue 13): a client that trickles its headers or its body, or
says nothing at all, gets a 408 and its connection closed; normal requests and WebSockets are
untouched. A real server process and raw sockets."""

from __future__ import annotations

import socket
import time

import pytest
from websockets.sync.client import connect

from tests.e2e.conftest import start_server, stop_server

DEADLINE_S = 1.0


@pytest.fixture(scope="module")
def server():
    s = start_server({"EXCHANGE_HTTP_HEADER_TIMEOUT_S": str(DEADLINE_S), "EXCHANGE_HTTP_BODY_TIMEOUT_S": str(DEADLINE_S)})
    yield s
    stop_server(s)


def _open(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.settimeout(10)
    return sock


def _trickle_until_closed(sock: socket.socket, chunks: list[bytes], gap_s: float = 0.25) -> tuple[bytes, float]:
    """Send ``chunks`` one by one ``gap_s`` apart (a slow client) while reading; returns what the
    server sent and the seconds until it closed."""
    t0, got = time.monotonic(), b""
    sock.setblocking(False)
    i = 0
    while time.monotonic() - t0 < 15:
        if i < len(chunks):
            try:
                sock.send(chunks[i])
            except OSError:
                pass
            i += 1
        time.sleep(gap_s)
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            continue
        except OSError:
            break
        if not data:
            break
        got += data
    return got, time.monotonic() - t0


def test_headers_sent_a_byte_at_a_time_get_408_and_a_close(server):
    head = b"POST /v1/calls HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    got, took = _trickle_until_closed(_open(server), [head[i:i + 1] for i in range(len(head))])
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert b"request_timeout" in got
    assert took < DEADLINE_S + 3, took


def test_a_body_that_never_finishes_gets_408_and_a_close(server):
    _, key = server.account("publisher", "deadline-pub")
    head = (b"POST /v1/calls HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{")
    got, took = _trickle_until_closed(_open(server), [head] + [b" "] * 100)
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert took < DEADLINE_S + 3, took


def test_a_connection_that_says_nothing_is_closed(server):
    got, took = _trickle_until_closed(_open(server), [])
    assert got.startswith(b"HTTP/1.1 408") and took < DEADLINE_S + 3, (got[:200], took)


def test_normal_requests_and_websockets_outlive_the_deadlines(server):
    sock = _open(server)
    for _ in range(3):  # a kept-alive connection idle longer than the header deadline between requests
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"}"):
            got += sock.recv(65536)
        assert got.startswith(b"HTTP/1.1 200"), got[:200]
        time.sleep(DEADLINE_S * 1.5)
    sock.close()
    _, key = server.account("buyer", "deadline-ws")
    with connect(f"{server.ws_url}/v1/buyers/ws", additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        time.sleep(DEADLINE_S * 2.5)
        ws.send('{"type":"ping","seq":7}')
        assert '"pong"' in str(ws.recv(timeout=5))


@pytest.mark.parametrize("path", ["/v1/calls", "/v1/accounts"])
def test_a_client_that_sends_a_whole_oversized_body_reads_the_413(server, path):
    """8 MiB sent in full without ``Expect: 100-continue`` (as Python's urllib does): the server
    reads and drops it, then answers 413 and closes, so the client sees the answer, not a reset."""
    import threading

    # (the call path takes a publisher's key, account creation the operator's)
    auth = f"Bearer {server.account('publisher', 'big')[1]}" if path == "/v1/calls" else server.admin["Authorization"]
    body = b"x" * (8 << 20)
    sock = _open(server)
    sock.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth.encode() +
                 b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    errors: list[BaseException] = []

    def send() -> None:
        try:
            sock.sendall(body)
        except OSError as exc:
            errors.append(exc)

    t = threading.Thread(target=send)
    t.start()
    got = b""
    while True:
        data = sock.recv(65536)
        if not data:
            break
        got += data
    t.join(10)
    assert got.startswith(b"HTTP/1.1 413"), got[:300]
    assert b"body_too_large" in got and not errors, (got[:300], errors)
