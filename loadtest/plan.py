"""The plan of one load run: who connects with which key, what rates, for how long.

``python -m loadtest run`` provisions the accounts and writes the plan; Locust's master
reads it from ``--dce-plan`` (or the ``LOCUST_DCE_PLAN`` environment variable) and passes
it on to every worker with its other options, so workers on other machines need no file.
The plan holds API keys of the load-test accounts: it is never written into the results.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta


class Account(msgspec.Struct, frozen=True):
    id: str
    key: str
    number: int  # the buyer's number: seeds its campaigns and bid stream
    funded: bool = True  # False: no deposit, no credit (its campaigns bid above everyone's: a flood)


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    host: str                                  # http://HOST:PORT of the exchange (the seller of a market of nodes)
    edges: list[str] = []                      # the other nodes' http://HOST:PORT: users spread over host + edges
    buyers: list[Account]
    publishers: list[Account]
    seed: int = 1
    campaigns_per_buyer: Annotated[int, Meta(ge=1)] = 100
    rtb_per_buyer: Annotated[int, Meta(ge=0)] = 1
    bids_per_s: Annotated[float, Meta(ge=0)] = 100_000
    batch: Annotated[int, Meta(ge=1, le=1000)] = 100
    calls_per_s: Annotated[float, Meta(ge=0)] = 500
    buyer_users: Annotated[int, Meta(ge=0)] = 10
    publisher_users: Annotated[int, Meta(ge=0)] = 4
    ring_bids: Annotated[int, Meta(ge=1)] = 65_536  # pre-encoded bids per buyer user, cycled
    tick_s: Annotated[float, Meta(gt=0, le=1)] = 0.01
    max_backlog_s: Annotated[float, Meta(gt=0)] = 0.5  # a user more behind than this skips ahead (counted)
    warmup_s: Annotated[float, Meta(ge=0)] = 5
    duration_s: Annotated[float, Meta(gt=0)] = 60
    setup_timeout_s: Annotated[float, Meta(gt=0)] = 120
    noncompliant: Annotated[float, Meta(ge=0, le=1)] = 0.10
    ineligible: Annotated[float, Meta(ge=0, le=1)] = 0.0  # share of each buyer's campaigns closed all run
    weekday: Annotated[int, Meta(ge=0, le=6)] = 0  # today's UTC weekday when the plan was made
    outbound: Annotated[float, Meta(ge=0, le=1)] = 0.10
    rtb_no_bid: Annotated[float, Meta(ge=0, le=1)] = 0.10
    time_scale: Annotated[float, Meta(gt=0)] = 60.0  # simulated call seconds per real second
    max_calls_in_flight: Annotated[int, Meta(ge=1)] = 2000  # per publisher user
    suppressed: list[str] = []
    live_path: str | None = None               # the master writes its live figures here
    out_path: str | None = None                # ... and its final figures here


def encode_plan(plan: Plan) -> str:
    return msgspec.json.encode(plan).decode()


def decode_plan(text: str) -> Plan:
    """The plan from inline JSON, or from a file when ``text`` is a path (starts with ``@``)."""
    if text.startswith("@"):
        with open(text[1:], "rb") as f:
            return msgspec.json.decode(f.read(), type=Plan)
    return msgspec.json.decode(text, type=Plan)
