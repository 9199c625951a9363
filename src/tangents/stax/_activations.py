"""Closed-form nonlinearities: each is φ with its Gaussian expectations T and Ṫ.

Notation (see `_elementwise`): c = Σ(a, b), v₁ = Σ(a, a), v₂ = Σ(b, b), and
T = E[φ(u)φ(v)], Ṫ = E[φ'(u)φ'(v)] for (u, v) ~ N(0, [[v₁, c], [c, v₂]]).
"""

from __future__ import annotations

import math

import torch

from .._kernel import Kernel
from .._numerics import safe_arctan2, safe_sqrt
from ._elementwise import Activation


class ABRelu(Activation):
    r"""``φ(x) = a min(x, 0) + b max(x, 0)`` (Relu: a=0, b=1; Abs: a=-1, b=1).

    With θ = atan2(√(v₁v₂ − c²), c) (the arc-cosine kernel, Cho & Saul 2009):

        T = (a − b)²/(2π) · √(v₁v₂ − c²) + [(a² + b²)/2 − (a − b)²/(2π) · θ] · c,
        Ṫ = (a² + b²)/2 − (a − b)²/(2π) · θ.

    Args:
        a: slope for x < 0.
        b: slope for x > 0.
        do_stabilize: rescale covariances to O(1) before the arc-cosine (for very deep
            networks); the result is the same, since T is homogeneous of degree one.
    """

    def __init__(self, a: float, b: float, do_stabilize: bool = False) -> None:
        self.a, self.b, self.do_stabilize = float(a), float(b), bool(do_stabilize)

    def __repr__(self) -> str:
        return f"ABRelu(a={self.a}, b={self.b})"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.clamp(x, max=0) + self.b * torch.clamp(x, min=0)

    def expectations(self, cov12, var1, var2, need_derivative):  # noqa: ANN001, ANN201
        root = safe_sqrt(var1 * var2 - cov12**2)
        angle = safe_arctan2(root, cov12, fill_zero=math.pi / 2)
        factor = (self.a - self.b) ** 2 / (2 * math.pi)
        tdot = (self.a**2 + self.b**2) / 2 - factor * angle
        return factor * root + tdot * cov12, tdot

    def expectation_diagonal(self, var: torch.Tensor) -> torch.Tensor:
        return (self.a**2 + self.b**2) / 2 * var

    def map_kernel(self, k: Kernel) -> Kernel:
        if not self.do_stabilize:
            return super().map_kernel(k)
        scale = k.nngp.abs().max().clamp_min(1e-12)
        scaled = k.replace(
            nngp=k.nngp / scale, cov1=k.cov1 / scale, cov2=None if k.cov2 is None else k.cov2 / scale
        )
        out = super().map_kernel(scaled)
        return out.replace(
            nngp=out.nngp * scale,
            cov1=out.cov1 * scale,
            cov2=None if out.cov2 is None else out.cov2 * scale,
        )


def Relu(do_stabilize: bool = False) -> ABRelu:
    """``max(x, 0)``; see `ABRelu`."""
    return _named(ABRelu(0.0, 1.0, do_stabilize), "Relu")


def LeakyRelu(alpha: float, do_stabilize: bool = False) -> ABRelu:
    """``alpha * min(x, 0) + max(x, 0)``; see `ABRelu`."""
    return _named(ABRelu(alpha, 1.0, do_stabilize), f"LeakyRelu({alpha})")


def Abs(do_stabilize: bool = False) -> ABRelu:
    """``|x|``; see `ABRelu`."""
    return _named(ABRelu(-1.0, 1.0, do_stabilize), "Abs")


class Erf(Activation):
    r"""``φ(x) = a erf(b x) + c``.

    With ṽ = b² v, c̃ = b² c (Williams 1997):

        T = a² (2/π) arcsin(2c̃ / √((1 + 2ṽ₁)(1 + 2ṽ₂))) + c²,
        Ṫ = a² b² (4/π) / √((1 + 2ṽ₁)(1 + 2ṽ₂) − 4c̃²).

    Args:
        a: output scale.
        b: input scale.
        c: output shift.
    """

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0) -> None:
        self.a, self.b, self.c = float(a), float(b), float(c)

    def __repr__(self) -> str:
        return f"Erf(a={self.a}, b={self.b}, c={self.c})"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.erf(self.b * x) + self.c

    def expectations(self, cov12, var1, var2, need_derivative):  # noqa: ANN001, ANN201
        b2 = self.b**2
        prod = (1 + 2 * b2 * var1) * (1 + 2 * b2 * var2)
        root = safe_sqrt(prod - 4 * (b2 * cov12) ** 2)
        t = (2 / math.pi) * torch.atan2(2 * b2 * cov12, root)
        tdot = None
        if need_derivative:
            tdot = self.a**2 * b2 * (4 / math.pi) / root
        return self.a**2 * t + self.c**2, tdot

    def expectation_diagonal(self, var: torch.Tensor) -> torch.Tensor:
        v = self.b**2 * var
        return self.a**2 * (2 / math.pi) * torch.atan2(v, torch.sqrt(v + 0.25)) + self.c**2


def Sigmoid_like() -> Erf:
    """``0.5 erf(x / 2.4020563531719796) + 0.5``, an Erf fitted to the logistic sigmoid."""
    return _named(Erf(a=0.5, b=1 / 2.4020563531719796, c=0.5), "Sigmoid_like")


def _named(layer, name: str):  # noqa: ANN001, ANN202
    """Gives a constructor-made layer the name users wrote (for reprs and errors)."""
    layer.display_name = name
    return layer
