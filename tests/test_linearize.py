"""linearize / taylor_expand: value and Jacobian at θ0, exactness on polynomials, closed-form
Taylor series, and the lazy-training regime (a wide net and its linearization trained side by
side stay close, closer as width grows)."""

from __future__ import annotations

import math

import pytest
import torch

from tangents import linearize, taylor_expand


def _mlp(width: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.Tanh(), torch.nn.Linear(width, 2))


def _flat_jacobian(fn, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    j = torch.func.jacrev(lambda p: fn(p, x))(params)
    return torch.cat([v.reshape(*fn(params, x).shape, -1) for v in j.values()], -1)


def test_linearize_module_matches_value_and_jacobian_at_theta0():
    net = _mlp(16)
    lin = linearize(net)
    x = torch.randn(5, 3)
    assert torch.allclose(lin(x), net(x), rtol=0, atol=1e-14)
    names = [n for n, _ in net.named_parameters()]
    own = {n: p.detach() for n, p in net.named_parameters()}
    j_net = _flat_jacobian(lambda p, x: torch.func.functional_call(net, p, (x,)), own, x)
    j_lin = _flat_jacobian(lambda p, x: lin.apply_fn(p, x), own, x)
    assert torch.allclose(j_lin, j_net, rtol=1e-12, atol=1e-12)
    # trainable parameters are θ only (the wrapped module's own are not registered)
    assert len(list(lin.parameters())) == len(names)


def test_linearize_is_exactly_affine_in_the_parameters():
    f = lambda p, x: torch.sin(x @ p[0]) @ p[1]
    p0 = (torch.randn(3, 8), torch.randn(8, 2))
    lin = linearize(f, p0)
    x = torch.randn(4, 3)
    delta = (torch.randn(3, 8), torch.randn(8, 2))
    p1 = tuple(a + d for a, d in zip(p0, delta))
    j = torch.func.jacrev(lambda *p: f(p, x), argnums=(0, 1))(*p0)
    expected = f(p0, x) + sum(torch.einsum("no...,...->no", jj, d) for jj, d in zip(j, delta))
    assert torch.allclose(lin.apply_fn(p1, x), expected, rtol=1e-12, atol=1e-12)
    # the Jacobian of the linearization is J(θ0) everywhere
    j1 = torch.func.jacrev(lambda *p: lin.apply_fn(p, x), argnums=(0, 1))(*p1)
    for a, b in zip(j1, j):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_taylor_expand_matches_the_closed_form_series():
    """f(θ, x) = sin(x·θ): along θ0 + tδ the k-th derivative is sin(a + kπ/2) b^k."""
    f = lambda p, x: torch.sin(x @ p)
    p0, p1 = torch.randn(3), torch.randn(3)
    x = torch.randn(6, 3)
    a, b = x @ p0, x @ (p1 - p0)
    for degree in (0, 1, 2, 3, 4):
        expected = sum(torch.sin(a + k * math.pi / 2) * b**k / math.factorial(k) for k in range(degree + 1))
        model = taylor_expand(f, p0, degree)
        assert torch.allclose(model.apply_fn(p1, x), expected, rtol=1e-12, atol=1e-12)
    assert torch.allclose(taylor_expand(f, p0, 1).apply_fn(p1, x), linearize(f, p0).apply_fn(p1, x), atol=1e-14)


def test_taylor_expand_is_exact_on_a_polynomial_of_its_degree():
    f = lambda p, x: (x @ p) ** 2 + x @ p
    p0, p1, x = torch.randn(3, 2), torch.randn(3, 2), torch.randn(4, 3)
    assert torch.allclose(taylor_expand(f, p0, 2).apply_fn(p1, x), f(p1, x), atol=1e-12)
    assert not torch.allclose(taylor_expand(f, p0, 1).apply_fn(p1, x), f(p1, x), atol=1e-3)


def _ntk_mlp(width: int, generator: torch.Generator) -> torch.nn.Module:
    """NTK-parameterized tanh MLP (y = x W / sqrt(fan_in)): the lazy regime as width → ∞."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = torch.nn.Parameter(torch.randn(3, width, generator=generator))
            self.w2 = torch.nn.Parameter(torch.randn(width, 1, generator=generator))

        def forward(self, x):
            return torch.tanh(x @ self.w1 / math.sqrt(3)) @ self.w2 / math.sqrt(width)

    return Net()


def _train_side_by_side(width: int, steps: int = 200, lr: float = 1.0) -> float:
    gen = torch.Generator().manual_seed(1)
    x_train, y_train = torch.randn(8, 3, generator=gen), torch.randn(8, 1, generator=gen)
    x_test = torch.randn(16, 3, generator=gen)
    net = _ntk_mlp(width, gen)
    lin = linearize(net)
    opt_net = torch.optim.SGD(net.parameters(), lr=lr)
    opt_lin = torch.optim.SGD(lin.parameters(), lr=lr)
    for _ in range(steps):
        for model, opt in ((net, opt_net), (lin, opt_lin)):
            opt.zero_grad()
            loss = 0.5 * ((model(x_train) - y_train) ** 2).mean()
            loss.backward()
            opt.step()
    with torch.no_grad():
        assert float(((lin(x_train) - y_train) ** 2).mean()) < 0.5 * float((y_train**2).mean())  # it learned
        return float((net(x_test) - lin(x_test)).abs().max() / lin(x_test).abs().max())


def test_wide_network_and_its_linearization_train_alike():
    errors = {w: _train_side_by_side(w) for w in (32, 512, 2048)}
    # Measured: width 32 -> 0.17, 512 -> 0.030, 2048 -> 0.0046 (relative sup error on test points).
    assert errors[2048] < 0.02
    assert errors[2048] < errors[512] < errors[32]


def test_bad_input():
    with pytest.raises(ValueError, match="params is required when f is a function"):
        linearize(lambda p, x: x @ p)
    with pytest.raises(ValueError, match="degree must be an int >= 0, got -1"):
        taylor_expand(lambda p, x: x @ p, torch.randn(2, 2), -1)
    with pytest.raises(TypeError, match="f must be an nn.Module or a callable"):
        linearize(3, torch.randn(2))
    lin = linearize(lambda p, x: x @ p[0], (torch.randn(2, 2),))
    with pytest.raises(ValueError, match="expected the structure of θ0"):
        lin.apply_fn([torch.randn(2, 2), torch.randn(2)], torch.randn(3, 2))
