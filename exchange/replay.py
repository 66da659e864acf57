"""The auction replay: what one decision saw, recorded as it decided, and who may read it.

``GET /v1/calls/{id}/auction`` lists every candidate of a call with its outcome -- ``won``,
``fallback``, ``outbid``, ``below_floor`` (the bids the auction cleared), ``timeout`` and
``no_bid`` (live bid requests without a usable answer), ``ineligible`` with its reason -- and
``ineligible_counts`` by reason.

**What the decision records, and what that costs.** The decision already keeps the bids it
considered (``CallRecord.bids``) and its plan. The replay adds, per call:

- each campaign the book's scan *walked* and refused (a tuple appended in ``accept``: the scan
  stops after the routes and one runner-up, so these are the campaigns ranked above them), each
  wide campaign walked whose state filter leaves the call's state out, and each live (RTB)
  campaign not asked or whose answer was refused -- the first ``LIST_REFUSED`` of them one by
  one, the rest counted by reason (``ineligible_unlisted``), so a buyer that fills the top of the
  book with campaigns no caller can reach cannot make every decision record thousands of them;
- the campaigns out of the index in the call's buckets (parked until an event re-enables them:
  schedule closed, cap, budget, funds; or paused), which no decision walks: counted by reason
  from per-bucket counters (``Book.offs``, a few dict reads), and listed one by one only when
  they are at most ``LIST_OFF`` (else ``ineligible_unlisted`` says how many were counted but not
  listed);
- the floor and the pricing rule.

Campaigns the scan never reached (ranked below the runner-up) are not candidates: none could
have won. A buyer's other campaigns once it has its route are not either (one route per buyer,
its best eligible campaign).

**Where it lives.** On the call in memory (``CallRecord.replay``, kept by rejected calls too)
for ``EXCHANGE_CALL_RETENTION_S``, and in the decision's audit record (``record``: written by
the writer task, off the decision's clock), from which a call no longer in memory is replayed.
``EXCHANGE_AUCTION_REPLAY=false`` records none of it (the endpoint then answers ``no_replay``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from routing.reasons import replay_reason

LIST_OFF = 16  # out-of-index campaigns in the call's buckets listed one by one, at most
LIST_REFUSED = 64  # walked (or live) ineligible campaigns listed one by one per call, at most; the rest counted

Refused = tuple[str, str, int | None, str]  # (buyer, campaign, bid_cents or None, refusal code)


class Replay(NamedTuple):
    floor_cents: int
    pricing: str
    bids: tuple[tuple[str, str, int, bool], ...]  # considered: (buyer, campaign, bid_cents, live)
    refused: tuple[Refused, ...]  # walked (or asked live) and ineligible
    unanswered: tuple[tuple[str, str, str], ...]  # live requests without an answer: (buyer, campaign, timeout | no_bid)
    off_counts: dict[str, int]  # out of the index in the call's buckets: refusal code -> campaigns
    off_listed: tuple[Refused, ...] | None  # ... each of them, or None when too many to list
    unlisted: dict[str, int]  # walked and ineligible past the first LIST_REFUSED: refusal code -> campaigns


_NO_COUNTS: dict[str, int] = {}  # shared, never written
_EMPTY: dict[tuple[int, str], Replay] = {}  # one shared replay per (floor, pricing) for auctions that saw nobody


def replay_of(floor_cents: int, pricing: str, bids: tuple[tuple[str, str, int, bool], ...], refused: tuple[Refused, ...],
              unanswered: tuple[tuple[str, str, str], ...], off_counts: dict[str, int], off_listed: tuple[Refused, ...] | None,
              unlisted: dict[str, int]) -> Replay:
    """The replay of one decision; an auction that saw no candidate at all (a compliance rejection,
    a vertical nobody bids on) shares one object, so the many such calls kept in memory cost nothing."""
    if bids or refused or unanswered or off_counts or off_listed or unlisted:
        return Replay(floor_cents, pricing, bids, refused, unanswered, off_counts, off_listed, unlisted or _NO_COUNTS)
    rep = _EMPTY.get((floor_cents, pricing))
    if rep is None:
        if len(_EMPTY) >= 1024:
            _EMPTY.clear()
        rep = _EMPTY[(floor_cents, pricing)] = Replay(floor_cents, pricing, (), (), (), _NO_COUNTS, (), _NO_COUNTS)
    return rep


def record(rep: Replay) -> dict[str, Any]:
    """The replay as the decision's audit record carries it (the bids and routes are there already)."""
    return {
        "floor_cents": rep.floor_cents, "pricing": rep.pricing,
        "ineligible": [list(r) for r in rep.refused],
        "unanswered": [list(u) for u in rep.unanswered],
        "off_counts": rep.off_counts,
        "off_listed": None if rep.off_listed is None else [list(r) for r in rep.off_listed],
        "unlisted": rep.unlisted,
    }


Route = tuple[str, str, int, int]  # (buyer, campaign, bid_cents, price_cents), winner first


def view(call_id: str, decision: str, reason: str, rep: dict[str, Any], bids: list[tuple[str, str, int]], routes: list[Route],
         buyer: str | None) -> dict[str, Any] | None:
    """The replay as its reader may see it: everything (``buyer`` None: the operator), or a
    buyer's own candidates and the clearing price; None when the buyer had no candidate."""
    floor = rep["floor_cents"]
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for k, (b, c, bid, price) in enumerate(routes):
        seen.add((b, c))
        out.append({"buyer": b, "campaign": c, "bid_cents": bid, "outcome": "won" if k == 0 else "fallback", "price_cents": price})
    for b, c, bid in sorted(bids, key=lambda x: -x[2]):
        if (b, c) not in seen:
            seen.add((b, c))
            out.append({"buyer": b, "campaign": c, "bid_cents": bid, "outcome": "below_floor" if bid < floor else "outbid"})
    for b, c, why in rep["unanswered"]:
        if (b, c) not in seen:
            seen.add((b, c))
            out.append({"buyer": b, "campaign": c, "outcome": why})
    counts: dict[str, int] = {}
    for b, c, bid, why in rep["ineligible"]:
        r = replay_reason(why)
        counts[r] = counts.get(r, 0) + 1
        if (b, c) not in seen:
            seen.add((b, c))
            out.append({"buyer": b, "campaign": c, "bid_cents": bid, "outcome": "ineligible", "reason": r})
    listed = rep["off_listed"]
    for b, c, bid, why in listed or ():
        if (b, c) not in seen:
            seen.add((b, c))
            out.append({"buyer": b, "campaign": c, "bid_cents": bid, "outcome": "ineligible", "reason": replay_reason(why)})
    off = {replay_reason(why): n for why, n in rep["off_counts"].items()}
    for r, n in off.items():
        counts[r] = counts.get(r, 0) + n
    more = rep.get("unlisted") or {}
    for why, n in more.items():
        r = replay_reason(why)
        counts[r] = counts.get(r, 0) + n
    clearing = routes[0][3] if routes else None
    body: dict[str, Any] = {"call_id": call_id, "decision": decision, "reason": reason, "clearing_price_cents": clearing,
                            "floor_cents": floor, "pricing": rep["pricing"]}
    if buyer is None:
        body["candidates"] = [{k: v for k, v in x.items() if v is not None} for x in out]
        body["ineligible_counts"] = dict(sorted(counts.items()))
        unlisted = (sum(off.values()) if listed is None else 0) + sum(more.values())
        if unlisted:
            body["ineligible_unlisted"] = unlisted
        return body
    mine = [{k: v for k, v in x.items() if v is not None} for x in out if x["buyer"] == buyer]
    if not mine:
        return None
    own: dict[str, int] = {}
    for x in mine:
        if x["outcome"] == "ineligible":
            own[x["reason"]] = own.get(x["reason"], 0) + 1
    body["candidates"] = mine
    body["ineligible_counts"] = dict(sorted(own.items()))
    return body


__all__ = ["LIST_OFF", "Replay", "Refused", "record", "replay_of", "view"]
