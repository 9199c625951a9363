"""Validation of layer arguments, shared by every layer constructor."""

from __future__ import annotations

import math
from typing import Any

import torch


def check_number(
    layer: str,
    name: str,
    value: Any,
    *,
    allow_none: bool = False,
    minimum: float | None = None,
    allow_tensor: bool = False,
) -> float | torch.Tensor | None:
    """``float(value)`` if it is a finite real number (≥ ``minimum`` if given).

    With ``allow_tensor`` (a hyperparameter the kernel is differentiable in, see
    `Layer.hyperparameter_names`), a 0-d floating-point tensor is kept as it is after the
    same checks, e.g. ``Dense(1, W_std=torch.tensor(1.5, requires_grad=True))``.

    Raises:
        ValueError: naming the layer, the argument and the value received.
    """
    if value is None and allow_none:
        return None
    bound = "" if minimum is None else f" >= {minimum:g}"
    if isinstance(value, torch.Tensor) and allow_tensor:
        if value.ndim == 0 and value.is_floating_point():
            number = float(value.detach())
            if math.isfinite(number) and (minimum is None or number >= minimum):
                return value
        raise ValueError(
            f"{layer}: {name} must be a finite number{bound} or a 0-d floating-point tensor holding "
            f"one, got a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
            f"{'' if value.ndim else f' holding {value.detach().item()!r}'}."
        )
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and (minimum is None or value >= minimum):
        return float(value)
    raise ValueError(
        f"{layer}: {name} must be a finite number{bound}{' or None' if allow_none else ''}, got {value!r}."
    )


def check_std(
    layer: str, name: str, value: Any, allow_none: bool, allow_tensor: bool = False
) -> float | torch.Tensor | None:
    """Validates a weight or bias standard deviation (a finite number, or None for no bias)."""
    return check_number(layer, name, value, allow_none=allow_none, allow_tensor=allow_tensor)


def check_parameterization(layer: str, parameterization: str) -> str:
    """Lower-cases and validates a parameterization name."""
    if not isinstance(parameterization, str) or parameterization.lower() not in ("ntk", "standard"):
        raise ValueError(f"{layer}: parameterization must be 'ntk' or 'standard', got {parameterization!r}.")
    return parameterization.lower()
