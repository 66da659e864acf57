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

from typing import Any, Literal, NamedTuple

from billing.money import split

from .reasons import Outcome

Pricing = Literal["first", "second"]


class Bid(NamedTuple):
    """One offer for one call: a standing campaign's price, or a live (RTB) answer."""

    bid_cents: int
    priority: int
    buyer: str
    campaign: str
    destination: str
    min_duration_s: int
    dedupe_days: int
    request_id: str | None = None  # set for a live (RTB) answer


class PlannedRoute(NamedTuple):
    """A route of the plan: the bid, what it clears at, and the split of that price."""

    bid: Bid
    price_cents: int
    payout_cents: int
    margin_cents: int

    @property
    def buyer(self) -> str:
        return self.bid.buyer

    @property
    def campaign(self) -> str:
        return self.bid.campaign

    @property
    def destination(self) -> str:
        return self.bid.destination

    @property
    def bid_cents(self) -> int:
        return self.bid.bid_cents

    @property
    def min_duration_s(self) -> int:
        return self.bid.min_duration_s

    @property
    def dedupe_days(self) -> int:
        return self.bid.dedupe_days

    def record(self) -> dict[str, object]:
        """The route as the audit trail records it (``from_record`` reads it back)."""
        b = self.bid
        return {"buyer": b.buyer, "campaign": b.campaign, "destination": b.destination, "bid_cents": b.bid_cents,
                "price_cents": self.price_cents, "payout_cents": self.payout_cents, "margin_cents": self.margin_cents,
                "min_duration_s": b.min_duration_s, "dedupe_days": b.dedupe_days}

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> PlannedRoute:
        bid = Bid(r["bid_cents"], 0, r["buyer"], r["campaign"], r["destination"], r["min_duration_s"], r["dedupe_days"])
        return cls(bid, r["price_cents"], r["payout_cents"], r["margin_cents"])


class Cleared(NamedTuple):
    reason: Outcome  # ok | no_eligible_bid | below_floor
    routes: tuple[PlannedRoute, ...]
    losers: tuple[tuple[Bid, Outcome], ...]  # (bidder, loss reason)


def rank_key(b: Bid) -> tuple[int, int, str, str]:
    return (-b.bid_cents, b.priority, b.buyer, b.campaign)


def clear(
    bidders: list[Bid], floor_cents: int, pricing: Pricing, take_rate_bps: int, max_routes: int, ranked: bool = False
) -> Cleared:
    """Clear one call. ``bidders`` are eligible, one per buyer, in any order (or already in
    rank order when ``ranked`` is true, as the book returns them)."""
    order = bidders if ranked else sorted(bidders, key=rank_key)
    above = [b for b in order if b.bid_cents >= floor_cents]
    below = tuple((b, Outcome.BELOW_FLOOR) for b in order[len(above):]) if len(above) < len(order) else ()
    if not order:
        return Cleared(Outcome.NO_ELIGIBLE_BID, (), ())
    if not above:
        return Cleared(Outcome.BELOW_FLOOR, (), below)
    routes = []
    for k, b in enumerate(above[:max_routes]):
        if pricing == "first":
            price = b.bid_cents
        else:
            runner = above[k + 1].bid_cents + 1 if k + 1 < len(above) else floor_cents
            price = min(b.bid_cents, max(floor_cents, runner))
        payout, margin = split(price, take_rate_bps)
        routes.append(PlannedRoute(b, price, payout, margin))
    outbid = tuple((b, Outcome.OUTBID) for b in above[1:])
    return Cleared(Outcome.OK, tuple(routes), outbid + below)
