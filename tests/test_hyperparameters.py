"""Kernels differentiable in hyperparameters given as tensors, the log marginal likelihood and
`predict.MarginalLikelihood` (issue #15, item 3).

Oracles: neural-tangents' float64 kernels (tensor hyperparameters must give NT's numbers),
central finite differences (``torch.autograd.gradcheck``, float64), scipy's multivariate
normal density, and a sampling experiment with a tolerance from the number of samples.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as forward_ad
from scipy.stats import multivariate_normal

from reference_cases import CASES, build, load, relative_error
from tangents import predict, stax
from tangents._torch_private import load_jvp_decompositions

load_jvp_decompositions()  # forward mode's first use imports torch modules that warn

G = torch.Generator().manual_seed(15)


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=G, dtype=torch.float64)  # module level: before conftest's float64


X1, X2 = _randn(5, 4), _randn(3, 4)
IMAGES1, IMAGES2 = _randn(3, 2, 5, 5), _randn(2, 2, 5, 5)
Y = _randn(5, 2)


def _dense(layer: stax.Layer) -> stax.Layer:
    return stax.serial(stax.Dense(8, W_std=1.5, b_std=0.1), layer, stax.Dense(1, W_std=1.2, b_std=0.1))


#: name -> (network from hyperparameter values, starting values, x1, x2). Dense and Conv
#: with every W_std/b_std; five activations with each of their parameters.
NETWORKS = {
    "Dense": (
        lambda w, b, w2, b2: stax.serial(stax.Dense(8, W_std=w, b_std=b), stax.Relu(), stax.Dense(1, W_std=w2, b_std=b2)),
        (1.3, 0.2, 0.9, 0.3), X1, X2,
    ),
    "Conv": (
        lambda w, b, w2, b2: stax.serial(
            stax.Conv(3, (3, 3), padding="SAME", W_std=w, b_std=b), stax.Relu(),
            stax.Conv(3, (3, 3), W_std=w2, b_std=b2), stax.Erf(), stax.GlobalAvgPool(), stax.Dense(1, 1.1, 0.1),
        ),
        (1.3, 0.2, 0.9, 0.3), IMAGES1, IMAGES2,
    ),
    "LeakyRelu": (lambda a: _dense(stax.LeakyRelu(a)), (0.2,), X1, X2),
    "Erf": (lambda a, b, c: _dense(stax.Erf(a, b, c)), (1.2, 0.7, 0.1), X1, X2),
    "Rbf": (lambda gamma: _dense(stax.Rbf(gamma)), (0.5,), X1, X2),
    "Sin": (lambda a, b, c: _dense(stax.Sin(a, b, c)), (0.8, 1.3, 0.4), X1, X2),
    "ABRelu": (lambda a, b: _dense(stax.ABRelu(a, b)), (-0.3, 1.2), X1, X2),
}


def _leaves(values: tuple[float, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.tensor(v, requires_grad=True) for v in values)


# ---------------------------------------------------------------------- the kernel


@pytest.mark.parametrize("case_id", ["act_erf_abc", "act_leaky_relu_0.1", "act_sin_abc", "act_rbf_g0.5", "cnn_same_s1_gap"])
def test_tensor_hyperparameters_give_neural_tangents_kernels(case_id):
    """Every hyperparameter as a tensor requiring grad (the differentiable code paths) gives
    NT's float64 numbers: relative error <= 1e-8, the tolerance of the float cases (measured
    <= 2e-13 on these five)."""
    ref = load(case_id)
    net = build(CASES[case_id]["arch"])
    values = {name: torch.tensor(float(v), requires_grad=True) for name, v in stax.hyperparameters(net).items()}
    out = stax.with_hyperparameters(net, values).kernel_fn(ref["x1"], ref["x2"], ("nngp", "ntk"))
    assert out.ntk.requires_grad
    assert relative_error(out.nngp.detach(), ref["nngp"]) <= 1e-8
    assert relative_error(out.ntk.detach(), ref["ntk"]) <= 1e-8


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_kernel_gradients_match_finite_differences(name):
    """gradcheck (float64, central differences, atol 1e-5 / rtol 1e-3, torch's defaults) of
    the NNGP and NTK in every hyperparameter, for two batches and for x2=None (coincident
    points: the arc-cosine at angle 0)."""
    make, values, x1, x2 = NETWORKS[name]
    leaves = _leaves(values)
    assert torch.autograd.gradcheck(lambda *v: tuple(make(*v).kernel_fn(x1, x2, ("nngp", "ntk"))), leaves)
    assert torch.autograd.gradcheck(lambda *v: tuple(make(*v).kernel_fn(x1, None, ("nngp", "ntk"))), leaves)


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_marginal_likelihood_gradients_match_finite_differences(name, get):
    """gradcheck of log p(Y) in the hyperparameters and a tensor diag_reg, through the kernel."""
    make, values, x1, _ = NETWORKS[name]
    y = Y[: len(x1)]
    inputs = (torch.tensor(0.1, requires_grad=True), *_leaves(values))
    assert torch.autograd.gradcheck(
        lambda d, *v: predict.log_marginal_likelihood(make(*v).kernel_fn(x1, None, get), y, d), inputs
    )


def test_tiled_kernel_derivatives_match_finite_differences():
    """A kernel large enough to be computed in tiles (400 x 400 > 2 tiles of 256²) keeps its
    derivatives, by autograd and by forward mode, with tiles run in this thread. Central
    differences with step 1e-6 have error ~1e-9 relative here (measured 4e-10)."""
    x = _randn(400, 6)
    net = stax.serial(stax.Dense(8, W_std=1.5, b_std=0.1), stax.Relu(), stax.Dense(1, W_std=1.2, b_std=0.1))

    def kernel(w: float | torch.Tensor) -> torch.Tensor:
        return stax.with_hyperparameters(net, {"0.W_std": w}).kernel_fn(x, None, "ntk")

    step = 1e-6
    fd = (kernel(1.5 + step) - kernel(1.5 - step)) / (2 * step)
    w = torch.tensor(1.5, requires_grad=True)
    weights = _randn(400, 400)
    (reverse,) = torch.autograd.grad((kernel(w) * weights).sum(), w)
    assert float(reverse) == pytest.approx(float((fd * weights).sum()), rel=1e-6)
    with forward_ad.dual_level():
        tangent = forward_ad.unpack_dual(kernel(forward_ad.make_dual(torch.tensor(1.5), torch.tensor(1.0)))).tangent
    assert float((tangent - fd).abs().max()) <= 1e-6 * float(fd.abs().max())


# ---------------------------------------------------------------------- naming and copying


def test_hyperparameter_names_and_copies():
    dense = stax.Dense(8, W_std=1.5, b_std=0.1)
    block = stax.serial(dense, stax.LeakyRelu(0.2))
    net = stax.serial(block, stax.repeat(stax.serial(stax.Dense(8, 2.0), stax.Erf()), 2), dense, stax.Relu(), stax.Dense(1))
    # Relu has none of ABRelu's parameters; LeakyRelu's slope is its `a`; absent biases are
    # left out; the Dense used twice is named once, at its first place.
    assert stax.hyperparameters(net) == {
        "0.0.W_std": 1.5, "0.0.b_std": 0.1, "0.1.a": 0.2,
        "1.0.0.W_std": 2.0, "1.0.1.a": 1.0, "1.0.1.b": 1.0, "1.0.1.c": 0.0, "4.W_std": 1.0,
    }
    copy = stax.with_hyperparameters(net, {"1.0.0.W_std": 0.7, "0.0.W_std": 1.1})
    assert stax.hyperparameters(net)["1.0.0.W_std"] == 2.0  # the original is unchanged
    assert stax.hyperparameters(copy)["1.0.0.W_std"] == 0.7
    assert copy.children[2].W_std == 1.1  # the shared Dense changes at both places
    assert copy.children[3] is net.children[3]  # untouched layers are shared
    rebuilt = stax.serial(
        stax.serial(stax.Dense(8, W_std=1.1, b_std=0.1), stax.LeakyRelu(0.2)),
        stax.repeat(stax.serial(stax.Dense(8, 0.7), stax.Erf()), 2),
        stax.Dense(8, W_std=1.1, b_std=0.1), stax.Relu(), stax.Dense(1),
    )
    x = _randn(4, 8)
    assert torch.equal(copy.kernel_fn(x, None, "ntk"), rebuilt.kernel_fn(x, None, "ntk"))
    with pytest.raises(KeyError, match=r"unknown hyperparameter\(s\) \['0.W_std'\]; this network has 0.0.W_std"):
        stax.with_hyperparameters(net, {"0.W_std": 1.0})


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: stax.Dense(1, W_std=torch.ones(2)), r"Dense: W_std must be a finite number or a 0-d floating-point tensor holding one, got a tensor of shape \(2,\)"),
        (lambda: stax.Dense(1, b_std=torch.tensor(1)), r"Dense: b_std must be .* got a tensor of shape \(\) and dtype torch.int64 holding 1"),
        (lambda: stax.Erf(c=torch.tensor(math.nan)), r"Erf: c must be a finite number or a 0-d floating-point tensor holding one, .* holding nan"),
        (lambda: stax.Rbf(torch.tensor(-1.0)), r"Rbf: gamma must be a finite number >= 0 or a 0-d floating-point tensor"),
        (lambda: stax.GlobalSelfAttention(4, 4, 4, 1, W_key_std=torch.tensor(1.0)), r"W_key_std must be a finite number, got tensor"),
    ],
)
def test_bad_tensor_hyperparameters_are_refused(make, message):
    """Layers whose kernels are not differentiable in a tensor (attention) refuse it, as before."""
    with pytest.raises(ValueError, match=message):
        make()


# ---------------------------------------------------------------------- log marginal likelihood


def _random_kernel(n: int) -> torch.Tensor:
    a = _randn(n, n + 2)
    return a @ a.T / n


@pytest.mark.parametrize("absolute", [False, True])
def test_log_marginal_likelihood_matches_scipy(absolute):
    """Sum over the C columns of scipy's N(0, K + σ²I) log density; measured 1e-14 relative."""
    k, y = _random_kernel(7), _randn(7, 3)
    noise = 0.3 if absolute else 0.3 * float(torch.diagonal(k).mean())
    cov = k.numpy() + noise * np.eye(7)
    expected = sum(multivariate_normal(np.zeros(7), cov).logpdf(y[:, c].numpy()) for c in range(3))
    ours = predict.log_marginal_likelihood(k, y, 0.3, diag_reg_absolute_scale=absolute)
    assert ours.dtype == torch.float64 and ours.ndim == 0
    assert float(ours) == pytest.approx(expected, rel=1e-10)
    single = predict.log_marginal_likelihood(k, y[:, 0], 0.3, absolute)  # (N,) targets: one column
    assert float(single) == pytest.approx(multivariate_normal(np.zeros(7), cov).logpdf(y[:, 0].numpy()), rel=1e-10)


def test_log_marginal_likelihood_takes_a_kernel_record():
    x, y = _randn(6, 3), _randn(6, 2)
    record = _dense(stax.Erf()).kernel_fn(x, None)
    for get in ("nngp", "ntk"):
        expected = predict.log_marginal_likelihood(getattr(record, get), y, 1e-2)
        assert float(predict.log_marginal_likelihood(record, y, 1e-2, get=get)) == float(expected)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((torch.ones(3, 4), torch.ones(3)), {}, ValueError, r"k must be a square \(N, N\) train-train kernel, got shape \(3, 4\)"),
        ((torch.eye(3), torch.ones(4)), {}, ValueError, r"y must have shape \(N,\) or \(N, C\) with N = 3 rows like k, got shape \(4,\)"),
        ((torch.eye(3), torch.ones(3), -1.0), {}, ValueError, r"diag_reg must be a finite number >= 0, got -1.0"),
        ((torch.eye(3), torch.ones(3), torch.ones(2)), {}, ValueError, r"diag_reg must be a 0-d tensor, got shape \(2,\)"),
        ((torch.eye(3), torch.ones(3), "1"), {}, TypeError, r"diag_reg must be a number or a 0-d tensor, got str"),
        ((torch.eye(3) * math.nan, torch.ones(3)), {}, ValueError, r"k contains NaN or infinite entries"),
        ((torch.eye(3), torch.tensor([1.0, math.inf, 0.0])), {}, ValueError, r"y contains NaN or infinite entries; drop or impute those targets first"),
        ((torch.eye(3), torch.ones(3)), {"get": "cov1"}, ValueError, r"get must be 'nngp' or 'ntk', got 'cov1'"),
        ((-torch.eye(3), torch.ones(3)), {}, ValueError, r"the kernel plus diag_reg is not positive definite \(Cholesky failed at pivot 1\); increase diag_reg \(got 0, e\.g\. try 1e-06\)"),
    ],
)
def test_log_marginal_likelihood_errors(args, kwargs, error, message):
    with pytest.raises(error, match=r"log_marginal_likelihood: " + message):
        predict.log_marginal_likelihood(*args, **kwargs)


# ---------------------------------------------------------------------- learning by torch.optim


def test_marginal_likelihood_recovers_the_scale_of_a_sampled_gp():
    """Targets drawn from the NNGP of a ReLU network whose last W_std is 2.0, plus noise of
    variance 0.1·mean(diag K), 100 independent columns: maximising the likelihood over that
    W_std and diag_reg from (1.0, 0.5) recovers them. Over 8 seeds of this experiment the
    estimates spread by 2.7% (W_std) and 2.6% (diag_reg) (standard deviations); 10% and 15%
    are about 4 and 6 of them."""
    x = _randn(120, 3)
    truth = stax.serial(stax.Dense(8, W_std=1.5, b_std=0.3), stax.Relu(), stax.Dense(1, W_std=2.0, b_std=0.3))
    k = truth.kernel_fn(x, None, "nngp")
    cov = k + 0.1 * torch.diagonal(k).mean() * torch.eye(120)
    y = torch.linalg.cholesky(cov) @ _randn(120, 100)
    start = stax.with_hyperparameters(truth, {"2.W_std": 1.0})
    model = predict.MarginalLikelihood(start, x, y, diag_reg=0.5, learn=["2.W_std", "diag_reg"])
    before = float(model().detach())
    history = model.fit(steps=2)  # an L-BFGS step is up to 20 iterations: converged after one
    assert history[-1] > before
    values = {name: float(torch.as_tensor(v).detach()) for name, v in model.values().items()}
    assert values["2.W_std"] == pytest.approx(2.0, rel=0.1)
    assert values["diag_reg"] == pytest.approx(0.1, rel=0.15)
    assert values["0.W_std"] == 1.5  # not learned: kept as given
    learned = model.network()
    assert stax.hyperparameters(learned)["2.W_std"] == pytest.approx(values["2.W_std"])
    assert stax.hyperparameters(start)["2.W_std"] == 1.0  # the starting network is unchanged


def test_marginal_likelihood_with_adam_learns_activation_parameters():
    """Any optimizer: 30 Adam steps on every hyperparameter (Erf's a, b, c learned as they
    are, the stds on the log scale) raise the likelihood; the stds stay positive."""
    x = _randn(30, 3)
    y = torch.sin(2 * x[:, :1])
    model = predict.MarginalLikelihood(_dense(stax.Erf(a=1.0, b=1.0, c=0.1)), x, y, diag_reg=0.1)
    assert set(model.names) == {"0.W_std", "0.b_std", "1.a", "1.b", "1.c", "2.W_std", "2.b_std", "diag_reg"}
    before = float(model().detach())
    history = model.fit(lambda params: torch.optim.Adam(params, lr=0.05), steps=30)
    assert len(history) == 30 and history[-1] > before + 1.0  # measured +11
    values = {name: float(torch.as_tensor(v).detach()) for name, v in model.values().items()}
    assert all(values[n] > 0 for n in ("0.W_std", "0.b_std", "2.W_std", "2.b_std", "diag_reg"))
    assert values["1.c"] != 0.1  # a signed parameter, learned as it is


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"learn": ["3.W_std"]}, ValueError, r"learn names \['3.W_std'\] that the network does not have; valid names: 0.W_std"),
        ({"learn": ["diag_reg"], "diag_reg": 0.0}, ValueError, r"diag_reg=0 cannot be learned on the log scale"),
        ({"get": "cov1"}, ValueError, r"get must be 'nngp' or 'ntk', got 'cov1'"),
        ({"diag_reg": -1.0}, ValueError, r"diag_reg must be a finite number >= 0, got -1.0"),
    ],
)
def test_marginal_likelihood_errors(kwargs, error, message):
    with pytest.raises(error, match=r"MarginalLikelihood: " + message):
        predict.MarginalLikelihood(_dense(stax.Relu()), X1, Y, **kwargs)
    with pytest.raises(TypeError, match=r"MarginalLikelihood: network must be a tangents.stax layer, got tuple"):
        predict.MarginalLikelihood(tuple(_dense(stax.Relu())), X1, Y)
    with pytest.raises(ValueError, match=r"MarginalLikelihood.fit: steps must be a positive integer, got 0"):
        predict.MarginalLikelihood(_dense(stax.Relu()), X1, Y).fit(steps=0)
