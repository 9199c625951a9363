"""The spine: the NT triple, init/apply, the finite-width module and its parameterization."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tangents
from tangents import stax


def _mlp(parameterization: str = "ntk", b_std: float | None = 0.05) -> stax.Layer:
    return stax.serial(
        stax.Dense(256, W_std=1.5, b_std=b_std, parameterization=parameterization),
        stax.Relu(),
        stax.Dense(3, W_std=1.5, b_std=b_std, parameterization=parameterization),
    )


def test_unpacks_as_neural_tangents_triple():
    init_fn, apply_fn, kernel_fn = _mlp()
    out_shape, params = init_fn(0, (-1, 5))
    assert out_shape == (-1, 3)
    W0, b0 = params[0]
    assert W0.shape == (5, 256) and b0.shape == (1, 256)
    assert params[1] == ()
    y = apply_fn(params, torch.randn(4, 5))
    assert y.shape == (4, 3)
    assert isinstance(kernel_fn(torch.randn(4, 5), None, "nngp"), torch.Tensor)


def test_seed_makes_init_reproducible_and_generator_is_accepted():
    init_fn, _, _ = _mlp()
    _, p1 = init_fn(7, (-1, 5))
    _, p2 = init_fn(torch.Generator().manual_seed(7), (-1, 5))
    assert torch.equal(p1[0][0], p2[0][0])
    with pytest.raises(TypeError, match="rng must be an int seed"):
        init_fn("seed", (-1, 5))


def test_module_forward_equals_apply_fn_and_trains():
    net = _mlp()
    model = net.to_module((-1, 5), seed=3)
    _, params = net.init_fn(3, (-1, 5))
    x = torch.randn(6, 5)
    assert torch.allclose(model(x), net.apply_fn(params, x))
    names = {name for name, _ in model.named_parameters()}
    assert names == {"0.W", "0.b", "2.W", "2.b"}

    y = torch.randn(6, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(50):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_ntk_parameterization_scales_in_forward_pass():
    # z = W_std / sqrt(n_in) x W + b_std b with W, b ~ N(0, 1).
    layer = stax.Dense(4, W_std=2.0, b_std=0.5)
    _, (W, b) = layer.init_fn(0, (-1, 9))
    x = torch.randn(3, 9)
    expected = 2.0 / 3.0 * x @ W + 0.5 * b
    assert torch.allclose(layer.apply_fn((W, b), x), expected)


def test_standard_parameterization_scales_at_init():
    # W ~ N(0, W_std^2 / n_in): the sample variance of 200*4000 weights is within 1% (5 sigma).
    layer = stax.Dense(4000, W_std=2.0, b_std=0.5, parameterization="standard")
    _, (W, b) = layer.init_fn(0, (-1, 200))
    assert abs(W.var().item() / (4.0 / 200) - 1) < 5 * math.sqrt(2 / W.numel())
    assert abs(b.var().item() / 0.25 - 1) < 5 * math.sqrt(2 / b.numel())
    x = torch.randn(3, 200)
    assert torch.allclose(layer.apply_fn((W, b), x), x @ W + b)


def test_standard_ntk_depends_on_width_and_bias_none_differs_from_zero():
    x = torch.randn(4, 3)
    narrow = stax.serial(stax.Dense(64, parameterization="standard"), stax.Relu(),
                         stax.Dense(1, parameterization="standard"))
    wide = stax.serial(stax.Dense(128, parameterization="standard"), stax.Relu(),
                       stax.Dense(1, parameterization="standard"))
    assert not torch.allclose(narrow.kernel_fn(x, None, "ntk"), wide.kernel_fn(x, None, "ntk"))
    # Same NNGP: the standard parameterization's NNGP does not depend on the width.
    assert torch.allclose(narrow.kernel_fn(x, None, "nngp"), wide.kernel_fn(x, None, "nngp"))
    no_bias = stax.Dense(1, b_std=None, parameterization="standard").kernel_fn(x, None, "ntk")
    zero_bias = stax.Dense(1, b_std=0.0, parameterization="standard").kernel_fn(x, None, "ntk")
    assert torch.allclose(zero_bias, no_bias + 1.0)


def test_one_dense_layer_kernel_closed_form():
    # Σ = W_std² x1·x2/d + b_std², Θ = Σ (NTK parameterization, one layer).
    x1, x2 = torch.randn(4, 6), torch.randn(3, 6)
    k = stax.Dense(1, W_std=1.3, b_std=0.2).kernel_fn(x1, x2)
    expected = 1.3**2 * x1 @ x2.T / 6 + 0.2**2
    assert torch.allclose(k.nngp, expected)
    assert torch.allclose(k.ntk, expected)
    assert torch.allclose(k.cov1, 1.3**2 * (x1 * x1).sum(1) / 6 + 0.04)
    assert torch.allclose(k.cov2, 1.3**2 * (x2 * x2).sum(1) / 6 + 0.04)


def test_get_forms_and_kernel_input():
    net = _mlp()
    x = torch.randn(4, 5)
    k = net.kernel_fn(x)
    assert isinstance(k, tangents.Kernel) and k.cov2 is None and k.x1_is_x2
    pair = net.kernel_fn(x, None, ("ntk", "nngp"))
    assert pair._fields == ("ntk", "nngp")
    assert torch.equal(pair.ntk, k.ntk)
    # A Kernel can be fed to the next layer's kernel_fn.
    head, tail = stax.Dense(256, W_std=1.5, b_std=0.05), stax.serial(stax.Relu(), stax.Dense(3, W_std=1.5, b_std=0.05))
    assert torch.allclose(tail.kernel_fn(head.kernel_fn(x), get="ntk"), k.ntk)


def test_numpy_and_dtypes():
    net = _mlp()
    x = np.random.default_rng(0).standard_normal((4, 5))
    assert net.kernel_fn(x, None, "ntk").dtype == torch.float64
    assert net.kernel_fn(torch.as_tensor(x, dtype=torch.float32), None, "ntk").dtype == torch.float32


def test_diagonal_batch_false_gives_full_cov1():
    net = _mlp()
    x = torch.randn(4, 5)
    k = net.kernel_fn(x, diagonal_batch=False)
    assert k.cov1.shape == (4, 4)
    assert torch.allclose(k.cov1, k.nngp)


def test_kernel_gradients_are_finite_at_coincident_points_and_match_fast_path():
    # Differentiating a kernel (e.g. to learn inputs) takes the formulas whose derivatives
    # stay finite at coincident points; without gradients the faster arccos form is used.
    net = stax.serial(stax.Dense(64, W_std=1.5, b_std=0.05), stax.Relu(), stax.Dense(1))
    x = torch.randn(5, 3, requires_grad=True)
    ntk = net.kernel_fn(x, None, "ntk")
    (grad,) = torch.autograd.grad(ntk.sum(), x)
    assert torch.isfinite(grad).all()
    with torch.no_grad():
        fast = net.kernel_fn(x, None, "ntk")
    torch.testing.assert_close(ntk.detach(), fast, rtol=1e-13, atol=0)
    # Finite differences confirm the gradient (off the diagonal the kernel is smooth).
    direction = torch.randn_like(x)
    eps = 1e-6
    with torch.no_grad():
        plus = net.kernel_fn(x + eps * direction, None, "ntk").sum()
        minus = net.kernel_fn(x - eps * direction, None, "ntk").sum()
    assert abs(((plus - minus) / (2 * eps)).item() - (grad * direction).sum().item()) < 1e-5
