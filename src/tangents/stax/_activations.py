"""Closed-form nonlinearities: each is φ with its Gaussian expectations T and Ṫ.

The piecewise-linear family (ABRelu, Relu, LeakyRelu, Abs, Sign), Erf and Gelu, the
exponential and trigonometric ones (Sin, Cos, Rbf, Exp, Gaussian, Gabor) and the
kernel-only ExpNormalized; polynomial activations are in `_polynomials`.

Notation (see `_elementwise`): c = Σ(a, b), v₁ = Σ(a, a), v₂ = Σ(b, b), and
T = E[φ(u)φ(v)], Ṫ = E[φ'(u)φ'(v)] for (u, v) ~ N(0, [[v₁, c], [c, v₂]]).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._kernel import Kernel
from .._numerics import angles, differentiable, safe_divide, safe_sqrt
from ._checks import check_number
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

    hyperparameter_names = ("a", "b")

    def __init__(self, a: float, b: float, do_stabilize: bool = False) -> None:
        self.a = check_number("ABRelu", "a", a, allow_tensor=True)
        self.b = check_number("ABRelu", "b", b, allow_tensor=True)
        self.do_stabilize = bool(do_stabilize)

    def __repr__(self) -> str:
        return f"ABRelu(a={self.a}, b={self.b})"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.clamp(x, max=0) + self.b * torch.clamp(x, min=0)

    def expectations(self, cov12, var1, var2, need_derivative):  # noqa: ANN001, ANN201
        # T = q [factor sin θ + Ṫ cos θ] with q = √(v₁v₂): θ, sin θ and q cos θ (= c) all from
        # one snapped cosine (`angles`), so coincident points give exactly (a² + b²)/2 · q
        ang = angles(cov12, var1, var2)
        factor = (self.a - self.b) ** 2 / (2 * math.pi)
        mean_square = (self.a**2 + self.b**2) / 2
        if ang.writable and not differentiable(self.a, self.b):  # eager, no autograd: in place, no allocation
            tdot = ang.angle.mul_(-factor).add_(mean_square)
            return ang.sin.mul_(factor).addcmul_(tdot, ang.cos).mul_(ang.norm), tdot
        tdot = mean_square - factor * ang.angle
        return ang.norm * (factor * ang.sin + tdot * ang.cos), tdot

    def expectation_diagonal(self, var: torch.Tensor) -> torch.Tensor:
        return (self.a**2 + self.b**2) / 2 * var

    @property
    def replays_covariances(self) -> bool:
        return not self.do_stabilize  # rescales the covariances it outputs

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
    r"""Rectified linear unit, ``φ(x) = max(x, 0)`` (NT's ``stax.Relu``).

    The arc-cosine kernel of degree 1 (Cho & Saul 2009): for pre-activation covariances
    v₁ = Σ(x₁, x₁), v₂ = Σ(x₂, x₂), c = Σ(x₁, x₂) and the angle θ = arccos(c / √(v₁v₂)),

        T = E[φ(u₁) φ(u₂)] = (√(v₁v₂ − c²) + (π − θ) c) / (2π),
        Ṫ = E[φ'(u₁) φ'(u₂)] = (π − θ) / (2π),

    so Σ ← T and Θ ← Ṫ Θ + T. On the diagonal (x₁ = x₂) T = v/2 and Ṫ = 1/2. Elementwise on
    every covariance entry: the kernel keeps its shape ((N1, N2) for dense inputs;
    (N1, N2, H, H', W, W') or its spatial diagonal for images).

    Args:
        do_stabilize: rescale the covariances to O(1) before the arc-cosine and back after
            (for very large or very small inputs; NT's argument).

    Returns:
        The layer, ``ABRelu(a=0, b=1)``.
    """
    return _named(ABRelu(0.0, 1.0, do_stabilize), "Relu", ())


def LeakyRelu(alpha: float, do_stabilize: bool = False) -> ABRelu:
    r"""Leaky ReLU, ``φ(x) = alpha · min(x, 0) + max(x, 0)`` (``ABRelu(alpha, 1)``).

    With θ = arccos(c / √(v₁v₂)) as in `Relu`:

        T = (1 − alpha)²/(2π) · √(v₁v₂ − c²) + ((1 + alpha²)/2 − (1 − alpha)²/(2π) · θ) · c,
        Ṫ = (1 + alpha²)/2 − (1 − alpha)²/(2π) · θ.

    Args:
        alpha: slope for negative inputs (a float, or a 0-d tensor: then it is the layer's
            hyperparameter ``a`` and kernels are differentiable in it).
        do_stabilize: see `Relu`.
    """
    return _named(ABRelu(alpha, 1.0, do_stabilize), f"LeakyRelu({alpha})", ("a",))


def Abs(do_stabilize: bool = False) -> ABRelu:
    r"""Absolute value, ``φ(x) = |x|`` (``ABRelu(-1, 1)``).

    With θ = arccos(c / √(v₁v₂)) as in `Relu`:

        T = (2/π) √(v₁v₂ − c²) + (1 − 2θ/π) c,        Ṫ = 1 − 2θ/π.

    Args:
        do_stabilize: see `Relu`.
    """
    return _named(ABRelu(-1.0, 1.0, do_stabilize), "Abs", ())


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

    remask = True  # NT: supports_masking(remask_kernel=True)
    hyperparameter_names = ("a", "b", "c")

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0) -> None:
        self.a, self.b, self.c = (
            check_number(type(self).__name__, n, v, allow_tensor=True) for n, v in (("a", a), ("b", b), ("c", c))
        )

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
    return _named(Erf(a=0.5, b=1 / 2.4020563531719796, c=0.5), "Sigmoid_like", ())


def _named(layer, name: str, hyperparameter_names: tuple[str, ...] | None = None):  # noqa: ANN001, ANN202
    """Gives a constructor-made layer the name users wrote (for reprs and errors) and, when
    given, the hyperparameters that name has (``Relu`` has none of ``ABRelu``'s)."""
    layer.display_name = name
    if hyperparameter_names is not None:
        layer.hyperparameter_names = hyperparameter_names
    return layer


# ---------------------------------------------------------------------- smooth: Gelu, Gabor


class Gelu(Activation):
    r"""``φ(x) = x Φ(x)`` with Φ the standard normal CDF (Tsuchida et al. 2020).

    With P = (1 + v₁)(1 + v₂), δ = √(P − c²) (≥ 1, so never singular) and
    θ = atan2(c, δ):

        T = c/4 + [(c² + v₁v₂ δ²)/(P δ) + c θ] / (2π),
        Ṫ = 1/4 + θ/(2π) + c/(2π δ) · [1/δ² + (1 − v₁v₂)/P + 1],

    and at coincident points (c = v₁ = v₂ = v)

        T = v/4 + v/π · [v/((1 + v)√(1 + 2v)) + atan2(v, √(1 + 2v))/2].

    Args:
        approximate: only for the finite-width ``apply_fn``: use the tanh approximation
            ``x/2 (1 + tanh(√(2/π)(x + 0.044715 x³)))``. The kernel is always the exact one.
    """

    def __init__(self, approximate: bool = False) -> None:
        self.approximate = bool(approximate)

    def __repr__(self) -> str:
        return f"Gelu(approximate={self.approximate})"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh" if self.approximate else "none")

    def expectations(
        self, cov12: torch.Tensor, var1: torch.Tensor, var2: torch.Tensor, need_derivative: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        prod, prod1 = var1 * var2, (1 + var1) * (1 + var2)
        delta2 = prod1 - cov12**2
        delta = safe_sqrt(delta2)
        angle = torch.atan2(cov12, delta)
        t = cov12 / 4 + ((cov12**2 + prod * delta2) / (prod1 * delta) + cov12 * angle) / (2 * math.pi)
        tdot = None
        if need_derivative:
            bracket = 1 / delta2 + (1 - prod) / prod1 + 1
            tdot = 0.25 + angle / (2 * math.pi) + cov12 / (2 * math.pi * delta) * bracket
        return t, tdot

    def expectation_diagonal(self, var: torch.Tensor) -> torch.Tensor:
        root = torch.sqrt(1 + 2 * var)
        inner = var / ((1 + var) * root) + torch.atan2(var, root) / 2
        return var * (0.25 + inner / math.pi)


class Gabor(Activation):
    r"""``φ(x) = exp(−x²) sin(x)``.

    From E[e^{−zᵀz + iaᵀz}] = D^{−1/2} exp(−aᵀ(I + 2Σ)^{−1}Σ a / 2) with a = (1, ∓1), where
    D = det(I + 2Σ) = 1 + 2s + 4Δ, s = v₁ + v₂, Δ = v₁v₂ − c², A = s + 4Δ:

        T = D^{−1/2} e^{−A/(2D)} sinh(c/D),
        Ṫ = D^{−5/2} e^{−A/(2D)} [4c(D + 1 + s) sinh(c/D) + (D + 8c²) cosh(c/D)],

    and at coincident points T = (1 − e^{−2v/(1 + 4v)}) / (2√(1 + 4v)).
    """

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(-(x**2)) * torch.sin(x)

    def expectations(
        self, cov12: torch.Tensor, var1: torch.Tensor, var2: torch.Tensor, need_derivative: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = var1 + var2
        det4 = 4 * (var1 * var2 - cov12**2)
        d = 1 + 2 * s + det4
        envelope = torch.exp(-(s + det4) / (2 * d))
        ratio = cov12 / d
        t = envelope * torch.sinh(ratio) / torch.sqrt(d)
        tdot = None
        if need_derivative:
            bracket = 4 * cov12 * (d + 1 + s) * torch.sinh(ratio) + (d + 8 * cov12**2) * torch.cosh(ratio)
            tdot = envelope * bracket / d**2.5
        return t, tdot

    def expectation_diagonal(self, var: torch.Tensor) -> torch.Tensor:
        d = 1 + 4 * var
        return -torch.expm1(-2 * var / d) / (2 * torch.sqrt(d))


# ---------------------------------------------------------------------- Sin, Cos, Rbf


class Sin(Activation):
    r"""``φ(x) = a sin(b x + c)``.

    Writing k for the covariance (c is the phase here), s = v₁ + v₂, and
    S± = exp(−b²(s/2 ∓ k)):

        T = a²/2 · (S₊ − S₋ cos 2c),     Ṫ = a²b²/2 · (S₊ + S₋ cos 2c),

    and at coincident points T = a²/2 · (1 − e^{−2b²v} cos 2c).

    Args:
        a: output scale.
        b: input scale.
        c: input phase shift.
    """

    remask = True  # NT: supports_masking(remask_kernel=True)
    hyperparameter_names = ("a", "b", "c")

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0) -> None:
        self.a, self.b, self.c = (
            check_number(type(self).__name__, n, v, allow_tensor=True) for n, v in (("a", a), ("b", b), ("c", c))
        )

    def __repr__(self) -> str:
        return getattr(self, "display_name", f"Sin(a={self.a}, b={self.b}, c={self.c})")

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.sin(self.b * x + self.c)

    def expectations(
        self, cov12: torch.Tensor, var1: torch.Tensor, var2: torch.Tensor, need_derivative: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b2, half_s = self.b**2, (var1 + var2) / 2
        plus = torch.exp(b2 * (cov12 - half_s))
        minus = torch.exp(-b2 * (cov12 + half_s)) * _cos(2 * self.c)
        t = self.a**2 / 2 * (plus - minus)
        tdot = self.a**2 * b2 / 2 * (plus + minus) if need_derivative else None
        return t, tdot

    def expectation_diagonal(self, var: torch.Tensor) -> torch.Tensor:
        return self.a**2 / 2 * (1 - torch.exp(-2 * self.b**2 * var) * _cos(2 * self.c))


def _cos(x: float | torch.Tensor) -> float | torch.Tensor:
    """cos of a number or of a 0-d tensor hyperparameter (keeping its derivative)."""
    return torch.cos(x) if isinstance(x, torch.Tensor) else math.cos(x)


def Cos(a: float = 1.0, b: float = 1.0, c: float = 0.0) -> Sin:
    """``a cos(b x + c) = a sin(b x + c + π/2)``; see `Sin`."""
    return _named(Sin(a=a, b=b, c=c + math.pi / 2), f"Cos(a={float(a)}, b={float(b)}, c={float(c)})", ("a", "b"))


class Rbf(Activation):
    r"""The dual activation of the RBF kernel: ``φ(x) = √2 sin(√(2γ) x + π/4)``.

    This is `Sin` with a = √2, b = √(2γ), c = π/4 (cos 2c = 0), so

        T = exp(−γ (v₁ + v₂ − 2c)) = exp(−γ E(u − v)²),     Ṫ = 2γ T,

    the squared-exponential kernel exp(−γ‖x − x'‖²/d) of Dense-layer inputs, and T = 1
    at coincident points.

    Args:
        gamma: inverse squared length scale, γ = 1/(2ℓ²).
    """

    remask = True  # NT: supports_masking(remask_kernel=True)
    hyperparameter_names = ("gamma",)

    def __init__(self, gamma: float = 1.0) -> None:
        self.gamma = check_number("Rbf", "gamma", gamma, minimum=0.0, allow_tensor=True)

    def __repr__(self) -> str:
        return f"Rbf(gamma={self.gamma})"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return math.sqrt(2) * torch.sin((2 * self.gamma) ** 0.5 * x + math.pi / 4)

    def expectations(
        self, cov12: torch.Tensor, var1: torch.Tensor, var2: torch.Tensor, need_derivative: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = torch.exp(self.gamma * (2 * cov12 - var1 - var2))
        return t, 2 * self.gamma * t if need_derivative else None

    def expectation_diagonal(self, var: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(var)


# ---------------------------------------------------------------------- Exp, Gaussian, ExpNormalized


class Exp(Activation):
    r"""``φ(x) = a exp(b x)`` (the log-normal moment generating function):

        T = a² exp(b²(v₁ + v₂ + 2c)/2),     Ṫ = b² T,     T(diagonal) = a² exp(2b²v).

    Args:
        a: output scale.
        b: input scale.
    """

    remask = True  # NT: supports_masking(remask_kernel=True)
    hyperparameter_names = ("a", "b")

    def __init__(self, a: float = 1, b: float = 1) -> None:
        self.a = check_number(type(self).__name__, "a", a, allow_tensor=True)
        self.b = check_number(type(self).__name__, "b", b, allow_tensor=True)

    def __repr__(self) -> str:
        return f"Exp(a={self.a}, b={self.b})"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.exp(self.b * x)

    def expectations(
        self, cov12: torch.Tensor, var1: torch.Tensor, var2: torch.Tensor, need_derivative: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = self.a**2 * torch.exp(self.b**2 * ((var1 + var2) / 2 + cov12))
        return t, self.b**2 * t if need_derivative else None

    def expectation_diagonal(self, var: torch.Tensor) -> torch.Tensor:
        return self.a**2 * torch.exp(2 * self.b**2 * var)


class Gaussian(Activation):
    r"""``φ(x) = a exp(b x²)`` (a bump for b < 0).

    With det = (1 − 2b v₁)(1 − 2b v₂) − 4b²c² (> 0 whenever b ≤ 0; for b > 0 the
    expectation exists only while det > 0 and 1 − 4b v > 0, otherwise it is ∞):

        T = a² / √det,     Ṫ = 4a²b² c / det^{3/2},     T(diagonal) = a² / √(1 − 4b v).

    Args:
        a: output scale.
        b: coefficient of x² in the exponent.
    """

    remask = True  # NT: supports_masking(remask_kernel=True)
    hyperparameter_names = ("a", "b")

    def __init__(self, a: float = 1, b: float = -1) -> None:
        self.a = check_number(type(self).__name__, "a", a, allow_tensor=True)
        self.b = check_number(type(self).__name__, "b", b, allow_tensor=True)

    def __repr__(self) -> str:
        return f"Gaussian(a={self.a}, b={self.b})"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.exp(self.b * x**2)

    def expectations(
        self, cov12: torch.Tensor, var1: torch.Tensor, var2: torch.Tensor, need_derivative: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        root = safe_sqrt((1 - 2 * self.b * var1) * (1 - 2 * self.b * var2) - 4 * self.b**2 * cov12**2)
        t = self.a**2 / root
        tdot = 4 * self.a**2 * self.b**2 * cov12 / root**3 if need_derivative else None
        return t, tdot

    def expectation_diagonal(self, var: torch.Tensor) -> torch.Tensor:
        return self.a**2 / safe_sqrt(1 - 4 * self.b * var)


class ExpNormalized(Activation):
    r"""The "Gaussian normalized kernel" (Shankar et al. 2020, p. 6); kernel only.

    Not an expectation of any φ: with q = √(v₁v₂) and ĉ = c / q (clipped to [−1, 1] if
    ``do_clip``),

        T = q exp(γ (ĉ + shift)),     Ṫ = ∂T/∂c = γ exp(γ (ĉ + shift)),

    and T = v exp(γ (1 + shift)) at coincident points. Where a variance is 0, ĉ is taken
    to be 0 (T = 0, Ṫ = γ e^{γ shift}, the limit neural-tangents reaches through a 1e-30
    floor on q²).

    Args:
        gamma: coefficient in the exponent.
        shift: added to the normalised covariance before exponentiating.
        do_clip: clip the normalised covariance to [−1, 1] (guards against rounding).
    """

    remask = True  # NT: supports_masking(remask_kernel=True)

    def __init__(self, gamma: float = 1, shift: float = -1, do_clip: bool = False) -> None:
        self.gamma, self.shift, self.do_clip = float(gamma), float(shift), bool(do_clip)

    def __repr__(self) -> str:
        return f"ExpNormalized(gamma={self.gamma}, shift={self.shift}, do_clip={self.do_clip})"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "ExpNormalized: this layer defines only an infinite-width kernel (it is not the "
            "kernel of any elementwise function), so apply_fn is undefined; use kernel_fn."
        )

    def expectations(
        self, cov12: torch.Tensor, var1: torch.Tensor, var2: torch.Tensor, need_derivative: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        q = safe_sqrt(var1 * var2)
        normalised = safe_divide(cov12, q)
        if self.do_clip:
            normalised = normalised.clamp(-1, 1)
        exp = torch.exp(self.gamma * (normalised + self.shift))
        return q * exp, self.gamma * exp if need_derivative else None

    def expectation_diagonal(self, var: torch.Tensor) -> torch.Tensor:
        return var * math.exp(self.gamma * (1 + self.shift))


# ---------------------------------------------------------------------- Sign


class Sign(Activation):
    r"""``φ(x) = sign(x)``.

    With θ = atan2(√(v₁v₂ − c²), c) (π/2 when c = v₁v₂ = 0):

        T = 1 − 2θ/π,     Ṫ = 0,

    so T = 1 at coincident points of non-zero variance and 0 where the variance is 0.
    Ṫ is set to 0 as in neural-tangents: φ' = 2δ(x) is not a function, and the
    gradient of sign is 0 almost everywhere, so the finite network's NTK is 0.
    """

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x)

    def expectations(
        self, cov12: torch.Tensor, var1: torch.Tensor, var2: torch.Tensor, need_derivative: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = 1 - 2 / math.pi * angles(cov12, var1, var2).angle
        return t, torch.zeros_like(t) if need_derivative else None

    def expectation_diagonal(self, var: torch.Tensor) -> torch.Tensor:
        return (var != 0).to(var.dtype)

