"""The ingest load generator against the bare transport: a real server on a real socket.

``bench.wsload`` speaks raw RFC 6455, so this checks its handshake, framing and masking
against uvicorn's WebSocket implementation: every bid it counts must be decoded by the
server (the bare server's pong reports how many messages it decoded), no frame may be
rejected, and the final pong must come back.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@pytest.fixture(scope="module")
def bare_server():
    port = _free_port()
    code = f"from bench.bare_server import serve; serve({port})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.fail(f"bare server exited: {proc.stdout.read().decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("bare server did not start listening")
                time.sleep(0.05)
        yield f"ws://127.0.0.1:{port}/v1/buyers/ws"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _wsload(url: str, batch: int, seconds: float) -> dict:
    argv = [sys.executable, "-m", "bench.wsload", "--url", url, "--key", "test-key", "--campaigns", "50",
            "--batch", str(batch), "--seconds", str(seconds), "--buffer-bids", "5000", "--drain-timeout", "10"]
    out = subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=30)
    assert out.stdout.strip(), out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("batch", [1, 100])
def test_wsload_blasts_bids_and_gets_the_final_pong(bare_server: str, batch: int) -> None:
    res = _wsload(bare_server, batch, 1.0)
    assert res.get("fatal") is None, res
    assert res["pong"] is True, res
    assert res["bids"] > 0 and res["bids"] % batch == 0
    assert res["errors"] == 0, res["error_samples"]
    assert res["final"]["seq"] == 7_770_000_001
    # every counted bid was decoded by the server, plus the final ping
    assert res["final"]["messages"] == res["bids"] + 1
    assert res["bids_per_s"] > 0
    assert res["send_error"] is None and res["reader_error"] is None


def test_frames_are_masked_rfc6455() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.wsload import MASK_KEY, client_frame, mask

    payload = b'{"type":"bid","campaign":"c1","bid_cents":2600}'
    frame = client_frame(payload)
    assert frame[0] == 0x81 and frame[1] == 0x80 | len(payload)
    assert frame[2:6] == MASK_KEY
    assert mask(frame[6:]) == payload  # masking is its own inverse
    big = client_frame(b"x" * 5000)
    assert big[1] == 0x80 | 126 and int.from_bytes(big[2:4], "big") == 5000
