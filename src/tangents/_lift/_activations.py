"""torch activations as stax layers: closed forms where stax has them, quadrature otherwise.

Each entry maps a torch activation (module or function) with its arguments to a stax layer
and a note for ``print``. Smooth activations without a closed form (Tanh, Sigmoid, SiLU,
Softplus, Mish) use stax's Gauss–Hermite layers (`stax.ElementwiseNumerical`, accurate to
~1e-7 for pre-activation variances up to 1, see their docstrings). Hardtanh and ReLU6 use
`stax.Hardtanh` (closed-form conditional expectation, near machine precision), and so does
Hardsigmoid, (clip(x, −3, 3) + 3)/6, and Hardswish (the same kinks, a closed-form
conditional expectation of its quadratic middle piece).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .. import stax
from ..stax import Layer
from ._layers import Scale

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _numerical(
    fn: Callable[[torch.Tensor], torch.Tensor], df: Callable[[torch.Tensor], torch.Tensor], name: str, deg: int
) -> Layer:
    layer = stax.ElementwiseNumerical(fn, deg, df)
    layer.display_name = f"ElementwiseNumerical({name}, deg={deg})"
    return layer


def relu() -> tuple[Layer, str]:
    return stax.Relu(), ""


def leaky_relu(negative_slope: float = 0.01) -> tuple[Layer, str]:
    return stax.LeakyRelu(float(negative_slope)), ""


def gelu(approximate: str = "none") -> tuple[Layer, str]:
    if approximate == "tanh":
        return stax.Gelu(approximate=True), "kernel of the exact GELU (the tanh approximation differs by < 1e-3)"
    return stax.Gelu(), ""


def tanh() -> tuple[Layer, str]:
    return stax.Tanh(), "Gauss-Hermite quadrature (stax.Tanh)"


def sigmoid() -> tuple[Layer, str]:
    return stax.Sigmoid(), "Gauss-Hermite quadrature (stax.Sigmoid)"


def silu() -> tuple[Layer, str]:
    return stax.SiLU(), "Gauss-Hermite quadrature (stax.SiLU)"


def elu(alpha: float = 1.0) -> tuple[Layer, str]:
    return stax.Elu(float(alpha)), ""


def selu() -> tuple[Layer, str]:
    return stax.serial(stax.Elu(SELU_ALPHA), Scale(SELU_SCALE)), "selu(x) = scale * elu(x, alpha)"


def celu(alpha: float = 1.0) -> tuple[Layer, str]:
    a = float(alpha)
    return stax.serial(Scale(1 / a), stax.Elu(1.0), Scale(a)), "celu(x) = alpha * elu(x / alpha)"


def softplus(beta: float = 1.0, threshold: float = 20.0) -> tuple[Layer, str]:
    note = "Gauss-Hermite quadrature (stax.Softplus); torch's linear tail beyond threshold/beta is not modelled (< 1e-8)"
    if beta == 1:
        return stax.Softplus(), note
    b = float(beta)
    return stax.serial(Scale(b), stax.Softplus(), Scale(1 / b)), note + "; softplus_beta(x) = softplus(beta x) / beta"


def hardtanh(min_val: float = -1.0, max_val: float = 1.0) -> tuple[Layer, str]:
    return stax.Hardtanh(float(min_val), float(max_val)), ""


def relu6() -> tuple[Layer, str]:
    return hardtanh(0.0, 6.0)


Fn = Callable[[torch.Tensor], torch.Tensor]


def _smooth(fn: Fn, df: Fn, name: str) -> Callable[[], tuple[Layer, str]]:
    def make() -> tuple[Layer, str]:
        return _numerical(fn, df, name, 40), "Gauss-Hermite quadrature, degree 40"

    return make


def _mish_derivative(x: torch.Tensor) -> torch.Tensor:
    t = torch.tanh(F.softplus(x))
    return t + x * (1 - t**2) * torch.sigmoid(x)


def _softsign_derivative(x: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + x.abs()) ** 2


def _hardswish_derivative(x: torch.Tensor) -> torch.Tensor:
    middle = (2 * x + 3) / 6
    return torch.where(x <= -3, torch.zeros_like(x), torch.where(x >= 3, torch.ones_like(x), middle))


# derivatives given: forward-mode autodiff of these would import torch's jit-scripted decompositions
mish = _smooth(F.mish, _mish_derivative, "mish")
softsign = _smooth(F.softsign, _softsign_derivative, "softsign")


class Hardswish(stax.Hardtanh):
    r"""``hardswish(x) = x · clip(x + 3, 0, 6) / 6``: 0 below −3, x(x + 3)/6 on [−3, 3], x above 3.

    As `stax.Hardtanh` (kinks lo, hi = −3, 3): the conditional expectation given u is in
    closed form, from the truncated moments of v | u ~ N(m, s²) (a = (−3 − m)/s,
    b = (3 − m)/s, P = Φ(b) − Φ(a), Z standard normal):

        E[Z 1] = ϕ(a) − ϕ(b),   E[Z² 1] = P + a ϕ(a) − b ϕ(b)   (1 = 1{a < Z < b}),
        E[hardswish(v)]  = (E[v² 1] + 3 E[v 1]) / 6 + m (1 − Φ(b)) + s ϕ(b),
        E[hardswish'(v)] = (2 E[v 1] + 3 P) / 6 + 1 − Φ(b),

    and the outer integral over u is the same piecewise Gauss–Legendre rule.
    """

    def __init__(self) -> None:
        super().__init__(-3.0, 3.0)

    def __repr__(self) -> str:
        return "Hardswish()"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardswish(x)

    def _outer(self, u: torch.Tensor) -> torch.Tensor:
        return F.hardswish(u)

    def _outer_derivative(self, u: torch.Tensor) -> torch.Tensor:
        return _hardswish_derivative(u)

    def _conditional(
        self, m: torch.Tensor, s: torch.Tensor, need_derivative: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        positive = s > 0
        s_safe = torch.where(positive, s, torch.ones_like(s))
        a, b = (-3 - m) / s_safe, (3 - m) / s_safe
        cdf_a, cdf_b = torch.special.ndtr(a), torch.special.ndtr(b)
        pdf_a = torch.exp(-(a**2) / 2) / math.sqrt(2 * math.pi)
        pdf_b = torch.exp(-(b**2) / 2) / math.sqrt(2 * math.pi)
        mass = cdf_b - cdf_a
        z1 = pdf_a - pdf_b
        z2 = mass + a * pdf_a - b * pdf_b
        v1 = m * mass + s * z1  # E[v 1{-3 < v < 3}]
        v2 = m**2 * mass + 2 * m * s * z1 + s**2 * z2  # E[v² 1{-3 < v < 3}]
        above = 1 - cdf_b
        smooth = (v2 + 3 * v1) / 6 + m * above + s * pdf_b
        value = torch.where(positive, smooth, F.hardswish(m))
        if not need_derivative:
            return value, None
        return value, torch.where(positive, (2 * v1 + 3 * mass) / 6 + above, _hardswish_derivative(m))

    def expectation_diagonal(self, var: torch.Tensor) -> torch.Tensor:
        """E[hardswish(u)²]: the outer integral at correlation 1 (the conditional is exact there)."""
        return self.expectations(var, var, var, False)[0]


def hardswish() -> tuple[Layer, str]:
    return Hardswish(), "closed-form conditional expectation, piecewise Gauss-Legendre (as stax.Hardtanh)"


class Hardsigmoid(stax.Hardtanh):
    r"""``hardsigmoid(x) = clip(x/6 + ½, 0, 1) = (h(x) + 3)/6`` with ``h = clip(·, −3, 3)``.

    h is odd, so E[h(u)] = 0 and, for centred Gaussian (u, v),

        T = E[hardsigmoid(u) hardsigmoid(v)] = (T_h + 9) / 36,    Ṫ = Ṫ_h / 36,

    with T_h, Ṫ_h those of `stax.Hardtanh(-3, 3)` (near machine precision).
    """

    def __init__(self) -> None:
        super().__init__(-3.0, 3.0)

    def __repr__(self) -> str:
        return "Hardsigmoid()"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardsigmoid(x)

    def expectations(
        self, cov12: torch.Tensor, var1: torch.Tensor, var2: torch.Tensor, need_derivative: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        t, tdot = super().expectations(cov12, var1, var2, need_derivative)
        return (t + 9) / 36, None if tdot is None else tdot / 36

    def expectation_diagonal(self, var: torch.Tensor) -> torch.Tensor:
        return (super().expectation_diagonal(var) + 9) / 36


def hardsigmoid() -> tuple[Layer, str]:
    return Hardsigmoid(), "(hardtanh(x, -3, 3) + 3) / 6: closed form via stax.Hardtanh"


def abs_() -> tuple[Layer, str]:
    return stax.Abs(), ""


def sin() -> tuple[Layer, str]:
    return stax.Sin(), ""


def cos() -> tuple[Layer, str]:
    return stax.Cos(), ""


def exp() -> tuple[Layer, str]:
    return stax.Exp(), ""


def erf() -> tuple[Layer, str]:
    return stax.Erf(), ""


def sign() -> tuple[Layer, str]:
    return stax.Sign(), ""


def monomial(degree: int) -> tuple[Layer, str]:
    return stax.Monomial(degree), ""

