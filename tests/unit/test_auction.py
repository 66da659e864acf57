from routing.auction import Bid, clear
from billing.money import split


def b(bid: int, buyer: str, prio: int = 0) -> Bid:
    return Bid(bid, prio, buyer, f"c_{buyer}", "+18005550199", 90, 0)


def test_first_price_clears_at_winning_bid():
    out = clear([b(2000, "a"), b(3000, "b"), b(2500, "c")], 0, "first", 2000, 4)
    assert [r.bid.buyer for r in out.routes] == ["b", "c", "a"]
    assert [r.price_cents for r in out.routes] == [3000, 2500, 2000]


def test_second_price_clears_at_runner_up_plus_one_cent():
    out = clear([b(2000, "a"), b(3000, "b")], 0, "second", 2000, 4)
    assert out.routes[0].price_cents == 2001


def test_second_price_never_below_floor_and_never_above_bid():
    out = clear([b(2000, "a"), b(3000, "b")], 2500, "second", 2000, 4)
    assert out.routes[0].price_cents == 2500  # runner-up is below the floor
    assert [r.bid.buyer for r in out.routes] == ["b"]
    tie = clear([b(3000, "a", 1), b(3000, "b", 2)], 0, "second", 2000, 4)
    assert tie.routes[0].price_cents == 3000  # runner-up + 1 would exceed the winning bid


def test_second_price_without_runner_up_clears_at_floor():
    out = clear([b(3000, "b")], 1200, "second", 2000, 4)
    assert out.routes[0].price_cents == 1200


def test_tie_goes_to_the_older_bid_then_to_ids():
    out = clear([b(3000, "late", prio=9), b(3000, "early", prio=3)], 0, "first", 0, 4)
    assert out.routes[0].bid.buyer == "early"
    out = clear([b(3000, "z", prio=3), b(3000, "a", prio=3)], 0, "first", 0, 4)
    assert out.routes[0].bid.buyer == "a"


def test_below_floor_and_no_bid_are_reasons_not_errors():
    assert clear([], 0, "first", 0, 4).reason == "no_eligible_bid"
    out = clear([b(900, "a")], 1000, "first", 0, 4)
    assert out.reason == "below_floor" and out.routes == ()
    assert out.losers[0][1] == "below_floor"


def test_routes_are_capped_and_losers_reported():
    out = clear([b(100 * i, str(i)) for i in range(1, 8)], 0, "first", 0, 3)
    assert len(out.routes) == 3
    assert {x[1] for x in out.losers} == {"outbid"}


def test_payout_rounds_down_and_margin_takes_the_remainder():
    assert split(999, 2000) == (799, 200)  # 799.2 -> 799
    assert split(1, 2000) == (0, 1)
    assert split(2500, 0) == (2500, 0)
    for price in range(0, 5000, 7):
        payout, margin = split(price, 1234)
        assert payout + margin == price and payout >= 0 and margin >= 0
