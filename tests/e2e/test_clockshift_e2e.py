"""The harness that lets outbound tests run at any hour: ``outbound_plan`` finds an open band (or
a same-day shift that opens one) for every instant of the year, and a server started with
``clock_shift_s`` decides calling hours on the shifted clock (the same callee, the same real
instant: denied by a server whose clock says 03:00 in New York, routed by one that says noon)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from exchange.messages import Campaign
from tests.e2e.clockshift import BANDS, outbound_plan
from tests.e2e.conftest import start_server, stop_server
from tests.e2e.wsclient import Buyer

pytestmark = pytest.mark.e2e
NY = ZoneInfo("America/New_York")


@pytest.mark.parametrize("day", ["2026-01-15", "2026-03-08", "2026-07-01", "2026-11-01", "2026-12-31"])
def test_every_instant_of_a_day_has_a_plan(day):
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    zones = dict(BANDS)
    for step in range(24 * 12):  # every 5 minutes, both DST change days included
        now = start + timedelta(minutes=5 * step)
        plan = outbound_plan(now)
        at = now + timedelta(seconds=plan.shift_s)
        assert at.date() == now.date() and plan.shift_s >= 0, (now, plan)
        for later in (timedelta(0), timedelta(minutes=45)):
            assert 9 <= (at + later).astimezone(ZoneInfo(zones[plan.prefix])).hour < 19, (now, plan)
        assert plan.shift_s <= 5 * 3600, (now, plan)  # only around the 09:00-13:00 UTC gap is one needed


def _shift_to_ny(hour: int, now: datetime) -> int:
    """Seconds from ``now`` to the next instant at ``hour``:30 New York time."""
    local = now.astimezone(NY)
    target = local.replace(hour=hour, minute=30, second=0, microsecond=0)
    if target <= local:
        target = (local + timedelta(days=1)).replace(hour=hour, minute=30, second=0, microsecond=0)
    return int((target - local).total_seconds())


@pytest.mark.parametrize("hour, expect", [(3, "outside_calling_hours"), (12, "ok")])
def test_a_shifted_server_decides_calling_hours_on_its_own_clock(hour, expect):
    shift = _shift_to_ny(hour, datetime.now(UTC))
    server = start_server(clock_shift_s=shift)
    try:
        buyer_id, buyer_key = server.account("buyer", "shift-b", deposit=100_000)
        _, pub_key = server.account("publisher", "shift-p")
        b = Buyer(server.ws_url, buyer_key)
        ack = b.request(lambda s: Campaign(id="out", vertical="shift_out", bid_cents=1500, destination="+18005550199",
                                           min_duration_s=30, accepts_outbound=True, seq=s))
        assert type(ack).__name__ == "Ack", ack
        server_day = (datetime.now(UTC) + timedelta(seconds=shift)).date().isoformat()
        r = server.http.post(f"/v1/dnc/national?snapshot_date={server_day}", content=b"2025550177\n", headers=server.admin)
        assert r.status_code == 201, r.text
        auth = {"Authorization": f"Bearer {pub_key}"}
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        r = server.http.post("/v1/consents", json={"token": "shift-tok", "phone": "+12125551230", "sellers": [buyer_id],
                                                  "created_at": created}, headers=auth)
        assert r.status_code == 201, r.text
        d = server.http.post("/v1/calls", json={"caller": "+18885550100", "callee": "+12125551230", "direction": "outbound",
                                                "vertical": "shift_out", "consent_token": "shift-tok"}, headers=auth).json()
        assert d["reason"] == expect, d
        assert (d["decision"] == "routed") == (expect == "ok"), d
        b.close()
    finally:
        stop_server(server)
