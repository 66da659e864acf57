"""The call pipeline, pure: call -> compliance -> auction -> routing plan -> effects.

``prepare`` validates the call, runs the gate and lists the RTB campaigns to ask; the edge
sends their ``bid_request``s and waits at most ``tmax_ms``; ``decide`` then runs the
auction over the standing bids and the live answers, engages the winner's leg and returns
the decision with the notices to send (``win`` to the winner, ``loss`` to the others).
Both take ``now_ns``; neither awaits, logs or reads a clock.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from compliance.gate import BUYER_WIDE, Verdict
from compliance.numbers import NumberInfo, is_us_region, parse_number
from routing.attestation import NAMES, adjusted, level_of, multiplier_text
from routing.eligibility import refusal, reopens_at
from routing.reasons import Outcome, Refusal

from routing.auction import Bid, clear
from routing.standing import Standing
from .core import CallRecord, Core, Notice
from .replay import LIST_OFF, LIST_REFUSED, Refused, replay_of
from .ids import BuyerId
from .instants import from_ns
from .lifecycle import engage, route_wire
from .messages import BidRequest, CallFields, CallInfo, DecisionFields, Loss, RtbBid
from .quality import Observation, QualityEvidence
from routing.parking import FUNDS, PARKABLE


class Prepared(NamedTuple):
    call_id: str
    publisher: str
    call: CallFields
    consumer: NumberInfo | None
    caller: NumberInfo | None
    state: str | None
    area_code: int | None
    floor_cents: int
    verdict: Verdict
    tmax_ms: int
    bid_requests: tuple[tuple[BuyerId, BidRequest], ...]  # (buyer, request) to send now
    refused: tuple[Refused, ...] = ()  # live (RTB) campaigns not asked, and why (the auction replay)
    level: int = 0  # the call's attestation level (routing/attestation.py)
    risk: int = 0  # the publisher's risk score now (0 with the signals off)
    observed: Observation | None = None  # the caller's signals (inbound calls, signals on)
    quality_reason: str | None = None  # caller_velocity: rejected whatever the campaigns
    skipped: dict[str, int] | None = None  # campaigns passed over for attestation / publisher_risk, filled as they are


def prepare(core: Core, call: CallFields, publisher: str, call_id: str, now_ns: int) -> Prepared:
    s = core.settings
    caller = parse_number(call.caller)
    level, risk, observed, why = level_of(call.attestation), 0, None, None
    if s.quality_signals:  # counted before the gate: a denied call is still a call of that caller and publisher
        number = int(caller.e164[1:]) if caller is not None and call.direction == "inbound" else None  # (parsed: "+" and digits)
        observed, risk = core.quality.observe_risk(publisher, number, now_ns)
        if observed is not None and s.quality_velocity_max_calls and observed.caller_calls > s.quality_velocity_max_calls:
            why = Outcome.CALLER_VELOCITY
    skipped: dict[str, int] = {}
    consumer = caller if call.direction == "inbound" else parse_number(call.callee)
    consumer, verdict = core.gate.screen(call, consumer, now_ns, publisher)  # consumer now carries the gate's plan
    state = call.state or (consumer.state if consumer is not None else None)
    area_code = consumer.npa if consumer is not None else None
    floor = max(call.floor_cents, s.min_floor_cents)
    tmax = min(s.rtb_tmax_ms, s.rtb_tmax_cap_ms)
    if call.tmax_ms is not None:
        tmax = min(tmax, call.tmax_ms)
    requests: list[tuple[BuyerId, BidRequest]] = []
    refused: list[Refused] = []
    if verdict.allow and why is None and tmax > 0:
        info: CallInfo | None = None  # made for the first request (most calls have no live campaign to ask)
        for n, st in enumerate(core.book.rtb_candidates(call.vertical, state, now_ns)):
            if len(requests) >= s.rtb_max_fanout:
                break
            if level < st.min_level or risk > st.max_risk:
                skip = Refusal.ATTESTATION if level < st.min_level else Refusal.PUBLISHER_RISK
                skipped[skip] = skipped.get(skip, 0) + 1
                if s.auction_replay and len(refused) < LIST_REFUSED:
                    refused.append((st.buyer, st.id, None, skip))
                continue
            no = refusal(core, st, consumer, call.direction, area_code, 0, now_ns)
            if no is None:
                if info is None:
                    info = CallInfo(vertical=call.vertical, state=state, area_code=area_code, direction=call.direction, tags=call.tags,
                                    attestation=call.attestation)
                req = BidRequest(request_id=f"{call_id}.{n}", campaign=st.id, tmax_ms=tmax, floor_cents=floor, call=info)
                requests.append((BuyerId(st.buyer), req))
            elif s.auction_replay and len(refused) < LIST_REFUSED:  # (the replay lists the first ones)
                refused.append((st.buyer, st.id, None, no))
    return Prepared(call_id, publisher, call, consumer, caller, state, area_code, floor, verdict, tmax, tuple(requests),
                    tuple(refused), level, risk, observed, why, skipped)


def decide(core: Core, p: Prepared, answers: dict[str, tuple[RtbBid, int]], now_ns: int) -> tuple[CallRecord, list[Notice]]:
    """Run the auction and engage the winner. ``answers``: request id -> (answer, arrival seq)."""
    s = core.settings
    call = p.call
    rec = CallRecord(p.call_id, p.publisher, now_ns)
    rec.request = call
    rec.direction, rec.vertical, rec.state = call.direction, call.vertical, p.state
    rec.consumer = p.consumer
    rec.caller = p.caller.e164 if p.caller is not None else call.caller
    rec.evidence = {**core.gate.evidence(p.verdict), "allow": p.verdict.allow, "reason": p.verdict.reason, "rule": p.verdict.rule}
    notices: list[Notice] = []
    core.stats.calls += 1
    level, risk = p.level, p.risk
    skipped = p.skipped if p.skipped is not None else {}
    changed: list[tuple[str, str, int, int, str]] = []  # the bids a modifier lowered for this call
    if s.quality_signals or level:
        rec.quality = _evidence(p, s.quality_signals, s.quality_window_s, s.quality_velocity_max_calls, skipped, changed)
    if not p.verdict.allow:
        if s.auction_replay:
            rec.replay = replay_of(p.floor_cents, s.pricing, (), (), (), {}, (), {})
        rec = _reject(core, rec, p.verdict.reason, p.verdict.rule, now_ns)
        if p.verdict.retry_after_ns is not None and rec.decision is not None:
            rec.decision = msgspec.structs.replace(rec.decision, retry_after_utc=from_ns(p.verdict.retry_after_ns))
        return rec, notices
    if p.quality_reason is not None:
        if s.auction_replay:
            rec.replay = replay_of(p.floor_cents, s.pricing, (), (), (), {}, (), {})
        return _reject(core, rec, p.quality_reason, None, now_ns), notices

    want = s.max_fallbacks + 2  # the routes plus one runner-up to price the last of them

    done: set[str] = set()  # buyers with their route, or refused whatever the campaign
    refused: list[Refused] | None = list(p.refused) if s.auction_replay else None  # the replay's ineligible candidates
    unlisted: dict[str, int] = {}  # ... past LIST_REFUSED of them: counted by reason only

    def note(st: Standing, why: str) -> None:
        if refused is None:
            return
        if len(refused) < LIST_REFUSED:
            refused.append((st.buyer, st.id, st.bid_cents, why))
        else:
            unlisted[why] = unlisted.get(why, 0) + 1

    def accept(st: Standing) -> bool:
        if st.buyer in done:
            return False
        if level < st.min_level or risk > st.max_risk:  # this call's quality: this campaign only, nothing to park
            skip = Refusal.ATTESTATION if level < st.min_level else Refusal.PUBLISHER_RISK
            skipped[skip] = skipped.get(skip, 0) + 1
            if refused is not None:
                note(st, skip)
            return False
        price = st.bid_cents if st.multipliers is None else adjusted(st.bid_cents, st.multipliers, level)
        why = refusal(core, st, p.consumer, call.direction, p.area_code, price, now_ns)
        if why is not None:
            if refused is not None:
                note(st, why)
            if why in PARKABLE:  # the same for every call until an event or an instant: out of the index till then
                core.book.park(st, why, None if why == FUNDS else reopens_at(core.clock, st, why, now_ns), now_ns)
            elif why in BUYER_WIDE:  # the compliance gate's per-buyer verdict: no campaign of this buyer may take it
                done.add(st.buyer)
            return False
        done.add(st.buyer)
        return True

    ledger = core.ledger
    if core.book.lot.count:
        core.book.lot.wake(now_ns, ledger.freed, ledger.spendable)
    else:
        ledger.freed.clear()
    outbound = call.direction == "outbound"
    offs = core.book.offs(call.vertical, p.state, outbound, LIST_OFF) if refused is not None else None  # before the scan parks more
    standing = core.book.ranked(call.vertical, p.state, now_ns, accept, want, s.scan_limit, outbound, done,
                                note if refused is not None else None, level)
    bidders = [Bid(st.bid_cents, st.seq, st.buyer, st.id, st.destination, st.min_duration_s, st.dedupe_days) for st in standing]
    for k, c in enumerate(standing):
        if c.multipliers is not None and (price := adjusted(c.bid_cents, c.multipliers, level)) != c.bid_cents:
            bidders[k] = bidders[k]._replace(bid_cents=price)  # the modifier, before the auction (the book ranked by it)
            changed.append((c.buyer, c.id, c.bid_cents, price, multiplier_text(c.multipliers, level)))
    timeouts: list[tuple[BuyerId, BidRequest]] = []
    for buyer, req in p.bid_requests:
        got = answers.get(req.request_id)
        st = core.book.get(buyer, req.campaign)
        if got is None or st is None:
            timeouts.append((buyer, req))
            continue
        ans, arrival = got
        why = refusal(core, st, p.consumer, call.direction, p.area_code, ans.bid_cents, now_ns)
        if why is not None:
            if refused is not None:
                if len(refused) < LIST_REFUSED:
                    refused.append((buyer, st.id, ans.bid_cents, why))
                else:
                    unlisted[why] = unlisted.get(why, 0) + 1
            continue
        bidders.append(Bid(
            ans.bid_cents, arrival, buyer, st.id, ans.destination or st.destination,
            ans.min_duration_s if ans.min_duration_s is not None else st.min_duration_s, st.dedupe_days, req.request_id,
        ))
    if len(bidders) > len(standing):  # live answers joined: keep each buyer's best bid only
        best: dict[str, Bid] = {}
        for b in bidders:
            cur = best.get(b.buyer)
            if cur is None or (-b.bid_cents, b.priority) < (-cur.bid_cents, cur.priority):
                best[b.buyer] = b
        cleared = clear(list(best.values()), p.floor_cents, s.pricing, s.take_rate_bps, s.max_fallbacks + 1)
    else:  # the book already returns one bid per buyer in price-time order
        cleared = clear(bidders, p.floor_cents, s.pricing, s.take_rate_bps, s.max_fallbacks + 1, ranked=True)
    clearing = cleared.routes[0].price_cents if cleared.routes else None
    for buyer, req in timeouts:
        notices.append((buyer, Loss(request_id=req.request_id, reason=Outcome.TIMEOUT, campaign=req.campaign, call_id=p.call_id)))
    for b, why in cleared.losers:
        notices.append((b.buyer, Loss(request_id=b.request_id or p.call_id, reason=why, clearing_price_cents=clearing, campaign=b.campaign, call_id=p.call_id)))
    rec.bids = tuple((b.buyer, b.campaign, b.bid_cents, b.request_id is not None) for b in bidders)
    if refused is not None and offs is not None:
        rec.replay = replay_of(p.floor_cents, s.pricing, rec.bids, tuple(refused),
                            tuple((buyer, req.campaign, Outcome.TIMEOUT) for buyer, req in timeouts) if timeouts else (), offs[0], offs[1],
                            unlisted)
    if skipped or changed:
        rec.quality = _evidence(p, s.quality_signals, s.quality_window_s, s.quality_velocity_max_calls, skipped, changed)
    if cleared.reason != Outcome.OK:
        reason: str = cleared.reason
        if reason == Outcome.NO_ELIGIBLE_BID:
            reason = _number_reason(p.consumer)
            if reason == Outcome.NO_ELIGIBLE_BID and skipped:  # passed over for this call's quality: say so
                reason = max(sorted(skipped), key=skipped.__getitem__)
        return _reject(core, rec, reason, None, now_ns), notices
    rec.routes = cleared.routes
    rec.status = "routed"
    core.calls[rec.call_id] = rec
    core.active[rec.call_id] = rec
    win = engage(core, rec, 0, now_ns)
    if win is None:  # nobody could take the leg after all (cannot happen within one step)
        core.active.pop(rec.call_id, None)
        return _reject(core, rec, Outcome.NO_ELIGIBLE_BID, None, now_ns), notices
    notices.append(win)
    expires = from_ns(rec.expires_ns or now_ns)
    routes = [route_wire(r, expires) for r in rec.routes[rec.index:]]
    rec.decision = DecisionFields(call_id=rec.call_id, decision="routed", reason="ok", route=routes[0], fallbacks=routes[1:])
    core.stats.routed += 1
    core.stats.by_reason["ok"] = core.stats.by_reason.get("ok", 0) + 1
    return rec, notices


def _evidence(p: Prepared, on: bool, window_s: int, max_calls: int, skipped: dict[str, int],
              changed: list[tuple[str, str, int, int, str]]) -> QualityEvidence:
    """The decision's call quality evidence: its attestation, and with the signals on the
    caller's and the publisher's signals and the limits applied; the campaigns passed over."""
    o = p.observed
    if not on:
        return QualityEvidence(attestation=NAMES[p.level], skipped=dict(skipped) or None, adjusted=list(changed) or None)
    return QualityEvidence(
        attestation=NAMES[p.level], caller_calls=o.caller_calls if o else None, near_duplicates=o.near_duplicates if o else None,
        publisher_risk=p.risk, window_s=window_s, velocity_max_calls=max_calls or None,
        skipped=dict(skipped) or None, adjusted=list(changed) or None,
    )


def _number_reason(consumer: NumberInfo | None) -> str:
    """``no_eligible_bid``, or the reason the consumer's number names: a number outside the US
    and its territories, or a service (non-geographic) number, which no state can target."""
    if consumer is not None:
        if not is_us_region(consumer.region):
            return Outcome.FOREIGN_NUMBER
        if not consumer.geographic:
            return Outcome.NON_GEOGRAPHIC_NUMBER
    return Outcome.NO_ELIGIBLE_BID


def _reject(core: Core, rec: CallRecord, reason: str, rule: str | None, now_ns: int) -> CallRecord:
    rec.decision = DecisionFields(call_id=rec.call_id, decision="rejected", reason=reason, rule=rule)
    core.calls[rec.call_id] = rec
    core.finish(rec, "rejected", now_ns)
    core.stats.rejected += 1
    core.stats.by_reason[reason] = core.stats.by_reason.get(reason, 0) + 1
    return rec


__all__ = ["Prepared", "prepare", "decide"]

