"""Several hosts on one machine for the fault tests: each node in a network namespace of its own,
joined by veth pairs to a bridge in the root namespace, where PostgreSQL and Redis run. They
listen on 127.0.0.1 only, so a TCP relay in the test process forwards the bridge's address to
them (bytes passed as they come). ``cut`` takes a namespace off the bridge (its veth down): a
partition; ``heal`` puts it back.

Needs root and iproute2 (``ip netns``); without them the tests skip, saying why."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class Relay:
    """TCP relays ``host:port`` -> ``127.0.0.1:port`` in a thread with its own event loop."""

    def __init__(self, host: str, ports: list[int]) -> None:
        self.loop = asyncio.new_event_loop()
        self.servers: list[asyncio.base_events.Server] = []
        ready = threading.Event()

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        def relay_to(port: int):
            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                try:
                    up_r, up_w = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    writer.close()
                    return
                await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
            return handle

        async def start() -> None:
            for port in ports:
                self.servers.append(await asyncio.start_server(relay_to(port), host, port))
            ready.set()

        self.thread = threading.Thread(target=lambda: (self.loop.run_until_complete(start()), self.loop.run_forever()), daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("the relay did not start")

    def close(self) -> None:
        def stop() -> None:
            for s in self.servers:
                s.close()
            self.loop.stop()
        self.loop.call_soon_threadsafe(stop)
        self.thread.join(10)


class Fabric:
    """A bridge ``10.<a>.<b>.1/24`` and namespaces at ``.11``, ``.12``, ... on it."""

    def __init__(self, names: list[str]) -> None:
        tag = secrets.token_hex(2)
        self.tag = tag
        self.bridge = f"dcebr{tag}"
        b = secrets.randbelow(200) + 20
        self.net = f"10.213.{b}"
        self.gateway = f"{self.net}.1"
        self.ns: dict[str, str] = {}
        self.addr: dict[str, str] = {}
        self.host_veth: dict[str, str] = {}
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for i, name in enumerate(names):
            ns, vh, vn = f"dce{tag}{name}", f"dh{tag}{i}", f"dn{tag}{i}"
            ip("netns", "add", ns)
            ip("link", "add", vh, "type", "veth", "peer", "name", vn)
            ip("link", "set", vn, "netns", ns)
            ip("link", "set", vh, "master", self.bridge)
            ip("link", "set", vh, "up")
            ip("-n", ns, "addr", "add", f"{self.net}.{11 + i}/24", "dev", vn)
            ip("-n", ns, "link", "set", vn, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            self.ns[name], self.addr[name], self.host_veth[name] = ns, f"{self.net}.{11 + i}", vh

    def prefix(self, name: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.ns[name])

    def cut(self, name: str) -> None:
        ip("link", "set", self.host_veth[name], "down")

    def heal(self, name: str) -> None:
        ip("link", "set", self.host_veth[name], "up")

    def close(self) -> None:
        for ns in self.ns.values():
            ip("netns", "del", ns, check=False)
        ip("link", "del", self.bridge, check=False)


@contextmanager
def fabric(names: list[str], relay_ports: list[int]) -> Iterator[Fabric]:
    try:
        probe = ip("netns", "add", f"dceprobe{secrets.token_hex(2)}", check=False)
    except FileNotFoundError:
        pytest.skip("iproute2 (ip) is not installed")
    if probe.returncode != 0:
        pytest.skip(f"cannot make network namespaces here: {probe.stderr.strip()}")
    for line in ip("netns", "list").stdout.splitlines():
        if line.startswith("dceprobe"):
            ip("netns", "del", line.split()[0], check=False)
    fab = Fabric(names)
    relay = None
    try:
        relay = Relay(fab.gateway, relay_ports)
        yield fab
    finally:
        if relay is not None:
            relay.close()
        fab.close()
