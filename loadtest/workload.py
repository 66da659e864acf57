"""What the load test sends, generated deterministically from a seed: campaigns, bid streams
and publisher calls. Pure (no I/O past reading the NPA table once, no clock); every wire
message is an ``exchange.messages`` Struct encoded with ``json_encoder``.

Realism, in brief:
* campaigns spread over seven verticals, a third of them national, the rest targeting 1 to
  6 states; most run around the clock, some keep business hours in their own time zone;
  caps, budgets, minimum durations and dedupe windows drawn from typical values;
* bid streams are random walks around each campaign's base price (a few cents to a few
  dollars per step), so about half the reprices go up and half go down;
* callers are valid US numbers of real geographic area codes, drawn by state with a rough
  population weight; 80 % of calls are inbound; a configured share is non-compliant:
  outbound calls to an opted-out number, to a toll-free number, or to a Canadian number;
* call durations follow a log-normal law (median ~100 s), so some calls end below the
  campaign's minimum duration and are not billable.

Adversarial books (``--ineligible``, ``--unfunded-buyers``): a share of every buyer's
campaigns keeps a schedule that is closed all through the run (open only on the UTC weekday
after tomorrow), and unfunded buyers (no deposit, no credit) bid three times the usual prices,
above every funded campaign, and stream their bids like the others: the flood of a buyer that
cannot pay.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources

import msgspec

from exchange.messages import Bid, CallRequest, Campaign, Caps, Schedule, json_encoder

VERTICALS = ("auto_insurance", "health_insurance", "medicare", "home_services", "legal", "debt_relief", "solar")
VERTICAL_WEIGHTS = (30, 20, 15, 12, 10, 8, 5)
RTB_VERTICAL = "legal"  # the RTB campaigns live in one vertical, so only its calls wait for live bids
ZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALL_WEEK = {d: [("00:00", "24:00")] for d in DAYS}
BUSINESS = {d: [("08:00", "20:00")] for d in DAYS[:5]} | {"sat": [("09:00", "17:00")]}
# rough population weights (millions) for the big states; the rest weigh 1
STATE_WEIGHT = {"CA": 39, "TX": 30, "FL": 22, "NY": 20, "PA": 13, "IL": 12, "OH": 12, "GA": 11, "NC": 11, "MI": 10,
                "NJ": 9, "VA": 9, "WA": 8, "AZ": 7, "TN": 7, "MA": 7, "IN": 7, "MO": 6, "MD": 6, "WI": 6, "CO": 6}
TOLL_FREE = (800, 833, 844, 855, 866, 877, 888)
CANADA = (416, 514, 604, 613, 647, 778)  # valid +1 numbers outside the US: non_us_number for outbound
PUBLISHER_LINE = "+18885550100"  # the publisher's own outbound caller id (toll-free)


def _npa_by_state() -> dict[str, list[int]]:
    raw = json.loads(resources.files("compliance").joinpath("data").joinpath("npa.json").read_bytes())
    out: dict[str, list[int]] = {}
    for code, row in raw["npa"].items():
        if row["region"] == "US" and row["geographic"] and row["all_nxx"] and row["state"]:
            out.setdefault(row["state"], []).append(int(code))
    return {s: sorted(v) for s, v in sorted(out.items())}


NPA_BY_STATE = _npa_by_state()
STATES = tuple(NPA_BY_STATE)
_STATE_W = tuple(STATE_WEIGHT.get(s, 1) for s in STATES)


def phone(rng: random.Random, npa: int) -> str:
    """A valid-looking subscriber number: NXX never N11 nor 555."""
    while True:
        nxx = rng.randint(200, 999)
        if nxx % 100 != 11 and nxx != 555:
            return f"+1{npa}{nxx}{rng.randint(0, 9999):04d}"


def us_caller(rng: random.Random) -> tuple[str, str]:
    state = rng.choices(STATES, _STATE_W)[0]
    return phone(rng, rng.choice(NPA_BY_STATE[state])), state


# ---------------------------------------------------------------- campaigns
def campaign_id(j: int) -> str:
    return f"c{j}"


def buyer_campaigns(buyer_no: int, n: int, seed: int, rtb: int = 1, ineligible: float = 0.0, top: bool = False,
                    weekday: int = 0) -> list[Campaign]:
    """The ``n`` campaigns of buyer number ``buyer_no``: ids c0..c{n-1}; the last ``rtb`` are
    live-priced (``rtb: true``, vertical ``RTB_VERTICAL``) and get no bid stream. A share
    ``ineligible`` of the others is open only on the UTC weekday ``weekday + 2`` (``weekday``:
    today's); ``top`` triples every price (an unfunded buyer's flood)."""
    rng = random.Random(seed * 1_000_003 + buyer_no)
    odd = random.Random(seed * 7_919 + buyer_no)  # its own stream: the usual book stays the same
    closed = Schedule(tz="UTC", hours={DAYS[(weekday + 2) % 7]: [("00:00", "24:00")]})
    out: list[Campaign] = []
    rtb = min(rtb, n)
    for j in range(n):
        live = j >= n - rtb
        vertical = RTB_VERTICAL if live else rng.choices(VERTICALS, VERTICAL_WEIGHTS)[0]
        states = [] if rng.random() < 0.35 else sorted(set(rng.choices(STATES, _STATE_W, k=rng.randint(1, 6))))
        r = rng.random()
        schedule = None if r < 0.6 else Schedule(tz=rng.choice(ZONES), hours=ALL_WEEK if r < 0.85 else BUSINESS)
        bid = rng.randrange(800, 6000, 5)
        if not live and odd.random() < ineligible:
            schedule = closed
        out.append(Campaign(
            id=campaign_id(j), vertical=vertical, bid_cents=min(9_900, 3 * bid) if top else bid, states=states,
            schedule=schedule,
            caps=Caps(concurrency=rng.choice([None, None, 50, 200]), daily=rng.choice([None, None, 2000, 10000])),
            daily_budget_cents=rng.choice([None, None, None, 5_000_000]),
            min_duration_s=rng.choice([60, 90, 120]), dedupe_days=rng.choice([0, 0, 0, 30]),
            destination=f"+1800{5550000 + (buyer_no * 7919 + j) % 10000:07d}",
            accepts_outbound=rng.random() < 0.4, rtb=live,
        ))
    return out


def campaign_frames(campaigns: list[Campaign], per_frame: int = 500) -> list[tuple[int, bytes]]:
    """Upsert frames: (seq, JSON array of up to ``per_frame`` campaigns, ``seq`` on the last)."""
    out = []
    for b, start in enumerate(range(0, len(campaigns), per_frame), start=1):
        chunk = list(campaigns[start : start + per_frame])
        chunk[-1] = msgspec.structs.replace(chunk[-1], seq=b)
        out.append((b, json_encoder.encode(chunk)))
    return out


def bid_payloads(campaigns: list[Campaign], batch: int, ring_bids: int, seed: int) -> list[bytes]:
    """JSON payloads of ``bid`` messages, ``batch`` per frame (batch 1: a bare object), about
    ``ring_bids`` in all. Campaigns are visited in a shuffled cycle; each price is a random
    walk around the campaign's base (clamped to 100..9,900 cents)."""
    streamable = [c for c in campaigns if not c.rtb]
    if not streamable:
        return []
    rng = random.Random(seed)
    price = {c.id: c.bid_cents for c in streamable}
    base = dict(price)
    order = list(price)
    frames = max(1, ring_bids // batch)
    out: list[bytes] = []
    k = 0
    for _ in range(frames):
        bids = []
        for _ in range(batch):
            if k % len(order) == 0:
                rng.shuffle(order)
            cid = order[k % len(order)]
            k += 1
            p = price[cid] + rng.choice((-1, 1)) * rng.choice((5, 10, 25, 50, 100, 300))
            p = min(max(p, base[cid] // 2, 100), min(base[cid] * 2, 9_900))
            price[cid] = p
            bids.append(Bid(campaign=cid, bid_cents=p))
        out.append(json_encoder.encode(bids[0] if batch == 1 else bids))
    return out


# ---------------------------------------------------------------- calls
@dataclass(frozen=True)
class CallMix:
    noncompliant: float = 0.10  # outbound to an opted-out, toll-free or Canadian number
    outbound: float = 0.10      # compliant outbound (callback) legs
    high_floor: float = 0.03    # publisher floor above what anyone pays: below_floor
    with_state: float = 0.5     # the publisher knows the state (else the area code decides)


class CallMaker:
    """Publisher calls with a realistic mix. ``next()`` returns (kind, CallRequest)."""

    def __init__(self, rng: random.Random, suppressed: list[str], mix: CallMix = CallMix()) -> None:
        self.rng, self.suppressed, self.mix = rng, suppressed or [], mix

    def next(self) -> tuple[str, CallRequest]:
        rng, mix = self.rng, self.mix
        vertical = rng.choices(VERTICALS, VERTICAL_WEIGHTS)[0]
        tags = {"source": rng.choice(("search", "social", "tv", "radio", "affiliate")), "lead_age_s": rng.randint(0, 900)}
        floor = 9_500 if rng.random() < mix.high_floor else rng.choice((0, 0, 500, 1000))
        tmax = 50 if rng.random() < 0.3 else None
        r = rng.random()
        if r < mix.noncompliant:
            why = rng.random()
            if why < 0.5 and self.suppressed:
                kind, callee = "noncompliant_dnc", rng.choice(self.suppressed)
            elif why < 0.75:
                kind, callee = "noncompliant_tollfree", phone(rng, rng.choice(TOLL_FREE))
            else:
                kind, callee = "noncompliant_canada", phone(rng, rng.choice(CANADA))
            return kind, CallRequest(caller=PUBLISHER_LINE, callee=callee, direction="outbound", vertical=vertical,
                                     tags=tags, floor_cents=floor, tmax_ms=tmax, origin="callback", dial_mode="manual")
        number, state = us_caller(rng)
        st = state if rng.random() < mix.with_state else None
        if r < mix.noncompliant + mix.outbound:
            return "outbound", CallRequest(caller=PUBLISHER_LINE, callee=number, direction="outbound", vertical=vertical,
                                           state=st, tags=tags, floor_cents=floor, tmax_ms=tmax, origin="callback",
                                           dial_mode="manual")
        return "inbound", CallRequest(caller=number, vertical=vertical, state=st, tags=tags, floor_cents=floor,
                                      tmax_ms=tmax, origin="consumer_dialed")


def suppressed_numbers(seed: int, n: int = 200) -> list[str]:
    """Numbers the operator has opted out (exchange scope) before the run."""
    rng = random.Random(seed * 31 + 7)
    return [us_caller(rng)[0] for _ in range(n)]


def call_duration_s(rng: random.Random) -> int:
    """A connected call's talk time: log-normal, median ~100 s, capped at 2 h."""
    return min(7200, max(1, int(rng.lognormvariate(4.6, 0.9))))
