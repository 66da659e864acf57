"""Decoding the wire: frames and bodies into typed messages, each bad item with its error.

Decoders are built once in ``messages``; this module turns their failures into wire errors
with JSON paths, one verdict per frame (invalid UTF-8 anywhere is one ``malformed_json``),
and keeps the good messages of a batch when some items are bad.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from msgspec import Struct

from .errors import Invalid
from .wording import plain
from .messages import (
    ID_PATTERN, Bid, BuyerMessage, Error, ErrorDetail, Message, Seq, StrictBid, buyer_json, buyer_json_one, buyer_msgpack, buyer_msgpack_one, publisher_json,
    publisher_json_one, publisher_msgpack, publisher_msgpack_one,
)

T = TypeVar("T")
Codecs = tuple[Any, Any, Any, Any]  # (one message, a frame, its seq only, a list of raw items)


class _SeqOnly(Struct):
    seq: Seq | None = None  # an error never echoes a seq the wire types forbid


_seq_json = msgspec.json.Decoder(_SeqOnly)
_seq_msgpack = msgspec.msgpack.Decoder(_SeqOnly)
_raw_list_json = msgspec.json.Decoder(list[msgspec.Raw])
_raw_list_msgpack = msgspec.msgpack.Decoder(list[msgspec.Raw])
_MISSING = re.compile(r"missing required field `([^`]+)`")
_UNKNOWN = re.compile(r"contains unknown field `([^`]+)`")


def error_from_exception(exc: Exception, prefix: str = "$", root: Any = None) -> ErrorDetail:
    """Turn a msgspec decode/validation error into a wire error with its JSON path, its
    message in plain words (``wording``; ``root``: the type decoded, for allowed values)."""
    if isinstance(exc, msgspec.ValidationError):
        text = str(exc)
        path, at, at_key = prefix, "$", False
        if " - at `" in text:
            text, _, at = text.rpartition(" - at `")
            at = at.rstrip("`")
            if " - at `$" in text:  # a nested struct's __post_init__ named its field: `$.B` inside `$.bid_modifiers.attestation`
                text, _, inner = text.rpartition(" - at `$")
                at += inner.rstrip("`")
            if at.startswith("key` in `"):  # "Invalid enum value 'x' - at `key` in `$.hours`"
                at, at_key = at[len("key` in `"):], True
            path = prefix + at[1:] if at.startswith("$") else at
        missing = _MISSING.search(text) or _UNKNOWN.search(text)
        if missing:
            path = f"{path}.{missing.group(1)}"
        code = "unknown_type" if path.endswith(".type") and text.startswith("Invalid value") else "invalid_message"
        if missing and missing.group(1) == "type":
            code = "invalid_message"
        return ErrorDetail(code=code, message=plain(text, root, at, at_key), path=path)
    return ErrorDetail(code="malformed_json", message=f"cannot decode frame: {exc}")


BAD_UTF8 = "cannot decode frame: invalid UTF-8"


def _utf8(data: bytes) -> bool:
    """Whether ``data`` is valid UTF-8 (ASCII is checked first by the caller: the common case)."""
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


BUYER_CODECS = {
    False: (buyer_json_one, buyer_json, _seq_json, _raw_list_json),
    True: (buyer_msgpack_one, buyer_msgpack, _seq_msgpack, _raw_list_msgpack),
}
PUBLISHER_CODECS = {
    False: (publisher_json_one, publisher_json, _seq_json, _raw_list_json),
    True: (publisher_msgpack_one, publisher_msgpack, _seq_msgpack, _raw_list_msgpack),
}


_JSON_DECODERS = frozenset({BUYER_CODECS[False][1], PUBLISHER_CODECS[False][1]})


def decode_buyer_frame(data: bytes | str, binary: bool = False) -> tuple[list[BuyerMessage], list[Message], bool | list[str]]:
    """Decode one buyer frame (JSON, or msgpack when ``binary``); see ``decode_frame``."""
    return decode_frame(data, BUYER_CODECS[binary])


def decode_frame(data: bytes | str, codecs: Codecs) -> tuple[list[Any], list[Message], bool | list[str]]:
    """Decode one frame into its messages, with an ``error`` for each bad one.

    The fast path decodes the whole frame at once. Only if that fails is the frame split
    into its items so that the good messages of a batch still apply and each bad one gets
    its own error (with its ``seq`` when it can be read). The third value locates the
    messages for error paths: ``True``/``False`` (batch or not) on the fast path, else the
    JSON path of each good message. ``message_path`` reads it.
    """
    one, many, seq_of, raw_list = codecs
    if type(data) is bytes and many in _JSON_DECODERS and not data.isascii() and not _utf8(data):
        # one verdict per frame: msgspec only validates the strings it reads, so bad UTF-8 in a
        # field nobody reads (or in a later item of a batch) would otherwise pass or split the frame
        return [], [Error(code="malformed_json", message=BAD_UTF8)], False
    try:
        out = many.decode(data)
    except msgspec.ValidationError:
        pass
    except (msgspec.DecodeError, ValueError, TypeError, RecursionError) as exc:  # also bad UTF-8, text on msgpack, too deep
        detail = error_from_exception(exc)
        return [], [Error(code=detail.code, message=detail.message)], False
    else:
        return (out, [], True) if isinstance(out, list) else ([out], [], False)
    try:
        items: list[tuple[str, bytes]] = [(f"$[{i}]", bytes(r)) for i, r in enumerate(raw_list.decode(data))]
    except (msgspec.MsgspecError, ValueError, RecursionError):
        items = [("$", data if isinstance(data, bytes) else data.encode())]
    good: list = []
    paths: list[str] = []
    errors: list[Message] = []
    for prefix, raw in items:
        try:
            good.append(one.decode(raw))
            paths.append(prefix)
        except (msgspec.MsgspecError, ValueError, RecursionError) as exc:
            detail = error_from_exception(exc, prefix, one.type)
            try:
                seq = seq_of.decode(raw).seq
            except (msgspec.MsgspecError, ValueError, RecursionError):
                seq = None
            errors.append(Error(code=detail.code, message=detail.message, path=detail.path, seq=seq))
    return good, errors, paths


_ID = re.compile(ID_PATTERN)
_encode_json = msgspec.json.Encoder().encode


def invalid_bid(msg: Bid, path: str) -> Error | None:
    """The v1 error of a bid (at ``path``) whose campaign is no valid id, else None. A bid frame is
    decoded checking a campaign's length only (``messages.BidId``); the gateway asks this of a bid
    whose campaign is not in the book, which every malformed id is not."""
    if _ID.search(msg.campaign) is not None:
        return None
    try:
        msgspec.json.decode(_encode_json(msg), type=StrictBid)
    except msgspec.ValidationError as exc:
        detail = error_from_exception(exc, path, BuyerMessage)
        return Error(code=detail.code, message=detail.message, path=detail.path, seq=msg.seq)
    return None  # (unreachable: the pattern is ``Id``'s)


def message_path(where: bool | list[str], i: int) -> str:
    """The JSON path of the i-th decoded message of a frame (see ``decode_frame``)."""
    if where is True:
        return f"$[{i}]"
    if where is False:
        return "$"
    return where[i]


def decode_body(data: bytes, type_: type[T]) -> T:
    """Decode an HTTP JSON body into ``type_``; raises ``Invalid`` with the path on failure."""
    if not data.isascii() and not _utf8(data):
        raise Invalid("malformed_json", BAD_UTF8)
    try:
        return msgspec.json.decode(data, type=type_)
    except (msgspec.MsgspecError, ValueError, RecursionError) as exc:  # also bad UTF-8 and deep nesting (not 500s)
        detail = error_from_exception(exc, root=type_)
        raise Invalid(detail.code, detail.message, detail.path) from None


