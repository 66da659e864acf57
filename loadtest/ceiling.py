"""The host's ceiling: what the same Locust users offer a bare transport, in the same run.

When the exchange ingests less than the offered bid rate, the reason can be the exchange or the
host (on 2 cores Locust and the exchange share them). The runner then starts the bare transport
(``bench.bare_server``: the exchange's uvicorn settings, a WebSocket endpoint that decodes
every frame, acknowledges what carries a ``seq`` and answers pings, nothing applied) and runs the
same plan's buyer users against it for a short window, with no calls. The bids/s Locust manages
to send it is the host's ceiling for this load generator; the summary puts the exchange's figure
beside it, so a miss says whether the exchange or the host fell short.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec

from .plan import Plan
from .target import child_env, free_port


def bare_ceiling(cfg: Any, plan: Plan, out: Path, seconds: float = 15.0) -> dict[str, Any] | None:
    """Run ``plan``'s buyers against a bare transport for ``seconds``; bids/s offered and
    skipped by saturated users, or None if it could not be measured."""
    from .runner import _read_json, start_locust, stop_locust  # the runner imports this module

    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(out / "bare-server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "bench.bare_server", "--port", str(port)], env=child_env(),
                              stdout=log, stderr=subprocess.STDOUT)
    log.close()
    master = None
    workers: list[Any] = []
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        else:
            return None
        bare_plan = msgspec.structs.replace(plan, host=base, calls_per_s=0, publisher_users=0, warmup_s=2.0,
                                            duration_s=seconds, live_path=str(out / "live.json"),
                                            out_path=str(out / "locust-figures.json"))
        bare_cfg = dataclasses.replace(cfg, calls_per_s=0, warmup=2.0, duration=seconds)
        master, workers = start_locust(bare_cfg, bare_plan, out)
        deadline = time.time() + cfg.setup_timeout + seconds + 60
        while master.p.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        final = _read_json(out / "locust-figures.json")
    finally:
        stop_locust(master, workers, 10)
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    window = (final or {}).get("window")
    if not window:
        return None
    span = max(1e-9, window[1] - window[0])
    counts = ((final or {}).get("window_figures") or {}).get("counts", {})
    return {"bids_per_s": counts.get("bids", 0) / span, "bids_skipped": counts.get("bids_skipped", 0),
            "offered_per_s": plan.bids_per_s, "seconds": round(span, 1)}
