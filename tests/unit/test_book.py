from datetime import datetime, timedelta, timezone

import pytest

from routing.book import Book
from routing.standing import CampaignError
from exchange.messages import Schedule
from tests.builders import NOON_NY_NS, campaign


def top(book: Book, state: str | None = "CA", want: int = 10, now: int = NOON_NY_NS) -> list[str]:
    return [s.id for s in book.ranked("auto_insurance", state, now, lambda s: True, want)]


def test_ranked_merges_state_and_wide_campaigns_by_price():
    book = Book()
    book.upsert("b1", campaign("ca", bid_cents=2000, states=["CA"]))
    book.upsert("b1", campaign("all", bid_cents=3000))
    book.upsert("b1", campaign("tx", bid_cents=5000, states=["TX"]))
    assert top(book, "CA") == ["all", "ca"]
    assert top(book, "TX") == ["tx", "all"]


def test_wide_campaign_with_many_states_is_filtered_by_state():
    book = Book()
    many = ["AL", "AK", "AZ", "AR", "CO", "CT", "DE", "FL", "GA", "HI"]
    book.upsert("b1", campaign("wide", bid_cents=3000, states=many))
    assert top(book, "FL") == ["wide"]
    assert top(book, "CA") == []


def test_reprice_moves_a_campaign_and_keeps_the_book_unchanged_by_reads():
    book = Book()
    book.upsert("b1", campaign("a", bid_cents=1000))
    book.upsert("b2", campaign("b", bid_cents=2000))
    assert book.reprice("b1", "a", 3000)
    assert top(book) == ["a", "b"]
    assert top(book) == ["a", "b"]  # reading twice gives the same answer
    assert not book.reprice("b1", "missing", 10)
    assert not book.reprice("b2", "a", 10)  # another buyer's campaign is unknown to b2


def test_equal_bids_rank_by_time_priority():
    book = Book()
    book.upsert("b1", campaign("first", bid_cents=1000))
    book.upsert("b2", campaign("second", bid_cents=1000))
    assert top(book) == ["first", "second"]
    book.reprice("b1", "first", 999)
    book.reprice("b1", "first", 1000)  # repriced: now the newer bid at 1000
    assert top(book) == ["second", "first"]


def test_paused_and_expired_campaigns_are_not_ranked():
    book = Book()
    book.upsert("b1", campaign("a", bid_cents=1000))
    book.upsert("b1", campaign("b", bid_cents=2000))
    book.set_paused("b1", "b", True)
    assert top(book) == ["a"]
    book.set_paused("b1", "b", False)
    assert top(book) == ["b", "a"]
    soon = datetime.fromtimestamp(NOON_NY_NS / 1e9, timezone.utc) + timedelta(seconds=1)
    book.upsert("b1", campaign("c", bid_cents=3000, expires_at=soon))
    assert top(book)[0] == "c"
    assert "c" not in top(book, now=NOON_NY_NS + 2_000_000_000)


def test_heap_stays_bounded_under_many_reprices():
    book = Book()
    for i in range(50):
        book.upsert("b1", campaign(f"c{i}", bid_cents=1000 + i, states=["CA"]))
    for n in range(20_000):
        book.reprice("b1", f"c{n % 50}", 1000 + (n * 7919) % 5000)
    bucket = book._classes[("auto_insurance", "CA", False, None)]
    assert len(bucket.heap) <= 3 * 50 + 256 + 1
    best = max((book.get("b1", f"c{i}").bid_cents, -book.get("b1", f"c{i}").seq) for i in range(50))
    assert book.ranked("auto_insurance", "CA", NOON_NY_NS, lambda s: True, 1)[0].bid_cents == best[0]


def test_invalid_campaign_changes_nothing():
    book = Book()
    book.upsert("b1", campaign("a", bid_cents=1000))
    with pytest.raises(CampaignError) as err:
        book.upsert("b1", campaign("a", bid_cents=5000, states=["ZZ"]))
    assert err.value.path == "$.states[0]"
    with pytest.raises(CampaignError) as err:
        book.upsert("b1", campaign("a", bid_cents=5000, schedule=Schedule(tz="Mars/Olympus", hours={})))
    assert err.value.path == "$.schedule.tz"
    assert book.get("b1", "a").bid_cents == 1000


def test_heap_entries_are_invisible_to_the_garbage_collector():
    """Entries hold integers only, so the collector untracks them on its first pass: a young
    collection never walks the heaps (entries that held the campaign object made gen-0 pauses
    of 6-77 ms at 100K campaigns under the load test's bid stream)."""
    import gc

    book = Book()
    for i in range(200):
        book.upsert("b1", campaign(f"c{i}", bid_cents=1000 + i, states=["CA"] if i % 2 else []))
    for n in range(2_000):
        book.reprice("b1", f"c{n % 200}", 1000 + (n * 7919) % 5000)
    gc.collect()
    entries = [e for b in book._classes.values() for e in b.heap]
    assert entries and not any(gc.is_tracked(e) for e in entries)


def test_reads_see_every_push_after_a_heap_compacts():
    """A read walks the heap lists it found for its place (``routing.merge.Place``, kept across
    reads): a compaction must keep each bucket's list, or later pushes land where no read looks."""
    book = Book()
    ids = [f"c{i}" for i in range(40)]
    for i, cid in enumerate(ids):
        book.upsert(f"b{i}", campaign(cid, bid_cents=3000 + i))
    assert top(book, None, want=1) == ["c39"]  # the place's lists are taken here
    (bucket,) = book._buckets[("auto_insurance", None, False)]
    limit, bump = bucket.limit, 0
    while bucket.limit == limit:  # prices raised (one push each) until the heap compacts
        bump += 1
        book.reprice(f"b{bump % 40}", ids[bump % 40], 5000 + bump)
    assert top(book, None, want=1) == [ids[bump % 40]]  # the last raise is the best bid
    book.reprice("b7", "c7", 9000)
    assert top(book, None, want=2) == ["c7", ids[bump % 40]]
    assert sorted(top(book, None, want=100)) == sorted(ids)  # every campaign still listed


def test_a_book_that_decides_nothing_keeps_and_marks_campaigns_without_heaps():
    """An edge of a market (``indexed`` False): its campaigns and their prices are kept and marked
    for saving, paused and resumed, but never pushed into a heap (a bid there is a lookup and a mark)."""
    from exchange.core import Core
    from exchange.settings import Settings

    core = Core(Settings())
    book = core.book
    book.indexed = False
    core.upsert_campaign("b1", campaign("a", bid_cents=1000), NOON_NY_NS)  # b1 has no funds: an indexed book parks it
    core.upsert_campaign("b2", campaign("b", bid_cents=2000), NOON_NY_NS)
    for price in range(1001, 1200):
        assert book.reprice("b1", "a", price)
    assert book.set_paused("b2", "b", True) and book.set_paused("b2", "b", False)
    assert all(not b.heap and not b.members for b in book._classes.values())
    assert book.parked == 0 and top(book) == []
    assert book.get("b1", "a").bid_cents == 1199 and not book.get("b2", "b").paused
    specs, prices = book.take_dirty()
    assert sorted(s.id for s in specs) == ["a", "b"] and prices == []
