"""Empirical NTK of trained models (#19, #12, #18): which parameters are differentiated
(trainable by default), the automatic choice of implementation (prediction against
measurement), the errors of the issue #12 list said about the call, and the public surface
(``__all__``, ``linearize``'s ``f_lin(params, x)``).

References are independent: ``ntk_reference.reference_ntk`` (the whole batch's Jacobian by
``torch.func.jacrev``, nothing shared with ``tangents._empirical``) and closed forms.
"""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import tangents
import tangents.empirical
from ntk_reference import reference_ntk
from reference_cases import relative_error
from tangents import NtkImplementation, empirical_ntk_fn, linearize


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))


# ----------------------------------------------------------------------------- parameters
def test_trainable_parameters_by_default_and_the_other_choices():
    net = _mlp()
    net[0].requires_grad_(False)  # frozen first layer, as in fine-tuning
    x1, x2 = torch.randn(5, 4), torch.randn(3, 4)
    trainable = {k: v.detach() for k, v in net.named_parameters() if v.requires_grad}
    everything = {k: v.detach() for k, v in net.named_parameters()}
    last = {k: v for k, v in everything.items() if k.startswith("4.")}
    expect = {
        "trainable": reference_ntk(net, x1, x2, trainable, trace_axes=()),
        "all": reference_ntk(net, x1, x2, everything, trace_axes=()),
        "last": reference_ntk(net, x1, x2, last, trace_axes=()).detach(),  # the others require grad
    }
    for implementation in (0, 1, 2, 3):
        got = empirical_ntk_fn(net, (), vmap_axes=0, implementation=implementation)(x1, x2)
        # the same sums in another order: measured <= 3e-16
        assert relative_error(got, expect["trainable"].numpy()) <= 1e-12, implementation
    got_all = empirical_ntk_fn(net, (), vmap_axes=0, parameters="all")(x1, x2)
    assert relative_error(got_all, expect["all"].numpy()) <= 1e-12  # measured <= 3e-16
    # the frozen layer does contribute when asked for: the two kernels differ at O(1)
    assert float((got_all - expect["trainable"]).abs().max()) > 1e-3 * float(expect["all"].abs().max())
    for choice in (lambda name: name.startswith("4."), ["4.weight", "4.bias"], last):
        got = empirical_ntk_fn(net, (), vmap_axes=0, parameters=choice)(x1, x2)
        assert relative_error(got, expect["last"].numpy()) <= 1e-12  # measured <= 3e-16
    # the last layer alone in closed form: Θ = (h·h' + 1) I for h the features before it
    h1, h2 = net[:4](x1).detach(), net[:4](x2).detach()
    closed = torch.einsum("ab,op->abop", h1 @ h2.T + 1, torch.eye(3))
    assert relative_error(expect["last"], closed.numpy()) <= 1e-12  # measured 1e-16


def test_parameters_errors():
    net = _mlp()
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"parameters='some' is not a choice; pass \"trainable\""):
        empirical_ntk_fn(net, parameters="some")(x)
    with pytest.raises(ValueError, match=r"parameters names \['9.weight'\] are not parameters of Sequential"):
        empirical_ntk_fn(net, parameters=["9.weight"])(x)
    with pytest.raises(ValueError, match=r"selects no parameter of Sequential"):
        empirical_ntk_fn(net, parameters=lambda name: False)(x)
    with pytest.raises(TypeError, match=r"parameters must map names to tensors; \['0.bias'\]"):
        empirical_ntk_fn(net, parameters={"0.bias": 1.0})(x)
    net.requires_grad_(False)
    with pytest.raises(ValueError, match=r"all 6 parameters of Sequential are frozen .* pass parameters='all'"):
        empirical_ntk_fn(net)(x)
    with pytest.raises(ValueError, match=r"selects parameters of an nn.Module by name; for a function"):
        empirical_ntk_fn(lambda p, x: x @ p, parameters=lambda n: True)(x, None, torch.randn(4, 2))


# ----------------------------------------------------------------------------- automatic choice
def test_auto_predicts_the_fastest_and_records_its_prediction():
    """A wide MLP (2 x 256 units, 10 outputs, 16 examples): structured derivatives is predicted
    fastest (predicted 0.005 s against 0.18 s NTK-VP and 0.28 s JC) and measured fastest (best
    of 5 on the shared 2-core machine: 0.007 s against 0.06 s NTK-VP and 0.1 s JC).
    The check is of the ranking, with a margin for a loaded machine: AUTO's choice takes at
    most 1.5x the best measured time (the issue's goal is 1.2x on a quiet machine; see
    benchmarks/empirical.py for the timed comparison)."""
    net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    x = torch.randn(16, 64)
    auto = empirical_ntk_fn(net, (), vmap_axes=0, progress=False)
    ref = auto(x)
    plan = auto.plan
    assert set(plan.estimates) == {NtkImplementation(i) for i in (1, 2, 3)}
    predicted = min(plan.estimates, key=lambda i: plan.estimates[i].seconds)
    assert plan.implementation == predicted
    measured = {}
    for impl in (1, 2, 3):
        fn = empirical_ntk_fn(net, (), vmap_axes=0, implementation=impl, progress=False)
        out = fn(x)  # first call apart (the profile)
        assert relative_error(out, ref.numpy()) <= 1e-11  # the same kernel: measured <= 1e-15
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            fn(x)
            best = min(best, time.perf_counter() - t0)
        measured[NtkImplementation(impl)] = best
    assert measured[plan.implementation] <= 1.5 * min(measured.values()), (plan.estimates, measured)


# ----------------------------------------------------------------------------- issue #12 errors
def test_batchnorm_in_training_mode():
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).train()
    x = torch.randn(6, 4)
    with pytest.raises(ValueError, match=r"BatchNorm1d '1' is in training mode: .* Call module.eval\(\) .* "
                                         r"or pass vmap_axes=None"):
        empirical_ntk_fn(net, vmap_axes=0)(x)
    before = net[1].running_mean.clone(), net[1].num_batches_tracked.clone()
    ntk = empirical_ntk_fn(net, vmap_axes=None, trace_axes=())(x)  # the batch-normalised network as it trains
    assert torch.equal(net[1].running_mean, before[0]) and torch.equal(net[1].num_batches_tracked, before[1])

    def f(params: dict, x: torch.Tensor) -> torch.Tensor:  # batch statistics, no running ones: independent
        stats = {"1.running_mean": None, "1.running_var": None, "1.num_batches_tracked": None}
        return torch.func.functional_call(net, {**params, **stats}, (x,))

    params = {k: v.detach() for k, v in net.named_parameters()}
    assert relative_error(ntk, reference_ntk(f, x, None, params, trace_axes=()).numpy()) <= 1e-12  # measured 2e-16
    drop = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2)).train()
    with pytest.raises(ValueError, match=r"Dropout '1' is in training mode with dropout.*module.eval\(\)"):
        empirical_ntk_fn(drop)(x)


def test_wrong_axes_and_wrong_inputs_name_the_argument():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"vmap_axes gives x1 the example axis 2, out of range for its shape \(5, 4\)"):
        empirical_ntk_fn(net, vmap_axes=2)(x)
    with pytest.raises(ValueError, match=r"f failed on one example of x1 \(vmap_axes=1: x1 of shape \(5, 4\) holds "
                                         r"examples of shape \(5,\).*check that vmap_axes names the example axis"):
        empirical_ntk_fn(net, vmap_axes=1)(x)
    with pytest.raises(ValueError, match=r"f failed on one example of x1 \(vmap_axes=0: x1 of shape \(5, 3\).*"
                                         r"mat1 and mat2 shapes cannot be multiplied"):
        empirical_ntk_fn(net, vmap_axes=0)(torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"f failed on x1 of shape \(5, 3\).*check that x1 has the shape f expects"):
        empirical_ntk_fn(net)(torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"f failed on one example of x2 .*x2 of shape \(2, 6\)"):
        empirical_ntk_fn(net, vmap_axes=0)(x, torch.randn(2, 6))
    with pytest.raises(ValueError, match=r"x1 is torch.float32 but the parameters are torch.float64: cast"):
        empirical_ntk_fn(net)(x.float())
    with pytest.raises(ValueError, match=r"x2 has NaN or inf entries \(shape \(2, 4\)\)"):
        empirical_ntk_fn(net)(x, torch.tensor([[1.0, float("nan"), 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match=r"out_axes=3 is out of range for an output of f of shape \(1, 2\)"):
        empirical_ntk_fn(net, vmap_axes=(0, 3, {}))(x)


@pytest.mark.parametrize("vmap_axes", [0, None])
def test_a_kernel_too_large_is_refused_up_front(vmap_axes):
    """100,000 examples: the traced float64 result alone is 1e10 x 8 bytes = 74.51 GiB; refused
    before any computation (a generous 10 s bound on a loaded machine; measured ~0.2 s)."""
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(100_000, 4)
    t0 = time.perf_counter()
    with pytest.raises(MemoryError, match=r"the NTK of .*100000.* needs 74.51 GiB for the result alone, more than "
                                          r"the 16.00 GiB available .*average over more output axes"):
        empirical_ntk_fn(net, vmap_axes=vmap_axes, memory_limit=16 * 2**30)(x)
    assert time.perf_counter() - t0 < 10.0


# ----------------------------------------------------------------------------- public surface
def test_public_modules_declare_only_public_names():
    import importlib

    for name in ("tangents.empirical", "tangents._linearize"):
        module = importlib.import_module(name)
        assert module.__all__ and all(not n.startswith("_") for n in module.__all__), name
    assert sorted(tangents.empirical.__all__) == [
        "EmpiricalKernelFn", "NtkImplementation", "NtkPlan", "empirical_kernel_fn", "empirical_nngp_fn",
        "empirical_ntk_fn", "empirical_ntk_vp_fn",
    ]
    for name in ("MemoryPlanner", "make_problem", "jvp_any", "ntk_vector_products"):
        assert name not in tangents.empirical.__all__
    for fn in (tangents.empirical_kernel_fn, tangents.empirical_ntk_fn, tangents.taylor_expand, linearize):
        assert "Args:" in fn.__doc__ and "Returns:" in fn.__doc__, fn.__name__


def test_linearized_model_called_like_f_lin_params_x():
    net = _mlp()
    x = torch.randn(5, 4)
    lin = linearize(net)
    params = {k: v.detach() + 0.01 * torch.randn_like(v) for k, v in net.named_parameters()}
    # f_lin(θ, x) = f(θ0, x) + J(θ0) (θ - θ0), the Jacobian by torch.func.jvp independently
    theta0 = {k: v.detach() for k, v in net.named_parameters()}
    delta = {k: params[k] - theta0[k] for k in theta0}
    f0, df = torch.func.jvp(lambda p: torch.func.functional_call(net, p, (x,)), (theta0,), (delta,))
    assert relative_error(lin(params, x), (f0 + df).detach().numpy()) <= 1e-12  # measured 1e-16
    assert relative_error(lin(params, x), lin.apply_fn(params, x).detach().numpy()) == 0.0  # the same call
    with pytest.raises(TypeError, match=r"call model\(x\) .* or model\(params, x\).*got 3 positional"):
        lin(params, x, x)


def test_every_empirical_path_estimates_its_memory_first():
    """The NNGP (result 100,000^2 float64: 74.51 GiB) and an NTK-vector product (activations
    of a 2,000-unit layer on 1,000 examples and two parameter-sized vectors: ~120 MiB) are
    refused before computing when they exceed ``memory_limit``."""
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))  # the NNGP runs f on the whole batch first
    big = torch.randn(100_000, 4)
    with pytest.raises(MemoryError, match=r"empirical_nngp_fn: the NNGP of f\(x1\) of shape \(100000, 2\) .*needs "
                                          r"74.51 GiB .* more than the 1.00 GiB available"):
        tangents.empirical_kernel_fn(net, vmap_axes=0, memory_limit=2**30)(big, get="nngp")
    with pytest.raises(MemoryError, match=r"empirical_nngp_fn: .* more than the 2.00 GiB available"):
        tangents.empirical_nngp_fn(net, memory_limit=2 * 2**30)(big)
    net = nn.Sequential(nn.Linear(4, 2000), nn.ReLU(), nn.Linear(2000, 2))
    with pytest.raises(MemoryError, match=r"empirical_ntk_vp_fn: an NTK-vector product is estimated to need 1\d\d.\d MiB"
                                          r" .* more than the 1.0 MiB available \(memory_limit\)"):
        tangents.empirical_ntk_vp_fn(net, torch.randn(1000, 4), memory_limit=2**20)
