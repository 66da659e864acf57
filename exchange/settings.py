"""Settings: one frozen Struct loaded from ``EXCHANGE_*`` variables, every problem at once."""

from __future__ import annotations

import os
from typing import Annotated, Literal
from collections.abc import Mapping

import msgspec
from msgspec import Meta, Struct


class Settings(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    admin_key: str | None = None
    database_url: str | None = None  # unset: the embedded SQLite file DEFAULT_DATABASE_URL
    redis_url: str | None = None
    redis_prefix: str | None = None  # key prefix of the shared frequency counter in Redis (unset: "<market>:")
    # Several nodes, one market (exchange.nodes): every key the nodes make in Redis starts with
    # "<market>:"; a node id joins the market (needs PostgreSQL and Redis); leases last node_lease_ms
    market: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "dce"
    node_id: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = None
    node_lease_ms: Annotated[int, Meta(ge=300, le=60_000)] = 3_000
    link_port: Annotated[int, Meta(ge=0, le=65535)] = 0  # a node's listener for its edges' calls (exchange.nodelink); 0: any free port
    compliance_dir: str | None = None  # DNC files and the compliance journal; unset: a private temporary directory
    max_dnc_upload_bytes: Annotated[int, Meta(ge=1)] = 8 << 30  # POST /v1/dnc/* request bodies
    pricing: Literal["first", "second"] = "first"
    take_rate_bps: Annotated[int, Meta(ge=0, le=10_000)] = 2_000
    min_floor_cents: Annotated[int, Meta(ge=0)] = 0
    rtb_tmax_ms: Annotated[int, Meta(ge=0, le=10_000)] = 80
    rtb_tmax_cap_ms: Annotated[int, Meta(ge=0, le=10_000)] = 200
    rtb_max_fanout: Annotated[int, Meta(ge=0, le=1000)] = 32
    max_fallbacks: Annotated[int, Meta(ge=0, le=20)] = 3
    route_ttl_s: Annotated[int, Meta(ge=1, le=3600)] = 60
    max_call_s: Annotated[int, Meta(ge=60, le=86_400)] = 4 * 3600
    call_retention_s: Annotated[int, Meta(ge=60)] = 24 * 3600
    # reports (GET /v1/reports): hours kept in memory, and the audit trail's window replayed at start
    report_days: Annotated[int, Meta(ge=0, le=400)] = 35
    scan_limit: Annotated[int, Meta(ge=10)] = 10_000
    # record what each auction saw (every candidate, its outcome, why the ineligible were), for
    # GET /v1/calls/{id}/auction; off: that endpoint answers 404 no_replay
    auction_replay: bool = True
    max_campaigns_per_buyer: Annotated[int, Meta(ge=1)] = 2_000  # a new campaign past it: error campaign_limit
    # standing campaigns saved this often (exchange.bookstore); unset: 1,000
    book_save_ms: Annotated[int, Meta(ge=10, le=600_000)] | None = None
    # a node of a market announces its book's changes this often (an edge's campaigns and prices reach
    # the seller within it; new campaigns are saved each time, prices every book_save_ms)
    book_notice_ms: Annotated[int, Meta(ge=10, le=60_000)] = 100
    max_frame_bytes: Annotated[int, Meta(ge=1024)] = 1 << 20
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 256 << 10
    send_queue: Annotated[int, Meta(ge=8)] = 4096
    send_queue_bytes: Annotated[int, Meta(ge=1024)] = 8 << 20  # ... and at most this many encoded bytes (a slow consumer: 1008)
    rate_limit_http_per_s: Annotated[int, Meta(ge=1)] = 1_000  # requests per key per second (then 429)
    rate_limit_http_burst: Annotated[int, Meta(ge=1)] = 2_000
    rate_limit_ws_per_s: Annotated[int, Meta(ge=1)] = 500_000  # buyer messages per key per second (then error)
    rate_limit_ws_burst: Annotated[int, Meta(ge=1)] = 1_000_000
    ws_abuse_strikes: Annotated[int, Meta(ge=1)] = 100  # refused frames in a row before the socket is closed (1008)
    # A buyer's RTB answers applied as they are read, ahead of the socket's bid frames queued before them
    # (exchange.server: urgent frames); false: in frame order
    ws_urgent_answers: bool = True
    ws_fair_share: Annotated[int, Meta(ge=0)] = 256  # messages a socket's reader applies before letting others run (0: no limit)
    heartbeat_s: Annotated[int, Meta(ge=1, le=3600)] = 20  # WebSocket ping interval
    # permessage-deflate for WebSocket clients that offer it. Off: the server decides 2.2x as many
    # calls per CPU-second over the publisher socket (bench.decisions: 2,434 -> 5,316), as it no
    # longer compresses every notice and decision, and a hostile client cannot make it inflate
    ws_compression: bool = False
    http_header_timeout_s: Annotated[float, Meta(gt=0, le=3600)] = 10  # a request's headers must arrive within this (408)
    http_body_timeout_s: Annotated[float, Meta(gt=0, le=3600)] = 30  # ... and its body within this after them (408)
    # connections from one address that have not yet presented a valid key (a request or WebSocket
    # handshake authenticated); more are answered 429 and closed (0: no limit)
    http_unauth_per_address: Annotated[int, Meta(ge=0)] = 256
    http_keepalive_s: Annotated[int, Meta(ge=1, le=3600)] = 65  # an idle keep-alive HTTP connection is closed after this
    idle_timeout_s: Annotated[int, Meta(ge=5, le=86_400)] = 120  # a socket silent this long is closed (1001)
    ack_timeout_ms: Annotated[int, Meta(ge=10, le=120_000)] = 5_000  # an event waits this long for durability, then 503
    writer_max_batch: Annotated[int, Meta(ge=1)] = 5_000
    writer_max_pending: Annotated[int, Meta(ge=100)] = 200_000
    writer_linger_ms: Annotated[float, Meta(ge=0, le=1000)] = 5.0
    # Signed checkpoints of the audit chain's head (billing.checkpoint), taken every
    # checkpoint_every_s while the exchange runs and at shutdown, appended to checkpoint_file;
    # the key (text, or a file holding it) is one the database does not hold. Without a key
    # and a file, none are taken.
    checkpoint_key: str | None = None
    checkpoint_key_file: str | None = None
    checkpoint_file: str | None = None
    checkpoint_every_s: Annotated[int, Meta(ge=1)] = 300
    # Consumer numbers at rest (README: Privacy): the master key (text, or a file of one key a
    # line, the first sealing and the others unwrapping during a rotation; neither: SQLite's
    # <database file>.master-key, generated on a new database), data keys cached in memory, and
    # how many days call data stays readable (0: kept).
    master_key: str | None = None
    master_key_file: str | None = None
    privacy_key_cache: Annotated[int, Meta(ge=16)] = 100_000
    retention_days: Annotated[int, Meta(ge=0, le=36_500)] = 0
    # Domain events (billing.events) relayed to NATS JetStream (exchange.relay) when nats_url is
    # set: stream nats_stream on subjects <nats_subject>.<event type>, messages kept
    # events_max_age_s; relay_inflight publishes awaiting their acks at once.
    nats_url: str | None = None
    nats_stream: str | None = None  # unset: "<MARKET>_EVENTS" (DCE_EVENTS), so two markets share one NATS
    nats_subject: str | None = None  # unset: "<market>.events" (dce.events)
    events_max_age_s: Annotated[int, Meta(ge=60)] = 7 * 86_400
    relay_batch: Annotated[int, Meta(ge=1, le=100_000)] = 500
    relay_inflight: Annotated[int, Meta(ge=1, le=100_000)] = 256
    # Webhooks (exchange.webhooks): retry delays in seconds after each failed attempt (the last
    # retry 24 h after the one before), failed attempts in a row before an endpoint is
    # disabled, deliveries in flight per endpoint (1: in order), and whether URLs may resolve
    # to loopback or private addresses (link-local and metadata addresses: never).
    webhook_retry_s: str = "30,120,600,1800,3600,7200,14400,28800,43200,86400"
    webhook_disable_after: Annotated[int, Meta(ge=1)] = 50
    webhook_inflight: Annotated[int, Meta(ge=1, le=64)] = 1
    webhook_timeout_s: Annotated[float, Meta(gt=0, le=60)] = 10.0
    webhook_max_per_account: Annotated[int, Meta(ge=1)] = 20
    webhook_allow_loopback: bool = False
    webhook_inbox_max: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000  # events handed to an endpoint not yet delivered; past it, it reads the store
    # Where deliveries run (exchange.deliver): "process", a worker process serve starts and stops
    # with it (an in-memory SQLite store: "loop"); "loop", the exchange's own event loop; "off",
    # none (run `python -m exchange deliver` beside it). The worker looks for new records every
    # webhook_poll_ms and runs webhook_worker_nice steps nicer than the exchange.
    webhook_delivery: Literal["process", "loop", "off"] = "process"
    webhook_poll_ms: Annotated[int, Meta(ge=1, le=10_000)] = 50
    webhook_worker_nice: Annotated[int, Meta(ge=0, le=19)] = 10
    webhook_worker_idle: bool = False  # Linux SCHED_IDLE: the worker runs only on CPU nothing else wants
    # Call quality signals (exchange/quality.py), computed inline by each decision: off, no signal is kept or
    # recorded and neither caller_velocity nor max_publisher_risk applies. The call window (caller velocity,
    # near-duplicate callers) holds at most quality_max_events calls; velocity_max_calls 0: no limit.
    quality_signals: bool = True
    quality_window_s: Annotated[int, Meta(ge=1, le=86_400)] = 600
    quality_velocity_max_calls: Annotated[int, Meta(ge=0)] = 0
    quality_near_digits: Annotated[int, Meta(ge=1, le=6)] = 2
    quality_outcome_window_s: Annotated[int, Meta(ge=60, le=30 * 86_400)] = 86_400
    quality_cluster_s: Annotated[int, Meta(ge=1, le=3600)] = 5
    quality_max_events: Annotated[int, Meta(ge=1000)] = 1_000_000
    # HTTP bidders (exchange.httpbid): pings in flight per buyer and endpoint (one more: no_bid "busy"),
    # the largest answer read, how long a ping runs on after tmax_ms (its answer unused, its
    # connection kept), connections open at once to all endpoints, and whether ping URLs may resolve to
    # loopback or private addresses (link-local and metadata addresses: never)
    ping_inflight: Annotated[int, Meta(ge=1, le=10_000)] = 64
    ping_max_body_bytes: Annotated[int, Meta(ge=256, le=16 << 20)] = 64 << 10
    ping_grace_ms: Annotated[int, Meta(ge=0, le=60_000)] = 1_000
    ping_max_connections: Annotated[int, Meta(ge=1, le=100_000)] = 1_000
    ping_allow_loopback: bool = False
    # The event loop's watchdog (exchange.watchdog): a loop held longer than this is logged
    # (loop_stall, with the stacks that held it) and counted; 0: off
    stall_log_ms: Annotated[int, Meta(ge=0, le=60_000)] = 0
    log_level: Literal["debug", "info", "warning", "error"] = "info"


DEFAULT_DATABASE_URL = "sqlite:///exchange.db"


def database_url(settings: Settings) -> str:
    return settings.database_url or DEFAULT_DATABASE_URL


INTS = {name for name, t in zip(Settings.__struct_fields__, msgspec.structs.fields(Settings)) if "int" in str(t.type)}
FLOATS = {name for name, t in zip(Settings.__struct_fields__, msgspec.structs.fields(Settings)) if "float" in str(t.type)}
BOOLS = {name for name, t in zip(Settings.__struct_fields__, msgspec.structs.fields(Settings)) if t.type is bool}
NUMBERS: dict[str, tuple[type, str]] = {**{n: (int, "an integer") for n in INTS}, **{n: (float, "a number") for n in FLOATS}}
TRUTH = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


class SettingsError(ValueError):
    pass


def load(env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Read ``EXCHANGE_<FIELD>`` variables; report every bad one in a single error."""
    env = os.environ if env is None else env
    raw: dict[str, object] = {}
    problems: list[str] = []
    for name in Settings.__struct_fields__:
        value = env.get(f"EXCHANGE_{name.upper()}")
        if value is None or value == "":
            continue
        if name in BOOLS:
            if value.strip().lower() not in TRUTH:
                problems.append(f"EXCHANGE_{name.upper()}: expected true or false, got {value!r}")
                continue
            raw[name] = TRUTH[value.strip().lower()]
        elif name in NUMBERS:
            parse, kind = NUMBERS[name]
            try:
                raw[name] = parse(value)
            except ValueError:
                problems.append(f"EXCHANGE_{name.upper()}: expected {kind}, got {value!r}")
                continue
        else:
            raw[name] = value
    raw.update({k: v for k, v in overrides.items() if v is not None})
    for name, given in list(raw.items()):
        try:
            msgspec.convert({name: given}, Settings)
        except msgspec.ValidationError as exc:
            problems.append(f"EXCHANGE_{name.upper()}: {exc}")
            del raw[name]
    if not problems:
        problems += node_problems(msgspec.convert(raw, Settings))
    if problems:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems))
    return msgspec.convert(raw, Settings)


def nats_names(settings: Settings) -> tuple[str, str]:
    """(stream, subject prefix) of the event relay: the settings, else scoped by the market."""
    stream = settings.nats_stream or settings.market.upper().replace(".", "_").replace("-", "_") + "_EVENTS"
    return stream, settings.nats_subject or settings.market + ".events"


def node_problems(settings: Settings) -> list[str]:
    """What a node id needs that is missing (exchange.nodes): the nodes of a market share one
    PostgreSQL database and one Redis."""
    if not settings.node_id:
        return []
    out = []
    if not settings.redis_url:
        out.append("EXCHANGE_NODE_ID needs EXCHANGE_REDIS_URL: the node registry and its leases live in Redis")
    if not database_url(settings).startswith(("postgresql://", "postgres://")):
        out.append("EXCHANGE_NODE_ID needs a PostgreSQL EXCHANGE_DATABASE_URL: the nodes of a market share one database "
                   "(the embedded SQLite file belongs to one process)")
    return out
