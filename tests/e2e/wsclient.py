"""A small buyer client over the real WebSocket (websockets' sync client) for tests."""

from __future__ import annotations

import time

from websockets.sync.client import connect

from exchange.messages import ExchangeMessage, exchange_json, exchange_msgpack, json_encoder, msgpack_encoder


class Buyer:
    def __init__(self, ws_url: str, key: str, subprotocol: str = "dce.json.v1") -> None:
        self.binary = subprotocol == "dce.msgpack.v1"
        self._cm = connect(f"{ws_url}/v1/buyers/ws", additional_headers={"Authorization": f"Bearer {key}"},
                           subprotocols=[subprotocol], max_size=None)
        self.ws = self._cm.__enter__()
        self.inbox: list[ExchangeMessage] = []
        self._seq = 0

    def send(self, msg: object) -> None:
        self.ws.send(msgpack_encoder.encode(msg) if self.binary else json_encoder.encode(msg).decode())

    def send_raw(self, data: str | bytes) -> None:
        self.ws.send(data)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def recv(self, timeout: float = 5.0) -> list[ExchangeMessage]:
        data = self.ws.recv(timeout=timeout)
        decoded = (exchange_msgpack if self.binary else exchange_json).decode(data)
        return decoded if isinstance(decoded, list) else [decoded]

    def wait_for(self, pred, timeout: float = 5.0):
        """The first message (already received or arriving before the deadline) matching ``pred``."""
        end = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.inbox):
                if pred(m):
                    return self.inbox.pop(i)
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching message; got {self.inbox!r}")
            try:
                self.inbox.extend(self.recv(timeout=left))
            except TimeoutError:
                continue

    def request(self, msg_factory, timeout: float = 5.0):
        """Send a message built with a fresh seq; return the ack/error/pong carrying that seq."""
        seq = self.next_seq()
        self.send(msg_factory(seq))
        return self.wait_for(lambda m: getattr(m, "seq", None) == seq and type(m).__name__ in ("Ack", "Error", "Pong"), timeout)

    def close(self) -> None:
        self._cm.__exit__(None, None, None)
