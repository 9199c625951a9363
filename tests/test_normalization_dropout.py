"""LayerNorm and Dropout: finite-width statistics, closed-form kernels, errors.

Oracles: covariances written out here with einsum from the inputs (Dense's kernel is
σ_W² x·x'/d + σ_b²), Monte Carlo over one very wide layer or many dropout masks with
tolerances from their standard errors. The neural-tangents cases ``layernorm_fc`` and
``dropout_fc`` run in ``test_reference_fc.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from tangents import stax

W_STD, B_STD = 1.5, 0.05


def dense_cov(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Σ after Dense(W_STD, B_STD) on channels-last inputs ``(N, *S, C)``, full spatial layout."""
    d = x1.shape[-1]
    s = x1.ndim - 2
    letters = "hwz"[:s]
    a = "".join(letters)
    b = "".join(c.upper() for c in letters)
    out = W_STD**2 * torch.einsum(f"n{a}c,m{b}c->nm{''.join(p + q for p, q in zip(a, b))}", x1, x2) / d
    return out + B_STD**2


def self_variances(x: torch.Tensor) -> torch.Tensor:
    """Σ(a, a) after the same Dense, ``(N, *S)``."""
    return W_STD**2 * (x**2).mean(-1) + B_STD**2


def spread_pair(m1: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
    """m1[n, s...] * m2[n', s'...] laid out as (N1, N2, S1, S1', S2, S2', ...)."""
    s = m1.ndim - 1
    letters = "hwz"[:s]
    a = "".join(letters)
    b = "".join(c.upper() for c in letters)
    return torch.einsum(f"n{a},m{b}->nm{''.join(p + q for p, q in zip(a, b))}", m1, m2)


# ---------------------------------------------------------------------- LayerNorm


@pytest.mark.parametrize("axis", [-1, (1, 2, 3), (2, 3)])
def test_layernorm_finite_width_is_standardised(axis):
    x = 3 + 2 * torch.randn(4, 5, 6, 7)
    y = stax.LayerNorm(axis=axis, eps=0.0).apply_fn((), x)
    dims = [a % 4 for a in ((axis,) if isinstance(axis, int) else axis)]
    assert torch.allclose(y.mean(dims), torch.zeros(()), atol=1e-13)
    assert torch.allclose(y.var(dims, correction=0), torch.ones(()), atol=1e-12)


def test_layernorm_fc_kernel_closed_form():
    x1, x2 = torch.randn(5, 7), torch.randn(3, 7)
    net = stax.serial(stax.Dense(16, W_std=W_STD, b_std=B_STD), stax.LayerNorm())
    out = net.kernel_fn(x1, x2)
    v1, v2 = self_variances(x1) + 1e-12, self_variances(x2) + 1e-12
    expected = dense_cov(x1, x2) / torch.sqrt(v1[:, None] * v2[None, :])
    assert torch.allclose(out.nngp, expected, rtol=1e-13)
    assert torch.allclose(out.ntk, expected, rtol=1e-13)  # Θ = Σ after one NTK-param Dense
    assert torch.allclose(out.cov1, (v1 - 1e-12) / v1, rtol=1e-13)
    assert out.is_gaussian


@pytest.mark.parametrize("axis", [(1, 2, 3), -1, (2, 3), (0, 1, 2, 3)])
@pytest.mark.parametrize("diagonal_spatial", [False, True])
def test_layernorm_spatial_kernel_closed_form(axis, diagonal_spatial):
    """Variances are averaged over the normalised spatial (and batch) axes, as in NT."""
    x1, x2 = torch.randn(3, 4, 5, 6), torch.randn(2, 4, 5, 6)
    eps = 1e-3
    net = stax.serial(stax.Dense(16, W_std=W_STD, b_std=B_STD), stax.LayerNorm(axis=axis, eps=eps))
    out = net.kernel_fn(x1, x2, diagonal_spatial=diagonal_spatial, diagonal_batch=False)
    reduce = [a for a in ((axis,) if isinstance(axis, int) else axis) if a % 4 in (0, 1, 2)]
    m1, m2 = self_variances(x1) + eps, self_variances(x2) + eps
    if reduce:
        m1, m2 = m1.mean(reduce, keepdim=True), m2.mean(reduce, keepdim=True)
    m1, m2 = m1.expand(3, 4, 5), m2.expand(2, 4, 5)
    nngp = dense_cov(x1, x2) / spread_pair(m1, m2).sqrt()
    cov1 = dense_cov(x1, x1) / spread_pair(m1, m1).sqrt()
    if diagonal_spatial:
        nngp = torch.einsum("nmhhww->nmhw", nngp)
        cov1 = torch.einsum("nmhhww->nmhw", cov1)
    assert torch.allclose(out.nngp, nngp, rtol=1e-13)
    assert torch.allclose(out.cov1, cov1, rtol=1e-13)


def test_layernorm_monte_carlo_one_wide_layer():
    """(1/n) Σ_c y_c(x1) y_c(x2) for n = 40000 channels, error ~ √((1 + ρ²)/n) <= 0.0071."""
    x = torch.randn(4, 6)
    net = stax.serial(stax.Dense(40_000, W_std=W_STD, b_std=B_STD), stax.LayerNorm())
    _, params = net.init_fn(0, (-1, 6))
    y = net.apply_fn(params, x)
    empirical = y @ y.T / y.shape[1]
    analytic = net.kernel_fn(x, None, "nngp")
    assert (empirical - analytic).abs().max() < 5 * 0.0071


def test_layernorm_errors():
    x = torch.randn(3, 4, 5, 6)
    with pytest.raises(ValueError, match="must include the channel axis|includes the channel axis"):
        stax.serial(stax.Dense(8), stax.LayerNorm(axis=(1, 2))).kernel_fn(x)
    with pytest.raises(ValueError, match="only defined for Gaussian inputs"):
        stax.serial(stax.Dense(8), stax.Relu(), stax.LayerNorm()).kernel_fn(torch.randn(3, 4))
    with pytest.raises(ValueError, match="axis must be an int or a sequence of ints in \\[-4, 4\\)"):
        stax.LayerNorm(axis=5).apply_fn((), x)
    with pytest.raises(ValueError, match="repeated entries"):
        stax.LayerNorm(axis=(3, -1)).apply_fn((), x)
    with pytest.raises(ValueError, match="eps must be a non-negative number"):
        stax.LayerNorm(eps=-1.0)
    with pytest.raises(ValueError, match="non-empty sequence of ints"):
        stax.LayerNorm(axis="channels")


# ---------------------------------------------------------------------- Dropout


def test_dropout_finite_width_statistics():
    """Keep fraction and mean over draws, with binomial / CLT tolerances (5 sigma)."""
    rate, draws = 0.7, 4000
    x = torch.randn(2, 50)
    g = torch.Generator().manual_seed(1)
    layer = stax.Dropout(rate)
    outs = torch.stack([layer.apply_fn((), x, rng=g) for _ in range(draws)])
    kept = outs != 0
    # Every output is 0 or x / rate exactly.
    assert torch.equal(torch.where(kept, outs, x / rate), (x / rate).expand_as(outs))
    n = kept.numel()
    assert abs(kept.double().mean().item() - rate) < 5 * math.sqrt(rate * (1 - rate) / n)
    # Mean over draws: standard error |x| √((1 − p)/p) / √draws per entry.
    se = x.abs() * math.sqrt((1 - rate) / rate) / math.sqrt(draws)
    assert ((outs.mean(0) - x).abs() <= 5 * se + 1e-15).all()
    # Second moment: E[out²] = x² / rate, the 1/rate the kernel puts on its diagonal.
    assert abs((outs**2).mean().item() / (x**2).mean().item() * rate - 1) < 0.03


def test_dropout_generator_and_global_rng():
    x = torch.randn(3, 100)
    layer = stax.Dropout(0.5)
    a = layer.apply_fn((), x, rng=torch.Generator().manual_seed(3))
    b = layer.apply_fn((), x, rng=torch.Generator().manual_seed(3))
    c = layer.apply_fn((), x, rng=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(5)
    d = layer.apply_fn((), x)
    torch.manual_seed(5)
    assert torch.equal(d, layer.apply_fn((), x))


def test_dropout_modes_and_module():
    x = torch.randn(4, 300)
    assert torch.equal(stax.Dropout(0.5, mode="test").apply_fn((), x), x)
    assert torch.equal(stax.Dropout(0.5).apply_fn((), x, mode="test"), x)
    assert torch.equal(stax.Dropout(1.0).apply_fn((), x), x)
    model = stax.serial(stax.Dropout(0.5)).to_module((-1, 300))
    model.eval()
    assert torch.equal(model(x), x)
    model.train()
    dropped = model(x)
    assert (dropped == 0).any() and torch.equal(dropped[dropped != 0], (2 * x)[dropped != 0])


def _relu_kernels(x1, x2, dropout):
    layers = [stax.Dense(16, W_std=W_STD, b_std=B_STD), stax.Relu()]
    base = stax.serial(*layers).kernel_fn(x1, x2)
    out = stax.serial(*layers, dropout).kernel_fn(x1, x2)
    return base, out


def test_dropout_kernel_scales_the_self_diagonal():
    x = torch.randn(5, 6)
    rate = 0.8
    base, out = _relu_kernels(x, None, stax.Dropout(rate))
    scale = torch.ones(5, 5) + (1 / rate - 1) * torch.eye(5)
    assert torch.allclose(out.nngp, base.nngp * scale, rtol=1e-15)
    assert torch.allclose(out.ntk, base.ntk * scale, rtol=1e-15)
    assert torch.allclose(out.cov1, base.cov1 / rate, rtol=1e-15)
    assert not out.is_gaussian


def test_dropout_kernel_with_x2_leaves_cross_covariance():
    x1, x2 = torch.randn(5, 6), torch.randn(5, 6)
    rate = 0.8
    base, out = _relu_kernels(x1, x2, stax.Dropout(rate))
    assert torch.equal(out.nngp, base.nngp)
    assert torch.equal(out.ntk, base.ntk)
    assert torch.allclose(out.cov1, base.cov1 / rate, rtol=1e-15)
    assert torch.allclose(out.cov2, base.cov2 / rate, rtol=1e-15)


def test_dropout_kernel_test_mode_is_identity():
    x = torch.randn(4, 6)
    base, out = _relu_kernels(x, None, stax.Dropout(0.5, mode="test"))
    assert torch.equal(out.nngp, base.nngp) and torch.equal(out.ntk, base.ntk)


@pytest.mark.parametrize("diagonal_spatial", [False, True])
@pytest.mark.parametrize("diagonal_batch", [False, True])
def test_dropout_kernel_spatial_layouts(diagonal_batch, diagonal_spatial):
    """Only same-example, same-location entries get 1/rate, in every layout."""
    x = torch.randn(3, 4, 2, 5)
    rate = 0.5
    base, out = (
        net.kernel_fn(x, None, diagonal_batch=diagonal_batch, diagonal_spatial=diagonal_spatial)
        for net in (
            stax.serial(stax.Dense(8), stax.Relu()),
            stax.serial(stax.Dense(8), stax.Relu(), stax.Dropout(rate)),
        )
    )
    eye_n, eye_h, eye_w = torch.eye(3), torch.eye(4), torch.eye(2)
    if diagonal_spatial:
        same = eye_n[:, :, None, None].expand(3, 3, 4, 2)
        same_self = torch.ones(3, 4, 2) if diagonal_batch else same
    else:
        same = torch.einsum("nm,hH,wW->nmhHwW", eye_n, eye_h, eye_w)
        same_self = torch.einsum("hH,wW->hHwW", eye_h, eye_w).expand(3, 4, 4, 2, 2) if diagonal_batch else same
    factor = 1 + (1 / rate - 1) * same
    assert torch.allclose(out.nngp, base.nngp * factor, rtol=1e-15)
    assert torch.allclose(out.ntk, base.ntk * factor, rtol=1e-15)
    assert torch.allclose(out.cov1, base.cov1 * (1 + (1 / rate - 1) * same_self), rtol=1e-15)


def test_dropout_errors():
    for rate in (0, 0.0, -0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="rate is the probability to KEEP a unit"):
            stax.Dropout(rate)
    with pytest.raises(ValueError, match="mode must be 'train' or 'test', got 'eval'"):
        stax.Dropout(0.5, mode="eval")
    # checked once at the entry point (stax/_validate), before any layer runs
    with pytest.raises(ValueError, match="apply_fn: mode must be 'train' or 'test', got 'training'"):
        stax.Dropout(0.5).apply_fn((), torch.ones(2, 2), mode="training")
    with pytest.raises(TypeError, match="rng must be a torch.Generator or None"):
        stax.Dropout(0.5).apply_fn((), torch.ones(2, 2), rng=3)
