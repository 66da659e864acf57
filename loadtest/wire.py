"""A minimal RFC 6455 client over a plain socket, fast enough to be a load generator.

It does the HTTP/1.1 upgrade itself (``Authorization: Bearer KEY``, subprotocol
``dce.json.v1``), masks client frames with a 4-byte key using one big-integer XOR (no
per-byte Python loop), and parses server frames from a byte buffer. It only uses the
standard ``socket`` module, so under Locust (which monkey-patches sockets for gevent) every
blocking call yields to other greenlets, and outside Locust it is a plain blocking client.

The hot path of the load test does not build frames one by one: ``FrameRing`` holds many
pre-masked frames back to back in one buffer, and sending ``k`` frames is one ``sendall``
of a slice. ``python -m loadtest clientcost`` measures what each way costs per frame,
against the ``websocket-client`` package.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import threading
from urllib.parse import urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class HandshakeError(Exception):
    pass


class Closed(Exception):
    """The peer closed the connection (code and reason when a close frame came)."""

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        super().__init__(f"websocket closed ({code}) {reason}".strip())
        self.code, self.reason = code, reason


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the repeating 4-byte ``key`` (RFC 6455 §5.3)."""
    n = len(payload)
    if n == 0:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def client_frame(payload: bytes, opcode: int = OP_TEXT, key: bytes | None = None) -> bytes:
    """One complete, final, masked client frame (a fresh random key unless one is given)."""
    key = key if key is not None else os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + key + mask(payload, key)


def next_frame(buf: bytes | bytearray, pos: int) -> tuple[int, bytes, int] | None:
    """The complete frame at ``buf[pos:]``: (its first byte, the payload unmasked, the position
    after it), or None while it is incomplete. Servers do not mask; a masked frame is read too."""
    n = len(buf)
    if n - pos < 2:
        return None
    b1 = buf[pos + 1]
    length, hl = b1 & 0x7F, 2
    if length == 126:
        if n - pos < 4:
            return None
        length, hl = struct.unpack_from("!H", buf, pos + 2)[0], 4
    elif length == 127:
        if n - pos < 10:
            return None
        length, hl = struct.unpack_from("!Q", buf, pos + 2)[0], 10
    if b1 & 0x80:
        hl += 4
    end = pos + hl + length
    if n < end:
        return None
    payload = bytes(buf[pos + hl : end])
    if b1 & 0x80:
        payload = mask(payload, bytes(buf[pos + hl - 4 : pos + hl]))
    return buf[pos], payload, end


class FrameRing:
    """Pre-masked frames back to back in one buffer; ``take(k)`` yields byte slices of the
    next ``k`` frames (wrapping around), so sending them costs one ``sendall`` per slice."""

    __slots__ = ("buf", "offsets", "frames", "pos", "bids_per_frame")

    def __init__(self, payloads: list[bytes], bids_per_frame: int, key: bytes | None = None) -> None:
        if not payloads:
            raise ValueError("a ring needs at least one frame")
        key = key if key is not None else os.urandom(4)
        parts = [client_frame(p, OP_TEXT, key) for p in payloads]
        offsets = [0]
        for f in parts:
            offsets.append(offsets[-1] + len(f))
        self.buf = memoryview(b"".join(parts))
        self.offsets = offsets
        self.frames = len(parts)
        self.pos = 0
        self.bids_per_frame = bids_per_frame

    def take(self, k: int) -> list[memoryview]:
        """Slices holding the next ``k`` frames, in order."""
        out: list[memoryview] = []
        off, n, pos = self.offsets, self.frames, self.pos
        while k > 0:
            m = min(k, n - pos)
            out.append(self.buf[off[pos] : off[pos + m]])
            pos = (pos + m) % n
            k -= m
        self.pos = pos
        return out

    @property
    def avg_frame_bytes(self) -> float:
        return self.offsets[-1] / self.frames


class WsClient:
    """One client connection. ``send_*`` may be called from several greenlets or threads
    (a lock keeps frames whole); ``recv`` from one reader only."""

    def __init__(self, url: str, key: str | None, subprotocol: str = "dce.json.v1", timeout: float = 10.0) -> None:
        self.url = url
        self.sock, leftover = connect(url, key, subprotocol, timeout)
        self.buf = bytearray(leftover)
        self.lock = threading.Lock()  # a gevent lock once Locust has monkey-patched threading
        self.closed: Closed | None = None
        self._frag: bytearray | None = None
        self._frag_op = OP_TEXT

    # ------------------------------------------------------------------ sending
    def send_raw(self, chunks: list[memoryview] | list[bytes]) -> int:
        """Send pre-built frames; returns the bytes sent."""
        n = 0
        with self.lock:
            for c in chunks:
                self.sock.sendall(c)
                n += len(c)
        return n

    def send(self, payload: bytes, opcode: int = OP_TEXT) -> int:
        frame = client_frame(payload, opcode)
        with self.lock:
            self.sock.sendall(frame)
        return len(frame)

    # ------------------------------------------------------------------ receiving
    def recv(self, bufsize: int = 1 << 18) -> list[tuple[int, bytes]]:
        """Block until at least one complete data message is in; return (opcode, payload)
        pairs. Pings are answered; a close frame (or EOF) raises ``Closed``."""
        while True:
            out = self._parse()
            if out:
                return out
            if self.closed is not None:
                raise self.closed
            data = self.sock.recv(bufsize)
            if not data:
                self.closed = self.closed or Closed(1006, "connection lost")
                raise self.closed
            self.buf += data

    def _parse(self) -> list[tuple[int, bytes]]:
        buf, pos = self.buf, 0
        out: list[tuple[int, bytes]] = []
        while (frame := next_frame(buf, pos)) is not None:
            b0, payload, pos = frame
            fin, op = b0 & 0x80, b0 & 0x0F
            if op == OP_PING:
                self.send(payload, OP_PONG)
            elif op == OP_PONG:
                pass
            elif op == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.closed = Closed(code, payload[2:].decode("utf-8", "replace"))
                break
            elif op in (OP_TEXT, OP_BINARY):
                if fin:
                    out.append((op, payload))
                else:
                    self._frag, self._frag_op = bytearray(payload), op
            elif op == OP_CONT and self._frag is not None:
                self._frag += payload
                if fin:
                    out.append((self._frag_op, bytes(self._frag)))
                    self._frag = None
        del buf[:pos]
        return out

    def close(self, code: int = 1000, reason: str = "") -> None:
        try:
            self.send(struct.pack("!H", code) + reason.encode(), OP_CLOSE)
        except OSError:
            pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


def connect(url: str, key: str | None, subprotocol: str = "dce.json.v1", timeout: float = 10.0) -> tuple[socket.socket, bytes]:
    """Open the TCP connection and upgrade it; returns the socket and bytes read past the headers."""
    u = urlsplit(url)
    if u.scheme != "ws":
        raise HandshakeError(f"only ws:// is supported, got {url!r}")
    host = u.hostname or "127.0.0.1"
    port = u.port or 80
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        nonce = base64.b64encode(os.urandom(16))
        lines = [
            f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
            f"Sec-WebSocket-Key: {nonce.decode()}", "Sec-WebSocket-Version: 13", f"Sec-WebSocket-Protocol: {subprotocol}",
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
            raise HandshakeError(f"expected 101, got {status_line!r} {rest[:300]!r}")
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
    except BaseException:
        sock.close()
        raise
    return sock, rest
