"""Every wire message of PROTOCOL.md as a msgspec Struct, plus the codecs, built once.

Validation happens here, at decode, so the core only ever sees well-typed values. The
server, the tests, the benchmarks and the load test all import these types: nobody writes
wire JSON by hand. Constraints live in the types (``Annotated[int, Meta(...)]``) so a bad
field is reported with its JSON path.

Text is checked here too: no wire text field takes a C0 control character (NUL included),
except the free prose of a consent's ``disclosure_text`` and a refund's ``reason`` (tab, line
feed, carriage return); integers in ``tags`` are those MessagePack can carry (signed or
unsigned 64 bits). So every decoded message can be encoded again, in JSON and in MessagePack.

Wire messages do not forbid unknown fields (clients may be newer than the server). They are
acyclic values, so they opt out of the cyclic garbage collector (``gc=False``): fewer
tracked objects per decision means fewer and shorter collection pauses on the hot path.
"""

from __future__ import annotations


from datetime import datetime
from typing import Annotated, Literal, Union

import msgspec
from msgspec import Meta, Struct

from .modifiers import Attestation, BidModifiers
from .pingspec import PingSpec

# ---------------------------------------------------------------- field types
NO_C0 = r"^[^\x00-\x1f]*(?!\n)$"  # no C0 control character (NUL .. US) anywhere
PROSE = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$"  # the same, but tab, line feed and carriage return


def text(max_length: int, min_length: int = 0) -> Meta:
    """A wire text field: at most ``max_length`` characters, no control characters."""
    return Meta(min_length=min_length, max_length=max_length, pattern=NO_C0)


MAX_CENTS = 1_000_000  # $10,000 per call: anything above is treated as absurd input
Cents = Annotated[int, Meta(ge=0, le=MAX_CENTS)]
PositiveCents = Annotated[int, Meta(ge=1, le=1_000_000_000_00)]
ID_PATTERN = r"^[A-Za-z0-9_.:\-]+(?!\n)$"
Id = Annotated[str, Meta(min_length=1, max_length=64, pattern=ID_PATTERN)]
# a bid's campaign while its frame is decoded: the length only. msgspec checks a pattern by calling
# Python's ``re``: ~1.4 µs of a bid's ~1.6 µs decode. A bid naming a campaign of the book names a
# valid id; one whose campaign is not found is checked against ``Id`` then (``codec.invalid_bid``),
# so what v1 refuses gets the same error
BidId = Annotated[str, Meta(min_length=1, max_length=64)]
Vertical = Annotated[str, Meta(min_length=1, max_length=48, pattern=r"^[a-z0-9_]+(?!\n)$")]
StateCode = Annotated[str, Meta(pattern=r"^[A-Z]{2}(?!\n)$")]
AreaCode = Annotated[int, Meta(ge=200, le=999)]
HHMM = Annotated[str, Meta(pattern=r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)(?!\n)$")]
Destination = Annotated[str, Meta(max_length=256, pattern=r"^(\+[1-9][0-9]{6,14}|sips?:[^\s\x00-\x1f]+)(?!\n)$")]
Phone = Annotated[str, text(32, 1)]
Seconds = Annotated[int, Meta(ge=0, le=86_400)]
AwareTime = Annotated[datetime, Meta(tz=True)]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Direction = Literal["inbound", "outbound"]
TagText = Annotated[str, Meta(pattern=NO_C0)]
TagValue = Union[TagText, int, float, bool, None]  # an int: signed or unsigned 64 bits (CallFields.__post_init__)
INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # what MessagePack can carry (msgspec bounds stop at int64)
Tags = Annotated[dict[TagText, TagValue], Meta(max_length=32)]
Seq = Annotated[int, Meta(ge=0, le=2**63 - 1)]


class Message(Struct, tag_field="type", frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """Base of every tagged WebSocket message: an optional client sequence number."""

    seq: Seq | None = None


# ---------------------------------------------------------------- campaigns
class Schedule(Struct, frozen=True, kw_only=True):
    """Open hours per weekday in the campaign's own IANA time zone."""

    tz: Annotated[str, text(64, 1)]
    hours: dict[Weekday, list[tuple[HHMM, HHMM]]] = {}


class Caps(Struct, frozen=True, kw_only=True, omit_defaults=True):
    concurrency: Annotated[int, Meta(ge=1, le=100_000)] | None = None
    hourly: Annotated[int, Meta(ge=0, le=10_000_000)] | None = None
    daily: Annotated[int, Meta(ge=0, le=10_000_000)] | None = None
    monthly: Annotated[int, Meta(ge=0, le=100_000_000)] | None = None


class Campaign(Message, tag="campaign", frozen=True, kw_only=True):
    """Create or replace a standing bid."""

    id: Id
    vertical: Vertical
    bid_cents: Cents
    states: Annotated[list[StateCode], Meta(max_length=60)] = []
    area_codes: Annotated[list[AreaCode], Meta(max_length=1000)] | None = None
    schedule: Schedule | None = None
    caps: Caps | None = None
    daily_budget_cents: Annotated[int, Meta(ge=0, le=1_000_000_000_00)] | None = None
    min_duration_s: Seconds
    dedupe_days: Annotated[int, Meta(ge=0, le=365)] = 0
    destination: Destination
    accepts_outbound: bool = False
    rtb: bool = False
    expires_at: AwareTime | None = None
    paused: bool = False
    min_attestation: Attestation | None = None  # calls attested below this (or not at all) are ineligible
    bid_modifiers: BidModifiers | None = None
    max_publisher_risk: Annotated[int, Meta(ge=0, le=100)] | None = None  # skip calls of publishers riskier than this
    ping: PingSpec | None = None  # an HTTP bidder (v2): price each call by pinging this endpoint
    cancel_on_disconnect: bool = False  # PROTOCOL.md v2: paused while the buyer has no open socket


class Bid(Message, tag="bid", frozen=True, kw_only=True):
    """Reprice a campaign: the high-rate stream."""

    campaign: BidId
    bid_cents: Cents


class StrictBid(Message, tag="bid", frozen=True, kw_only=True):
    """``Bid`` as v1 validates it: the message of a refused bid's error (``codec.invalid_bid``)."""

    campaign: Id
    bid_cents: Cents


class Pause(Message, tag="pause", frozen=True, kw_only=True):
    campaign: Id


class Resume(Message, tag="resume", frozen=True, kw_only=True):
    campaign: Id


class RtbBid(Message, tag="rtb_bid", frozen=True, kw_only=True):
    request_id: Id
    bid_cents: Cents
    destination: Destination | None = None
    min_duration_s: Seconds | None = None


class NoBid(Message, tag="no_bid", frozen=True, kw_only=True):
    request_id: Id
    reason: Annotated[str, text(128)] | None = None


class Ping(Message, tag="ping", frozen=True, kw_only=True):
    pass


BuyerMessage = Union[Campaign, Bid, Pause, Resume, RtbBid, NoBid, Ping]


# ---------------------------------------------------------------- exchange -> buyer
class Ack(Message, tag="ack", frozen=True, kw_only=True):
    pass


class Error(Message, tag="error", frozen=True, kw_only=True):
    code: str
    message: str
    path: str | None = None


class Pong(Message, tag="pong", frozen=True, kw_only=True):
    pass


class CallInfo(Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """What a bidder may know of a call before it wins: never the caller's number."""

    vertical: str
    state: str | None = None
    area_code: int | None = None
    direction: Direction = "inbound"
    tags: dict[str, TagValue] = {}
    attestation: str | None = None


class BidRequest(Message, tag="bid_request", frozen=True, kw_only=True):
    request_id: str
    campaign: str
    tmax_ms: int
    floor_cents: int
    call: CallInfo


class Win(Message, tag="win", frozen=True, kw_only=True):
    call_id: str
    campaign: str
    price_cents: int
    caller: str
    destination: str
    expires_at: datetime
    min_duration_s: int = 0
    route_index: int = 0


class Loss(Message, tag="loss", frozen=True, kw_only=True):
    request_id: str
    reason: str
    clearing_price_cents: int | None = None
    campaign: str | None = None
    call_id: str | None = None


class CallNotice(Message, tag="call", frozen=True, kw_only=True):
    call_id: str
    status: Literal["connected", "completed", "failed", "expired"]
    duration_s: int | None = None
    billable: bool = False
    charged_cents: int = 0


# ---------------------------------------------------------------- publishers
class CallFields(Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """The body of POST /v1/calls (and of the publisher WebSocket ``call`` message)."""

    caller: Phone
    vertical: Vertical
    direction: Direction = "inbound"
    callee: Phone | None = None
    state: StateCode | None = None
    zip: Annotated[str, Meta(pattern=r"^[0-9]{5}(?!\n)$")] | None = None
    consent_token: Annotated[str, text(128, 1)] | None = None
    tags: Tags = {}
    tmax_ms: Annotated[int, Meta(ge=0, le=60_000)] | None = None
    floor_cents: Cents = 0
    origin: Literal["consumer_dialed", "callback", "warm_transfer"] | None = None
    dial_mode: Literal["manual", "autodialed", "prerecorded"] | None = None
    attestation: Attestation | None = None  # STIR/SHAKEN, as the publisher's carrier reports it

    def __post_init__(self) -> None:  # at decode (msgspec makes the ValueError a ValidationError)
        if self.tags:
            for k, v in self.tags.items():
                if type(v) is int and not INT_MIN <= v <= INT_MAX:
                    raise ValueError(f"Expected an integer of at most 64 bits (signed or unsigned) for tag {k!r} - at `$.tags[...]`")


class CallRequest(CallFields, frozen=True, kw_only=True):
    pass


class PublisherCall(CallFields, tag_field="type", tag="call", frozen=True, kw_only=True):
    """A call submitted over the publisher WebSocket: the POST body plus ``seq``."""

    seq: Seq | None = None


PublisherMessage = Union[PublisherCall, Ping]


class Route(Struct, frozen=True, kw_only=True, gc=False):
    buyer: str
    campaign: str
    destination: str
    payout_cents: int
    min_duration_s: int
    expires_at: datetime


class DecisionFields(Struct, frozen=True, kw_only=True, gc=False):
    call_id: str
    decision: Literal["routed", "rejected"]
    reason: str
    route: Route | None = None
    fallbacks: list[Route] = []
    decision_us: int = 0
    rtb_wait_us: int | None = None
    rule: str | None = None
    retry_after_utc: datetime | None = None  # compliance denials by time: when to try again


class DecisionResponse(DecisionFields, frozen=True, kw_only=True):
    pass


class Decision(DecisionFields, tag_field="type", tag="decision", frozen=True, kw_only=True):
    seq: Seq | None = None


class CallEvent(Struct, frozen=True, kw_only=True, omit_defaults=True):
    event: Literal["connected", "completed", "failed"]
    duration_s: Seconds | None = None
    route_index: Annotated[int, Meta(ge=0, le=1000)] | None = None


class EventResponse(Struct, frozen=True, kw_only=True, gc=False):
    call_id: str
    status: str
    billable: bool
    charged_cents: int
    payout_cents: int
    route_index: int = 0
    route: Route | None = None


# ---------------------------------------------------------------- accounts and admin
class AccountCreate(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: Literal["buyer", "publisher"]
    name: Annotated[str, text(128, 1)]
    credit_limit_cents: Annotated[int, Meta(ge=0, le=1_000_000_000_00)] = 0


class AccountCreated(Struct, frozen=True, kw_only=True):
    id: str
    kind: str
    name: str
    api_key: str
    credit_limit_cents: int = 0


class Deposit(Struct, frozen=True, kw_only=True):
    amount_cents: PositiveCents
    reference: Annotated[str, text(128, 1)]


class RefundRequest(Struct, frozen=True, kw_only=True):
    amount_cents: PositiveCents | None = None  # absent: whatever of the charge is not yet refunded
    reference: Annotated[str, text(128, 1)] | None = None  # or the Idempotency-Key header
    reason: Annotated[str, Meta(max_length=500, pattern=PROSE)] = ""


class RefundLeg(Struct, frozen=True, kw_only=True):
    account: str
    amount_cents: int


class RefundResponse(Struct, frozen=True, kw_only=True):
    call_id: str
    reference: str
    refund_cents: int
    refunded_total_cents: int
    charged_cents: int
    at: str
    legs: list[RefundLeg]


class Balance(Struct, frozen=True, kw_only=True):
    balance_cents: int
    held_cents: int
    available_cents: int
    credit_limit_cents: int = 0


class Suppression(Struct, frozen=True, kw_only=True):
    number: Phone
    scope: Literal["exchange", "buyer"] = "exchange"


class ConsentAddress(Struct, frozen=True, kw_only=True, omit_defaults=True):
    state: StateCode | None = None
    zip: Annotated[str, Meta(pattern=r"^[0-9]{5}(-[0-9]{4})?(?!\n)$")] | None = None


class ConsentCreate(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """POST /v1/consents: a consent record captured at lead intake (COMPLIANCE.md §5)."""

    token: Annotated[str, text(128, 1)]
    phone: Phone
    sellers: Annotated[list[Id], Meta(min_length=1, max_length=100)]
    created_at: AwareTime
    expires_at: AwareTime | None = None
    vendor: Annotated[str, text(64)] | None = None
    cert_id: Annotated[str, text(512)] | None = None
    disclosure_text: Annotated[str, Meta(max_length=8192, pattern=PROSE)] | None = None
    ip: Annotated[str, text(64)] | None = None
    page_url: Annotated[str, text(2048)] | None = None
    address: ConsentAddress | None = None


class ConsentRevoke(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """POST /v1/consents/{token}/revoke: optional body (defaults: now, exchange scope)."""

    revoked_at: AwareTime | None = None
    channel: Annotated[str, text(64)] | None = None
    scope: Literal["exchange", "buyer"] | None = None


class ErrorDetail(Struct, frozen=True, kw_only=True, omit_defaults=True):
    code: str
    message: str
    path: str | None = None


class ErrorBody(Struct, frozen=True, kw_only=True):
    error: ErrorDetail


# ---------------------------------------------------------------- codecs, built once
json_encoder = msgspec.json.Encoder()
msgpack_encoder = msgspec.msgpack.Encoder()
BuyerFrame = Union[BuyerMessage, list[BuyerMessage]]
buyer_json = msgspec.json.Decoder(BuyerFrame)
buyer_msgpack = msgspec.msgpack.Decoder(BuyerFrame)
buyer_json_one = msgspec.json.Decoder(BuyerMessage)
buyer_msgpack_one = msgspec.msgpack.Decoder(BuyerMessage)
PublisherFrame = Union[PublisherMessage, list[PublisherMessage]]
publisher_json = msgspec.json.Decoder(PublisherFrame)
publisher_msgpack = msgspec.msgpack.Decoder(PublisherFrame)
publisher_json_one = msgspec.json.Decoder(PublisherMessage)
publisher_msgpack_one = msgspec.msgpack.Decoder(PublisherMessage)
ExchangeMessage = Union[Ack, Error, Pong, BidRequest, Win, Loss, CallNotice, Decision]
exchange_json = msgspec.json.Decoder(Union[ExchangeMessage, list[ExchangeMessage]])
exchange_msgpack = msgspec.msgpack.Decoder(Union[ExchangeMessage, list[ExchangeMessage]])
