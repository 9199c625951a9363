"""`stax.Hardtanh` (clip(x, lo, hi); ReLU6 = Hardtanh(0, 6)) and the lift's Hardsigmoid and Hardswish built on it.

Oracles: adaptive scipy integration of the Gaussian expectation written here with
`scipy.stats` (independent of the layer's torch code), the closed forms at correlation 0
(product of one-dimensional expectations) and ±1, and the limits of wide bounds: Hardtanh(0,
big) is ReLU (arc-cosine kernel, `stax.Relu`) and Hardtanh(−big, big) the identity.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from tangents import stax


def scipy_expectations(lo: float, hi: float, v1: float, v2: float, c: float) -> tuple[float, float]:
    """(E[clip(u) clip(v)], E[clip'(u) clip'(v)]) for (u, v) ~ N(0, [[v1, c], [c, v2]]) by adaptive quad.

    The inner expectation over v | u ~ N(m, s²) is the truncated-normal formula (scipy.stats);
    the outer integral over u is adaptive, with breakpoints at the kinks.
    """
    sd = math.sqrt(v1)
    s = math.sqrt(max(v2 - c * c / v1, 0.0))

    def inner(u: float) -> tuple[float, float]:
        m = c / v1 * u
        a, b = (lo - m) / s, (hi - m) / s
        mass = stats.norm.cdf(b) - stats.norm.cdf(a)
        g = lo * stats.norm.cdf(a) + hi * stats.norm.sf(b) + m * mass + s * (stats.norm.pdf(a) - stats.norm.pdf(b))
        return stats.norm.pdf(u, scale=sd) * min(max(u, lo), hi) * g, stats.norm.pdf(u, scale=sd) * (lo < u < hi) * mass

    edge = 12 * sd
    points = [p for p in (lo, hi, lo * v1 / c, hi * v1 / c) if -edge < p < edge] if c else [lo, hi]
    kw = dict(points=sorted(points), limit=400, epsabs=1e-14, epsrel=1e-13)
    return (integrate.quad(lambda u: inner(u)[0], -edge, edge, **kw)[0],
            integrate.quad(lambda u: inner(u)[1], -edge, edge, **kw)[0])


def diagonal(lo: float, hi: float, v: float) -> float:
    """E[clip(u)²], u ~ N(0, v), by adaptive quad."""
    sd = math.sqrt(v)
    f = lambda u: stats.norm.pdf(u, scale=sd) * min(max(u, lo), hi) ** 2  # noqa: E731
    return integrate.quad(f, -12 * sd, 12 * sd, points=[lo, hi], limit=200, epsabs=1e-14, epsrel=1e-13)[0]


CASES = [(lo, hi, v1, v2, rho) for (lo, hi) in ((-1.0, 1.0), (0.0, 6.0), (-0.5, 2.0), (-50.0, 50.0))
         for (v1, v2, rho) in ((0.05, 0.3, 0.4), (1.0, 2.0, -0.7), (3.0, 10.0, 0.995), (7.0, 0.5, 0.0))]


@pytest.mark.parametrize(("lo", "hi", "v1", "v2", "rho"), CASES)
def test_expectations_match_adaptive_scipy_integration(lo, hi, v1, v2, rho):  # noqa: ANN001
    c = rho * math.sqrt(v1 * v2)
    t, tdot = stax.Hardtanh(lo, hi).expectations(torch.tensor(c), torch.tensor(v1), torch.tensor(v2), True)
    t_ref, tdot_ref = scipy_expectations(lo, hi, v1, v2, c)
    scale = math.sqrt(diagonal(lo, hi, v1) * diagonal(lo, hi, v2))
    # measured over these cases and 45 random ones: ≤ 1e-14 (T, relative) and ≤ 4e-15 (Ṫ); scipy's
    # own tolerance is 1e-13, so 1e-12 leaves room for platform rounding only
    assert abs(t.item() - t_ref) <= 1e-12 * scale
    assert abs(tdot.item() - tdot_ref) <= 1e-12


@pytest.mark.parametrize(("lo", "hi"), [(-1.0, 1.0), (0.0, 6.0), (-0.5, 2.0)])
def test_diagonal_and_correlation_limits_in_closed_form(lo, hi):  # noqa: ANN001
    layer = stax.Hardtanh(lo, hi)
    v = torch.tensor([0.05, 1.0, 9.0])
    # E[clip(u)²] in closed form vs quad: measured 1e-16 relative
    expected = torch.tensor([diagonal(lo, hi, float(x)) for x in v])
    torch.testing.assert_close(layer.expectation_diagonal(v), expected, rtol=1e-12, atol=0)
    # correlation +1 is the diagonal (u = v); the conditional variance is exactly 0 there
    t, tdot = layer.expectations(v, v, v, True)
    torch.testing.assert_close(t, expected, rtol=1e-12, atol=0)
    inside = torch.tensor([stats.norm.cdf(hi / math.sqrt(x)) - stats.norm.cdf(lo / math.sqrt(x)) for x in v])
    torch.testing.assert_close(tdot, inside, rtol=1e-12, atol=1e-15)
    # correlation 0: product of the one-dimensional means E[clip(u)] E[clip(v)]
    mean = lambda x: integrate.quad(  # noqa: E731
        lambda u: stats.norm.pdf(u, scale=math.sqrt(x)) * min(max(u, lo), hi), -12 * math.sqrt(x),
        12 * math.sqrt(x), points=[lo, hi], epsabs=1e-15, epsrel=1e-13)[0]
    t0, tdot0 = layer.expectations(torch.tensor(0.0), torch.tensor(2.0), torch.tensor(0.5), True)
    assert abs(t0.item() - mean(2.0) * mean(0.5)) <= 1e-13  # measured 2e-16
    p = lambda x: stats.norm.cdf(hi / math.sqrt(x)) - stats.norm.cdf(lo / math.sqrt(x))  # noqa: E731
    assert abs(tdot0.item() - p(2.0) * p(0.5)) <= 1e-13  # measured 1e-16


def _network(activation: stax.Layer) -> stax.Layer:
    return stax.serial(stax.Dense(64, W_std=1.3, b_std=0.2), activation, stax.Dense(3, W_std=0.9, b_std=0.1))


def test_wide_bounds_are_relu_and_identity_in_a_network():
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    for hardtanh, twin in ((stax.Hardtanh(0.0, 1e3), stax.Relu()), (stax.Hardtanh(-1e3, 1e3), stax.Identity())):
        ours = _network(hardtanh).kernel_fn(x, None, ("nngp", "ntk"))
        theirs = _network(twin).kernel_fn(x, None, ("nngp", "ntk"))
        # pre-activation variances ≤ 10 here: the bound at 1e3 is > 300 sd away (mass < 1e-9000);
        # measured differences ≤ 1e-14 (before the fixed cuts at 0, ±4 sd: 5e-5, one 24-sd piece)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_elementwise_and_repr():
    layer = stax.Hardtanh(0.0, 6.0)
    x = torch.tensor([-2.0, 0.5, 7.0])
    assert torch.equal(layer.fn(x), torch.tensor([0.0, 0.5, 6.0]))
    assert repr(layer) == "Hardtanh(min_val=0, max_val=6)"
    # the empty kernel: nothing to integrate, shapes kept
    t, tdot = layer.expectations(torch.zeros(0), torch.zeros(0), torch.zeros(0), True)
    assert t.shape == tdot.shape == (0,)
    assert np.isfinite(layer.expectation_diagonal(torch.tensor([0.0])).item())


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match=r"Hardtanh: max_val must be greater than min_val, got min_val=1, max_val=1"):
        stax.Hardtanh(1, 1)
    with pytest.raises(ValueError, match=r"Hardtanh: deg must be an integer >= 2"):
        stax.Hardtanh(deg=1)
    with pytest.raises((ValueError, TypeError), match=r"Hardtanh.*min_val"):
        stax.Hardtanh(float("nan"), 1.0)


def _hardsigmoid_scipy(v1: float, v2: float, c: float) -> tuple[float, float]:
    """E[hs(u) hs(v)] and E[hs'(u) hs'(v)], hs(x) = clip(x/6 + ½, 0, 1), by adaptive quad.

    Written directly for hs: given u, w = v/6 + ½ ~ N(m/6 + ½, s²/36), clipped to [0, 1].
    """
    sd = math.sqrt(v1)
    s = math.sqrt(max(v2 - c * c / v1, 0.0)) / 6

    def inner(u: float) -> tuple[float, float]:
        m = c / v1 * u / 6 + 0.5
        a, b = -m / s, (1 - m) / s
        mass = stats.norm.cdf(b) - stats.norm.cdf(a)
        g = stats.norm.sf(b) + m * mass + s * (stats.norm.pdf(a) - stats.norm.pdf(b))
        density = stats.norm.pdf(u, scale=sd)
        return density * min(max(u / 6 + 0.5, 0.0), 1.0) * g, density * (-3 < u < 3) / 36 * mass

    edge = 12 * sd
    points = sorted(p for p in (-3.0, 3.0, -3 * v1 / c, 3 * v1 / c) if -edge < p < edge)
    kw = dict(points=points, limit=400, epsabs=1e-14, epsrel=1e-13)
    return (integrate.quad(lambda u: inner(u)[0], -edge, edge, **kw)[0],
            integrate.quad(lambda u: inner(u)[1], -edge, edge, **kw)[0])


@pytest.mark.parametrize(("v1", "v2", "rho"), [(0.5, 2.0, 0.3), (4.0, 9.0, -0.8), (20.0, 15.0, 0.99)])
def test_lifted_hardsigmoid_is_shifted_hardtanh_in_closed_form(v1, v2, rho):  # noqa: ANN001
    from torch import nn

    from tangents.lift import from_torch

    layer = from_torch(nn.Sequential(nn.Linear(3, 4), nn.Hardsigmoid(), nn.Linear(4, 1)), torch.randn(2, 3)).nodes[1].layer
    assert repr(layer) == "Hardsigmoid()"
    c = rho * math.sqrt(v1 * v2)
    t, tdot = layer.expectations(torch.tensor(c), torch.tensor(v1), torch.tensor(v2), True)
    t_ref, tdot_ref = _hardsigmoid_scipy(v1, v2, c)
    # measured ≤ 6e-16 (T of order 0.3) and ≤ 1e-16 (Ṫ ≤ 1/36); the Gauss–Hermite quadrature
    # it replaces erred by ~1e-4 and ~1e-2 relative
    assert abs(t.item() - t_ref) <= 1e-13
    assert abs(tdot.item() - tdot_ref) <= 1e-13
    x = torch.tensor([-4.0, 0.0, 1.5, 4.0])
    assert torch.equal(layer.fn(x), torch.nn.functional.hardsigmoid(x))


def _hardswish(x: float) -> float:
    return 0.0 if x <= -3 else (x if x >= 3 else x * (x + 3) / 6)


def _hardswish_derivative(x: float) -> float:
    return 0.0 if x <= -3 else (1.0 if x >= 3 else (2 * x + 3) / 6)


def _hardswish_scipy(v1: float, v2: float, c: float) -> tuple[float, float]:
    """E[φ(u) φ(v)], E[φ'(u) φ'(v)] for hardswish by nested adaptive quad (no conditional formula).

    (u, v) = (√v1 z1, c/√v1 z1 + s z2) with z1, z2 independent standard normals.
    """
    s, r = math.sqrt(max(v2 - c * c / v1, 0.0)), math.sqrt(v1)
    k = c / r
    out = []
    for f in (_hardswish, _hardswish_derivative):
        def inner(z1: float, f=f) -> float:  # noqa: ANN001
            points = sorted(p for p in ((-3 - k * z1) / s, (3 - k * z1) / s) if -10 < p < 10)
            g = integrate.quad(lambda z2: stats.norm.pdf(z2) * f(k * z1 + s * z2), -10, 10, points=points,
                               epsabs=1e-13, epsrel=1e-12, limit=200)[0]
            return stats.norm.pdf(z1) * f(r * z1) * g

        points = sorted(p for p in (-3 / r, 3 / r) if -10 < p < 10)
        out.append(integrate.quad(inner, -10, 10, points=points, epsabs=1e-12, epsrel=1e-11, limit=200)[0])
    return out[0], out[1]


@pytest.mark.parametrize(("v1", "v2", "rho"), [(20.0, 15.0, 0.9)])  # all pieces of both variables
def test_lifted_hardswish_matches_nested_scipy_integration(v1, v2, rho):  # noqa: ANN001
    from torch import nn

    from tangents.lift import from_torch

    layer = from_torch(nn.Sequential(nn.Linear(3, 4), nn.Hardswish(), nn.Linear(4, 1)), torch.randn(2, 3)).nodes[1].layer
    assert repr(layer) == "Hardswish()"
    c = rho * math.sqrt(v1 * v2)
    t, tdot = layer.expectations(torch.tensor(c), torch.tensor(v1), torch.tensor(v2), True)
    t_ref, tdot_ref = _hardswish_scipy(v1, v2, c)
    # measured 3e-14 (T ≈ 7.65), 2e-15 (Ṫ), and 5e-16 at (0.5, 2, 0.3); scipy's nested tolerance is 1e-11
    # relative: the tolerance is set above it. The 120-node Gauss–Hermite it replaces erred by ~1e-4.
    assert abs(t.item() - t_ref) <= 1e-10 * max(1.0, abs(t_ref))
    assert abs(tdot.item() - tdot_ref) <= 1e-10
    var = torch.tensor([v1])
    diagonal = integrate.quad(lambda u: stats.norm.pdf(u, scale=math.sqrt(v1)) * _hardswish(u) ** 2,
                              -12 * math.sqrt(v1), 12 * math.sqrt(v1), points=[-3, 3], epsabs=1e-14, epsrel=1e-13)[0]
    assert abs(layer.expectation_diagonal(var).item() - diagonal) <= 1e-12 * diagonal  # measured 2e-15 relative
    x = torch.tensor([-4.0, -1.0, 1.5, 4.0])
    assert torch.equal(layer.fn(x), torch.nn.functional.hardswish(x))
