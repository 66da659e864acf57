"""The exchange's background pass over the report aggregate (``Exchange._sealer``): a real
exchange on an embedded store groups closed hours and days for the operator on its own, so an
operator's first report reads cached groupings."""

from __future__ import annotations

import asyncio

from exchange import service
from exchange.service import Exchange
from exchange.settings import Settings
from exchange.tally import GROUPS, HOUR_NS


def test_the_exchange_groups_closed_hours_for_the_operator_in_the_background(tmp_path, monkeypatch):
    monkeypatch.setattr(service, "SEAL_EVERY_S", 0.05)

    async def main() -> None:
        ex = Exchange(Settings(database_url=f"sqlite:///{tmp_path}/ledger.db", compliance_dir=str(tmp_path / "c")))
        await ex.start()
        try:
            tally = ex.desk.tally
            now = ex.clock.now_ns()
            day0 = (now // HOUR_NS // 24 - 2) * 24 * HOUR_NS  # two whole closed days, then today's hours
            for h in range(0, (now - day0) // HOUR_NS + 1, 5):
                tally.decided(day0 + h * HOUR_NS, "p1", "auto", "CA", "ok", [("b1", "c1")], [("b1", "c1", 900)], 0)
            open_h = now // HOUR_NS
            for _ in range(100):
                await asyncio.sleep(0.05)
                if all(len(hour.cache) == len(GROUPS) for h, hour in tally.hours.items() if h < open_h) and len(tally.days) >= 2:
                    break
            closed = [hour for h, hour in tally.hours.items() if h < open_h]
            assert closed and all(len(hour.cache) == len(GROUPS) for hour in closed)
            assert {day0 // HOUR_NS // 24, day0 // HOUR_NS // 24 + 1} <= set(tally.days)
            for g in GROUPS:  # nothing left for a first report to group
                assert list(tally.warm(g, "operator", None, day0, now, now)) == []
        finally:
            await ex.stop()

    asyncio.run(main())
