"""Validation of layer arguments, shared by every layer constructor."""

from __future__ import annotations

import math
from typing import Any


def check_number(
    layer: str, name: str, value: Any, *, allow_none: bool = False, minimum: float | None = None
) -> float | None:
    """``float(value)`` if it is a finite real number (≥ ``minimum`` if given).

    Raises:
        ValueError: naming the layer, the argument and the value received.
    """
    if value is None and allow_none:
        return None
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and (minimum is None or value >= minimum):
        return float(value)
    bound = "" if minimum is None else f" >= {minimum:g}"
    raise ValueError(
        f"{layer}: {name} must be a finite number{bound}{' or None' if allow_none else ''}, got {value!r}."
    )


def check_std(layer: str, name: str, value: Any, allow_none: bool) -> float | None:
    """Validates a weight or bias standard deviation (a finite number, or None for no bias)."""
    return check_number(layer, name, value, allow_none=allow_none)


def check_parameterization(layer: str, parameterization: str) -> str:
    """Lower-cases and validates a parameterization name."""
    if not isinstance(parameterization, str) or parameterization.lower() not in ("ntk", "standard"):
        raise ValueError(f"{layer}: parameterization must be 'ntk' or 'standard', got {parameterization!r}.")
    return parameterization.lower()
