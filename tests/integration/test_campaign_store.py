"""The book store's rows on both real stores: saved in one transaction, a price-only change
keeps the spec, an older change never overwrites a newer one, and a whole book restores."""

from __future__ import annotations

import asyncio

from billing.backends import open_store
from billing.store import CampaignRow
from exchange.bookstore import BookStore
from exchange.core import Core
from exchange.settings import Settings
from tests.builders import NOON_NY_NS, campaign


def run(coro):
    return asyncio.run(coro)


def test_rows_save_and_load_with_newer_changes_winning(db_url: str) -> None:
    async def go() -> list[CampaignRow]:
        store = open_store(db_url)
        await store.open()
        try:
            await store.save_campaigns([CampaignRow("b1", "c1", '{"a":1}', 2500, False, 10),
                                        CampaignRow("b1", "c2", '{"a":2}', 2600, True, 11),
                                        CampaignRow("b2", "c1", '{"a":3}', 2700, False, 12)])
            await store.save_campaigns([CampaignRow("b1", "c1", None, 3000, True, 20),  # price and pause only
                                        CampaignRow("b1", "c2", '{"old":1}', 1, False, 5),  # older: ignored
                                        CampaignRow("b2", "c1", None, 1, False, 6),  # older: ignored
                                        CampaignRow("b9", "nope", None, 1, False, 30)])  # no spec stored: skipped
            assert [r.id for r in await store.load_campaigns("b2")] == ["c1"]
            return await store.load_campaigns()
        finally:
            await store.close()

    rows = run(go())
    assert rows == [CampaignRow("b1", "c2", '{"a":2}', 2600, True, 11), CampaignRow("b2", "c1", '{"a":3}', 2700, False, 12),
                    CampaignRow("b1", "c1", '{"a":1}', 3000, True, 20)]


def test_a_book_saved_and_restored_into_a_new_core(db_url: str) -> None:
    settings = Settings()

    async def go() -> tuple[Core, tuple[int, int]]:
        store = open_store(db_url)
        await store.open()
        try:
            core = Core(settings)
            saver = BookStore(store, core, lambda: NOON_NY_NS, 1000)
            for k in range(300):
                core.upsert_campaign(f"b{k % 7}", campaign(f"c{k}", states=["CA"], bid_cents=1000 + k), NOON_NY_NS)
            core.upsert_campaign("b1", campaign("cod", states=["TX"], cancel_on_disconnect=True), NOON_NY_NS)
            core.upsert_campaign("gone", campaign("x", states=["TX"]), NOON_NY_NS)
            assert await saver.flush() == 302
            core.book.reprice("b0", "c0", 9999)
            core.book.set_paused("b1", "c1", True)
            assert await saver.flush() == 2
            assert await saver.flush() == 0
            fresh = Core(settings)
            restored = await BookStore(store, fresh, lambda: NOON_NY_NS, 1000).restore(lambda b: b != "gone", NOON_NY_NS)
            return fresh, restored
        finally:
            await store.close()

    fresh, restored = run(go())
    assert restored == (301, 1)
    book = fresh.book
    assert book.get("b0", "c0").bid_cents == 9999 and book.get("b1", "c1").paused
    assert book.get("b1", "cod").away and book.get("gone", "x") is None
    assert book.take_dirty() == ([], [])  # nothing restored is saved again


def test_rows_of_any_text_and_the_largest_instants_round_trip(db_url: str) -> None:
    """The SQLite store binds a round's rows as one JSON array (``json_each``): ids, specs and
    instants must come back exactly as given, whatever characters they hold."""
    odd = ['q"uo\\te', "ünï ✓ 🚀", "tab\there", "nul-free\u2028line", "'; DROP TABLE campaigns; --"]
    big = 2**62 + 12345  # instants in ns near the int64 end (SQLite's JSON parses integers exactly to 2^63-1)

    async def go() -> list[CampaignRow]:
        store = open_store(db_url)
        await store.open()
        try:
            await store.save_campaigns([CampaignRow(f"b{i}", name, '{"s":"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"}',
                                                    2500 + i, bool(i % 2), big - 10 + i) for i, name in enumerate(odd)])
            await store.save_campaigns([CampaignRow(f"b{i}", name, None, 10 + i, not (i % 2), big + i) for i, name in enumerate(odd)])
            return await store.load_campaigns()
        finally:
            await store.close()

    rows = sorted(run(go()))
    assert rows == sorted(CampaignRow(f"b{i}", name, '{"s":"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"}',
                                      10 + i, not (i % 2), big + i) for i, name in enumerate(odd))


def test_a_round_larger_than_a_chunk_is_saved_whole_and_a_refused_chunk_keeps_the_rest(db_url: str, monkeypatch) -> None:
    """``BookStore.flush`` writes ``CHUNK`` campaigns a statement (the loop runs between them):
    every change of the round reaches the store, and when a chunk is refused, that chunk's
    campaigns and every later one stay marked for the next round."""
    from billing.store import StoreUnavailable
    from exchange import bookstore

    monkeypatch.setattr(bookstore, "CHUNK", 7)
    settings = Settings()

    async def go() -> tuple[int, int, list[int], list[CampaignRow], tuple[int, int]]:
        store = open_store(db_url)
        await store.open()
        try:
            core = Core(settings)
            saver = BookStore(store, core, lambda: NOON_NY_NS, 1000)
            for k in range(30):
                core.upsert_campaign("b", campaign(f"c{k}", states=["CA"], bid_cents=1000 + k), NOON_NY_NS)
            calls: list[int] = []
            real = store.save_campaigns

            async def counted(rows):
                calls.append(len(rows))
                if refuse and len(calls) == 8:  # the third statement of the second round
                    raise StoreUnavailable("refused for the test")
                await real(rows)

            monkeypatch.setattr(store, "save_campaigns", counted)
            refuse = False
            first = await saver.flush()  # 30 new campaigns, 7 a statement
            for k in range(20):
                core.book.reprice("b", f"c{k}", 5000 + k)
            refuse = True
            try:
                await saver.flush()
            except StoreUnavailable:
                pass
            marked = (len(core.book.dirty_specs), len(core.book.dirty_prices))
            refuse = False
            again = await saver.flush()
            return first, again, calls, await store.load_campaigns(), marked
        finally:
            await store.close()

    first, again, calls, rows, marked = run(go())
    assert first == 30 and calls[:5] == [7, 7, 7, 7, 2]
    assert marked == (0, 6)  # 2 chunks of 7 of the 20 repriced were saved; the refused chunk's 6 are marked again
    assert again == 6 and calls[5:] == [7, 7, 6, 6]
    assert {r.id: r.bid_cents for r in rows} == {f"c{k}": (5000 + k if k < 20 else 1000 + k) for k in range(30)}


def test_a_node_announces_prices_each_round_and_saves_them_every_few_rounds(db_url: str) -> None:
    """A node of a market (``save_every`` > 1): each round announces the prices changed in it at
    once (the seller applies them from the notice) and saves new campaigns; the prices are
    written every ``save_every`` rounds, each changed campaign once whatever its changes, and
    all of them at shutdown (``final``)."""
    async def go() -> None:
        store = open_store(db_url)
        await store.open()
        try:
            core = Core(Settings())
            saver = BookStore(store, core, lambda: NOON_NY_NS, 100, track=True, save_every=3)
            heard: list[tuple[list, list]] = []
            saver.on_saved = lambda specs, prices, at: heard.append((specs, prices))
            for k in range(3):
                core.upsert_campaign("b1", campaign(f"c{k}", states=["CA"], bid_cents=1000), NOON_NY_NS)
            assert await saver.flush() == 3  # new campaigns: saved in the round they came
            assert heard == [([("b1", "c0"), ("b1", "c1"), ("b1", "c2")], [])]
            stored = {r.id: r.bid_cents for r in await store.load_campaigns()}
            core.book.reprice("b1", "c0", 2000)
            assert await saver.flush() == 0 and heard[-1] == ([], [("b1", "c0", 2000, False)])  # round 2: announced only
            core.book.reprice("b1", "c0", 2100)
            core.book.reprice("b1", "c1", 3000)
            assert await saver.flush() == 2  # round 3: saved, c0 once
            assert sorted(heard[-1][1]) == [("b1", "c0", 2100, False), ("b1", "c1", 3000, False)]
            assert {r.id: r.bid_cents for r in await store.load_campaigns()} == stored | {"c0": 2100, "c1": 3000}
            core.book.reprice("b1", "c2", 4000)
            assert await saver.flush() == 0
            assert {r.id: r.bid_cents for r in await store.load_campaigns()}["c2"] == 1000
            assert await saver.flush(final=True) == 1
            assert {r.id: r.bid_cents for r in await store.load_campaigns()}["c2"] == 4000
        finally:
            await store.close()

    run(go())
