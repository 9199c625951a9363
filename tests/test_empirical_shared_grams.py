"""STRUCTURED_DERIVATIVES shares Grams between parameters whose derivatives are multiples of
each other (a layer's weight and bias), and reads ``c * p`` / ``p / c`` / ``-p`` as a scale.

References: the kernel from explicit Jacobians (JACOBIAN_CONTRACTION, which shares nothing),
and closed forms for the multiple test.
"""

from __future__ import annotations

import math

import pytest
import torch

import tangents._empirical._axes as axes_module
from tangents import empirical_ntk_fn
from tangents._empirical._function import make_problem
from tangents._empirical._rules import scale_of
from tangents._empirical._probes import discover
from tangents._empirical._structured import MULTIPLE_TOLERANCE, _spread, multiple_of
from ntk_reference import reference_ntk


# ----------------------------------------------------------------------------- multiple_of
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_multiple_of_finds_a_rounded_multiple(dtype):
    b = torch.randn(64, 33, dtype=dtype, generator=torch.Generator().manual_seed(0))
    a = b * (1.5 / math.sqrt(512))  # rounded entry by entry, as autograd's MulBackward does
    lam = multiple_of(a, b)
    assert lam is not None and abs(lam - 1.5 / math.sqrt(512)) <= 4 * torch.finfo(dtype).eps * lam


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_multiple_of_rejects_what_is_not_a_multiple(dtype):
    g = torch.Generator().manual_seed(1)
    b = torch.randn(64, 33, dtype=dtype, generator=g)
    eps = torch.finfo(dtype).eps
    assert multiple_of(torch.randn(64, 33, dtype=dtype, generator=g), b) is None
    near = 2.0 * b
    near[7, 5] += 20 * MULTIPLE_TOLERANCE * eps * near.abs().max()  # one entry off, not at a spread point
    assert multiple_of(near, b) is None
    nan = 2.0 * b
    nan[3, 3] = float("nan")
    assert multiple_of(nan, b) is None
    assert multiple_of(2.0 * b, torch.zeros_like(b)) is None
    assert multiple_of(b[:, :32].contiguous(), b[:, 1:].contiguous()) is None
    assert multiple_of(b.reshape(33, 64), b) is None  # shapes differ
    assert multiple_of(b.float() if dtype == torch.float64 else b.double(), b) is None  # dtypes differ


@pytest.mark.parametrize("n", [1, 2, 17, 1000, 2**24 + 2, 46_080_000, 2**33 + 3])
@pytest.mark.parametrize("default_dtype", [torch.float32, torch.float64])
def test_spread_points_stay_inside_large_tensors(n, default_dtype):
    """The spread-out entries a multiple is first tested on: 0 and n - 1 included, all inside,
    whatever the default dtype (the suite's is float64, a user's float32). A float32 linspace
    rounded n - 1 = 46,079,999 up to 46,080,000 (IndexError on ResNet-18's derivatives at
    N = 1,000 in blocks of 250)."""
    _spread.cache_clear()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(default_dtype)
    try:
        idx = _spread(n, torch.device("cpu"))
    finally:
        torch.set_default_dtype(previous)
    assert idx.dtype == torch.int64 and int(idx[0]) == 0 and int(idx[-1]) == n - 1
    assert bool((idx[1:] >= idx[:-1]).all()) and int(idx.max()) < n


def test_multiple_of_a_tensor_past_float32_integers():
    _spread.cache_clear()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # as a user's
    try:
        b = torch.ones(46_080_000)  # more entries than float32 counts exactly (2**24)
        assert multiple_of(3.0 * b, b) == 3.0
    finally:
        torch.set_default_dtype(previous)


def test_multiple_of_zero_is_zero_times():
    b = torch.randn(10, 4)
    assert multiple_of(torch.zeros_like(b), b) == 0.0


# ----------------------------------------------------------------------------- scale rule
def _uses(f, params, x):
    problem = make_problem(f, params, 0, "test")
    xb, kw, _ = problem.to_batch_first(x, {})
    return discover(problem, problem.tensors, xb, kw).uses


def test_scale_rule_reads_numbers_times_a_parameter():
    def f(params, x):
        w, b1, b2, b3, b4, b5 = params
        return (x @ w + 0.05 * b1 + b2 * 3 + b3 / 4 + (-b4) + torch.div(b5, 2, rounding_mode="floor")).sum(-1, keepdim=True)

    params = (torch.randn(3, 5),) + tuple(torch.randn(5) for _ in range(5))
    uses = _uses(f, params, torch.randn(4, 3))
    factors = {}
    for u in uses:
        (p,) = set(u.params.values())
        rule = scale_of(u, p)
        factors[p] = None if rule is None else rule.factor
    assert factors[0] is None  # x @ w: a linear use, not a scale
    assert factors[1] == pytest.approx(0.05) and factors[2] == 3.0 and factors[3] == 0.25 and factors[4] == -1.0
    assert factors[5] is None  # floor division is not linear


def test_scale_rule_ignores_products_of_parameters():
    def f(params, x):
        w, s = params
        return (x @ w) * (s * s)

    uses = _uses(f, (torch.randn(3, 5), torch.randn(5)), torch.randn(4, 3))
    mul = [u for u in uses if 1 in u.params.values()]
    assert all(scale_of(u, 1) is None for u in mul)


# ----------------------------------------------------------------------------- whole kernels
def _nt_style_mlp(params, x):
    """neural-tangents' Dense in NTK parameterization, biases scaled as ``b_std * b``, plus a
    layer whose bias enters as ``b / 4`` and one as ``-b``."""
    (w0, b0), (w1, b1), (w2, b2) = params
    h = torch.relu(1.5 / math.sqrt(w0.shape[0]) * (x @ w0) + 0.05 * b0)
    h = torch.erf(1.5 / math.sqrt(w1.shape[0]) * (h @ w1) + b1 / 4)
    return 1.5 / math.sqrt(w2.shape[0]) * (h @ w2) - b2


def _params(widths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple((torch.randn(a, b, dtype=torch.float64, generator=g), torch.randn(b, dtype=torch.float64, generator=g))
                 for a, b in zip(widths[:-1], widths[1:]))


@pytest.mark.parametrize("trace_axes", [(-1,), ()], ids=["traced", "pairs"])
def test_shared_grams_give_the_jacobian_kernel(trace_axes, monkeypatch):
    params = _params([6, 40, 30, 2])
    x = torch.randn(150, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    shapes = []
    original = axes_module.OutputSpec.contract_self
    monkeypatch.setattr(axes_module.OutputSpec, "contract_self",
                        lambda self, a: shapes.append(tuple(a.shape)) or original(self, a))
    ours = empirical_ntk_fn(_nt_style_mlp, trace_axes, vmap_axes=0, implementation=3)(x, None, params)
    # three layers: three G-Grams and three input Grams, the three biases' Grams shared
    assert len(shapes) == 6
    shapes.clear()
    jacobians = empirical_ntk_fn(_nt_style_mlp, trace_axes, vmap_axes=0, implementation=1)(x, None, params)
    assert len(shapes) == 6  # one per parameter: nothing shared when contracting Jacobians
    reference = reference_ntk(_nt_style_mlp, x, None, params, trace_axes)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(jacobians, reference, rtol=1e-12, atol=1e-12)


def test_scale_rule_with_two_batches_gives_the_jacobian_kernel():
    params = _params([6, 40, 30, 2], seed=2)
    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.randn(20, 6, dtype=torch.float64, generator=g), torch.randn(7, 6, dtype=torch.float64, generator=g)
    for vmap_axes in (0, None):
        ours = empirical_ntk_fn(_nt_style_mlp, (), vmap_axes=vmap_axes, implementation=3)(x1, x2, params)
        reference = reference_ntk(_nt_style_mlp, x1, x2, params, ())
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)


def test_torch_linear_weight_and_bias_share_one_gram(monkeypatch):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)).double()
    x = torch.randn(40, 5, dtype=torch.float64)
    calls = []
    original = axes_module.OutputSpec.contract_self
    monkeypatch.setattr(axes_module.OutputSpec, "contract_self", lambda self, a: calls.append(1) or original(self, a))
    ours = empirical_ntk_fn(net, vmap_axes=0, implementation=3)(x)
    assert len(calls) == 4  # G and input Grams of two layers; both biases reuse their G's
    reference = reference_ntk(net, x, x.clone())
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)


def test_a_shared_gram_is_never_modified_in_place():
    """Three biases on one pre-activation share one Gram; the first contribution must not be
    that Gram itself, or accumulating the others into it would change it under them."""

    def f(params, x):
        w, b0, b1, b2 = params
        return torch.tanh(x @ w + 2.0 * b0 + 3.0 * b1 - b2).sum(-1, keepdim=True)

    g = torch.Generator().manual_seed(4)
    params = (torch.randn(3, 4, dtype=torch.float64, generator=g),) + tuple(
        torch.randn(4, dtype=torch.float64, generator=g) for _ in range(3))
    x = torch.randn(5, 3, dtype=torch.float64, generator=g)
    ours = empirical_ntk_fn(f, vmap_axes=0, implementation=3)(x, None, params)
    reference = reference_ntk(f, x, None, params)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
