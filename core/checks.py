"""The number checks of every package: each returns the plain value or raises a ValueError naming it.

A number is a Python or NumPy real, never a bool; a whole number may be written as a float (3.0),
as a CSV or JSON file gives it. Bounds are inclusive (``minimum``, ``maximum``) or exclusive
(``above``, ``below``), and the message states them as written: ``>= 1``, ``> 0``, ``in (0, 1]``,
``from 2 to 8``.
"""

from __future__ import annotations

import math
import numbers

MIN_BITS, MAX_BITS = 2, 8  # the bit widths of the paper


def value_text(value: object) -> str:
    """How a value reads in a message: a number as written (3, not np.int64(3)), anything else by repr ('3')."""
    return str(value) if _is_real(value) else repr(value)


def finite_number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
) -> float:
    """``value`` as a float if it is a finite number within the bounds, else a ValueError naming ``name``."""
    if not _is_finite(value):
        raise ValueError(f"{name} must be a finite number, got {value_text(value)}")
    if not _within(value, minimum, maximum, above, below):
        raise ValueError(f"{name} must be {_range_text(minimum, maximum, above, below)}, got {value_text(value)}")
    return float(value)


def whole_number(name: str, value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int if it is a whole number (3 or 3.0) from ``minimum`` to ``maximum``, else a ValueError."""
    if not (_is_whole(value) and _within(value, minimum, maximum)):
        words = _range_text(minimum, maximum, whole=True)
        raise ValueError(f"{name} must be a whole number{' ' + words if words else ''}, got {value_text(value)}")
    return int(value)


def check_bits(bits: object) -> int:
    """``bits`` as an int if it is a whole number from 2 to 8, else a ValueError that says so."""
    return whole_number("bits", bits, MIN_BITS, MAX_BITS)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    """A real that is a finite float (an integer beyond 1.8e308 is not: a float cannot hold it)."""
    try:
        return _is_real(value) and math.isfinite(value)
    except OverflowError:
        return False


def _is_whole(value: object) -> bool:
    integral = isinstance(value, numbers.Integral)
    return _is_real(value) and (integral or (_is_finite(value) and float(value).is_integer()))


def _within(
    value: float,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
) -> bool:
    return ((minimum is None or value >= minimum) and (maximum is None or value <= maximum)
            and (above is None or value > above) and (below is None or value < below))


def _range_text(
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    whole: bool = False,
) -> str:
    """The bounds in words: ``>= 1``, ``> 0``, ``<= 8``, ``in (0, 1]``, or for whole numbers ``from 2 to 8``."""
    low = ("[", minimum) if minimum is not None else ("(", above) if above is not None else None
    high = (maximum, "]") if maximum is not None else (below, ")") if below is not None else None
    if low and high:
        return f"from {minimum} to {maximum}" if whole else f"in {low[0]}{low[1]}, {high[0]}{high[1]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]}"
    if high:
        return f"{'<=' if high[1] == ']' else '<'} {high[0]}"
    return ""
