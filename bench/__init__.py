"""Benchmarks: they print figures and write JSON; they are not pass/fail tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


def run_and_write(main_async: Callable[[Any], Awaitable[Any]], args: Any, path: str) -> None:
    """Run ``main_async(args)`` on uvloop (asyncio without it) and write its results as JSON."""
    try:
        import uvloop

        runner: Callable[[Awaitable[Any]], Any] = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    results = runner(main_async(args))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
