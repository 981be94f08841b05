"""An exact reference for decimal -> float32 rounding, and decimals at or beside float32 rounding midpoints.

Shared by the tests of both ASCII routes of the PCD reader (``test_pcd_ascii_exact.py``, ``test_pcd_ascii_fast.py``):
the reference is exact rational arithmetic, independent of any parser under test.
"""

from __future__ import annotations

import decimal
from fractions import Fraction

import numpy as np
from hypothesis import strategies as st

FLOAT32_OVERFLOW = Fraction(2**128 - 2**103)


def reference_float32(text: str) -> np.float32:
    """The float32 nearest to the decimal ``text`` (ties to even), by exact rational arithmetic."""
    x = Fraction(text)
    negative = text.lstrip().startswith("-")
    if abs(x) >= FLOAT32_OVERFLOW:
        return np.float32(-np.inf if negative else np.inf)
    with np.errstate(over="ignore"):
        guess = np.float32(float(x))
        candidates = {guess, np.nextafter(guess, np.float32(np.inf)), np.nextafter(guess, np.float32(-np.inf))}
    finite = [c for c in candidates if np.isfinite(c)]
    best = min(
        finite,
        key=lambda c: (abs(Fraction(float(c)) - x), int(np.array(c, dtype=np.float32).view(np.uint32)) & 1),
    )
    if best == 0:
        return np.float32(-0.0 if negative else 0.0)
    return np.float32(best)


def decimal_text(value: Fraction, digits: int) -> str:
    with decimal.localcontext() as context:
        context.prec = digits
        return str(decimal.Decimal(value.numerator) / decimal.Decimal(value.denominator))


@st.composite
def near_midpoints(draw: st.DrawFn) -> str:
    """A decimal at, or within a hair of, the midpoint of two adjacent float32 values (normal or subnormal)."""
    f = np.float32(draw(st.floats(width=32, allow_nan=False, allow_infinity=False)))
    with np.errstate(over="ignore"):
        g = np.nextafter(f, np.float32(np.inf) if draw(st.booleans()) else np.float32(-np.inf))
        if not np.isfinite(g):
            g = np.nextafter(f, np.float32(-np.inf) if f > 0 else np.float32(np.inf))
    midpoint = (Fraction(float(f)) + Fraction(float(g))) / 2
    how = draw(st.sampled_from(["exact", "rounded", "above", "below", "float64 neighbour"]))
    if how == "exact":
        return decimal_text(midpoint, 200)  # dyadic: exact in enough digits
    if how == "rounded":
        return decimal_text(midpoint, draw(st.integers(17, 40)))
    if how == "float64 neighbour":  # the float64 values on either side of the midpoint, printed exactly
        m = float(midpoint)
        side = np.nextafter(m, np.inf if draw(st.booleans()) else -np.inf)
        return decimal_text(Fraction(float(side)), 800)
    scale = Fraction(1, 10 ** draw(st.integers(17, 40)))
    nudge = abs(midpoint) * scale or Fraction(1, 10**60)
    return decimal_text(midpoint + nudge if how == "above" else midpoint - nudge, 60)
