"""Builders for tests: a core driven by a manual clock, and wire-message factories."""

from __future__ import annotations

from billing.postings import buyer_account, deposit
from exchange.clock import ManualClock
from exchange.core import Core
from exchange.lifecycle import apply_event
from exchange.messages import CallEvent, CallRequest, Campaign
from exchange.pipeline import decide, prepare
from exchange.settings import Settings

# 2026-04-15 16:00 UTC is a Wednesday, noon in New York: inside every calling window.
NOON_NY_NS = 1_776_268_800 * 1_000_000_000


def campaign(id: str = "c1", vertical: str = "auto_insurance", bid_cents: int = 2500, **kw: object) -> Campaign:
    kw.setdefault("min_duration_s", 90)
    kw.setdefault("destination", "+18005550199")
    return Campaign(id=id, vertical=vertical, bid_cents=bid_cents, **kw)  # type: ignore[arg-type]


def call(caller: str = "+12125550100", vertical: str = "auto_insurance", **kw: object) -> CallRequest:
    return CallRequest(caller=caller, vertical=vertical, **kw)  # type: ignore[arg-type]


class World:
    """A core plus a manual clock: place campaigns, fund buyers, submit calls and events."""

    def __init__(self, **settings: object) -> None:
        settings.setdefault("rtb_tmax_ms", 0)
        self.settings = Settings(**settings)  # type: ignore[arg-type]
        self.core = Core(self.settings)
        self.clock = ManualClock(NOON_NY_NS)
        self._n = 0
        self._keys = 0

    def fund(self, buyer: str, cents: int = 1_000_000, credit: int = 0) -> None:
        self._n += 1
        self.core.ledger.post(deposit(buyer_account(buyer), cents, f"dep{self._n}", self.clock.now_ns()))
        if credit:
            self.core.ledger.set_credit(buyer_account(buyer), credit)

    def place(self, buyer: str, c: Campaign, funds: int | None = 1_000_000) -> None:
        if funds is not None and self.core.ledger.balance(buyer_account(buyer)) == 0:
            self.fund(buyer, funds)
        self.core.upsert_campaign(buyer, c, self.clock.now_ns())

    def consent(self, callee: str, *buyers: str) -> str:
        """What a compliant outbound call needs: a fresh national DNC snapshot (loaded if
        none is) and a consent for ``callee`` naming ``buyers``; returns the consent token."""
        from compliance.consent import Consent
        from compliance.dncarray import EMPTY
        from compliance.instants import utc_day
        from compliance.stores import NumberList

        stores, now = self.core.gate.stores, self.clock.now_ns()
        if stores.national is None:
            stores.swap(national=NumberList(EMPTY, utc_day(now), "national:test"))
        self._n += 1
        token = f"tok{self._n}"
        stores.consents.add(Consent(token, callee, frozenset(buyers), now - 86_400 * 1_000_000_000))
        return token

    def submit(self, req: CallRequest | None = None, publisher: str = "p1", answers: dict | None = None):
        self._n += 1
        now = self.clock.now_ns()
        p = prepare(self.core, req or call(), publisher, f"call{self._n}", now)
        return decide(self.core, p, answers or {}, now)

    def event(self, rec, event: str, duration_s: int | None = None, key: str | None = None, route_index: int | None = None):
        self._keys += 1
        ev = CallEvent(event=event, duration_s=duration_s, route_index=route_index)  # type: ignore[arg-type]
        return apply_event(self.core, rec, key or f"k{self._keys}", ev, self.clock.now_ns())




def best_eligible_bid(w: World, area_code: int = 212) -> int | None:
    """The oracle of the index tests: the highest bid in the whole book that may take an inbound
    call now, by the pipeline's own ``refusal`` on every campaign (no index, nothing parked)."""
    from routing.eligibility import refusal

    now, best = w.clock.now_ns(), None
    for s in w.core.book.standing():
        if s.live and not s.paused and refusal(w.core, s, None, "inbound", area_code, s.bid_cents, now) is None:
            best = s.bid_cents if best is None else max(best, s.bid_cents)
    return best


def submit_checked(w: World, caller: str, vertical: str = "v"):
    """Submit an inbound call and assert it went to ``best_eligible_bid`` (or found none)."""
    want = best_eligible_bid(w)
    rec, _ = w.submit(call(caller, vertical))
    if want is None:
        assert rec.decision.decision == "rejected" and rec.decision.reason == "no_eligible_bid", rec.decision
    else:
        assert rec.decision.decision == "routed", (rec.decision, want)
        assert rec.routes[0].bid_cents == want
    return rec
