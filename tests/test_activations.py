"""Closed-form nonlinearities: T = E[φ(u)φ(v)] and Ṫ = E[φ'(u)φ'(v)] against independent integrals.

Oracles (none of them is the code's own earlier output):

* smooth φ: 2-D Gauss–Hermite quadrature with 120 nodes per axis. Its error falls
  geometrically for entire φ; the slowest here is Gabor (e^{−x²} is narrower than the
  Gauss–Hermite weight at v ≈ 1–2): 3e-9 at 80 nodes, 2e-14 at 120, 1e-15 at 200. The
  tolerance is 1e-11 of the Cauchy–Schwarz scale √(E[φ(u)²] E[φ(v)²]).
* positively homogeneous φ of degree n (Relu, LeakyRelu, ABRelu, Abs, RectifiedMonomial,
  Sign): polar coordinates. With (u, v) = L z, z = R (cos α, sin α), R² ~ χ²₂ and
  E[R^{2n}] = 2ⁿ n!, T = 2ⁿ n!/(2π) ∫₀^{2π} φ((Lω)₁) φ((Lω)₂) dα. The angular integrand is
  smooth between the angles where (Lω)₁ or (Lω)₂ changes sign, so piecewise 40-point
  Gauss–Legendre is exact to rounding: tolerance 1e-12. (2-D Gauss–Hermite would converge
  only algebraically across the kinks.)
* φ' is torch autograd of the layer's own ``fn``, itself checked against neural-tangents'
  definition of φ written out below.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reference_cases import CASES, build, load, relative_error
from tangents import stax

# (v₁, v₂, c): independent, moderate, near ±√(v₁v₂), exactly ±√(v₁v₂), unequal variances.
TRIPLES = [
    (1.0, 1.0, 0.0),
    (0.7, 1.3, 0.4),
    (0.7, 1.3, -0.6),
    (0.9, 0.9, 0.9 * (1 - 1e-7)),
    (0.9, 0.9, -0.9 * (1 - 1e-7)),
    (1.2, 1.2, 1.2),
    (0.5, 2.0, -1.0),
    (1.5, 0.4, 0.3),
]
UNIT_TRIPLES = [(1.0, 1.0, c) for c in (0.0, 0.37, -0.81, 1 - 1e-7, 1.0, -1.0)]

SMOOTH = {
    "Erf": lambda: stax.Erf(),
    "Erf_abc": lambda: stax.Erf(a=1.2, b=0.7, c=0.1),
    "Sigmoid_like": lambda: stax.Sigmoid_like(),
    "Gelu": lambda: stax.Gelu(),
    "Sin": lambda: stax.Sin(),
    "Sin_abc": lambda: stax.Sin(a=0.8, b=1.3, c=0.4),
    "Cos": lambda: stax.Cos(a=1.1, b=0.9, c=-0.3),
    "Rbf": lambda: stax.Rbf(gamma=0.5),
    "Exp": lambda: stax.Exp(a=0.7, b=0.5),
    "Gaussian": lambda: stax.Gaussian(),
    "Gaussian_b": lambda: stax.Gaussian(a=1.3, b=-0.4),
    "Gabor": lambda: stax.Gabor(),
    "Polynomial": lambda: stax.Polynomial([0.1, 0.5, 0.3]),
    "Polynomial_5": lambda: stax.Polynomial([0.3, -1.0, 0.0, 0.2, -0.5, 0.05]),
    "Monomial_0": lambda: stax.Monomial(0),
    "Monomial_1": lambda: stax.Monomial(1),
    "Monomial_4": lambda: stax.Monomial(4),
    "Monomial_7": lambda: stax.Monomial(7),
}
HERMITE = {f"Hermite_{n}": (lambda n=n: stax.Hermite(n)) for n in (0, 1, 2, 3, 5)}
# name -> (constructor, degree of homogeneity)
HOMOGENEOUS = {
    "Relu": (lambda: stax.Relu(), 1),
    "LeakyRelu": (lambda: stax.LeakyRelu(0.1), 1),
    "ABRelu": (lambda: stax.ABRelu(-0.3, 1.2), 1),
    "Abs": (lambda: stax.Abs(), 1),
    "RectifiedMonomial_0": (lambda: stax.RectifiedMonomial(0), 0),
    "RectifiedMonomial_1": (lambda: stax.RectifiedMonomial(1), 1),
    "RectifiedMonomial_2": (lambda: stax.RectifiedMonomial(2), 2),
    "RectifiedMonomial_3": (lambda: stax.RectifiedMonomial(3), 3),
    "RectifiedMonomial_5": (lambda: stax.RectifiedMonomial(5), 5),
    "Sign": (lambda: stax.Sign(), 0),
}
# Ṫ is not an ordinary expectation here: φ' has a Dirac delta (Sign = 2δ, step = δ).
# neural-tangents (and we) set Ṫ = 0, the NTK of the finite network (gradient 0 a.e.).
DISTRIBUTIONAL_DERIVATIVE = {"Sign", "RectifiedMonomial_0"}


def _derivative(fn, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((fn(x) + 0 * x).sum(), x)  # + 0 x: constant φ (Hermite(0))
    return grad.detach()


def _cholesky(v1: float, v2: float, c: float) -> tuple[float, float, float]:
    l11 = math.sqrt(v1)
    # (v₁v₂ − c²)/v₁ rather than v₂ − l₂₁²: exactly 0 for parallel inputs, not rounding noise.
    return l11, c / l11, math.sqrt(max((v1 * v2 - c * c) / v1, 0.0))


def _gauss_hermite_2d(f, g, v1: float, v2: float, c: float, deg: int = 120) -> float:
    """E[f(u) g(v)] for (u, v) ~ N(0, [[v1, c], [c, v2]]) by tensor-product Gauss–Hermite."""
    x, w = np.polynomial.hermite.hermgauss(deg)
    l11, l21, l22 = _cholesky(v1, v2, c)
    z1, z2 = np.sqrt(2) * x[:, None], np.sqrt(2) * x[None, :]
    u = torch.as_tensor(np.broadcast_to(l11 * z1, (deg, deg)).copy())
    v = torch.as_tensor(l21 * z1 + l22 * z2)
    vals = (f(u) * g(v)).numpy()
    return float((w[:, None] * w[None, :] * vals).sum() / np.pi)


def _polar(f, g, n: int, v1: float, v2: float, c: float, nodes: int = 40) -> float:
    """E[f(u) g(v)] for f, g positively homogeneous of total degree 2n, piecewise Gauss–Legendre in α."""
    l11, l21, l22 = _cholesky(v1, v2, c)
    breaks = [0.0, 2 * math.pi, math.pi / 2, 3 * math.pi / 2]
    zero2 = math.atan2(-l21, l22) % math.pi  # (Lω)₂ = l21 cos α + l22 sin α = 0
    breaks += [zero2, zero2 + math.pi]
    breaks = sorted({b for b in breaks if 0 <= b <= 2 * math.pi})
    x, w = np.polynomial.legendre.leggauss(nodes)
    total = 0.0
    for lo, hi in zip(breaks[:-1], breaks[1:]):
        if hi - lo < 1e-15:
            continue
        alpha = (hi - lo) / 2 * x + (hi + lo) / 2
        u = torch.as_tensor(l11 * np.cos(alpha))
        v = torch.as_tensor(l21 * np.cos(alpha) + l22 * np.sin(alpha))
        total += (hi - lo) / 2 * float((w * (f(u) * g(v)).numpy()).sum())
    return 2**n * math.factorial(n) / (2 * math.pi) * total


def _ours(layer, v1: float, v2: float, c: float) -> tuple[float, float]:
    t, tdot = layer.expectations(torch.tensor(c), torch.tensor(v1), torch.tensor(v2), True)
    return float(t), float(tdot)


# ---------------------------------------------------------------------- T, Ṫ against quadrature


@pytest.mark.parametrize("name", sorted(SMOOTH) + sorted(HERMITE))
def test_smooth_expectations_match_gauss_hermite(name):
    layer = {**SMOOTH, **HERMITE}[name]()
    triples = UNIT_TRIPLES if name.startswith("Hermite") else TRIPLES
    fn = layer.fn
    dfn = lambda x: _derivative(fn, x)  # noqa: E731
    for v1, v2, c in triples:
        t, tdot = _ours(layer, v1, v2, c)
        ref_t = _gauss_hermite_2d(fn, fn, v1, v2, c)
        ref_tdot = _gauss_hermite_2d(dfn, dfn, v1, v2, c)
        scale_t = math.sqrt(_gauss_hermite_2d(lambda x: fn(x) ** 2, lambda x: 1 + 0 * x, v1, v2, c)
                            * _gauss_hermite_2d(lambda x: 1 + 0 * x, lambda x: fn(x) ** 2, v1, v2, c))
        scale_d = math.sqrt(_gauss_hermite_2d(lambda x: dfn(x) ** 2, lambda x: 1 + 0 * x, v1, v2, c)
                            * _gauss_hermite_2d(lambda x: 1 + 0 * x, lambda x: dfn(x) ** 2, v1, v2, c))
        assert abs(t - ref_t) <= 1e-11 * max(scale_t, 1e-300), (v1, v2, c, t, ref_t)
        assert abs(tdot - ref_tdot) <= 1e-11 * max(scale_d, 1e-12), (v1, v2, c, tdot, ref_tdot)


@pytest.mark.parametrize("name", sorted(HOMOGENEOUS))
def test_homogeneous_expectations_match_polar_quadrature(name):
    make, n = HOMOGENEOUS[name]
    layer = make()
    fn = layer.fn
    dfn = lambda x: _derivative(fn, x)  # noqa: E731
    for v1, v2, c in TRIPLES:
        t, tdot = _ours(layer, v1, v2, c)
        ref_t = _polar(fn, fn, n, v1, v2, c)
        scale = math.sqrt(_polar(lambda x: fn(x) ** 2, lambda x: 0 * x + 1, n, v1, v2, c)
                          * _polar(lambda x: 0 * x + 1, lambda x: fn(x) ** 2, n, v1, v2, c))
        assert math.isfinite(t) and math.isfinite(tdot)
        assert abs(t - ref_t) <= 1e-12 * scale, (v1, v2, c, t, ref_t)
        if name in DISTRIBUTIONAL_DERIVATIVE:
            assert tdot == 0.0
        else:
            ref_tdot = _polar(dfn, dfn, n - 1, v1, v2, c)
            scale_d = math.sqrt(_polar(lambda x: dfn(x) ** 2, lambda x: 0 * x + 1, n - 1, v1, v2, c)
                                * _polar(lambda x: 0 * x + 1, lambda x: dfn(x) ** 2, n - 1, v1, v2, c))
            assert abs(tdot - ref_tdot) <= 1e-12 * scale_d, (v1, v2, c, tdot, ref_tdot)


ALL = {**SMOOTH, **HERMITE, **{k: v[0] for k, v in HOMOGENEOUS.items()},
       "ExpNormalized": lambda: stax.ExpNormalized(gamma=0.8, shift=-0.5)}


@pytest.mark.parametrize("name", sorted(ALL))
def test_diagonal_form_agrees_with_coincident_points(name):
    """``expectation_diagonal(v)`` is T at u = v (exact forms agree with the general one)."""
    layer = ALL[name]()
    var = torch.tensor([0.0, 1e-3, 0.3, 1.0, 2.5]) if not name.startswith("Hermite") else torch.ones(3)
    diag = layer.expectation_diagonal(var)
    general = layer.expectations(var, var, var, False)[0]
    assert torch.isfinite(diag).all()
    torch.testing.assert_close(diag, general, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_nan_at_zero_variance_or_covariance(name):
    layer = ALL[name]()
    zero = torch.zeros(3)
    var = torch.tensor([0.0, 1.0, 0.0])
    for c, v1, v2 in ((zero, zero, zero), (zero, var, var.flip(0)), (zero, torch.ones(3), torch.ones(3))):
        t, tdot = layer.expectations(c, v1, v2, True)
        assert torch.isfinite(t).all() and torch.isfinite(tdot).all()
    assert torch.isfinite(layer.expectation_diagonal(zero)).all()


def test_rbf_is_the_squared_exponential_kernel():
    x1 = torch.randn(5, 7)
    x2 = torch.randn(3, 7)
    gamma = 0.3
    net = stax.serial(stax.Dense(4, W_std=1.0, b_std=None), stax.Rbf(gamma))
    nngp = net.kernel_fn(x1, x2, "nngp")
    expected = torch.exp(-gamma * torch.cdist(x1, x2) ** 2 / 7)
    torch.testing.assert_close(nngp, expected, rtol=1e-13, atol=0)


# ---------------------------------------------------------------------- polynomial identities


def _nt_monomial(c, p, degree):
    """neural-tangents' hard-coded E[u^d v^d] with p = v₁v₂ (degrees -1..5)."""
    return {
        -1: 0 * c, 0: 1 + 0 * c, 1: c, 2: 2 * c**2 + p, 3: 6 * c**3 + 9 * c * p,
        4: 3 * (8 * c**4 + 3 * p * (8 * c**2 + p)),
        5: 15 * c * (8 * c**4 + 5 * p * (8 * c**2 + 3 * p)),
    }[degree]


@pytest.mark.parametrize("degree", range(6))
def test_monomial_matches_closed_forms(degree):
    c = torch.tensor([-1.3, -0.2, 0.0, 0.5, 1.1])
    v1, v2 = torch.tensor([1.4, 0.3, 2.0, 0.6, 1.1]), torch.tensor([1.3, 0.5, 0.1, 0.9, 1.1])
    t, tdot = stax.Monomial(degree).expectations(c, v1, v2, True)
    torch.testing.assert_close(t, _nt_monomial(c, v1 * v2, degree), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(tdot, degree**2 * _nt_monomial(c, v1 * v2, degree - 1), rtol=1e-13, atol=1e-13)
    poly = stax.Polynomial([0.0] * degree + [1.0]).expectations(c, v1, v2, True)
    torch.testing.assert_close(poly[0], t, rtol=1e-13, atol=1e-13)
    diag = stax.Monomial(degree).expectation_diagonal(v1)
    torch.testing.assert_close(diag, math.prod(range(2 * degree - 1, 0, -2)) * v1**degree, rtol=1e-13, atol=0)


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 6])
def test_hermite_is_orthonormal_and_gives_c_to_the_n(degree):
    layer = stax.Hermite(degree)
    x, w = np.polynomial.hermite_e.hermegauss(60)  # weight e^{-x²/2}: E over N(0, 1) up to √(2π)
    he = layer.fn(torch.as_tensor(x)).numpy()
    for m in range(5):
        other = stax.Hermite(m).fn(torch.as_tensor(x)).numpy()
        assert abs((w * he * other).sum() / math.sqrt(2 * math.pi) - float(m == degree)) < 1e-12
    c = torch.linspace(-1, 1, 9)
    t, tdot = layer.expectations(c, torch.ones(9), torch.ones(9), True)
    torch.testing.assert_close(t, c**degree, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(tdot, degree * c ** max(degree - 1, 0) * (degree > 0), rtol=1e-14, atol=1e-15)


def test_hermite_warns_for_non_unit_variances():
    net = stax.serial(stax.Dense(3, W_std=2.0), stax.Hermite(2))
    with pytest.warns(UserWarning, match=r"Hermite.*unit-variance.*LayerNorm"):
        net.kernel_fn(torch.randn(2, 4), None, "nngp")


def test_cos_is_sin_shifted_by_a_quarter_period():
    c, v1, v2 = torch.tensor([0.3, -0.4]), torch.tensor([1.0, 0.5]), torch.tensor([0.6, 0.9])
    cos = stax.Cos(a=1.1, b=0.9, c=-0.3).expectations(c, v1, v2, True)
    sin = stax.Sin(a=1.1, b=0.9, c=-0.3 + math.pi / 2).expectations(c, v1, v2, True)
    torch.testing.assert_close(cos, sin, rtol=1e-15, atol=1e-15)
    assert "Cos" in repr(stax.Cos())


def test_exp_normalized_formula_and_derivative():
    """T = q exp(γ(c/q + shift)), q = √(v₁v₂) (NT's definition); Ṫ = ∂T/∂c."""
    gamma, shift = 0.8, -0.5
    layer = stax.ExpNormalized(gamma=gamma, shift=shift)
    c = torch.tensor([0.3, -0.9, 1.0, 1.2], requires_grad=True)
    v1, v2 = torch.tensor([1.0, 0.9, 1.0, 1.0]), torch.tensor([0.5, 1.0, 1.0, 1.0])
    q = torch.sqrt(v1 * v2)
    t, tdot = layer.expectations(c, v1, v2, True)
    torch.testing.assert_close(t, q * torch.exp(gamma * (c / q + shift)), rtol=1e-14, atol=0)
    (grad,) = torch.autograd.grad(t.sum(), c)
    torch.testing.assert_close(tdot, grad, rtol=1e-14, atol=0)
    clipped = stax.ExpNormalized(gamma=gamma, shift=shift, do_clip=True).expectations(c.detach(), v1, v2, False)[0]
    assert float(clipped[-1].detach()) == pytest.approx(math.exp(gamma * (1 + shift)), rel=1e-14)


# ---------------------------------------------------------------------- finite width: φ as NT defines it


def _phi(x):
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


NT_FUNCTIONS = {
    "Gelu()": (lambda: stax.Gelu(), lambda x: x * _phi(x)),
    "Gelu(True)": (lambda: stax.Gelu(approximate=True),
                   lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))),
    "Sin": (lambda: stax.Sin(0.8, 1.3, 0.4), lambda x: 0.8 * torch.sin(1.3 * x + 0.4)),
    "Cos": (lambda: stax.Cos(0.8, 1.3, 0.4), lambda x: 0.8 * torch.cos(1.3 * x + 0.4)),
    "Rbf": (lambda: stax.Rbf(0.5), lambda x: math.sqrt(2) * torch.sin(math.sqrt(2 * 0.5) * x + math.pi / 4)),
    "Exp": (lambda: stax.Exp(0.7, 0.5), lambda x: 0.7 * torch.exp(0.5 * x)),
    "Gaussian": (lambda: stax.Gaussian(1.3, -0.4), lambda x: 1.3 * torch.exp(-0.4 * x**2)),
    "Gabor": (lambda: stax.Gabor(), lambda x: torch.exp(-(x**2)) * torch.sin(x)),
    "Sign": (lambda: stax.Sign(), torch.sign),
    "Monomial": (lambda: stax.Monomial(3), lambda x: x**3),
    "RectifiedMonomial": (lambda: stax.RectifiedMonomial(2), lambda x: (x >= 0) * x**2),
    "RectifiedMonomial0": (lambda: stax.RectifiedMonomial(0), lambda x: (x >= 0) * x**0),
    "Polynomial": (lambda: stax.Polynomial([0.1, 0.5, 0.3]),
                   lambda x: torch.as_tensor(np.polynomial.polynomial.polyval(x.numpy(), [0.1, 0.5, 0.3]))),
    "Hermite": (lambda: stax.Hermite(4),  # NT: polyval(herme2poly([0] * n + [1])) / √(n!)
                lambda x: torch.as_tensor(np.polynomial.hermite_e.hermeval(x.numpy(), [0] * 4 + [1])) / math.sqrt(24)),
    "Erf": (lambda: stax.Erf(1.2, 0.7, 0.1), lambda x: 1.2 * torch.erf(0.7 * x) + 0.1),
    "ABRelu": (lambda: stax.ABRelu(-0.3, 1.2), lambda x: -0.3 * torch.clamp(x, max=0) + 1.2 * torch.clamp(x, min=0)),
}


@pytest.mark.parametrize("name", sorted(NT_FUNCTIONS))
def test_apply_matches_neural_tangents_definition(name):
    make, reference = NT_FUNCTIONS[name]
    x = torch.cat([torch.linspace(-3, 3, 25), torch.tensor([0.0, -0.0])]).reshape(3, 9)
    _, apply_fn, _ = make()
    torch.testing.assert_close(apply_fn((), x), reference(x).to(x.dtype), rtol=1e-14, atol=1e-15)


def test_exp_normalized_has_no_finite_width_function():
    with pytest.raises(NotImplementedError, match="ExpNormalized.*only an infinite-width kernel"):
        stax.ExpNormalized().apply_fn((), torch.ones(2, 3))


# ---------------------------------------------------------------------- whole networks


def _rectified_diagonal(x: np.ndarray, arch: dict) -> tuple[np.ndarray, np.ndarray]:
    """Self-kernel diagonal of Dense/RectifiedMonomial nets (NTK parameterisation) in closed form:
    Dense v' = σ_W² v + σ_b², Θ' = v' + σ_W² Θ; RectifiedMonomial(n):
    v' = (2n−1)!! vⁿ/2, Θ' = n² (2n−3)!! v^{n−1}/2 · Θ (0 for n = 0)."""
    v, t = (x * x).sum(1) / x.shape[1], np.zeros(len(x))
    dfact = lambda k: math.prod(range(k, 0, -2))  # noqa: E731
    for layer in arch["layers"]:
        if layer["type"] == "Dense":
            v = layer["W_std"] ** 2 * v + layer["b_std"] ** 2
            t = v + layer["W_std"] ** 2 * t
        else:
            n = layer["degree"]
            tdot = 0 * v if n == 0 else n**2 * dfact(2 * n - 3) * v ** (n - 1) / 2
            v, t = dfact(2 * n - 1) * v**n / 2, tdot * t
    return v, t


@pytest.mark.parametrize("case_id", ["act_rectmonomial0", "act_rectmonomial2"])
def test_rectified_monomial_network_is_finite_and_exact_on_the_diagonal(case_id):
    """neural-tangents is NaN (or rounding noise) on coincident points; ours is the limit."""
    case, ref = CASES[case_id], load(case_id)
    out = build(case["arch"]).kernel_fn(ref["x1"], None, ("nngp", "ntk"))
    off = ~np.eye(len(ref["x1"]), dtype=bool)
    v, t = _rectified_diagonal(ref["x1"], case["arch"])
    for name, diag in (("nngp", v), ("ntk", t)):
        ours = getattr(out, name)
        assert torch.isfinite(ours).all()
        assert relative_error(ours[off], ref[f"{name}_self"][off]) <= 1e-12
        np.testing.assert_allclose(np.diag(ours.numpy()), diag, rtol=1e-13)


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_rectified_monomial_diagonal_against_hermgauss(degree):
    """E[φ(u)²] = E[u^{2n}; u ≥ 0] = E[u^{2n}]/2 by symmetry, by 1-D Gauss–Hermite (exact here)."""
    x, w = np.polynomial.hermite.hermgauss(30)
    var = torch.tensor([0.3, 1.0, 2.2])
    expected = [(w * (np.sqrt(2 * s) * x) ** (2 * degree)).sum() / math.sqrt(math.pi) / 2 for s in var.tolist()]
    layer = stax.RectifiedMonomial(degree)
    torch.testing.assert_close(layer.expectation_diagonal(var), torch.tensor(expected), rtol=1e-13, atol=0)
    torch.testing.assert_close(layer.expectations(var, var, var, False)[0], torch.tensor(expected), rtol=1e-13, atol=0)


@pytest.mark.parametrize("name", sorted(ALL))
def test_networks_are_finite_with_a_zero_input(name):
    """A zero input row with no bias gives zero variances (NT: NaN for Polynomial, RectifiedMonomial)."""
    x = torch.randn(3, 5)
    x[1] = 0
    if name.startswith("Hermite"):
        net = stax.serial(stax.Dense(8, b_std=None), ALL[name](), stax.Dense(1))
        with pytest.warns(UserWarning, match="unit-variance"):
            out = net.kernel_fn(x, None, ("nngp", "ntk"))
    else:
        net = stax.serial(stax.Dense(8, b_std=None), ALL[name](), stax.Dense(1))
        out = net.kernel_fn(x, None, ("nngp", "ntk"))
    assert torch.isfinite(out.nngp).all() and torch.isfinite(out.ntk).all()


def test_activation_needs_gaussian_input():
    net = stax.serial(stax.Dense(3), stax.Gelu(), stax.Sin())
    with pytest.raises(ValueError, match="Sin.*must be Gaussian"):
        net.kernel_fn(torch.randn(2, 4))


# ---------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: stax.Monomial(-1), r"Monomial: degree must be a non-negative integer, got -1"),
        (lambda: stax.Monomial(2.5), r"Monomial: degree must be a non-negative integer, got 2.5"),
        (lambda: stax.Hermite(-2), r"Hermite: degree must be a non-negative integer"),
        (lambda: stax.RectifiedMonomial(True), r"RectifiedMonomial: degree must be a non-negative integer"),
        (lambda: stax.Polynomial([[1.0, 2.0]]), r"Polynomial: coef must be a flat sequence"),
        (lambda: stax.Polynomial([1.0, float("nan")]), r"Polynomial: coef must be a flat sequence"),
        (lambda: stax.Polynomial(["a", 1.0]), r"Polynomial: coef must be a flat sequence"),
    ],
)
def test_bad_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_defaults_match_neural_tangents():
    assert (stax.Sin().a, stax.Sin().b, stax.Sin().c) == (1.0, 1.0, 0.0)
    assert stax.Rbf().gamma == 1.0
    assert (stax.Exp().a, stax.Exp().b) == (1.0, 1.0)
    assert (stax.Gaussian().a, stax.Gaussian().b) == (1.0, -1.0)
    e = stax.ExpNormalized()
    assert (e.gamma, e.shift, e.do_clip) == (1.0, -1.0, False)
    assert stax.Gelu().approximate is False
