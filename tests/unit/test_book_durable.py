"""The book's side of durability and presence: what changed is marked for the book store,
and ``cancel_on_disconnect`` campaigns are held out while their buyer is away."""

from __future__ import annotations

from exchange.bookstore import campaign_of, rows_of
from routing.book import Book
from tests.builders import NOON_NY_NS, campaign


def listed(book: Book, vertical: str = "auto_insurance", state: str | None = "CA") -> list[str]:
    return [s.id for s in book.ranked(vertical, state, NOON_NY_NS, lambda s: True, 10)]


def test_changes_are_marked_once_per_campaign_and_taken_once() -> None:
    book = Book()
    book.upsert("b1", campaign("c1", states=["CA"]))
    book.upsert("b1", campaign("c2", states=["CA"]))
    book.reprice("b1", "c2", 3000)
    book.reprice("b1", "c2", 3100)
    book.set_paused("b1", "c1", True)
    specs, prices = book.take_dirty()
    assert sorted(s.id for s in specs) == ["c1", "c2"] and prices == []  # a new campaign's price rides with its spec
    assert book.take_dirty() == ([], [])
    book.reprice("b1", "c2", 3100)  # unchanged price: nothing to save
    assert book.take_dirty() == ([], [])
    book.reprice("b1", "c2", 2900)
    book.set_paused("b1", "c1", False)
    specs, prices = book.take_dirty()
    assert specs == [] and sorted(s.id for s in prices) == ["c1", "c2"]


def test_saved_row_restores_the_live_price_and_pause() -> None:
    book = Book()
    book.upsert("b1", campaign("c1", states=["CA"], cancel_on_disconnect=True, seq=7))
    book.reprice("b1", "c1", 4100)
    book.set_paused("b1", "c1", True)
    specs, _ = book.take_dirty()
    (row,) = rows_of(specs, [], 123)
    msg = campaign_of(row)
    assert (msg.id, msg.bid_cents, msg.paused, msg.cancel_on_disconnect, msg.seq, msg.states) == ("c1", 4100, True, True, None, ["CA"])


def test_cancel_on_disconnect_holds_out_only_its_own_campaigns_while_away() -> None:
    book = Book()
    book.upsert("b1", campaign("cod", states=["CA"], bid_cents=3000, cancel_on_disconnect=True))
    book.upsert("b1", campaign("stays", states=["CA"], bid_cents=2000))
    assert listed(book) == ["cod", "stays"]
    assert book.set_away("b1", True) == 1
    assert listed(book) == ["stays"]
    assert book.set_away("b1", True) == 0
    assert book.set_away("b1", False) == 1
    assert listed(book) == ["cod", "stays"]


def test_a_paused_campaign_stays_paused_when_its_buyer_comes_back() -> None:
    book = Book()
    book.upsert("b1", campaign("cod", states=["CA"], cancel_on_disconnect=True))
    book.set_paused("b1", "cod", True)
    book.set_away("b1", True)
    book.set_away("b1", False)
    assert listed(book) == []
    book.set_paused("b1", "cod", False)
    assert listed(book) == ["cod"]


def test_restored_away_and_replaced_without_the_flag() -> None:
    book = Book()
    book.upsert("b1", campaign("c1", states=["CA"], cancel_on_disconnect=True), away=True)
    assert listed(book) == []  # restored while its buyer has no socket
    book.upsert("b1", campaign("c1", states=["CA"]))  # re-sent without the flag: listed, and no longer affected
    assert listed(book) == ["c1"]
    assert book.set_away("b1", True) == 0
    assert listed(book) == ["c1"]


def test_recount_puts_delivered_legs_in_the_windows_current_now() -> None:
    from routing.capacity import Capacity, Limits
    from routing.schedule import UTC, local_time

    t = NOON_NY_NS + 30 * 60 * 10**9  # 16:30 UTC on the 15th
    now = local_time(UTC, t)
    cap = Capacity()
    hour = 3600 * 10**9
    cap.recount(now, local_time(UTC, t - 10 * 60 * 10**9), 700, True)  # this hour
    cap.recount(now, local_time(UTC, t - 2 * hour), 500, False)  # today, not billable
    cap.recount(now, local_time(UTC, t - 30 * hour), 900, True)  # yesterday: this month only
    assert cap.counts(now) == (1, 2, 3, 700)
    assert cap.refusal(Limits(daily=2), now, 100) is not None and cap.refusal(Limits(daily=3), now, 100) is None
