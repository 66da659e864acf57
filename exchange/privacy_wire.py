"""Wire types of the operator's privacy API (``exchange/privacy_api.py``, PROTOCOL.md v2)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Struct

from .messages import Phone, text


class ErasureRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/privacy/erasures: the consumer's number to erase (any form a phone number takes)."""

    number: Phone


class LegalHoldRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/privacy/holds: a number whose data retention and erasure must spare."""

    number: Phone
    reason: Annotated[str, text(500)] = ""
