"""Number formatting shared by every console table: None is "-" (not measured), never 0."""

from __future__ import annotations


def fmt(value, digits: int = 2, unit: str = "") -> str:
    """``value`` with ``digits`` decimals (floats) and ``unit`` appended; "-" for None."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"
