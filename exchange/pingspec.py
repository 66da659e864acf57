"""HTTP bidders, pure: a campaign's ``ping`` (PROTOCOL.md v2) compiled once, the request
rendered for a call, and the answer mapped back to a bid or a ``no_bid`` reason.

``compile_ping`` checks everything that can be checked without the network when the campaign
is sent: the URL (``http(s)``, no credentials, placeholders only in the query), the method,
the headers (no hop-by-hop or framing header), the body template (known placeholders only,
at most ``MAX_TEMPLATE_BYTES``, nested at most ``MAX_DEPTH``) and every JSON path of the map.
A problem is a ``CampaignError`` with the JSON path of the field at fault
(``$.ping.map.bid_cents``, ``$.ping.body_template.lead.state``).

``render`` fills the placeholders; ``read_answer`` maps an answer (status, body) to
``Priced`` or to a reason (``NO_BID_REASONS``). Neither raises on what a bidder sends.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation, ROUND_FLOOR
from typing import Annotated, Any, Literal, NamedTuple, Union
from urllib.parse import quote

import msgspec
from msgspec import Meta, Struct

from routing.standing import CampaignError

from .ssrf import UrlRefused, parse

MAX_TEMPLATE_BYTES = 16_384
MAX_DEPTH = 8
MAX_CENTS = 1_000_000  # as exchange.messages.MAX_CENTS: $10,000 per call
JsonPath = Annotated[str, Meta(min_length=1, max_length=256)]
HeaderName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")]
HeaderValue = Annotated[str, Meta(max_length=1024, pattern=r"^[^\x00-\x1f\x7f]*$")]
FORBIDDEN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer",
                               "proxy-authorization", "proxy-connection"})


class PingMap(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    bid_cents: JsonPath
    destination: JsonPath | None = None
    min_duration_s: JsonPath | None = None
    accepted: JsonPath | None = None


class PingSpec(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A campaign's ``ping``: how to ask the buyer's HTTP endpoint and read its answer."""

    url: Annotated[str, Meta(min_length=1, max_length=2048)]
    method: Literal["POST", "GET", "PUT"] = "POST"
    headers: Annotated[dict[HeaderName, HeaderValue], Meta(max_length=32)] = {}
    body_template: Union[str, dict[str, Any], None] = None
    map: PingMap
    bid_unit: Literal["cents", "dollars"] = "cents"


# ---------------------------------------------------------------- placeholders
FIELDS = ("call_id", "request_id", "campaign", "vertical", "state", "area_code", "direction", "floor_cents", "floor_dollars",
          "tmax_ms", "caller")
HOLE = re.compile(r"\{(call_id|request_id|campaign|vertical|state|area_code|direction|floor_cents|floor_dollars|tmax_ms|caller"
                  r"|tags\.[A-Za-z0-9_\-]{1,64})\}")
ANY_HOLE = re.compile(r"\{([a-z_]+(?:\.[^{}\s]*)?)\}")  # what looks like a placeholder: known or reported


class Hole(NamedTuple):
    name: str


Parts = tuple[Union[str, Hole], ...]  # literal text and placeholders, in order


def _parts(text: str, path: str) -> Parts:
    for m in ANY_HOLE.finditer(text):
        if not HOLE.fullmatch(m.group(0)):
            raise CampaignError("invalid_field", f"unknown placeholder {m.group(0)}; known: "
                                + ", ".join("{" + f + "}" for f in FIELDS) + ", {tags.<name>}", path)
    out: list[str | Hole] = []
    at = 0
    for m in HOLE.finditer(text):
        if m.start() > at:
            out.append(text[at:m.start()])
        out.append(Hole(m.group(1)))
        at = m.end()
    if at < len(text):
        out.append(text[at:])
    return tuple(out)


def _key_path(path: str, key: str) -> str:
    return f"{path}.{key}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else f"{path}[{msgspec.json.encode(key).decode()}]"


def _compile_tree(node: Any, path: str, depth: int) -> Any:
    """An object template: each string a ``Parts`` (a lone placeholder keeps its value's type)."""
    if depth > MAX_DEPTH:
        raise CampaignError("invalid_field", f"the template is nested deeper than {MAX_DEPTH} levels", path)
    if isinstance(node, str):
        return _parts(node, path)
    if isinstance(node, dict):
        return {k: _compile_tree(v, _key_path(path, k), depth + 1) for k, v in node.items()}
    if isinstance(node, list):
        return [_compile_tree(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node)]
    return node  # numbers, booleans, null: sent as they are


# ---------------------------------------------------------------- JSON paths
PATH_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_\-]*)|\[(\d{1,6})\]|\['((?:[^'\\]|\\.)*)'\]|\[\"((?:[^\"\\]|\\.)*)\"\]")
Step = Union[str, int]


def parse_path(text: str, where: str) -> tuple[Step, ...]:
    """``$``, ``.name``, ``[3]``, ``['a b']``: the JSON path subset every ping-post map needs."""
    if not text.startswith("$"):
        raise CampaignError("invalid_field", f"{text!r} is not a JSON path: it must start with $", where)
    steps: list[Step] = []
    at = 1
    while at < len(text):
        m = PATH_STEP.match(text, at)
        if m is None:
            raise CampaignError("invalid_field", f"{text!r} is not a JSON path this exchange reads (at character {at}: "
                                "use .name, [index] or ['name'])", where)
        name, index, q1, q2 = m.groups()
        steps.append(int(index) if index is not None else name if name is not None else re.sub(r"\\(.)", r"\1", q1 if q1 is not None else q2))
        at = m.end()
    if len(steps) > 16:
        raise CampaignError("invalid_field", "a JSON path has at most 16 steps", where)
    return tuple(steps)


MISSING = object()


def lookup(doc: Any, steps: tuple[Step, ...]) -> Any:
    for step in steps:
        if isinstance(step, int):
            if not isinstance(doc, list) or step >= len(doc):
                return MISSING
        elif not isinstance(doc, dict) or step not in doc:
            return MISSING
        doc = doc[step]
    return doc


# ---------------------------------------------------------------- the plan
class PingPlan(NamedTuple):
    spec: PingSpec
    scheme: str
    host: str
    port: int
    url: Parts  # the URL, placeholders (query only) percent-encoded when rendered
    headers: tuple[tuple[str, str], ...]
    body: Any  # None (GET), Parts (a text template), a compiled object template, or "native"
    escape: str  # how a text template's values are escaped: "json", "form" or "xml"
    bid: tuple[Step, ...]
    destination: tuple[Step, ...] | None
    min_duration: tuple[Step, ...] | None
    accepted: tuple[Step, ...] | None
    dollars: bool

    @property
    def endpoint(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.scheme == "https" else 80) else f"{host}:{self.port}"


def compile_ping(spec: PingSpec, rtb: bool) -> PingPlan:
    """The plan of a campaign's ``ping``, or ``CampaignError`` with the JSON path at fault."""
    if not rtb:
        raise CampaignError("invalid_field", 'a campaign with a ping must be "rtb": true', "$.ping")
    url_parts = _parts(spec.url, "$.ping.url")
    if any(isinstance(p, Hole) for p in url_parts) and "?" not in spec.url.split("{", 1)[0]:
        raise CampaignError("invalid_field", "placeholders are allowed in the URL's query only", "$.ping.url")
    try:
        target = parse(HOLE.sub("x", spec.url))
    except UrlRefused as exc:
        raise CampaignError("invalid_url", str(exc), "$.ping.url") from None
    headers: list[tuple[str, str]] = []
    ctype = None
    for name, value in spec.headers.items():
        if name.lower() in FORBIDDEN_HEADERS:
            raise CampaignError("invalid_field", f"the header {name} is set by the exchange", _key_path("$.ping.headers", name))
        if name.lower() == "content-type":
            ctype = value.lower()
        headers.append((name, value))
    body: Any = "native"
    if spec.method == "GET":
        if spec.body_template is not None:
            raise CampaignError("invalid_field", "a GET ping carries no body: put placeholders in the URL's query", "$.ping.body_template")
        body = None
    elif spec.body_template is not None:
        if len(msgspec.json.encode(spec.body_template)) > MAX_TEMPLATE_BYTES:
            raise CampaignError("invalid_field", f"the body template is larger than {MAX_TEMPLATE_BYTES} bytes", "$.ping.body_template")
        if isinstance(spec.body_template, str):
            body = _parts(spec.body_template, "$.ping.body_template")
        else:
            body = _compile_tree(spec.body_template, "$.ping.body_template", 1)
    if body is not None and ctype is None:
        ctype = "application/json"
        headers.append(("Content-Type", ctype))
    escape = "form" if ctype and "x-www-form-urlencoded" in ctype else "xml" if ctype and "xml" in ctype else "json"
    if isinstance(body, dict | list) and escape != "json":
        raise CampaignError("invalid_field", "an object template is sent as JSON: its Content-Type must be JSON", "$.ping.headers")
    m = spec.map
    return PingPlan(
        spec, target.scheme, target.host, target.port, url_parts, tuple(headers), body, escape,
        parse_path(m.bid_cents, "$.ping.map.bid_cents"),
        parse_path(m.destination, "$.ping.map.destination") if m.destination else None,
        parse_path(m.min_duration_s, "$.ping.map.min_duration_s") if m.min_duration_s else None,
        parse_path(m.accepted, "$.ping.map.accepted") if m.accepted else None,
        spec.bid_unit == "dollars",
    )


# ---------------------------------------------------------------- rendering
class CallView(NamedTuple):
    """What a template may read of a call (``caller``: the consumer's number, only if asked for)."""

    call_id: str
    request_id: str
    campaign: str
    vertical: str
    state: str | None
    area_code: int | None
    direction: str
    floor_cents: int
    tmax_ms: int
    caller: str | None
    tags: dict[str, Any]


def value_of(call: CallView, name: str) -> Any:
    if name.startswith("tags."):
        return call.tags.get(name[5:])
    if name == "floor_dollars":
        return f"{call.floor_cents // 100}.{call.floor_cents % 100:02d}"
    return getattr(call, name)


def _text(value: Any, escape: str) -> str:
    s = "" if value is None else ("true" if value else "false") if isinstance(value, bool) else str(value)
    if escape == "raw":
        return s
    if escape == "url" or escape == "form":
        return quote(s, safe="")
    if escape == "xml":
        return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;").replace("'", "&apos;")
    return msgspec.json.encode(s).decode()[1:-1]


def _fill(parts: Parts, call: CallView, escape: str) -> str:
    return "".join(p if isinstance(p, str) else _text(value_of(call, p.name), escape) for p in parts)


def _fill_tree(node: Any, call: CallView) -> Any:
    if isinstance(node, tuple):  # Parts
        if len(node) == 1 and isinstance(node[0], Hole):
            return value_of(call, node[0].name)  # a lone placeholder keeps its type (area_code: a number)
        return "".join(p if isinstance(p, str) else _text(value_of(call, p.name), "raw") for p in node)
    if isinstance(node, dict):
        return {k: _fill_tree(v, call) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill_tree(v, call) for v in node]
    return node


_encode = msgspec.json.Encoder().encode


def render(plan: PingPlan, call: CallView, native: Any) -> tuple[str, bytes]:
    """The URL path-and-query and the body of the ping for ``call`` (``native``: the
    ``bid_request`` message, sent when the campaign has no template)."""
    url = _fill(plan.url, call, "url")
    if plan.body is None:
        return url, b""
    if plan.body == "native":
        return url, _encode(native)
    if isinstance(plan.body, tuple):
        return url, _fill(plan.body, call, plan.escape).encode()
    return url, _encode(_fill_tree(plan.body, call))


# ---------------------------------------------------------------- answers
NO_BID_REASONS = ("late", "busy", "refused_address", "connect_error", "http_status", "too_large", "malformed", "unmapped",
                  "wrong_type", "out_of_range", "declined")


class Priced(NamedTuple):
    bid_cents: int
    destination: str | None
    min_duration_s: int | None


_decode = msgspec.json.Decoder(float_hook=Decimal).decode
NUMBER = re.compile(r"^\s*\$?\s*(-?\d{1,12}(?:\.\d{1,12})?)\s*$")
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
SIP = re.compile(r"^sips?:[^\s\x00-\x1f]{1,250}$")
TRUE, FALSE = frozenset({"true", "yes", "accepted", "accept", "1"}), frozenset({"false", "no", "rejected", "reject", "0"})


def read_answer(plan: PingPlan, status: int, body: bytes) -> Priced | str:
    """A bidder's answer as a bid, or the ``no_bid`` reason it amounts to."""
    if not 200 <= status < 300:
        return "http_status"
    try:
        doc = _decode(body)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return "malformed"
    if plan.accepted is not None:
        ok = lookup(doc, plan.accepted)
        if ok is not MISSING:
            flag = _flag(ok)
            if flag is None:
                return "wrong_type"
            if not flag:
                return "declined"
    raw = lookup(doc, plan.bid)
    if raw is MISSING:
        return "unmapped"
    if raw is None:
        return "declined"
    cents = _cents(raw, plan.dollars)
    if isinstance(cents, str):
        return cents
    if cents == 0:
        return "declined"
    destination = None
    if plan.destination is not None:
        d = lookup(doc, plan.destination)
        if d is not MISSING and d is not None:
            destination = _destination(d)
            if destination is None:
                return "wrong_type"
    duration = None
    if plan.min_duration is not None:
        s = lookup(doc, plan.min_duration)
        if s is not MISSING and s is not None:
            n = _cents(s, False)
            if isinstance(n, str) or n > 86_400:
                return "wrong_type"
            duration = n
    return Priced(cents, destination, duration)


def _flag(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        s = v.strip().lower()
        return True if s in TRUE else False if s in FALSE else None
    return None


def _cents(v: Any, dollars: bool) -> int | str:
    """A bid (or a count) as a whole number: dollars times 100; a fraction of a cent is dropped
    (rounded down, never up: a buyer is never charged more than it bid)."""
    if isinstance(v, bool):
        return "wrong_type"
    if isinstance(v, str):
        m = NUMBER.match(v)
        if m is None:
            return "wrong_type"
        v = Decimal(m.group(1))
    if not isinstance(v, int | Decimal):
        return "wrong_type"
    try:
        d = Decimal(v) * (100 if dollars else 1)
        if not d.is_finite():
            return "wrong_type"
        if d < 0 or d > MAX_CENTS:
            return "out_of_range"
        return int(d.to_integral_value(ROUND_FLOOR))
    except (InvalidOperation, OverflowError):
        return "wrong_type"


def _destination(v: Any) -> str | None:
    """A phone number (E.164, or 10 US digits, punctuation allowed) or a ``sip:`` address."""
    if not isinstance(v, str):
        return None
    v = v.strip()
    if v[:4].lower() == "sip:" or v[:5].lower() == "sips:":
        return v if SIP.match(v) else None
    digits = re.sub(r"[\s().\-]", "", v)
    if len(digits) == 10 and digits.isdigit():
        digits = "+1" + digits
    elif len(digits) == 11 and digits.isdigit() and digits[0] == "1":
        digits = "+" + digits
    return digits if E164.match(digits) else None
