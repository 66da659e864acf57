"""The auction rule, pure and tiny: rank, apply the floor, clear, split the money.

Ranking: highest bid first; ties go to the bid that has stood longest at that price
(``priority``, a global sequence taken at each price change or live answer), then to the
lower (buyer, campaign) ids, so the outcome is deterministic. The candidates arrive one per
buyer (the buyer's best eligible campaign), so a buyer never sets its own price.

Pricing: ``first`` clears at the winning bid. ``second`` clears at the next route's bid
plus one cent, never below the floor and never above the winning bid; with no runner-up
it clears at the floor. Each fallback route is priced the same way against the routes
after it, so a call that moves to a fallback costs that buyer its own clearing price.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from billing.money import split

Pricing = Literal["first", "second"]


class Bidder(NamedTuple):
    bid_cents: int
    priority: int
    buyer: str
    campaign: str
    destination: str
    min_duration_s: int
    dedupe_days: int
    request_id: str | None = None  # set for a live (RTB) answer


class Priced(NamedTuple):
    bidder: Bidder
    price_cents: int
    payout_cents: int
    margin_cents: int


class Cleared(NamedTuple):
    reason: str  # "ok" | "no_eligible_bid" | "below_floor"
    routes: tuple[Priced, ...]
    losers: tuple[tuple[Bidder, str], ...]  # (bidder, loss reason)


def rank_key(b: Bidder) -> tuple[int, int, str, str]:
    return (-b.bid_cents, b.priority, b.buyer, b.campaign)


def clear(
    bidders: list[Bidder], floor_cents: int, pricing: Pricing, take_rate_bps: int, max_routes: int, ranked: bool = False
) -> Cleared:
    """Clear one call. ``bidders`` are eligible, one per buyer, in any order (or already in
    rank order when ``ranked`` is true, as the book returns them)."""
    ranked = bidders if ranked else sorted(bidders, key=rank_key)
    above = [b for b in ranked if b.bid_cents >= floor_cents]
    below = tuple((b, "below_floor") for b in ranked[len(above):]) if len(above) < len(ranked) else ()
    if not ranked:
        return Cleared("no_eligible_bid", (), ())
    if not above:
        return Cleared("below_floor", (), below)
    routes = []
    for k, b in enumerate(above[:max_routes]):
        if pricing == "first":
            price = b.bid_cents
        else:
            runner = above[k + 1].bid_cents + 1 if k + 1 < len(above) else floor_cents
            price = min(b.bid_cents, max(floor_cents, runner))
        payout, margin = split(price, take_rate_bps)
        routes.append(Priced(b, price, payout, margin))
    outbid = tuple((b, "outbid") for b in above[1:])
    return Cleared("ok", tuple(routes), outbid + below)
