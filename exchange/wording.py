"""Decode errors in plain words: msgspec's messages rewritten for the people who read them.

msgspec reports ``Expected `str` matching regex '^[a-z0-9_]+(?!\\n)$'`` or ``Invalid enum
value 'x'``; a wire error says instead what the field takes: ``must be lowercase letters,
digits and _ (like auto_insurance)``, ``'x' is not allowed; use one of: inbound, outbound``.
The allowed values of a field are read from the wire type itself (``msgspec.inspect``) by
following the error's JSON path, so a new ``Literal`` needs no entry here. A message this
module does not know is kept as msgspec wrote it.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import msgspec
import msgspec.inspect as mi

from .messages import NO_C0, PROSE

# what each pattern of the wire types accepts, in words
PATTERNS = {
    NO_C0: "text without control characters",
    PROSE: "text without control characters other than tab and line breaks",
    r"^[A-Za-z0-9_.:\-]+(?!\n)$": "letters, digits and . _ : - only",
    r"^[a-z0-9_]+(?!\n)$": "lowercase letters, digits and _ only (like auto_insurance)",
    r"^[A-Z]{2}(?!\n)$": "a two-letter state code in capitals (like CA)",
    r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)(?!\n)$": "a time of day as HH:MM from 00:00 to 24:00 (like 09:30)",
    r"^(\+[1-9][0-9]{6,14}|sips?:[^\s\x00-\x1f]+)(?!\n)$": "an E.164 number (like +18005550199) or a sip: URI",
    r"^[0-9]{5}(?!\n)$": "a 5-digit ZIP code (like 94110)",
    r"^[0-9]{5}(-[0-9]{4})?(?!\n)$": "a ZIP code (like 94110 or 94110-1234)",
}
_KINDS = {"int": "a whole number", "str": "text", "bool": "true or false", "null": "null", "object": "a JSON object",
          "array": "a list", "float": "a number", "datetime": "an RFC 3339 time with a zone (like 2026-11-23T14:05:00Z)",
          "bytes": "bytes"}
_REGEX = re.compile(r"^Expected `str` matching regex '(.*)'$", re.S)
_ENUM = re.compile(r"^Invalid (?:enum )?value (.+)$", re.S)
_BOUND = re.compile(r"^Expected `(int|float|str|array|object)`(?: of length)? (>=|<=|>|<) (-?[0-9.e+]+)$")
_TYPE = re.compile(r"^Expected `([^`]+)`, got `([^`]+)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`$")
_WEEK = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # listed in the week's order, not the alphabet's
_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\.\.\.|[0-9]+)\]")


def _kinds(spec: str) -> str:
    words = [_KINDS.get(k.strip(), k.strip()) for k in spec.split("|")]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def plain(text: str, root: Any = None, path: str = "$", at_key: bool = False) -> str:
    """``text`` (a msgspec error, without its `` - at ...`` tail) in plain words; ``root``: the
    type decoded, ``path``: the JSON path from it, ``at_key``: the error is about a dict's key."""
    if m := _REGEX.match(text):
        return "must be " + PATTERNS.get(m.group(1).replace("\\\\", "\\"), "in the documented form (see the API section of the README)")
    if m := _ENUM.match(text):
        allowed = values_at(root, path, at_key) if root is not None else None
        what = "type" if path.endswith(".type") and not at_key else "value"
        return f"{m.group(1)} is not an allowed {what}" + (f"; use one of: {', '.join(map(str, allowed))}" if allowed else "")
    if m := _BOUND.match(text):
        kind, op, n = m.groups()
        unit = {"str": " characters", "array": " items", "object": " entries"}.get(kind, "")
        word = {">=": "at least", "<=": "at most", ">": "more than", "<": "less than"}[op]
        return f"must be {word} {n}" if kind in ("int", "float") else f"must have {word} {n}{unit}"
    if m := _TYPE.match(text):
        return f"must be {_kinds(m.group(1))}, not {_kinds(m.group(2))}"
    if m := _MISSING.match(text):
        return f"the field {m.group(1)} is required"
    if text.startswith("Invalid RFC3339") or "datetime" in text:
        return "must be " + _KINDS["datetime"]
    return text


def values_at(root: Any, path: str, at_key: bool = False) -> list[Any] | None:
    """The allowed values (a ``Literal`` or an enum, or a tagged union's tags) of the field at
    ``path`` under ``root``; None when they cannot be told."""
    try:
        info = _info(root)
    except (TypeError, msgspec.MsgspecError):
        return None
    return _walk(info, [m.group(1) or m.group(2) for m in _SEGMENT.finditer(path[1:] if path.startswith("$") else path)], at_key)


@functools.lru_cache(maxsize=64)
def _info(root: Any) -> Any:
    return mi.type_info(root)


def _walk(t: Any, segments: list[str], at_key: bool) -> list[Any] | None:
    while isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.UnionType):
        for member in t.types:
            found = _walk(member, segments, at_key)
            if found:
                return found
        if segments == ["type"]:  # a tagged union's tag
            tags = [m.tag for m in t.types if isinstance(m, mi.StructType) and m.tag is not None]
            return tags or None
        return None
    if not segments:
        if at_key and isinstance(t, mi.DictType):
            return _walk(t.key_type, [], False)
        if isinstance(t, mi.LiteralType):
            values = list(t.values)
            return sorted(values, key=_WEEK.index) if set(values) <= set(_WEEK) else values
        if isinstance(t, mi.EnumType):
            return [e.value for e in t.cls]
        return None
    head, rest = segments[0], segments[1:]
    if isinstance(t, mi.StructType):
        if head == "type" and not rest and t.tag is not None:
            return None
        for f in t.fields:
            if f.encode_name == head:
                return _walk(f.type, rest, at_key)
        return None
    if isinstance(t, mi.DictType) and head == "...":
        return _walk(t.value_type, rest, at_key)
    if isinstance(t, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)) and (head.isdigit() or head == "..."):
        return _walk(t.item_type, rest, at_key)
    return None


__all__ = ["plain", "values_at", "PATTERNS"]
