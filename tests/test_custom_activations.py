"""Elementwise, ElementwiseNumerical and the named quadrature activations.

Oracles: closed forms written here (arc-cosine kernel of Relu, Williams' Erf kernel),
the closed-form layers of `tangents.stax`, adaptive scipy integration, and a high-degree
quadrature. The neural-tangents reference cases ``act_numerical_*`` run in
``test_reference_fc.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from tangents import stax
from tangents._numerics import safe_sqrt
from tangents.stax import _custom

# ---------------------------------------------------------------------- helpers


def relu_nngp(c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """Arc-cosine kernel E[relu(u) relu(v)] (Cho & Saul 2009), written independently."""
    root = safe_sqrt(v1 * v2 - c**2)
    angle = torch.atan2(root, c)
    return (root + (math.pi - angle) * c) / (2 * math.pi)


def relu_d_nngp(c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """E[1{u>0} 1{v>0}] = (π − θ) / (2π)."""
    return (math.pi - torch.atan2(safe_sqrt(v1 * v2 - c**2), c)) / (2 * math.pi)


def erf_nngp(c: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """E[erf(u) erf(v)] (Williams 1997)."""
    return 2 / math.pi * torch.asin(2 * c / torch.sqrt((1 + 2 * v1) * (1 + 2 * v2)))


def network(activation: stax.Layer, W_std: float = 1.5) -> stax.Layer:
    return stax.serial(
        stax.Dense(16, W_std=W_std, b_std=0.05),
        activation,
        stax.Dense(16, W_std=W_std, b_std=0.05),
        activation,
        stax.Dense(1, W_std=W_std, b_std=0.05),
    )


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture
def inputs():
    return torch.randn(6, 5), torch.randn(4, 5)


def grid(max_var: float = 3.0):
    """(c, v1, v2) over variances in [0.05, max_var] and correlations in [-0.999, 1]."""
    vs = [0.05, 0.4, 1.0, max_var]
    rhos = [-0.999, -0.7, -0.2, 0.0, 0.4, 0.9, 0.999, 1.0]
    rows = [(r * math.sqrt(a * b), a, b) for a in vs for b in vs for r in rhos]
    return tuple(torch.tensor(col) for col in zip(*rows))


# ---------------------------------------------------------------------- Elementwise


@pytest.mark.parametrize("x2_given", [True, False])
def test_elementwise_with_arccosine_kernel_equals_relu(inputs, x2_given):
    x1, x2 = inputs
    x2 = x2 if x2_given else None
    ours = network(stax.Elementwise(torch.relu, relu_nngp, relu_d_nngp)).kernel_fn(x1, x2)
    relu = network(stax.Relu()).kernel_fn(x1, x2)
    assert rel(ours.nngp, relu.nngp) < 1e-12
    assert rel(ours.ntk, relu.ntk) < 1e-12
    assert rel(ours.cov1, relu.cov1) < 1e-12


@pytest.mark.parametrize("x2_given", [True, False])
def test_elementwise_autodiff_ntk_equals_explicit_derivative(inputs, x2_given):
    x1, x2 = inputs
    x2 = x2 if x2_given else None
    auto = network(stax.Elementwise(torch.relu, relu_nngp)).kernel_fn(x1, x2)
    explicit = network(stax.Elementwise(torch.relu, relu_nngp, relu_d_nngp)).kernel_fn(x1, x2)
    assert rel(auto.nngp, explicit.nngp) < 1e-14
    # Price's theorem: dT/dc = E[φ'φ']; the diagonal sits at coincident points.
    assert rel(auto.ntk, explicit.ntk) < 1e-12  # measured 1e-16
    assert torch.isfinite(auto.ntk).all()


def test_elementwise_erf_autodiff_matches_closed_form_erf(inputs):
    x1, x2 = inputs
    auto = network(stax.Elementwise(torch.erf, erf_nngp)).kernel_fn(x1, x2)
    erf = network(stax.Erf()).kernel_fn(x1, x2)
    assert rel(auto.nngp, erf.nngp) < 1e-12
    assert rel(auto.ntk, erf.ntk) < 1e-12


def test_elementwise_float32(inputs):
    x1, x2 = (x.float() for x in inputs)
    out = network(stax.Elementwise(torch.erf, erf_nngp)).kernel_fn(x1, x2)
    ref = network(stax.Erf()).kernel_fn(x1.double(), x2.double())
    assert out.ntk.dtype == torch.float32
    assert rel(out.ntk.double(), ref.ntk) < 1e-5


def test_elementwise_kernel_is_differentiable_in_the_inputs(inputs):
    x1 = inputs[0][:3].clone().requires_grad_(True)

    def ntk(x):
        return network(stax.Elementwise(torch.erf, erf_nngp)).kernel_fn(x, inputs[1], "ntk")

    assert torch.autograd.gradcheck(ntk, (x1,))


class _SquareWithoutForwardMode(torch.autograd.Function):
    """x², with a backward rule only (no jvp): forces the reverse-mode fallback."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**2

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


def test_derivative_falls_back_to_reverse_mode():
    x = torch.randn(3, 4)
    value, derivative = _custom.elementwise_derivative(_SquareWithoutForwardMode.apply, x)
    assert torch.equal(value, x**2)
    assert torch.allclose(derivative, 2 * x, rtol=1e-15)
    # E[u² v²] = v1 v2 + 2 c², whose c-derivative 4c must come out through the fallback.
    layer = stax.Elementwise(
        lambda x: x**2, lambda c, v1, v2: _SquareWithoutForwardMode.apply(c) * 2 + v1 * v2
    )
    c, v1, v2 = torch.tensor([0.3, -0.5]), torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.5])
    t, tdot = layer.expectations(c, v1, v2, True)
    assert torch.allclose(t, v1 * v2 + 2 * c**2) and torch.allclose(tdot, 4 * c)


def test_elementwise_apply_is_fn():
    _, apply_fn, _ = stax.Elementwise(torch.erf, erf_nngp)
    x = torch.randn(3, 4)
    assert torch.equal(apply_fn((), x), torch.erf(x))


def test_elementwise_errors(inputs):
    with pytest.raises(ValueError, match="neither fn .* nor nngp_fn"):
        stax.Elementwise()
    with pytest.raises(TypeError, match="nngp_fn must be a function or None"):
        stax.Elementwise(torch.erf, nngp_fn=3.0)
    with pytest.raises(NotImplementedError, match="no fn was given"):
        stax.Elementwise(nngp_fn=erf_nngp).apply_fn((), torch.ones(2, 2))
    with pytest.raises(NotImplementedError, match="no nngp_fn was given"):
        network(stax.Elementwise(torch.erf)).kernel_fn(*inputs)
    with pytest.raises(ValueError, match="must be Gaussian"):
        stax.serial(stax.Dense(3), stax.Relu(), stax.Elementwise(torch.erf, erf_nngp)).kernel_fn(*inputs)


# ---------------------------------------------------------------------- ElementwiseNumerical


@pytest.mark.parametrize("x2_given", [True, False])
def test_numerical_erf_matches_closed_form(inputs, x2_given):
    """deg=50 Gauss–Hermite for erf at variances ~1 is accurate to ~1e-6 (measured 8e-7)."""
    x1, x2 = inputs
    x2 = x2 if x2_given else None
    ours = network(stax.ElementwiseNumerical(torch.erf, deg=50), W_std=1.0).kernel_fn(x1, x2)
    erf = network(stax.Erf(), W_std=1.0).kernel_fn(x1, x2)
    assert rel(ours.nngp, erf.nngp) < 1e-5
    assert rel(ours.ntk, erf.ntk) < 1e-5


def test_numerical_autodiff_derivative_equals_explicit_derivative(inputs):
    auto = network(stax.ElementwiseNumerical(torch.tanh, deg=25)).kernel_fn(*inputs)
    explicit = network(stax.ElementwiseNumerical(torch.tanh, 25, df=lambda x: 1 - torch.tanh(x) ** 2)).kernel_fn(
        *inputs
    )
    assert rel(auto.ntk, explicit.ntk) < 1e-13
    assert rel(auto.nngp, explicit.nngp) < 1e-15


@pytest.mark.parametrize(
    "var, deg, tol",
    # Measured errors: 4e-16, 6e-9, 2e-6 at deg 60; 2e-10 at deg 150 (poles of tanh at
    # ±iπ/2 slow Gauss–Hermite down as the variance grows).
    [(0.3, 60, 1e-14), (1.0, 60, 3e-8), (2.0, 60, 1e-5), (2.0, 150, 1e-9)],
)
def test_numerical_diagonal_matches_one_dimensional_integral(var, deg, tol):
    exact, _ = integrate.quad(
        lambda z: math.tanh(math.sqrt(var) * z) ** 2 * math.exp(-z * z / 2) / math.sqrt(2 * math.pi),
        -np.inf,
        np.inf,
        epsabs=1e-14,
        epsrel=1e-13,
    )
    layer = stax.ElementwiseNumerical(torch.tanh, deg=deg)
    assert abs(layer.expectation_diagonal(torch.tensor(var)).item() - exact) < tol


def test_numerical_2d_matches_adaptive_integration():
    """T and Ṫ of tanh at one correlated pair against scipy's adaptive 2-D integration."""
    c, v1, v2 = 0.6, 1.0, 1.5
    L = np.linalg.cholesky(np.array([[v1, c], [c, v2]]))

    def expect(f):
        def g(z2, z1):
            u, v = L[0, 0] * z1, L[1, 0] * z1 + L[1, 1] * z2
            return f(u) * f(v) * math.exp(-(z1 * z1 + z2 * z2) / 2) / (2 * math.pi)

        return integrate.dblquad(g, -10, 10, -10, 10, epsabs=1e-12)[0]

    t_ref = expect(math.tanh)
    tdot_ref = expect(lambda x: 1 - math.tanh(x) ** 2)
    t, tdot = stax.Tanh().expectations(torch.tensor(c), torch.tensor(v1), torch.tensor(v2), True)
    assert abs(t.item() - t_ref) < 1e-6
    assert abs(tdot.item() - tdot_ref) < 1e-5


def test_numerical_chunking_gives_identical_results(monkeypatch, inputs):
    full = network(stax.ElementwiseNumerical(torch.tanh, deg=12)).kernel_fn(*inputs)
    monkeypatch.setattr(_custom, "QUADRATURE_CHUNK", 7)  # one entry per chunk
    chunked = network(stax.ElementwiseNumerical(torch.tanh, deg=12)).kernel_fn(*inputs)
    for name in ("nngp", "ntk", "cov1", "cov2"):
        assert torch.allclose(getattr(chunked, name), getattr(full, name), rtol=1e-14, atol=0)


def test_numerical_spatial_layouts_agree():
    """Full (N, N, H, H', W, W') layout and the diagonal layout give the same diagonal."""
    x = torch.randn(3, 4, 3, 2)
    net = stax.serial(stax.Dense(8, W_std=1.2, b_std=0.1), stax.ElementwiseNumerical(torch.tanh, 20), stax.Dense(8))
    full = net.kernel_fn(x, None, diagonal_spatial=False, diagonal_batch=False)
    diag = net.kernel_fn(x, None, diagonal_spatial=True)
    assert full.nngp.shape == (3, 3, 4, 4, 3, 3)
    picked = torch.diagonal(torch.diagonal(full.nngp, 0, 2, 3), 0, 2, 3)
    assert torch.allclose(picked, diag.nngp, rtol=1e-12)
    assert torch.allclose(torch.einsum("iihhww->ihw", full.cov1), diag.cov1, rtol=1e-12)


def test_numerical_kernel_is_differentiable_in_the_inputs(inputs):
    x1 = inputs[0][:2].clone().requires_grad_(True)
    net = network(stax.ElementwiseNumerical(torch.tanh, deg=6))
    assert torch.autograd.gradcheck(lambda x: net.kernel_fn(x, inputs[1][:2], "ntk"), (x1,))


def test_numerical_errors():
    with pytest.raises(ValueError, match="deg must be a positive integer"):
        stax.ElementwiseNumerical(torch.tanh, deg=0)
    with pytest.raises(ValueError, match="deg must be a positive integer"):
        stax.ElementwiseNumerical(torch.tanh, deg=2.5)
    with pytest.raises(TypeError, match="fn must be a function"):
        stax.ElementwiseNumerical("tanh", deg=10)
    with pytest.raises(TypeError, match="df must be a function or None"):
        stax.ElementwiseNumerical(torch.tanh, deg=10, df=1.0)
    with pytest.raises(ValueError, match="deg must be a positive integer"):
        stax.Tanh(deg=-3)
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        stax.Elu(alpha=float("nan"))
    with pytest.raises(ValueError, match="Elu: deg must be a positive integer"):
        stax.Elu(deg=0)


# ---------------------------------------------------------------------- named layers

#: (layer, fn, T tolerance, Ṫ tolerance) at default degree vs a 150-point quadrature, over
#: variances <= 3; tolerances are ~3x the measured errors (see the layers' docstrings).
NAMED = [
    (stax.Tanh, torch.tanh, 3e-4, 1e-2),
    (stax.Softplus, torch.nn.functional.softplus, 1e-7, 2e-6),
    (stax.Sigmoid, torch.sigmoid, 1e-7, 1e-5),
    (stax.SiLU, lambda x: x * torch.sigmoid(x), 3e-7, 5e-6),
]


@pytest.mark.parametrize("ctor, fn, t_tol, tdot_tol", NAMED, ids=[n[0].__name__ for n in NAMED])
def test_named_layer_matches_high_degree_quadrature(ctor, fn, t_tol, tdot_tol):
    c, v1, v2 = grid()
    layer, ref = ctor(), stax.ElementwiseNumerical(fn, deg=150)
    t, tdot = layer.expectations(c, v1, v2, True)
    t_ref, tdot_ref = ref.expectations(c, v1, v2, True)
    scale_t = (ref.expectation_diagonal(v1) * ref.expectation_diagonal(v2)).sqrt()
    d1, d2 = ref.expectations(v1, v1, v1, True)[1], ref.expectations(v2, v2, v2, True)[1]
    assert ((t - t_ref).abs() / scale_t).max() < t_tol
    assert ((tdot - tdot_ref).abs() / (d1 * d2).sqrt()).max() < tdot_tol


@pytest.mark.parametrize(
    "ctor, fn",
    [(n[0], n[1]) for n in NAMED] + [(stax.Elu, torch.nn.functional.elu)],
    ids=[n[0].__name__ for n in NAMED] + ["Elu"],
)
def test_named_layer_apply_and_analytic_derivative(ctor, fn):
    layer = ctor()
    x = torch.linspace(-4, 4, 41)
    assert torch.allclose(layer.apply_fn((), x), fn(x), rtol=1e-15, atol=0)
    # The named layers' analytic φ' agrees with autodiff of φ (away from Elu's kink).
    x = x[x != 0]
    _, autodiff = _custom.elementwise_derivative(fn, x)
    assert torch.allclose(layer.df(x), autodiff, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------- Elu


def test_elu_with_alpha_zero_is_relu(inputs):
    """alpha = 0 leaves the Relu part of the formula: the arc-cosine kernel, every correlation."""
    c, v1, v2 = grid(10.0)
    t, tdot = stax.Elu(0.0).expectations(c, v1, v2, True)
    assert ((t - relu_nngp(c, v1, v2)).abs() / (v1 * v2).sqrt()).max() < 1e-12
    # At correlation 1 with v1 != v2, rounding leaves v2 - c²/v1 ~ 1e-16, so both Ṫ's are
    # step functions seen through √(rounding) ~ 1e-8 (measured difference 2e-9).
    assert torch.allclose(tdot, relu_d_nngp(c, v1, v2), rtol=1e-13, atol=1e-8)
    x1, x2 = inputs
    ours, relu = network(stax.Elu(0.0)).kernel_fn(x1, None), network(stax.Relu()).kernel_fn(x1, None)
    assert rel(ours.ntk, relu.ntk) < 1e-13


def elu_mean(alpha: float, v: float, derivative: bool) -> float:
    """E[φ(u)] or E[φ'(u)] for u ~ N(0, v), in closed form."""
    tail = math.exp(v / 2) * 0.5 * math.erfc(math.sqrt(v / 2))  # E[e^u 1{u<0}] = e^{v/2} Φ(−√v)
    if derivative:
        return 0.5 + alpha * tail
    return math.sqrt(v / (2 * math.pi)) + alpha * (tail - 0.5)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_elu_closed_forms_at_independence_and_on_the_diagonal(alpha):
    v1, v2 = torch.tensor([0.05, 1.0, 3.0, 10.0]), torch.tensor([2.0, 0.3, 10.0, 1.0])
    t, tdot = stax.Elu(alpha).expectations(torch.zeros(4), v1, v2, True)
    for i in range(4):
        a, b = v1[i].item(), v2[i].item()
        assert t[i].item() == pytest.approx(elu_mean(alpha, a, False) * elu_mean(alpha, b, False), rel=1e-13, abs=1e-15)
        assert tdot[i].item() == pytest.approx(elu_mean(alpha, a, True) * elu_mean(alpha, b, True), rel=1e-13)
    for v in (0.05, 1.0, 10.0):
        # E[φ(u)²] = v/2 + alpha² (e^{2v} Φ(−2√v) − 2 e^{v/2} Φ(−√v) + 1/2)
        phi = lambda x: 0.5 * math.erfc(x / math.sqrt(2))  # noqa: E731
        exact = v / 2 + alpha**2 * (math.exp(2 * v) * phi(2 * math.sqrt(v)) - 2 * math.exp(v / 2) * phi(math.sqrt(v)) + 0.5)
        layer = stax.Elu(alpha)
        assert layer.expectation_diagonal(torch.tensor(v)).item() == pytest.approx(exact, rel=1e-13)
        assert layer.expectations(torch.tensor(v), torch.tensor(v), torch.tensor(v), False)[0].item() == pytest.approx(
            exact, rel=1e-13
        )


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_elu_tdot_is_the_covariance_derivative_of_t(alpha):
    """Price's theorem, dT/dc = Ṫ, by central differences (T and Ṫ use different formulas)."""
    c, v1, v2 = grid(3.0)
    keep = c.abs() < 0.99 * (v1 * v2).sqrt()
    c, v1, v2 = c[keep], v1[keep], v2[keep]
    h = 1e-5 * (v1 * v2).sqrt()
    layer = stax.Elu(alpha)
    t_plus, t_minus = (layer.expectations(c + s * h, v1, v2, False)[0] for s in (1, -1))
    _, tdot = layer.expectations(c, v1, v2, True)
    assert torch.allclose((t_plus - t_minus) / (2 * h), tdot, rtol=1e-6, atol=1e-9)


def test_elu_matches_adaptive_integration():
    """Two correlated pairs against scipy's 2-D integration split at the kinks (~1e-12)."""
    for alpha, c, v1, v2 in [(0.5, 1.6454482671904334, 1.0, 3.0), (2.0, -0.8538149682454624, 3.0, 0.3)]:
        L = np.linalg.cholesky(np.array([[v1, c], [c, v2]]))

        def expect(f):
            def g(z2, z1):
                u, v = L[0, 0] * z1, L[1, 0] * z1 + L[1, 1] * z2
                return f(u) * f(v) * math.exp(-(z1 * z1 + z2 * z2) / 2) / (2 * math.pi)

            kink = lambda z1: -L[1, 0] * z1 / L[1, 1]  # noqa: E731  (v = 0)
            total = 0.0
            for lo, hi in [(-12, 0), (0, 12)]:  # u = 0
                total += integrate.dblquad(g, lo, hi, -12, kink, epsabs=1e-12)[0]
                total += integrate.dblquad(g, lo, hi, kink, 12, epsabs=1e-12)[0]
            return total

        t_ref = expect(lambda x: x if x > 0 else alpha * math.expm1(x))
        tdot_ref = expect(lambda x: 1.0 if x > 0 else alpha * math.exp(x))
        t, tdot = stax.Elu(alpha).expectations(torch.tensor(c), torch.tensor(v1), torch.tensor(v2), True)
        assert t.item() == pytest.approx(t_ref, rel=1e-9)
        assert tdot.item() == pytest.approx(tdot_ref, rel=1e-9)


def test_elu_kernel_gradient_is_finite_at_coincident_points(inputs):
    x = inputs[0].clone().requires_grad_(True)
    for layer in (stax.Elu(0.5), stax.Tanh(deg=10)):
        (grad,) = torch.autograd.grad(network(layer).kernel_fn(x, None, "ntk").sum(), x)
        assert torch.isfinite(grad).all()


def test_elu_alpha_is_used():
    x = torch.tensor([-1.0, 2.0])
    assert torch.allclose(stax.Elu(0.5).apply_fn((), x), torch.tensor([0.5 * (math.exp(-1) - 1), 2.0]))


def test_named_layers_in_a_network_float32(inputs):
    x1, x2 = (x.float() for x in inputs)
    net = network(stax.SiLU(deg=30))
    out32 = net.kernel_fn(x1, x2)
    out64 = net.kernel_fn(x1.double(), x2.double())
    assert out32.ntk.dtype == torch.float32
    assert rel(out32.ntk.double(), out64.ntk) < 1e-5
    assert repr(stax.Elu(0.5, deg=20)) == "Elu(alpha=0.5, deg=20)"
    assert repr(stax.Tanh(deg=20)) == "Tanh(deg=20)"
    out32 = network(stax.Elu(0.5)).kernel_fn(x1, x2)
    out64 = network(stax.Elu(0.5)).kernel_fn(x1.double(), x2.double())
    assert out32.ntk.dtype == torch.float32
    assert rel(out32.ntk.double(), out64.ntk) < 1e-5
