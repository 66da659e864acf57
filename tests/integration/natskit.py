"""A real NATS JetStream for the event tests: a stream of its own per test (deleted after),
and an ordered consumer that reads a stream from its first message."""

from __future__ import annotations

import asyncio
import os
import secrets
from typing import NamedTuple

import msgspec
import pytest

from exchange.relay import bounded, close_client

NATS_URL = os.environ.get("EXCHANGE_TEST_NATS_URL", "nats://127.0.0.1:4222")
_problem: list[str | None] = []


async def _ping() -> None:

    nc = await _connect(NATS_URL)
    try:
        await bounded(nc.jetstream(timeout=5).account_info(), 10.0)
    finally:
        await close_client(nc)


def require_nats() -> None:
    """Skip without a NATS server with JetStream (under CI=true: fail)."""
    if not _problem:
        try:
            asyncio.run(_ping())
            _problem.append(None)
        except Exception as exc:  # noqa: BLE001
            _problem.append(f"{type(exc).__name__}: {exc}")
    if _problem[0] is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"NATS with JetStream is required under CI=true ({NATS_URL}): {_problem[0]}")
        pytest.skip(f"no NATS JetStream at {NATS_URL}: {_problem[0]}")


class Bus(NamedTuple):
    url: str
    stream: str
    subject: str


def new_bus() -> Bus:
    tag = secrets.token_hex(5)
    return Bus(NATS_URL, f"DCETEST_{tag.upper()}", f"dcetest.{tag}")


async def _connect(url: str):  # every await on NATS here is bounded in time (exchange.relay.bounded): a test fails, never hangs
    import nats

    return await bounded(nats.connect(url, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0), 10.0)


async def delete_stream(bus: Bus) -> None:
    from nats.js.errors import NotFoundError

    nc = await _connect(bus.url)
    try:
        await bounded(nc.jetstream(timeout=5).delete_stream(bus.stream), 10.0)
    except NotFoundError:
        pass
    finally:
        await close_client(nc)


async def consume(bus: Bus, want: int, timeout_s: float = 20.0) -> list[tuple[str, str | None, dict]]:
    """(Nats-Msg-Id, DCE-Account, event) of the stream's messages in stream order, read by a
    real ordered push consumer until ``want`` arrived and the stream is quiet (or the deadline)."""
    import nats

    nc = await _connect(bus.url)
    out: list[tuple[str, str | None, dict]] = []
    try:
        js = nc.jetstream(timeout=5)
        sub = await bounded(js.subscribe(f"{bus.subject}.>", stream=bus.stream, ordered_consumer=True), 10.0)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while loop.time() < end:
            try:
                msg = await bounded(sub.next_msg(timeout=0.5 if len(out) >= want else 2.0), 5.0)
            except (TimeoutError, nats.errors.TimeoutError):
                if len(out) >= want:
                    break
                continue
            headers = msg.headers or {}
            out.append((headers.get("Nats-Msg-Id", ""), headers.get("DCE-Account"), msgspec.json.decode(msg.data)))
        await bounded(sub.unsubscribe(), 5.0)
    finally:
        await close_client(nc)
    return out
