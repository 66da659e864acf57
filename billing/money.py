"""The one rounding rule for money.

A clearing price (integer cents) is split between the publisher and the exchange by the
exchange's take rate in basis points. The publisher's payout is rounded **down** to the
whole cent and the exchange's margin is the remainder, so ``payout + margin == price``
always holds and no fraction of a cent is ever created or lost:

    payout = floor(price * (10_000 - take_rate_bps) / 10_000)
    margin = price - payout
"""

from __future__ import annotations

BPS = 10_000


def split(price_cents: int, take_rate_bps: int) -> tuple[int, int]:
    """Return ``(payout_cents, margin_cents)`` for a clearing price."""
    if price_cents < 0:
        raise ValueError("price must not be negative")
    if not 0 <= take_rate_bps <= BPS:
        raise ValueError("take rate must lie in [0, 10000] bps")
    payout = price_cents * (BPS - take_rate_bps) // BPS
    return payout, price_cents - payout
