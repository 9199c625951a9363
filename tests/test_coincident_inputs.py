"""Coincident and nearly coincident inputs: exact, symmetric, positive semi-definite kernels.

Issue #12: a depth-3 ReLU network's NTK of a batch with a duplicated row was off by 1.5e-5
there, asymmetric and not PSD, because the arc-cosine fast path took θ from the clamped
cosine but √(v₁v₂ − c²) from a separate subtraction. Every angle now comes from one helper
(`tangents._numerics.angles`). The oracles here are closed forms (the diagonal recursion of
(a, b)-ReLU networks, the value of each nonlinearity at coincident points) and the
definitions (symmetry, Cauchy–Schwarz, a kernel entry does not depend on the other
examples of the batch), never earlier outputs.
"""

from __future__ import annotations

import math

import pytest
import torch

from tangents import stax
from tangents._numerics import angles, coincidence_tolerance

EPS64 = torch.finfo(torch.float64).eps
EPS32 = torch.finfo(torch.float32).eps


def _relu3() -> stax.Layer:
    return stax.serial(*[stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu()] * 3, stax.Dense(1, W_std=1.5, b_std=0.05))


def _with_duplicates(n: int, d: int, dtype: torch.dtype, pairs: list[tuple[int, int]]) -> torch.Tensor:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(12), dtype=torch.float64).to(dtype)
    for i, j in pairs:
        x[j] = x[i]
    return x


# ---------------------------------------------------------------------- the example


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_duplicated_row_of_a_relu_network_equals_its_diagonal(dtype):
    """x[2] == x[12]: K[2, 12] = K[12, 2] = K[2, 2] = K[12, 12], to rounding (they were 1.5e-5
    apart in float64, 1.7e-3 in float32), and the kernel is symmetric and PSD."""
    x = _with_duplicates(20, 10, dtype, [(2, 12)])
    k = _relu3().kernel_fn(x, None, ("nngp", "ntk"))
    eps = torch.finfo(dtype).eps
    for name in ("nngp", "ntk"):
        K = getattr(k, name)
        # The duplicate's input covariance comes from a matrix product, its diagonal from a sum
        # of squares (1 ulp apart); the NTK carries that rounding linearly: 4 ulp of headroom
        # (measured 1 ulp in float64, 0 in float32).
        assert abs(K[2, 12] - K[2, 2]) <= 4 * eps * K[2, 2], (name, float(K[2, 12] - K[2, 2]))
        assert abs(K[12, 12] - K[2, 2]) <= 4 * eps * K[2, 2], name
        assert torch.equal(K, K.T), name
        eigenvalues = torch.linalg.eigvalsh(K.double())
        assert eigenvalues.min() >= -(1e-12 if dtype == torch.float64 else 1e-5) * K.double().trace(), name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_duplicates_in_different_tiles(dtype):
    """N = 600 is computed in 256 x 256 tiles: a row duplicated into another tile meets its copy
    in an off-diagonal tile (a different matrix product), and still equals the diagonal."""
    x = _with_duplicates(600, 50, dtype, [(2, 12), (2, 599), (300, 301)])
    K = _relu3().kernel_fn(x, None, "ntk")
    eps = torch.finfo(dtype).eps
    for i, j in [(2, 12), (2, 599), (12, 599), (300, 301)]:
        # measured: 3 ulp (float32, the rounding of the input covariance carried linearly),
        # 0 (float64); before the fix 3.8e-5 (float32) and 3.9e-10 (float64).
        assert abs(K[i, j] - K[i, i]) <= 8 * eps * K[i, i], (i, j, float((K[i, j] - K[i, i]) / K[i, i]))
    assert torch.equal(K, K.T)


def test_duplicates_compiled():
    """The compiled path traces the same helper: duplicates equal the diagonal there too."""
    x = _with_duplicates(40, 10, torch.float64, [(2, 12)])
    net = stax.serial(stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(), stax.Dense(1, W_std=1.5, b_std=0.05))
    K = net.kernel_fn(x, None, "ntk", compile=True)
    assert abs(K[2, 12] - K[2, 2]) <= 4 * EPS64 * K[2, 2]  # measured 0
    assert torch.equal(K, K.T)


# ---------------------------------------------------------------------- the shared helper


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_angles_snap_within_the_tolerance_and_not_beyond(dtype):
    """cos θ within τ of ±1 gives θ = 0 (π) and sin θ = 0 exactly; twice τ away it does not."""
    tau = coincidence_tolerance(dtype)
    v = torch.tensor([2.0, 3.5, 1e-30, 1e30], dtype=dtype if dtype == torch.float64 else torch.float64)
    v = v.to(dtype).clamp_min(torch.finfo(dtype).tiny * 1e6).clamp_max(torch.finfo(dtype).max ** 0.25)
    for sign in (1.0, -1.0):
        inside = angles(sign * v * (1 - tau / 2), v, v)
        assert torch.equal(inside.sin, torch.zeros_like(v))
        assert torch.equal(inside.angle, torch.full_like(v, 0.0 if sign > 0 else math.pi))
        outside = angles(sign * v * (1 - 4 * tau), v, v)
        assert (outside.sin > 0).all() and (outside.angle - (0.0 if sign > 0 else math.pi)).abs().min() > 0


def test_angles_three_forms_agree_and_are_consistent():
    """In place (eager), functional (what the compiler traces) and differentiable forms give
    the same θ, sin θ and cos θ; sin² + cos² = 1 and θ = atan2(sin, cos) to rounding."""
    from tangents import _numerics

    g = torch.Generator().manual_seed(0)
    v1 = torch.rand(200, 1, generator=g, dtype=torch.float64) * 3 + 0.1
    v2 = torch.rand(1, 200, generator=g, dtype=torch.float64) * 3 + 0.1
    rho = torch.rand(200, 200, generator=g, dtype=torch.float64) * 2 - 1
    rho[:, :20] = 1 - 10 ** (-16 * torch.rand(200, 20, generator=g, dtype=torch.float64))  # near 1
    c = rho * (v1 * v2).sqrt()
    tau = coincidence_tolerance(torch.float64)
    q = v1.sqrt() * v2.sqrt()
    eager = _numerics._angles_in_place(c, q.expand(c.shape).contiguous(), tau)
    functional = _numerics._angles_functional(c, q, tau)
    differentiable = _numerics._angles_differentiable(c, v1, v2, tau)
    for other in (functional, differentiable):
        # the same operations, with or without autograd's safe square roots: rounding
        # (measured 0 and 4.4e-16).
        assert (eager.cos - other.cos).abs().max() <= 4 * EPS64
        assert (eager.angle - other.angle).abs().max() <= 4 * EPS64
    # cos θ itself is not rounded to ±1 on coincident points (only sin θ is set to 0), so
    # sin² + cos² falls short of 1 by up to 2τ there.
    assert ((eager.sin**2 + eager.cos**2) - 1).abs().max() <= 2 * tau + 4 * EPS64
    assert torch.equal(eager.angle, torch.atan2(eager.sin, eager.cos))


def test_relu_derivative_at_coincident_points_is_finite_and_right():
    """Under autograd: ∂T/∂c = Ṫ (Price's theorem) at c² = v₁v₂, finite, and Ṫ = 1/2 there."""
    v = torch.tensor([0.7, 2.0], dtype=torch.float64)
    c = v.clone().requires_grad_(True)
    t, tdot = stax.Relu().expectations(c, v, v, True)
    (grad,) = torch.autograd.grad(t.sum(), c)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, torch.full_like(v, 0.5), rtol=0, atol=4 * EPS64)
    torch.testing.assert_close(tdot.detach(), torch.full_like(v, 0.5), rtol=0, atol=4 * EPS64)


def _dtanh(x: torch.Tensor) -> torch.Tensor:
    return 1 - torch.tanh(x) ** 2


#: Nonlinearities whose kernel depends on the angle between the two inputs: at a covariance
#: a few ulp below √(v₁v₂) they must give what they give at coincidence.
ANGLE_LAYERS = {
    "Relu": stax.Relu,
    "ABRelu": lambda: stax.ABRelu(-0.3, 1.2),
    "LeakyRelu": lambda: stax.LeakyRelu(0.1),
    "Abs": stax.Abs,
    "Sign": stax.Sign,
    "RectifiedMonomial0": lambda: stax.RectifiedMonomial(0),
    "RectifiedMonomial2": lambda: stax.RectifiedMonomial(2),
    "Elu": stax.Elu,
    "ElementwiseNumerical": lambda: stax.ElementwiseNumerical(torch.tanh, deg=25, df=_dtanh),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(ANGLE_LAYERS))
def test_rounding_below_coincidence_gives_the_coincident_values(name, dtype):
    """c = √(v₁v₂)(1 − 4ε), the rounding a matrix product leaves on duplicated rows: T and Ṫ
    equal their values at c = √(v₁v₂) (and T the closed-form diagonal) to rounding. Before
    the fix, Ṫ of Relu moved by √(8ε)/(2π) ≈ 3.4e-9 (float64), 1.5e-4 (float32)."""
    layer = ANGLE_LAYERS[name]()
    eps = torch.finfo(dtype).eps
    v = torch.tensor([0.3, 1.0, 2.5], dtype=dtype)
    t_exact, tdot_exact = layer.expectations(v.clone(), v, v, True)
    t_near, tdot_near = layer.expectations(v * (1 - 4 * eps), v, v, True)
    diagonal = layer.expectation_diagonal(v)
    # T moves with c linearly (Ṫ ≤ 1.5 here): 4 ulp · 1.5 plus the formula's own rounding;
    # quadrature sums 25² products (ElementwiseNumerical, Elu's 2·64 nodes): 64 ulp.
    many = 64 if name in ("Elu", "ElementwiseNumerical") else 16
    assert ((t_near - t_exact).abs() <= many * eps * t_exact.abs().clamp_min(1)).all(), (t_near, t_exact)
    assert ((tdot_near - tdot_exact).abs() <= many * eps * tdot_exact.abs().clamp_min(1)).all(), (tdot_near, tdot_exact)
    assert ((t_exact - diagonal).abs() <= many * eps * diagonal.abs().clamp_min(1)).all(), (t_exact, diagonal)


# ---------------------------------------------------------------------- the property test


def _fc(activation) -> stax.Layer:  # noqa: ANN001
    return stax.serial(
        stax.Dense(64, W_std=1.5, b_std=0.05), activation(),
        stax.Dense(64, W_std=1.5, b_std=0.05), activation(),
        stax.Dense(1, W_std=1.5, b_std=0.05),
    )


def _poly(x: torch.Tensor) -> torch.Tensor:
    return x + 0.3 * x**2 - 0.1 * x**3


def _dpoly(x: torch.Tensor) -> torch.Tensor:
    return 1 + 0.6 * x - 0.3 * x**2


#: (builder, one example's shape, largest scale of a scaled row, pair tolerance float64).
ARCHITECTURES = {
    "Relu": (lambda: _fc(stax.Relu), (6,), 1e4),
    "Erf": (lambda: _fc(stax.Erf), (6,), 1e4),
    "Gelu": (lambda: _fc(stax.Gelu), (6,), 1e4),
    "ABRelu": (lambda: _fc(lambda: stax.ABRelu(-0.3, 1.2)), (6,), 1e4),
    "LeakyRelu": (lambda: _fc(lambda: stax.LeakyRelu(0.1)), (6,), 1e4),
    "Sign": (lambda: stax.serial(stax.Dense(64, W_std=1.5, b_std=0.05), stax.Sign(), stax.Dense(1)), (6,), 1e4),
    "Abs": (lambda: _fc(stax.Abs), (6,), 1e4),
    "Sin": (lambda: _fc(stax.Sin), (6,), 1e4),
    "Cos": (lambda: _fc(stax.Cos), (6,), 1e4),
    # Gauss–Hermite is exact for this cubic at any variance (its kernel grows as s¹⁸ for rows
    # scaled by s, past float32's range at s = 1e4, hence rows scaled within [0.1, 10]); for
    # tanh it is accurate only for variances up to a few (deg=25: 10% error at variance 1e8),
    # so its scaled rows stay within [1/3, 3].
    "ElementwiseNumerical_cubic": (lambda: _fc(lambda: stax.ElementwiseNumerical(_poly, deg=25, df=_dpoly)), (6,), 10.0),
    "ElementwiseNumerical_tanh": (lambda: _fc(lambda: stax.ElementwiseNumerical(torch.tanh, deg=25, df=_dtanh)), (6,), 3.0),
    "LayerNorm": (
        lambda: stax.serial(stax.Dense(64, W_std=1.5, b_std=0.05), stax.LayerNorm(), stax.Relu(), stax.Dense(1)),
        (6,),
        1e4,
    ),
    "CNN_pooling": (
        lambda: stax.serial(
            stax.Conv(8, (3, 3), padding="SAME", W_std=1.5, b_std=0.05), stax.Relu(), stax.AvgPool((2, 2)),
            stax.Conv(8, (2, 2), W_std=1.5, b_std=0.05), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1),
        ),
        (2, 4, 4),
        1e4,
    ),
    "FanOut_FanInSum_residual": (
        lambda: stax.serial(
            stax.Dense(64, W_std=1.5, b_std=0.05), stax.FanOut(2),
            stax.parallel(stax.Identity(), stax.serial(stax.Relu(), stax.Dense(64, W_std=1.5, b_std=0.05))),
            stax.FanInSum(), stax.Relu(), stax.Dense(1),
        ),
        (6,),
        1e4,
    ),
}


def _adversarial_rows(shape: tuple[int, ...], seed: int, dtype: torch.dtype, max_scale: float) -> torch.Tensor:
    """5 random rows, an exact duplicate, a near-duplicate (1e-9 relative perturbation) and two
    rows scaled by factors log-uniform in [1/max_scale, max_scale], in a random order."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(5, *shape, generator=g, dtype=torch.float64)
    near = base[1] * (1 + 1e-9 * torch.randn(shape, generator=g, dtype=torch.float64))
    scales = max_scale ** (2 * torch.rand(2, generator=g, dtype=torch.float64) - 1)
    rows = [*base, base[0].clone(), near, base[2] * scales[0], base[3] * scales[1]]
    order = torch.randperm(len(rows), generator=g).tolist()
    return torch.stack([rows[i] for i in order]).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_kernels_of_adversarial_rows_are_symmetric_psd_and_pairwise(arch, dtype):
    """Duplicated, nearly duplicated and scaled rows: for x2 = None the NNGP and NTK are
    exactly symmetric, PSD to rounding (smallest eigenvalue ≥ −1e-12 · trace in float64,
    −1e-5 · trace in float32), and every entry equals the kernel of that pair alone,
    ``kernel_fn(x[i:i+1], x[j:j+1])``, relative to √(K_ii K_jj)."""
    build, shape, max_scale = ARCHITECTURES[arch]
    layer = build()
    seed = 0 if dtype == torch.float64 else 1
    x = _adversarial_rows(shape, seed, dtype, max_scale)
    k = layer.kernel_fn(x, None, ("nngp", "ntk"))
    # Pairs alone: rounding (measured ≤ 9e-16 in float64 and 3e-7 in float32 over these
    # architectures). Quadrature treats its two inputs differently, K(a, b) ≠ K(b, a) by its
    # error, and a batch with itself gives the symmetric (K(a, b) + K(b, a))/2: the pair
    # alone is taken the same way there.
    rtol = {torch.float64: 1e-14, torch.float32: 1e-6}[dtype]
    quadrature = arch.startswith("ElementwiseNumerical")
    pairs = {}
    for i in range(len(x)):
        for j in range(i, len(x)):
            pair = layer.kernel_fn(x[i : i + 1], x[j : j + 1], ("nngp", "ntk"))
            if quadrature and i != j:
                other = layer.kernel_fn(x[j : j + 1], x[i : i + 1], ("nngp", "ntk"))
                pair = type(pair)(*((a + b) / 2 for a, b in zip(pair, other)))
            pairs[i, j] = pair
    for name in ("nngp", "ntk"):
        K = getattr(k, name)
        assert torch.equal(K, K.T), name
        eigenvalues = torch.linalg.eigvalsh(K.double())
        floor = 1e-12 if dtype == torch.float64 else 1e-5
        assert eigenvalues.min() >= -floor * K.double().trace(), (name, float(eigenvalues.min() / K.double().trace()))
        scale = torch.diagonal(K).double().abs().sqrt()
        for (i, j), pair in pairs.items():
            error = abs(float(getattr(pair, name)[0, 0]) - float(K[i, j])) / float(scale[i] * scale[j])
            assert error <= rtol, (name, i, j, error)
