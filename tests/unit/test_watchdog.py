"""The event loop's watchdog names what held the loop, and says nothing when nothing did."""

from __future__ import annotations

import asyncio
import logging
import time

from exchange.metrics import Metrics
from exchange.watchdog import Watchdog


def hold_the_loop_for(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:  # Python work: the watchdog's thread gets the lock every switch interval
        sum(range(200))


async def run(blocker: float | None, threshold_ms: float) -> tuple[Watchdog, Metrics]:
    metrics = Metrics()
    dog = Watchdog(threshold_ms, metrics)
    dog.start()
    try:
        for _ in range(20):
            await asyncio.sleep(0.01)
        if blocker is not None:
            hold_the_loop_for(blocker)
        for _ in range(20):
            await asyncio.sleep(0.01)
    finally:
        dog.stop()
    return dog, metrics


def test_a_held_loop_is_logged_with_the_function_that_held_it(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="exchange.loop")
    dog, metrics = asyncio.run(run(0.3, 50))
    assert len(dog.stalls) == 1, dog.stalls
    stall = dog.stalls[0]
    assert 250 <= stall["held_ms"] <= 1000
    assert stall["samples"] >= 5
    assert "hold_the_loop_for" in stall["stacks"][0]["stack"]
    assert metrics.loop_stalls == 1 and metrics.loop_stalled_ms >= 250
    assert [r.msg for r in caplog.records] == ["loop_stall"]
    assert "exchange_loop_stalls_total 1" in metrics.render({})


def test_a_loop_that_keeps_beating_reports_nothing() -> None:
    dog, metrics = asyncio.run(run(0.02, 150))
    assert dog.stalls == [] and metrics.loop_stalls == 0


def test_a_stall_says_when_and_where_the_loop_thread_was() -> None:
    dog, _ = asyncio.run(run(0.3, 50))
    stall = dog.stalls[0]
    assert stall["at"].endswith("+00:00")
    assert stall["cpu_ms"] + stall["runqueue_ms"] <= stall["held_ms"] + 60  # the kernel's account of the same span
    assert stall["cpu_ms"] > 100  # busy in Python, not blocked
