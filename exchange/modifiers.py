"""Wire types of STIR/SHAKEN attestation and its bid modifiers (PROTOCOL.md v2): a call's
``attestation``, a campaign's ``min_attestation`` and ``bid_modifiers``. Compiled for the book
by ``routing/attestation.py``."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

Attestation = Literal["A", "B", "C"]  # STIR/SHAKEN level of the caller id (absent: unattested, the lowest)
Multiplier = Annotated[float, Meta(ge=0)]  # at most 1 and 4 decimal places (AttestationModifiers.__post_init__)


class AttestationModifiers(Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """The bid multiplier per attestation level (absent: 1); ``unattested`` defaults to the
    lowest multiplier given (an unattested call is the lowest level)."""

    A: Multiplier | None = None
    B: Multiplier | None = None
    C: Multiplier | None = None
    unattested: Multiplier | None = None

    def __post_init__(self) -> None:  # at decode: the path of the field at fault, inside this struct
        for name in ("A", "B", "C", "unattested"):
            m = getattr(self, name)
            if m is None:
                continue
            if m > 1:
                raise ValueError(f"a bid modifier is at most 1 (modifiers never raise a bid) - at `$.{name}`")
            if m != round(m, 4):
                raise ValueError(f"a bid modifier has at most 4 decimal places - at `$.{name}`")


class BidModifiers(Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    attestation: AttestationModifiers | None = None
