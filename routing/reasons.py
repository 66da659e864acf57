"""Reason codes of routing, as enums: why a campaign may not take a call, and how an auction
ended. ``StrEnum`` members are the wire's strings (they compare, hash and encode as them), so
a reason can be stored, compared with a code from elsewhere (the compliance gate's per-buyer
refusals are plain codes) and sent as is."""

from __future__ import annotations

from enum import StrEnum


class Refusal(StrEnum):
    """Why one campaign may not take one call now (``routing.eligibility``)."""

    DIRECTION = "direction"  # an outbound call to a campaign that takes inbound only
    AREA_CODE = "area_code"
    SCHEDULE = "schedule"
    CONCURRENCY = "concurrency"
    HOURLY_CAP = "hourly_cap"
    DAILY_CAP = "daily_cap"
    MONTHLY_CAP = "monthly_cap"
    DAILY_BUDGET = "daily_budget"
    FUNDS = "funds"  # the buyer's available funds plus credit are below the price
    DUPLICATE_CALLER = "duplicate_caller"  # a repeat caller inside the campaign's dedupe_days
    ATTESTATION = "attestation"  # the call's STIR/SHAKEN level is below the campaign's min_attestation
    PUBLISHER_RISK = "publisher_risk"  # the publisher's risk score is above the campaign's max_publisher_risk


class Outcome(StrEnum):
    """How an auction ended (``routing.auction.clear``), and a loser's reason."""

    OK = "ok"
    NO_ELIGIBLE_BID = "no_eligible_bid"
    BELOW_FLOOR = "below_floor"
    OUTBID = "outbid"
    TIMEOUT = "timeout"  # a live bid request unanswered within tmax_ms
    # no eligible bid, and the consumer's number is why no US campaign could want it:
    FOREIGN_NUMBER = "foreign_number"  # outside the US and its territories (a UK caller, a Canadian one)
    NON_GEOGRAPHIC_NUMBER = "non_geographic_number"  # toll-free, premium, personal or other service numbers
    CALLER_VELOCITY = "caller_velocity"  # the caller's calls in the velocity window are past the limit (exchange/quality.py)


# The replay's names for a campaign's ineligibility (PROTOCOL v2, ``GET /v1/calls/{id}/auction``):
# the refusal codes above, renamed where the wire contract names them otherwise; compliance
# codes (per-buyer verdicts of the gate) and the book's own (``state``, ``paused``) pass as they are.
REPLAY_REASON: dict[str, str] = {
    Refusal.DIRECTION: "outbound",
    Refusal.HOURLY_CAP: "cap_hourly",
    Refusal.DAILY_CAP: "cap_daily",
    Refusal.MONTHLY_CAP: "cap_monthly",
    Refusal.DAILY_BUDGET: "budget",
    Refusal.DUPLICATE_CALLER: "dedupe",
}


def replay_reason(why: str) -> str:
    return REPLAY_REASON.get(why, str(why))


__all__ = ["Refusal", "Outcome", "REPLAY_REASON", "replay_reason"]
