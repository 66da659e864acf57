"""The compliance gate, pure: COMPLIANCE.md §6 in order, first match wins, fail closed.

Compiled once from the versioned rule data (``compliance.rules``) and reading the stores of
``compliance.stores``, the gate answers with a ``Verdict`` (allow, reason, rule, and for the
temporal denials of steps 13-15 ``retry_after_ns``, the next instant every candidate window
is open). It never raises: any exception is a deny with ``internal_error``.

Two shapes of the same algorithm:

* ``decide`` runs all of §6 for one buyer and campaign (the harness, ``compliance.check``);
* the exchange runs the call-level part once per call (``screen``/``check``) and the
  buyer-dependent part per auction candidate (``buyer_refusal``): the buyer-scoped internal
  DNC, whether a DNC hit is excused by consent naming this buyer or by this buyer's inquiry
  EBR, the consent's seller list, the RND check of an EBR-only call and the campaign's
  abandonment breaker. The call-level check denies what no buyer could pass and leaves the
  rest to the candidates, so a call is allowed for a buyer exactly when ``decide`` would be.

Candidates (§3.2): the area code's state and zones, plus the consent address's state (and
every zone of that state), plus the state the call names. Every rule must pass in every
candidate zone for every candidate state. Steps 13-14 and ``retry_after`` read the week
tables of ``compliance.windows`` (one per candidate set and UTC week): a bisect for the
answer, a list read for the next opening.
"""

from __future__ import annotations

from datetime import date
from typing import Any, NamedTuple

from .consent import Consent
from .frequency import FrequencyCounter, FrequencyPending
from .geo import address_state, candidates
from .instants import NS_PER_DAY, rfc3339, utc_day
from .numbers import NPA_TABLE_VERSION, NumberInfo, is_us_region, parse_number
from .rules import TZDATA_VERSION, Rules, default_rules
from .stores import Stores
from .suppression import SuppressionList
from .windows import Calendar, Windows

GATE_VERSION = "gate-2"
DIRECTIONS = frozenset({"inbound", "outbound"})
ORIGINS = frozenset({None, "consumer_dialed", "callback", "warm_transfer"})
DIAL_MODES = frozenset({None, "manual", "autodialed", "prerecorded"})
HOUR_NS = 3_600_000_000_000

# Every reason code of COMPLIANCE.md §6 (and the inbound allow).
REASONS = (
    "invalid_request", "invalid_number", "inbound_consumer_initiated", "non_us_number", "non_geographic_number",
    "internal_dnc", "consent_revoked", "litigator_list", "dnc_snapshot_stale", "national_dnc", "state_dnc",
    "consent_missing", "consent_not_found", "consent_phone_mismatch", "consent_seller_mismatch", "consent_expired",
    "reassigned_number", "state_day_restriction", "state_emergency", "outside_calling_hours",
    "state_frequency_limit", "campaign_abandon_rate", "ok", "internal_error",
)
# The per-buyer refusals (``buyer_refusal``) that do not depend on the campaign: for one call,
# they hold for every campaign of that buyer (``_for_buyer`` reads the campaign last).
BUYER_WIDE = frozenset({
    "internal_dnc", "consent_revoked", "litigator_list", "dnc_snapshot_stale", "national_dnc", "state_dnc",
    "consent_missing", "consent_not_found", "consent_phone_mismatch", "consent_seller_mismatch", "consent_expired",
    "reassigned_number",
})


class Plan:
    """What the call-level check learned, for the per-buyer part and the evidence."""

    __slots__ = ("e164", "at_ns", "manual_callback", "consent", "consent_reason", "dnc", "rnd_day", "states", "zones")

    def __init__(self, e164: str, at_ns: int, manual_callback: bool) -> None:
        self.e164, self.at_ns, self.manual_callback = e164, at_ns, manual_callback
        self.consent: Consent | None = None
        self.consent_reason: str | None = None  # why the consent fails for every buyer
        self.dnc: tuple[str, str] | None = None  # (reason, rule) of a registry hit
        self.rnd_day: int | None = None
        self.states: tuple[str, ...] = ()
        self.zones: tuple[str, ...] = ()


class Verdict(NamedTuple):
    allow: bool
    reason: str
    rule: str | None = None
    retry_after_ns: int | None = None  # temporal denials: when every candidate window opens
    pending: FrequencyPending | None = None  # allowed, but the shared counter must still agree
    plan: Plan | None = None


class Screened(NumberInfo, frozen=True):
    """The consumer's number as the gate screened it for one call (carries the plan)."""

    plan: Any = None


def _deny(reason: str, rule: str | None = None, plan: Plan | None = None, retry: int | None = None) -> Verdict:
    return Verdict(False, reason, rule, retry, None, plan)


class Gate:
    """Call-level, per-buyer and single-buyer compliance checks over in-memory stores."""

    __slots__ = ("rules", "stores", "shared_frequency", "_evidence", "_evidence_key", "_windows")

    def __init__(self, suppressions: SuppressionList | None = None, clock: object = None,
                 rules: Rules | None = None, stores: Stores | None = None) -> None:
        # ``clock`` (a ``LocalClock``) is still accepted from callers that pass one; local
        # times now come from the week tables of ``compliance.windows``, which need none.
        del clock
        self.rules = rules if rules is not None else default_rules()
        self.stores = stores if stores is not None else Stores(suppressions)
        self.shared_frequency = False  # True: step 15 is settled by a shared (Redis) counter
        self._evidence: dict[str, Any] = {}
        self._evidence_key: tuple = ()
        self._windows = Windows(self.rules.federal, self.rules.policy.retry_horizon_days, self.rules.states)

    @property
    def suppressions(self) -> SuppressionList:
        return self.stores.suppressions

    def calendars(self) -> list[Calendar]:
        """The calling-window calendars built so far, one per candidate set (for reports)."""
        return self._windows.calendars()

    def prebuild_windows(self, at_ns: int, limit: int = 16) -> int:
        """Build missing calling-window tables of this week and the next for the candidate sets
        seen so far (at most ``limit``), off the decision path; returns how many were built."""
        try:
            return self._windows.prebuild(at_ns, self.stores.holidays or self.rules.holidays, limit)
        except Exception:  # a table that cannot be built is built (and fails closed) by the decision
            return 0

    # ------------------------------------------------------------------ evidence
    def evidence(self, verdict: Verdict | None = None) -> dict[str, Any]:
        """The data versions a decision used (and, given the verdict, its candidates)."""
        st = self.stores
        key = (st.generation, st.suppressions.version, st.consents.version)
        if key != self._evidence_key:
            nat = st.national
            self._evidence = {
                "gate": GATE_VERSION,
                "rules": self.rules.version,
                "npa_table": NPA_TABLE_VERSION,
                "tzdata": TZDATA_VERSION,
                "holidays": (st.holidays or self.rules.holidays).version,
                "national_dnc": nat.version if nat is not None else None,
                "dnc_snapshot_date": _iso_day(nat.snapshot_day) if nat is not None else None,
                "state_dnc": {s: nl.version for s, nl in sorted(st.state_lists.by_state.items())},
                "litigators": st.litigators.version,
                "rnd": st.rnd.version,
                "flags": st.flags.version,
                "suppressions": st.suppressions.version,
                "consents": st.consents.version,
            }
            self._evidence_key = key
        if verdict is None:
            return self._evidence
        out = dict(self._evidence)
        if verdict.plan is not None and verdict.plan.zones:
            out["candidate_states"] = list(verdict.plan.states)
            out["candidate_zones"] = list(verdict.plan.zones)
        if verdict.retry_after_ns is not None:
            out["retry_after_utc"] = rfc3339(verdict.retry_after_ns)
        return out

    # ------------------------------------------------------------------ exchange: call level
    def check(self, direction: str, consumer: NumberInfo | None, at_ns: int, call: object = None,
              publisher: str | None = None, record: bool = True) -> Verdict:
        """Steps that do not depend on the buyer. ``call`` (duck-typed ``CallFields``) gives
        consent_token, vertical, origin, dial_mode, state and zip; without it the call has
        no consent and outbound is denied. ``publisher``, the account submitting the call:
        a consent another publisher posted is then treated as unknown (``consent_not_found``),
        so a token cannot be borrowed and its existence is not revealed. ``record=False``: an
        allowed call is not counted for the frequency caps (a decision already taken, re-read)."""
        try:
            return self._run(direction, consumer, at_ns, getattr(call, "consent_token", None),
                             getattr(call, "vertical", None), getattr(call, "origin", None),
                             getattr(call, "dial_mode", None), getattr(call, "state", None),
                             getattr(call, "zip", None), None, None, False, publisher, record)
        except Exception:  # fail closed: a broken rule denies, never allows
            return Verdict(False, "internal_error")

    def screen(self, call: Any, consumer: NumberInfo | None, at_ns: int,
               publisher: str | None = None, record: bool = True) -> tuple[NumberInfo | None, Verdict]:
        """``check`` plus the consumer carrying the plan the per-buyer check reads."""
        v = self.check(call.direction, consumer, at_ns, call, publisher, record)
        if consumer is not None and v.plan is not None:
            try:
                consumer = Screened(consumer.e164, consumer.npa, consumer.region, consumer.state, consumer.zones,
                                    consumer.geographic, plan=v.plan)
            except Exception:
                return consumer, Verdict(False, "internal_error")
        return consumer, v

    def buyer_refusal(self, buyer: str, consumer: NumberInfo, direction: str, at_ns: int, campaign: str | None = None) -> str | None:
        """A reason this buyer (campaign) may not receive the call, or None. Outbound only."""
        if direction != "outbound":
            return None
        try:
            plan = getattr(consumer, "plan", None)
            if plan is None:
                return "internal_error"  # outbound that never passed the call-level check
            return self._for_buyer(plan, buyer, campaign, at_ns)
        except Exception:
            return "internal_error"

    def frequency_denied(self, verdict: Verdict, allowed_from_ns: int) -> Verdict:
        """The deny for a call the shared counter refused (retry at the next open instant)."""
        try:
            pend, plan = verdict.pending, verdict.plan
            assert pend is not None and plan is not None
            cal = self._windows.calendar(plan.zones, plan.states)
            assert cal is not None
            retry = cal.next_open(max(_ceil_second(allowed_from_ns), plan.at_ns), self.stores.holidays or self.rules.holidays)
            return _deny("state_frequency_limit", pend.rule, plan, retry)
        except Exception:
            return Verdict(False, "internal_error")

    def note_inquiry(self, direction: str, consumer: NumberInfo | None, buyer: str | None, at_ns: int) -> None:
        """An inbound call routed to ``buyer``: the consumer's inquiry (starts the EBR)."""
        if direction == "inbound" and consumer is not None and buyer:
            self.stores.inquiries.record(consumer.e164, buyer, at_ns)

    # ------------------------------------------------------------------ harness: one buyer
    def decide(self, direction: object, number: object, at_ns: int | None, *, buyer: object = None,
               campaign: object = None, vertical: object = None, consent_token: object = None,
               origin: object = None, dial_mode: object = None) -> Verdict:
        """All of §6 for one buyer. ``number`` is the raw consumer number; ``at_ns`` is None
        when the timestamp did not parse (``invalid_request``)."""
        try:
            if at_ns is None or (direction == "outbound" and (type(buyer) is not str or not buyer)):
                return Verdict(False, "invalid_request")
            if campaign is not None and type(campaign) is not str:
                return Verdict(False, "invalid_request")
            if direction in DIRECTIONS and type(at_ns) is int:
                consumer = parse_number(number)
            else:
                consumer = None
            return self._run(direction, consumer, at_ns, consent_token, vertical, origin, dial_mode, None, None,
                             buyer if type(buyer) is str else None, campaign, True)
        except Exception:
            return Verdict(False, "internal_error")

    # ------------------------------------------------------------------ the algorithm
    def _run(self, direction: Any, consumer: NumberInfo | None, at_ns: Any, token: Any, vertical: Any, origin: Any,
             dial_mode: Any, call_state: Any, call_zip: Any, buyer: str | None, campaign: str | None, full: bool,
             publisher: str | None = None, record: bool = True) -> Verdict:
        # 1. request shape
        if (direction not in DIRECTIONS or type(at_ns) is not int or origin not in ORIGINS or dial_mode not in DIAL_MODES
                or (token is not None and type(token) is not str) or (vertical is not None and type(vertical) is not str)):
            return Verdict(False, "invalid_request")
        # 2. the consumer's number
        if consumer is None:
            return Verdict(False, "invalid_number")
        # 3. inbound: the consumer chose to call
        if direction == "inbound":
            return Verdict(True, "inbound_consumer_initiated")
        # 4-5. placeable numbers only
        if not is_us_region(consumer.region):
            return Verdict(False, "non_us_number")
        if not consumer.geographic:
            return Verdict(False, "non_geographic_number")
        st = self.stores
        policy = self.rules.policy
        e164 = consumer.e164
        plan = Plan(e164, at_ns, origin == "callback" and dial_mode == "manual")
        # 6. internal DNC (exchange scope; the buyer's own scope when the buyer is known)
        hit = st.suppressions.hit(e164, buyer, at_ns)
        if hit is not None:
            return _deny("internal_dnc", hit.scope, plan)
        # 7. a referenced consent revoked at or before the call
        consent = st.consents.get(token, publisher) if token else None  # this publisher's record (or the operator's)
        if consent is not None and publisher and consent.publisher and consent.publisher != publisher:
            consent = None  # another publisher's record: unknown to this one
        plan.consent = consent
        if consent is not None and consent.revoked_ns is not None and consent.revoked_ns <= at_ns:
            return _deny("consent_revoked", "federal", plan)
        key = int(e164[2:])  # a US-region number: +1 and ten digits
        # 8. litigator list (policy)
        if policy.block_litigators and st.litigators.array.contains(key):
            return _deny("litigator_list", "policy", plan)
        # 9. the national snapshot must exist and be at most 31 days old
        nat = st.national
        if nat is None or nat.snapshot_day is None or utc_day(at_ns) - nat.snapshot_day > policy.snapshot_max_age_days:
            return _deny("dnc_snapshot_stale", "federal", plan)
        if not token:
            plan.consent_reason = "consent_missing"
        elif consent is None or (consent.created_ns is not None and consent.created_ns > at_ns):
            plan.consent_reason = "consent_not_found"
        elif consent.phone != e164:
            plan.consent_reason = "consent_phone_mismatch"
        elif consent.expires_ns is not None and consent.expires_ns <= at_ns:
            plan.consent_reason = "consent_expired"
        # 10. national / state DNC, unless excused
        if nat.array.contains(key):
            plan.dnc = ("national_dnc", "federal")
        else:
            state_hit = st.state_lists.hit(key)
            if state_hit is not None:
                plan.dnc = ("state_dnc", state_hit)
        if full:
            assert buyer is not None
            why = self._for_buyer(plan, buyer, None, at_ns, before_temporal=True)
            if why is not None:
                return _deny(why, plan.dnc[1] if why in ("national_dnc", "state_dnc") and plan.dnc else "federal", plan)
        else:
            if plan.dnc is not None and not (plan.manual_callback or (policy.allow_dnc_with_pewc and plan.consent_reason is None)):
                return _deny(plan.dnc[0], plan.dnc[1], plan)
            # 11. consent that fails whoever the buyer is
            if plan.consent_reason is not None and not plan.manual_callback:
                return _deny(plan.consent_reason, "federal", plan)
            # 10-11 for a manual callback: it excuses only a buyer the consumer made an inquiry to;
            # with none to any buyer (and the consent failing for all), no buyer may place it
            if plan.consent_reason is not None and not st.inquiries.any_since(e164, at_ns - policy.ebr_inquiry_days * NS_PER_DAY, at_ns):
                if plan.dnc is not None:
                    return _deny(plan.dnc[0], plan.dnc[1], plan)
                return _deny(plan.consent_reason, "federal", plan)
        # 12. reassigned since the consent was given
        rnd_day = st.rnd.disconnected.get(e164)
        plan.rnd_day = rnd_day
        if rnd_day is not None and consent is not None and plan.consent_reason is None:
            if consent.created_ns is None or rnd_day >= utc_day(consent.created_ns):
                return _deny("reassigned_number", "federal", plan)
        # 13-15. where and when: every candidate zone, every candidate state
        addr = consent.address_state if consent is not None and consent.phone == e164 else None
        extra = call_state if type(call_state) is str else None
        if addr is None and extra is None and call_zip is None:
            plan.states = (consumer.state,) if consumer.state is not None else ()
            plan.zones = consumer.zones
        else:
            plan.states, plan.zones = candidates(consumer.state, consumer.zones, addr, extra,
                                                 address_state(None, call_zip))
        cal = self._windows.calendar(plan.zones, plan.states)
        if cal is None:
            return _deny("internal_error", None, plan)
        holidays = st.holidays or self.rules.holidays
        closed = cal.status(at_ns, holidays)
        if closed is not None and closed[0] == "state_day_restriction":
            return _deny(closed[0], closed[1], plan, cal.next_open(at_ns, holidays, closed=True))
        for s in plan.states:
            if s in st.flags.emergency_states:
                return _deny("state_emergency", s, plan)
        if closed is not None:
            return _deny(closed[0], closed[1], plan, cal.next_open(at_ns, holidays, closed=True))
        # 15. frequency cap: counted exchange-wide per vertical, checked and recorded at once
        pending = None
        capped = [r for r in cal.rules if r.frequency_cap is not None]
        if capped:
            cap_rule = min(capped, key=lambda r: (r.frequency_cap, r.state))
            window = policy.frequency_window_hours * HOUR_NS
            fkey = FrequencyCounter.key(vertical or "", e164)
            if self.shared_frequency and not full:
                pending = FrequencyPending(fkey, cap_rule.frequency_cap or 0, cap_rule.state, window)
            else:
                counted = st.frequency.counted(fkey, at_ns, window)
                cap = cap_rule.frequency_cap or 0
                if len(counted) >= cap:
                    allowed_from = _ceil_second(counted[len(counted) - cap] + window + 1)
                    return _deny("state_frequency_limit", cap_rule.state, plan, cal.next_open(allowed_from, holidays))
        # 16. the campaign's abandonment breaker
        if full and campaign is not None and campaign in st.flags.abandon_campaigns:
            return _deny("campaign_abandon_rate", "federal", plan)
        # 17. allow, and record the attempt for the frequency caps
        if capped and pending is None and record:
            st.frequency.record(FrequencyCounter.key(vertical or "", e164), at_ns)
        return Verdict(True, "ok", None, None, pending, plan)

    def _for_buyer(self, plan: Plan, buyer: str, campaign: str | None, at_ns: int, before_temporal: bool = False) -> str | None:
        """The buyer-dependent steps, in §6 order (6, 7, 10, 11, 12 for EBR calls, 16)."""
        st = self.stores
        policy = self.rules.policy
        if not before_temporal:  # re-checked per candidate: opt-outs and revocations since
            if st.suppressions.hit(plan.e164, buyer, at_ns) is not None:
                return "internal_dnc"
            c = st.consents.record(plan.consent.token, plan.consent.publisher) if plan.consent is not None else None  # as it is now
            if c is not None and c.revoked_ns is not None and c.revoked_ns <= at_ns:
                return "consent_revoked"
        consent_ok = plan.consent_reason is None and plan.consent is not None and buyer in plan.consent.sellers
        inquiry = None
        if plan.manual_callback and not consent_ok:
            since = plan.at_ns - policy.ebr_inquiry_days * NS_PER_DAY
            inquiry = st.inquiries.latest(plan.e164, buyer, since, plan.at_ns)
        if plan.dnc is not None and not ((policy.allow_dnc_with_pewc and consent_ok) or inquiry is not None):
            return plan.dnc[0]
        if not consent_ok and inquiry is None:  # §5 order: ..., phone, seller, (revoked), expired
            if plan.consent_reason == "consent_expired" and plan.consent is not None and buyer not in plan.consent.sellers:
                return "consent_seller_mismatch"
            return plan.consent_reason or "consent_seller_mismatch"
        if inquiry is not None and plan.rnd_day is not None and plan.rnd_day >= utc_day(inquiry):
            return "reassigned_number"
        if before_temporal:
            return None
        if campaign is not None and campaign in st.flags.abandon_campaigns:
            return "campaign_abandon_rate"
        return None


def _ceil_second(at_ns: int) -> int:
    return -(-at_ns // 1_000_000_000) * 1_000_000_000


def _iso_day(day: int | None) -> str | None:
    return None if day is None else date.fromordinal(day).isoformat()
