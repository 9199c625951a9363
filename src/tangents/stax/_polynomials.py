r"""Polynomial and rectified-monomial nonlinearities: Polynomial, Monomial, Hermite, RectifiedMonomial.

Notation (see `_elementwise`): c = Σ(a, b), v₁ = Σ(a, a), v₂ = Σ(b, b), and
T = E[φ(u)φ(v)], Ṫ = E[φ'(u)φ'(v)] for (u, v) ~ N(0, [[v₁, c], [c, v₂]]).
Every T here is a polynomial in c and the variances (plus one angle for the rectified
monomials), evaluated without divisions, so zero and parallel inputs are exact.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from .._kernel import Kernel
from .._numerics import angles, double_factorial
from ._covariance import kernel_variances
from ._elementwise import Activation


def _check_degree(layer: str, degree: object) -> int:
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)) or degree < 0:
        raise ValueError(f"{layer}: degree must be a non-negative integer, got {degree!r}.")
    return int(degree)


class Polynomial(Activation):
    r"""``φ(x) = coef[0] + coef[1] x + … + coef[n] xⁿ`` (numpy's ``Polynomial`` order).

    By the Hermite (Mehler) expansion, T = Σ_l c^l/l! · E[φ^{(l)}(u)] E[φ^{(l)}(v)], and
    E[φ^{(l)}(u)] = p_l(v₁) with

        p_l(v) = Σ_i coef[l + 2i] (l + 2i)! / (2^i i!) · v^i,

    so, with no square roots or divisions (finite for zero variances and covariances),

        T = Σ_{l≥0} c^l/l! · p_l(v₁) p_l(v₂),     Ṫ = Σ_{l≥1} c^{l−1}/(l−1)! · p_l(v₁) p_l(v₂).

    Args:
        coef: the coefficients, lowest degree first.
    """

    def __init__(self, coef: Sequence[float]) -> None:
        if isinstance(coef, torch.Tensor):
            coef = coef.detach().cpu().tolist()
        try:
            array = np.asarray(coef, dtype=np.float64)
        except (TypeError, ValueError):
            array = np.full((1, 1), np.nan)
        if array.ndim != 1 or not np.isfinite(array).all():
            raise ValueError(
                f"Polynomial: coef must be a flat sequence of finite numbers, lowest degree "
                f"first (e.g. [0.1, 0.5, 0.3] for 0.1 + 0.5x + 0.3x²), got {coef!r}."
            )
        self.coef = tuple(float(a) for a in array)
        #: ``_moments[l]``: coefficients (in v, lowest first) of p_l(v)/√(l!).
        self._moments = [self._moment_coefficients(l) for l in range(len(self.coef))]

    def _moment_coefficients(self, l: int) -> list[float]:
        """coef[l + 2i] (l + 2i)! / (2^i i! √(l!)) for i = 0, 1, ..."""
        return [
            self.coef[l + 2 * i] * math.factorial(l + 2 * i) / (2**i * math.factorial(i) * math.sqrt(math.factorial(l)))
            for i in range((len(self.coef) - 1 - l) // 2 + 1)
        ]

    def __repr__(self) -> str:
        return f"Polynomial(coef={list(self.coef)})"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for a in reversed(self.coef):
            out = out * x + a
        return out

    def _p(self, l: int, var: torch.Tensor) -> torch.Tensor:
        """p_l(v)/√(l!) by Horner's rule."""
        out = torch.zeros_like(var)
        for a in reversed(self._moments[l]):
            out = out * var + a
        return out

    def expectations(
        self, cov12: torch.Tensor, var1: torch.Tensor, var2: torch.Tensor, need_derivative: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = torch.zeros_like(cov12)
        tdot = torch.zeros_like(cov12) if need_derivative else None
        for l in reversed(range(len(self.coef))):  # Horner in c
            pair = self._p(l, var1) * self._p(l, var2)
            t = t * cov12 + pair
            if tdot is not None and l >= 1:
                tdot = tdot * cov12 + l * pair
        return t, tdot

    def expectation_diagonal(self, var: torch.Tensor) -> torch.Tensor:
        return self.expectations(var, var, var, False)[0]


class Monomial(Polynomial):
    r"""``φ(x) = x^degree``; a `Polynomial`, e.g. T = 2c² + v₁v₂ (degree 2),
    6c³ + 9c v₁v₂ (degree 3), Ṫ = degree² · T_{degree−1}, and T = (2n − 1)!! vⁿ at
    coincident points.

    neural-tangents allows degrees 0 to 5 only; here any non-negative integer works.

    Args:
        degree: a non-negative integer.
    """

    def __init__(self, degree: int) -> None:
        self.degree = _check_degree("Monomial", degree)
        super().__init__([0.0] * self.degree + [1.0])

    def __repr__(self) -> str:
        return f"Monomial(degree={self.degree})"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return x**self.degree

    def expectation_diagonal(self, var: torch.Tensor) -> torch.Tensor:
        return double_factorial(2 * self.degree - 1) * var**self.degree


class Hermite(Activation):
    r"""``φ(x) = Heₙ(x)/√(n!)``, the probabilists' Hermite polynomial of norm 1 under N(0, 1).

    For unit-variance inputs (u, v) with correlation c, Mehler's formula gives

        T = cⁿ,     Ṫ = n c^{n−1} (0 for n = 0),     T(diagonal) = vⁿ,

    which is what this layer (like neural-tangents) computes for any input. It equals
    E[φ(u)φ(v)] only when the variances are 1, e.g. right after a `LayerNorm`; a
    ``UserWarning`` is raised when an input variance differs from 1 by more than 1e-6.

    Args:
        degree: n, a non-negative integer.
    """

    remask = True  # NT: supports_masking(remask_kernel=True)

    def __init__(self, degree: int) -> None:
        self.degree = _check_degree("Hermite", degree)

    def __repr__(self) -> str:
        return f"Hermite(degree={self.degree})"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        previous, current = torch.zeros_like(x), torch.ones_like(x)
        for k in range(self.degree):  # He_{k+1} = x He_k − k He_{k−1}
            previous, current = current, x * current - k * previous
        return current / math.sqrt(math.factorial(self.degree))

    def expectations(
        self, cov12: torch.Tensor, var1: torch.Tensor, var2: torch.Tensor, need_derivative: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = self.degree
        tdot = None
        if need_derivative:
            tdot = torch.zeros_like(cov12) if n == 0 else n * cov12 ** (n - 1)
        return cov12**n, tdot

    def expectation_diagonal(self, var: torch.Tensor) -> torch.Tensor:
        return var**self.degree

    def map_kernel(self, k: Kernel) -> Kernel:
        for var in kernel_variances(k):
            if var.numel() and bool(((var - 1).abs() > 1e-6).any()):
                warnings.warn(
                    f"{self.name}: the kernel c^{self.degree} is E[φ(u)φ(v)] only for unit-variance "
                    f"inputs, but input variances range over [{var.min().item():.4g}, "
                    f"{var.max().item():.4g}]; put a LayerNorm (or normalise the inputs) before it.",
                    UserWarning,
                    stacklevel=2,
                )
                break
        return super().map_kernel(k)


class RectifiedMonomial(Activation):
    r"""``φ(x) = 1[x ≥ 0] · x^n``, the arc-cosine kernels of Cho & Saul (2009).

    With r = √(v₁v₂ − c²) and θ = atan2(r, c), T = K_n/(2π) where

        K₀ = π − θ,     K₁ = r + c (π − θ),
        K_{m+1} = (2m + 1) c K_m + m² r² K_{m−1}

    (the recurrence J_{m+1} = (2m+1) cos θ J_m + m² sin²θ J_{m−1} of J_n(θ) =
    (−1)ⁿ sin^{2n+1}θ (∂_θ/sin θ)ⁿ ((π − θ)/sin θ), scaled by (v₁v₂)^{n/2}). It needs no
    division, so parallel inputs (r = 0) are exact: K_n = (2n − 1)!! π cⁿ for c > 0 and 0
    for c < 0 (neural-tangents returns NaN there). By Price's theorem

        Ṫ = n² K_{n−1}/(2π)   (n ≥ 1),     Ṫ = 0 for n = 0 (φ' = δ, as in neural-tangents),

    and T = (2n − 1)!! vⁿ / 2 at coincident points. Where a variance is 0 (so c = r = 0)
    θ is taken as 0, which keeps T continuous along the diagonal (1/2 for n = 0) and gives
    E[φ(0)φ(v)] = P(v ≥ 0) = 1/2 exactly for n = 0 with one zero variance.

    Args:
        degree: n, a non-negative integer.
    """

    def __init__(self, degree: int) -> None:
        self.degree = _check_degree("RectifiedMonomial", degree)

    def __repr__(self) -> str:
        return f"RectifiedMonomial(degree={self.degree})"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return (x >= 0).to(x.dtype) * x**self.degree

    def expectations(
        self, cov12: torch.Tensor, var1: torch.Tensor, var2: torch.Tensor, need_derivative: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # r = q sin θ, c = q cos θ and θ from one snapped cosine (`angles`): exact where parallel
        ang = angles(cov12, var1, var2, zero_variance_angle=0.0)
        root = ang.norm * ang.sin
        cov12 = ang.norm * ang.cos
        r2 = root * root
        k_prev = math.pi - ang.angle  # K_0
        k_next = root + cov12 * k_prev  # K_1
        ks = [k_prev, k_next]
        for m in range(1, self.degree):
            ks.append((2 * m + 1) * cov12 * ks[m] + m**2 * r2 * ks[m - 1])
        n = self.degree
        t = ks[n] / (2 * math.pi)
        tdot = None
        if need_derivative:
            tdot = torch.zeros_like(t) if n == 0 else n**2 * ks[n - 1] / (2 * math.pi)
        return t, tdot

    def expectation_diagonal(self, var: torch.Tensor) -> torch.Tensor:
        return double_factorial(2 * self.degree - 1) * var**self.degree / 2
