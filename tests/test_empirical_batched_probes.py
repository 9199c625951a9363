"""STRUCTURED_DERIVATIVES probes a whole batch in one backward pass of the summed outputs
when ``vmap_axes`` declares the examples independent and a check on three examples against
per-example probing agrees; otherwise it probes one example at a time.

Reference: `ntk_reference.reference_ntk` (the whole batch's Jacobian by ``torch.func.jacrev``,
no probes at all).
"""

from __future__ import annotations

import pytest
import torch

import tangents._empirical._probes as structured_module
from tangents import empirical_ntk_fn
from ntk_reference import reference_ntk


@pytest.fixture
def layouts(monkeypatch):
    """The layouts ``batched_probes`` returned during the test (None: per-example probing)."""
    seen = []
    original = structured_module.batched_probes

    def recording(*args):
        seen.append(original(*args))
        return seen[-1]

    monkeypatch.setattr(structured_module, "batched_probes", recording)
    return seen


def _check(f, x1, x2, params=None, vmap_axes=0, trace_axes=(-1,)):
    ours = empirical_ntk_fn(f, trace_axes, vmap_axes=vmap_axes, implementation=3)(x1, x2, params)
    reference = reference_ntk(f, x1, x2, params, trace_axes, per_example=vmap_axes == 0)
    torch.testing.assert_close(ours, reference, rtol=1e-11, atol=1e-11)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_mlp_is_probed_as_a_batch(layouts):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).double()
    x1, x2 = torch.randn(9, 4, dtype=torch.float64, generator=_gen(1)), torch.randn(5, 4, dtype=torch.float64, generator=_gen(2))
    _check(net, x1, None, trace_axes=())
    _check(net, x1, x2, trace_axes=())
    assert layouts and all(layout is not None for layout in layouts)
    assert layouts[0].out_axes == [0, 0]  # F.linear(x, W, b) of each layer: examples first


def test_scaled_biases_get_a_leading_example_axis(layouts):
    def f(params, x):
        w, b = params
        return torch.tanh(x @ w * 0.5 + 0.1 * b)

    params = (torch.randn(3, 6, dtype=torch.float64, generator=_gen(3)), torch.randn(6, dtype=torch.float64, generator=_gen(4)))
    _check(f, torch.randn(7, 3, dtype=torch.float64, generator=_gen(5)), None, params, trace_axes=())
    assert layouts[0] is not None and layouts[0].out_axes == [0, None]  # 0.1 * b: shared by all examples


def test_examples_on_a_later_axis(layouts):
    """Sequence-first inputs ``(L, N, C)``: the examples sit on axis 1 of every layer."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()
    x1, x2 = torch.randn(4, 3, 8, dtype=torch.float64, generator=_gen(6)), torch.randn(4, 2, 8, dtype=torch.float64, generator=_gen(7))
    _check(net, x1, x2, vmap_axes=(1, 1, {}))
    _check(net, x1, None, vmap_axes=(1, 1, {}))
    assert layouts and all(layout is not None for layout in layouts)
    assert layouts[0].out_axes == [1, 1] and layouts[0].input_axes == [[1], [1]]


def test_a_batch_dependent_function_falls_back_to_per_example_probes(layouts):
    """Declared independent but scaled by the batch mean: probing the batch would differ
    from probing one example at a time (a batch of one), so the check rejects it."""

    def f(params, x):
        (w,) = params
        h = torch.tanh(x @ w)
        return h * h.mean(0, keepdim=True)

    params = (torch.randn(3, 5, dtype=torch.float64, generator=_gen(8)),)
    _check(f, torch.randn(6, 3, dtype=torch.float64, generator=_gen(9)), None, params)
    assert layouts == [None]


def test_a_shared_output_that_cannot_take_an_example_axis_falls_back(layouts):
    """``w.t()`` is shared by all examples, but a leading example axis on its probe would
    turn ``x @ w.t()`` into a batched product of another shape: rejected."""

    def f(params, x):
        (w,) = params
        return torch.sin(x @ w.t())

    params = (torch.randn(5, 3, dtype=torch.float64, generator=_gen(10)),)
    _check(f, torch.randn(6, 3, dtype=torch.float64, generator=_gen(11)), None, params, trace_axes=())
    assert layouts == [None]


def test_probing_checks_need_two_examples(layouts):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2).double()
    _check(net, torch.randn(1, 3, dtype=torch.float64), None)
    assert layouts == []  # not decided on one example: decided on the first larger batch
    _check(net, torch.randn(4, 3, dtype=torch.float64), None)
    assert len(layouts) == 1 and layouts[0] is not None


def test_results_stay_differentiable_in_the_parameters():
    """With parameters that require grad, the batch-probed kernel has gradients, and they
    are those of the Jacobian kernel."""

    def f(params, x):
        w1, w2 = params
        return torch.tanh(x @ w1) @ w2

    w1 = torch.randn(3, 8, dtype=torch.float64, generator=_gen(12), requires_grad=True)
    w2 = torch.randn(8, 2, dtype=torch.float64, generator=_gen(13), requires_grad=True)
    x = torch.randn(5, 3, dtype=torch.float64, generator=_gen(14))
    grads = []
    for kernel in (empirical_ntk_fn(f, vmap_axes=0, implementation=3)(x, None, (w1, w2)),
                   empirical_ntk_fn(f, vmap_axes=0, implementation=1)(x, None, (w1, w2)),
                   reference_ntk(f, x, None, (w1, w2))):
        grads.append(torch.autograd.grad(kernel.sum(), (w1, w2)))
    for ours, reference in zip(grads[1], grads[2]):  # Jacobian contraction from the probes too
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)
    for ours, reference in zip(grads[0], grads[2]):
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)


def test_the_check_looks_beyond_repeated_leading_examples(layouts):
    """The first examples repeat: the check takes the first, middle and last examples, which
    differ, so an independent network is still probed as a batch, and a network that mixes
    examples is still caught."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    x = torch.randn(7, 3, dtype=torch.float64, generator=_gen(16))
    x[1:3] = x[0]
    _check(net, x, None)
    assert len(layouts) == 1 and layouts[0] is not None

    def mixing(params, x):
        (w,) = params
        h = torch.tanh(x @ w)
        return h * h.mean(0, keepdim=True)

    _check(mixing, x, None, (torch.randn(3, 5, dtype=torch.float64, generator=_gen(15)),))
    assert layouts[1] is None


def test_no_check_on_examples_that_are_all_alike(layouts):
    """Identical examples cannot reveal a layer that mixes examples: per-example probes."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    _check(net, torch.ones(5, 3, dtype=torch.float64), None)
    assert layouts == [None]


def test_a_function_that_changes_with_the_batch_size_is_refused():
    """Declared independent, but an extra layer on batches of more than five: once the batch
    layout is known, a batch that makes other parameter calls gets a ValueError naming it."""

    def f(params, x):
        w1, w2 = params
        h = torch.tanh(x @ w1)
        if x.shape[0] > 5:
            h = torch.tanh(h @ w2)
        return h.sum(-1, keepdim=True)

    params = (torch.randn(3, 4, dtype=torch.float64, generator=_gen(17)),
              torch.randn(4, 4, dtype=torch.float64, generator=_gen(18)))
    fn = empirical_ntk_fn(f, vmap_axes=0, implementation=3)
    fn(torch.randn(4, 3, dtype=torch.float64, generator=_gen(19)), None, params)
    with pytest.raises(ValueError, match="calls with parameters on a batch of 7 examples but 1 on one example"):
        fn(torch.randn(7, 3, dtype=torch.float64, generator=_gen(20)), None, params)
