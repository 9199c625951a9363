"""Numerically safe elementary functions shared by the kernel recursions.

All are pure tensor functions (no Python control flow on values), so they can be traced
or compiled, and they keep the dtype and device of their inputs.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from ._torch_private import is_functorch_wrapped


def differentiable(*tensors: torch.Tensor | None) -> bool:
    """Whether any of ``tensors`` is being differentiated (autograd, forward-mode or torch.func).

    Kernel formulas then take their slower forms whose derivatives stay finite where the
    plain ones have ∞ (√ at 0, arccos at ±1); otherwise they take the fast forms.
    """
    if torch.compiler.is_compiling():  # compiled kernels run without differentiation
        return False
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        if t.requires_grad or is_functorch_wrapped(t):
            return True
        if torch.autograd.forward_ad.unpack_dual(t).tangent is not None:
            return True
    return False


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """√max(x, 0): the square root of a quantity that is ≥ 0 up to rounding.

    Its gradient at 0 is taken to be 0 rather than ∞ (as in neural-tangents).
    """
    if not differentiable(x):
        return x.clamp_min(0).sqrt()
    clipped = x.clamp_min(0)
    return torch.where(clipped > 0, clipped, torch.ones_like(clipped)).sqrt() * (clipped > 0)


def safe_arctan2(y: torch.Tensor, x: torch.Tensor, fill_zero: float | None = None) -> torch.Tensor:
    """atan2(y, x), with the value at y = x = 0 set to ``fill_zero`` when given."""
    out = torch.atan2(y, x)
    if fill_zero is None:
        return out
    both_zero = (y == 0) & (x == 0)
    return torch.where(both_zero, torch.full_like(out, fill_zero), out)


def safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, with 0 where the denominator is 0."""
    zero = denominator == 0
    return torch.where(zero, torch.zeros_like(numerator), numerator) / torch.where(
        zero, torch.ones_like(denominator), denominator
    )


@lru_cache(maxsize=64)
def _hermgauss(deg: int) -> tuple[np.ndarray, np.ndarray]:
    # scipy's Golub-Welsch nodes stay finite for high degrees (numpy's overflow from ~375).
    from scipy.special import roots_hermite

    return roots_hermite(deg)


def gauss_hermite(deg: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of ``deg``-point Gauss–Hermite quadrature for ∫ f(x) e^{-x²} dx.

    Returns:
        ``(nodes, weights)``, each of shape ``(deg,)``.
    """
    if deg < 1:
        raise ValueError(f"gauss_hermite: the degree must be a positive integer, got {deg}.")
    nodes, weights = _hermgauss(deg)
    return (
        torch.as_tensor(nodes, dtype=dtype, device=device),
        torch.as_tensor(weights, dtype=dtype, device=device),
    )


def factorial(n: int) -> int:
    return math.factorial(n)


def double_factorial(n: int) -> int:
    """n!! = n (n-2) (n-4) ... (1 for n ≤ 0)."""
    out = 1
    for i in range(n, 0, -2):
        out *= i
    return out
