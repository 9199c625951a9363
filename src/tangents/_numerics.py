"""Numerically safe elementary functions shared by the kernel recursions.

All are pure tensor functions (no Python control flow on values), so they can be traced
or compiled, and they keep the dtype and device of their inputs.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

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


# ---------------------------------------------------------------------- the angle of two points

#: ``1 − |cos θ|`` at or below which two points count as coincident (θ = 0) or opposite
#: (θ = π), in units of the dtype's machine epsilon. The cosine c/√(v₁v₂) of two identical
#: inputs is not exactly 1: c comes from a matrix product, v₁ and v₂ from sums of squares,
#: and the two round differently (measured with MKL, worst case over 10⁴ duplicated rows:
#: float64 2 ulp at d = 3, 12 at d = 784, 26 at d = 3072, 48 at d = 10⁴; float32 ≤ 5.5 ulp
#: at any d). Since √(1 − cos²) and arccos amplify such a gap δ to √(2δ), unsnapped rounding
#: would move the arc-cosine kernels' derivative Ṫ by ~1e-8 (float64) / ~3e-4 (float32) at
#: duplicated rows and break their symmetry and positive semi-definiteness.
COINCIDENCE_ULPS = {torch.float64: 64, torch.float32: 16}


def coincidence_tolerance(dtype: torch.dtype) -> float:
    """τ: points whose cosine is within τ of ±1 are taken to be exactly parallel.

    64 ulp in float64 (τ = 1.4e-14, angles below 1.7e-7 rad), 16 ulp in float32
    (τ = 1.9e-6, angles below 2e-3 rad); see `COINCIDENCE_ULPS`. Snapping moves an
    arc-cosine kernel's Ṫ by at most √(2τ)/(2π) (2.7e-8 in float64, 3.1e-4 in float32),
    the size of the rounding noise it removes.
    """
    return COINCIDENCE_ULPS.get(dtype, 16) * torch.finfo(dtype).eps


class Angles(NamedTuple):
    """The angle θ between two zero-mean Gaussians of covariance c and variances v₁, v₂,
    each field broadcast to the covariance's shape.

    Attributes:
        norm: q = √v₁ √v₂ (= √(v₁v₂), without overflow).
        cos: cos θ = c/q, clamped to [−1, 1] (0 where q = 0).
        sin: sin θ = √((1 − cos θ)(1 + cos θ)), set to exactly 0 where sin²θ ≤ 2τ
            (τ = `coincidence_tolerance`): coincident or opposite points.
        angle: θ = atan2(sin θ, cos θ) ∈ [0, π], so exactly 0 (or π) where sin θ is 0.
        writable: whether the four are fresh tensors the caller may overwrite in place
            (eager and without autograd).
    """

    norm: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    angle: torch.Tensor
    writable: bool


def angles(cov12: torch.Tensor, var1: torch.Tensor, var2: torch.Tensor, zero_variance_angle: float = math.pi / 2) -> Angles:
    r"""θ = arccos(c/√(v₁v₂)) with its sine and cosine, all from ONE clamped cosine.

    The shared fast path of every nonlinearity whose kernel depends on the angle between
    two inputs (arc-cosine kernels, Sign, quadrature over the 2-D Gaussian). Taking θ from
    the cosine but √(v₁v₂ − c²) from a separate subtraction lets the two disagree on
    coincident points by √(rounding) (θ = 0 next to a root of 1e-8 q, or the reverse);
    here sin θ comes from the clamped cosine, is set to 0 inside the rounding band
    (sin²θ ≤ 2τ, τ = `coincidence_tolerance`), and θ = atan2(sin θ, cos θ) of the same two
    numbers. So duplicated rows get θ = 0 and sin θ = 0 exactly, as the diagonal does; the
    kernel stays symmetric and positive semi-definite to rounding, and does not depend on
    how the batch is tiled.

    Three forms of the same operations, the same numbers to rounding: eager without
    autograd (in place, a few passes over the covariance), compiled (out of place, fused by
    the compiler) and differentiable (square roots whose derivative is 0 at 0, so that
    derivatives stay finite on coincident points).

    Args:
        cov12: covariances c, any shape.
        var1: variances v₁, broadcastable to ``cov12``.
        var2: variances v₂, broadcastable to ``cov12``.
        zero_variance_angle: θ where v₁v₂ = 0 (π/2 by default: c = 0 there; the
            rectified monomials take 0).

    Returns:
        `Angles`, each of the broadcast shape of the three inputs.
    """
    tau = coincidence_tolerance(cov12.dtype)
    if differentiable(cov12, var1, var2):
        out = _angles_differentiable(cov12, var1, var2, tau)
    else:
        # q = √v₁ √v₂: square roots of the (small) variance tensors, not of the full product
        # (cheaper, and v₁v₂ cannot overflow or underflow)
        q = var1.clamp_min(0).sqrt() * var2.clamp_min(0).sqrt()
        if torch.compiler.is_compiling():
            out = _angles_functional(cov12, q, tau)
        else:
            # (numpy's broadcast: torch.broadcast_shapes imports sympy on its first call, 0.4-0.7 s)
            shape = np.broadcast_shapes(tuple(cov12.shape), tuple(q.shape))
            out = _angles_in_place(cov12, q if q.shape == shape else q.expand(shape).contiguous(), tau)
    if zero_variance_angle != math.pi / 2:
        zero = out.norm == 0
        fill = torch.full_like(out.angle, zero_variance_angle)
        out = out._replace(
            angle=torch.where(zero, fill, out.angle),
            cos=torch.where(zero, torch.cos(fill), out.cos),
            sin=torch.where(zero, torch.sin(fill), out.sin),
        )
    return out


def _angles_in_place(cov12: torch.Tensor, q: torch.Tensor, tau: float) -> Angles:
    """Eager, no autograd: one pass over the covariance per operation, allocating only the
    outputs and one temporary (``q``, a fresh √v₁√v₂ of the full shape, is kept as it is)."""
    cos = q.clamp_min(torch.finfo(cov12.dtype).tiny)
    torch.div(cov12, cos, out=cos).clamp_(-1, 1)
    sin = torch.rsub(cos, 1).mul_(cos + 1)  # sin²θ = (1 − cos)(1 + cos): accurate near ±1
    F.threshold_(sin, 2 * tau, 0.0).sqrt_()  # threshold(x, t, v) keeps x > t, else v
    return Angles(q, cos, sin, torch.atan2(sin, cos), True)


def _angles_functional(cov12: torch.Tensor, q: torch.Tensor, tau: float) -> Angles:
    """The same operations as `_angles_in_place`, out of place (compiled and fused)."""
    cos = (cov12 / q.clamp_min(torch.finfo(cov12.dtype).tiny)).clamp(-1, 1)
    sin = F.threshold((1 - cos) * (1 + cos), 2 * tau, 0.0).sqrt()
    return Angles(q.expand(cos.shape), cos, sin, torch.atan2(sin, cos), False)


def _angles_differentiable(cov12: torch.Tensor, var1: torch.Tensor, var2: torch.Tensor, tau: float) -> Angles:
    """The same operations under autograd, with square roots whose derivative is 0 (not ∞)
    at 0, and sin θ replaced (not overwritten) by 0 on coincident points: finite
    derivatives everywhere, and ∂T/∂c = Ṫ there (∂θ/∂c = 0 once sin θ is constant)."""
    q = safe_sqrt(var1) * safe_sqrt(var2)
    cos = safe_divide(cov12, q).clamp(-1, 1)
    sin2 = (1 - cos) * (1 + cos)
    coincident = sin2 <= 2 * tau
    sin = torch.where(coincident, torch.zeros_like(sin2), safe_sqrt(torch.where(coincident, torch.ones_like(sin2), sin2)))
    return Angles(q.expand(cos.shape), cos, sin, torch.atan2(sin, cos), False)


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
