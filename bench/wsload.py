"""A cheap WebSocket load generator for buyer bid ingest: a raw-socket RFC 6455 client.

It does the HTTP/1.1 upgrade itself (``Authorization: Bearer KEY``, subprotocol
``dce.json.v1``), pre-builds one large buffer of masked text frames holding ``bid`` messages
(encoded once with ``exchange.messages.json_encoder``, masked once with a fixed key), and then
only calls ``sock.sendall`` on slices of that buffer for the duration. At the end it sends a
``ping`` with a fresh ``seq`` and waits for the matching ``pong`` (or ``ack``), so the measured
interval covers the server having processed every frame sent before it:

    bids_per_s = bids sent / (final pong received - first byte sent)

A reader thread reads, parses and counts whatever the server sends meanwhile (errors, acks),
answers server pings, and notices a close, so TCP buffers never deadlock.

    python -m bench.wsload --url ws://127.0.0.1:8080/v1/buyers/ws --key KEY \
        --campaigns 1000 --batch 100 --seconds 5

prints one JSON line of results.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import socket
import struct
import sys
import threading
import time
from urllib.parse import urlsplit

import msgspec

from exchange.messages import Bid, Ping, json_encoder

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MASK_KEY = b"\x37\xfa\x21\x3d"  # fixed: the masked bytes are computed once, at build time
FINAL_SEQ = 7_770_000_001
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class HandshakeError(Exception):
    pass


# ---------------------------------------------------------------- frames (client -> server)
def mask(payload: bytes, key: bytes = MASK_KEY) -> bytes:
    n = len(payload)
    if n == 0:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def client_frame(payload: bytes, opcode: int = OP_TEXT, key: bytes = MASK_KEY) -> bytes:
    """One complete, final, masked client frame."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + key + mask(payload, key)


def bid_payloads(campaigns: int, batch: int, total_bids: int) -> list[bytes]:
    """JSON payloads of ``total_bids`` bids, ``batch`` per frame (batch 1: a bare object).

    Campaign ids cycle through c0..c{campaigns-1}; bid_cents vary (100..5099 cents).
    """
    out: list[bytes] = []
    i = 0
    frames = max(1, total_bids // batch)
    for _ in range(frames):
        bids = []
        for _ in range(batch):
            bids.append(Bid(campaign=f"c{i % campaigns}", bid_cents=100 + (i * 7919) % 5000))
            i += 1
        out.append(json_encoder.encode(bids[0] if batch == 1 else bids))
    return out


def build_chunks(payloads: list[bytes], bids_per_frame: int, chunk_bytes: int) -> list[tuple[bytes, int]]:
    """Masked frames concatenated into chunks of about ``chunk_bytes`` (frame-aligned),
    each with the number of bids it carries."""
    chunks: list[tuple[bytes, int]] = []
    parts: list[bytes] = []
    size = 0
    bids = 0
    for p in payloads:
        f = client_frame(p)
        parts.append(f)
        size += len(f)
        bids += bids_per_frame
        if size >= chunk_bytes:
            chunks.append((b"".join(parts), bids))
            parts, size, bids = [], 0, 0
    if parts:
        chunks.append((b"".join(parts), bids))
    return chunks


# ---------------------------------------------------------------- handshake
def connect(url: str, key: str | None, subprotocol: str = "dce.json.v1", timeout: float = 10.0) -> tuple[socket.socket, bytes]:
    """Open the socket and upgrade it; returns the socket and any bytes read past the headers."""
    u = urlsplit(url)
    if u.scheme != "ws":
        raise HandshakeError(f"only ws:// is supported, got {url!r}")
    host = u.hostname or "127.0.0.1"
    port = u.port or 80
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    nonce = base64.b64encode(os.urandom(16))
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {nonce.decode()}",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Protocol: {subprotocol}",
    ]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise HandshakeError(f"connection closed during handshake: {buf[:300]!r}")
        buf += data
        if len(buf) > 1 << 16:
            raise HandshakeError("handshake response too large")
    head, _, rest = buf.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or parts[1] != "101":
        body = rest[:300]
        raise HandshakeError(f"expected 101, got {status_line!r} {body!r}")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    expect = base64.b64encode(hashlib.sha1(nonce + GUID).digest()).decode()
    if headers.get("sec-websocket-accept") != expect:
        raise HandshakeError("bad Sec-WebSocket-Accept")
    if headers.get("sec-websocket-protocol") != subprotocol:
        raise HandshakeError(f"server chose subprotocol {headers.get('sec-websocket-protocol')!r}")
    sock.settimeout(None)
    return sock, rest


# ---------------------------------------------------------------- reader (server -> client)
class Reader(threading.Thread):
    """Reads, parses and counts server frames; signals the final pong/ack."""

    def __init__(self, sock: socket.socket, leftover: bytes, final_seq: int) -> None:
        super().__init__(name="wsload-reader", daemon=True)
        self.sock = sock
        self.buf = bytearray(leftover)
        self.final_seq = final_seq
        self.final = threading.Event()
        self.final_at: float | None = None
        self.final_msg: dict | None = None
        self.closed = threading.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.counts: dict[str, int] = {}
        self.error_samples: list[dict] = []
        self.frames = 0
        self.exc: str | None = None
        self._frag: bytearray | None = None
        self.pending: list[bytes] = []  # control frames for the sending thread to send

    def run(self) -> None:
        try:
            self._parse()
            while not self.closed.is_set():
                data = self.sock.recv(1 << 18)
                if not data:
                    break
                self.buf += data
                self._parse()
        except OSError as exc:
            if not self.closed.is_set():
                self.exc = f"{type(exc).__name__}: {exc}"
        finally:
            self.closed.set()

    def _parse(self) -> None:
        buf = self.buf
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            hl = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = struct.unpack_from("!H", buf, pos + 2)[0]
                hl = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                hl = 10
            if b1 & 0x80:  # servers must not mask; tolerate it anyway
                hl += 4
            if n - pos < hl + length:
                break
            payload = bytes(buf[pos + hl : pos + hl + length])
            if b1 & 0x80:
                payload = mask(payload, bytes(buf[pos + hl - 4 : pos + hl]))
            pos += hl + length
            self._frame(b0 & 0x80, b0 & 0x0F, payload)
        del buf[:pos]

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        self.frames += 1
        if opcode == OP_PING:
            # Answered by the sending thread between chunks: never block this reader on a send.
            self.pending.append(client_frame(payload, OP_PONG, os.urandom(4)))
            return
        if opcode == OP_PONG:
            return
        if opcode == OP_CLOSE:
            self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            self.close_reason = payload[2:].decode("utf-8", "replace")
            self.closed.set()
            return
        if opcode in (OP_TEXT, OP_BINARY):
            if not fin:
                self._frag = bytearray(payload)
                return
            self._message(payload, opcode == OP_BINARY)
        elif opcode == OP_CONT and self._frag is not None:
            self._frag += payload
            if fin:
                data, self._frag = bytes(self._frag), None
                self._message(data, False)

    def _message(self, data: bytes, binary: bool) -> None:
        try:
            obj = msgspec.msgpack.decode(data) if binary else msgspec.json.decode(data)
        except msgspec.DecodeError:
            self.counts["undecodable"] = self.counts.get("undecodable", 0) + 1
            return
        for m in obj if isinstance(obj, list) else [obj]:
            kind = m.get("type", "?") if isinstance(m, dict) else "?"
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if kind == "error" and len(self.error_samples) < 5:
                self.error_samples.append(m)
            if kind in ("pong", "ack") and m.get("seq") == self.final_seq and not self.final.is_set():
                self.final_at = time.perf_counter()
                self.final_msg = m
                self.final.set()


# ---------------------------------------------------------------- the run
def run(
    url: str,
    key: str | None,
    campaigns: int,
    batch: int,
    seconds: float,
    buffer_bids: int = 100_000,
    chunk_bytes: int = 128 << 10,
    drain_timeout: float = 60.0,
    final_seq: int = FINAL_SEQ,
) -> dict:
    if campaigns < 1 or batch < 1:
        raise ValueError("campaigns and batch must be >= 1")
    build0 = time.perf_counter()
    payloads = bid_payloads(campaigns, batch, max(batch, buffer_bids - buffer_bids % batch))
    chunks = build_chunks(payloads, batch, chunk_bytes)
    frame_bytes = sum(len(p) for p in payloads) / len(payloads)
    ping = client_frame(json_encoder.encode(Ping(seq=final_seq)))
    build_s = time.perf_counter() - build0

    sock, leftover = connect(url, key)
    reader = Reader(sock, leftover, final_seq)
    reader.start()

    sent_bids = 0
    sent_frames_bytes = 0
    send_error: str | None = None
    nchunks = len(chunks)
    i = 0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    deadline = t0 + seconds
    sendall = sock.sendall
    closed = reader.closed
    pending = reader.pending

    def flush(frames: list[bytes]) -> None:
        while frames:
            sendall(frames.pop(0))

    try:
        while True:
            data, nb = chunks[i]
            sendall(data)
            sent_bids += nb
            sent_frames_bytes += len(data)
            i += 1
            if i == nchunks:
                i = 0
            if pending:
                flush(pending)
            if time.perf_counter() >= deadline or closed.is_set():
                break
        t_sent = time.perf_counter()
        if not closed.is_set():
            sendall(ping)
    except OSError as exc:
        send_error = f"{type(exc).__name__}: {exc}"
        t_sent = time.perf_counter()
    # Wait for the matching pong/ack, a close, or the timeout.
    end_by = time.perf_counter() + drain_timeout
    while not reader.final.is_set() and not closed.is_set() and time.perf_counter() < end_by:
        reader.final.wait(0.05)
        if pending and send_error is None:
            try:
                flush(pending)
            except OSError as exc:
                send_error = f"{type(exc).__name__}: {exc}"
    t_end = reader.final_at if reader.final_at is not None else time.perf_counter()
    cpu_s = time.process_time() - cpu0
    try:
        sock.sendall(client_frame(struct.pack("!H", 1000), OP_CLOSE))
    except OSError:
        pass
    closed.wait(1.0)
    try:
        sock.close()
    except OSError:
        pass
    reader.join(1.0)

    elapsed = t_end - t0
    ok = reader.final.is_set()
    return {
        "url": url,
        "batch": batch,
        "campaigns": campaigns,
        "seconds": seconds,
        "bids": sent_bids,
        "frames": sent_bids // batch,
        "bytes_sent": sent_frames_bytes,
        "avg_payload_bytes": round(frame_bytes, 1),
        "pong": ok,
        "final": reader.final_msg,
        "elapsed_s": round(elapsed, 6),
        "send_s": round(t_sent - t0, 6),
        "drain_s": round(t_end - t_sent, 6) if ok else None,
        "bids_per_s": round(sent_bids / elapsed, 1) if ok and elapsed > 0 else 0.0,
        "frames_per_s": round(sent_bids / batch / elapsed, 1) if ok and elapsed > 0 else 0.0,
        "client_cpu_s": round(cpu_s, 4),
        "client_cpu_pct": round(100.0 * cpu_s / elapsed, 1) if elapsed > 0 else None,
        "received": reader.counts,
        "errors": reader.counts.get("error", 0),
        "error_samples": reader.error_samples,
        "close_code": reader.close_code,
        "close_reason": reader.close_reason,
        "send_error": send_error,
        "reader_error": reader.exc,
        "build_s": round(build_s, 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Blast pre-built bid frames at the buyer WebSocket.")
    ap.add_argument("--url", required=True, help="ws://HOST:PORT/v1/buyers/ws")
    ap.add_argument("--key", default=None, help="buyer API key (Authorization: Bearer)")
    ap.add_argument("--campaigns", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=1, help="bids per frame (1 = one bare object per frame)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--buffer-bids", type=int, default=100_000, help="bids in the pre-built buffer (cycled)")
    ap.add_argument("--chunk-bytes", type=int, default=128 << 10, help="bytes per sendall (frame-aligned)")
    ap.add_argument("--drain-timeout", type=float, default=60.0)
    args = ap.parse_args(argv)
    try:
        result = run(
            args.url, args.key, args.campaigns, args.batch, args.seconds,
            buffer_bids=args.buffer_bids, chunk_bytes=args.chunk_bytes, drain_timeout=args.drain_timeout,
        )
    except (OSError, HandshakeError) as exc:
        print(msgspec.json.encode({"pong": False, "bids": 0, "bids_per_s": 0.0, "fatal": f"{type(exc).__name__}: {exc}"}).decode())
        return 2
    print(msgspec.json.encode(result).decode())
    return 0 if result["pong"] else 1


if __name__ == "__main__":
    sys.exit(main())
