"""Clients that behave the way real publishers do under faults: they retry until answered."""

from __future__ import annotations

import threading
import time

import httpx


class Publisher(threading.Thread):
    """Sends one call's events in order, each retried with its own key until it is answered
    (connection refused while the exchange is down, 503 while its ledger is): what a
    well-behaved publisher does."""

    def __init__(self, base: str, key: str, call_id: str, events: list[dict]) -> None:
        super().__init__(daemon=True)
        self.base, self.key, self.call_id, self.events = base, key, call_id, events
        self.answers: list[dict] = []
        self.retries = self.unavailable = self.retry_after_given = 0
        self.errors: list[str] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=5) as http:
            for n, ev in enumerate(self.events):
                end = time.monotonic() + 60
                while time.monotonic() < end:
                    try:
                        r = http.post(f"/v1/calls/{self.call_id}/events", json=ev,
                                      headers={"Authorization": f"Bearer {self.key}", "Idempotency-Key": f"{self.call_id}-{n}"})
                    except httpx.TransportError:
                        self.retries += 1
                        time.sleep(0.05)
                        continue
                    if r.status_code == 503:
                        self.retries += 1
                        self.unavailable += 1
                        self.retry_after_given += "retry-after" in r.headers
                        time.sleep(0.05)
                        continue
                    if r.status_code != 200:
                        self.errors.append(f"{ev}: {r.status_code} {r.text}")
                    self.answers.append(r.json())
                    break
                else:
                    self.errors.append(f"{ev}: never answered")
