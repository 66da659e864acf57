"""STIR/SHAKEN attestation, pure: the call's level, a campaign's minimum and its bid modifiers.

Levels are ordered ``A`` (3) > ``B`` (2) > ``C`` (1) > unattested (0): a call without an
``attestation`` is the lowest level. A campaign's ``min_attestation`` refuses calls below it
(reason ``attestation``). Its ``bid_modifiers.attestation`` multiply its standing bid for a
call of that level, **rounded down to the cent**, before ranking: multipliers lie in [0, 1]
with at most 4 decimal places (checked at decode), kept here as integer ten-thousandths so
the product is exact integer arithmetic (``bid * m // 10_000``), never a float near money.
A level without a multiplier bids in full, except ``unattested``: without its own, it takes
the lowest multiplier the campaign gives (an unattested call is worth no more than a C one).
So a modifier never raises a bid, and the book's listed price is an upper bound of every
call's price for that campaign (``Book.ranked`` relies on it).
"""

from __future__ import annotations

from typing import Protocol

LEVELS = {"A": 3, "B": 2, "C": 1}
UNATTESTED = 0
NAMES = ("unattested", "C", "B", "A")  # level -> name
ONE = 10_000  # a multiplier of 1, in ten-thousandths

Multipliers = tuple[int, int, int, int]  # ten-thousandths, indexed by level (unattested, C, B, A)


class ModifierSpec(Protocol):
    @property
    def A(self) -> float | None: ...  # noqa: N802 (the wire's names)
    @property
    def B(self) -> float | None: ...  # noqa: N802
    @property
    def C(self) -> float | None: ...  # noqa: N802
    @property
    def unattested(self) -> float | None: ...


def level_of(attestation: str | None) -> int:
    """The call's level: 3 for A .. 1 for C, 0 unattested."""
    return LEVELS.get(attestation, UNATTESTED) if attestation is not None else UNATTESTED


def compile_multipliers(spec: ModifierSpec | None) -> Multipliers | None:
    """The multipliers per level, or None when every one is 1 (the common case: nothing to adjust)."""
    if spec is None:
        return None
    given = {lv: round(m * ONE) for lv, m in ((3, spec.A), (2, spec.B), (1, spec.C), (0, spec.unattested)) if m is not None}
    if not given:
        return None
    if 0 not in given:
        given[0] = min(given.values())
    out = (given.get(0, ONE), given.get(1, ONE), given.get(2, ONE), given.get(3, ONE))
    return None if out == (ONE, ONE, ONE, ONE) else out


def adjusted(bid_cents: int, multipliers: Multipliers | None, level: int) -> int:
    """The bid for a call of ``level``: ``bid * m`` rounded down to the cent (never above ``bid``)."""
    if multipliers is None:
        return bid_cents
    m = multipliers[level]
    return bid_cents if m == ONE else bid_cents * m // ONE


def multiplier_text(multipliers: Multipliers | None, level: int) -> str:
    """The multiplier applied, as its exact decimal text (for the evidence)."""
    m = ONE if multipliers is None else multipliers[level]
    return f"{m // ONE}.{m % ONE:04d}".rstrip("0").rstrip(".") if m % ONE else str(m // ONE)


__all__ = ["LEVELS", "NAMES", "UNATTESTED", "ONE", "Multipliers", "level_of", "compile_multipliers", "adjusted", "multiplier_text"]
