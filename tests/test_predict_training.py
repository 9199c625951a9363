"""`tangents.predict` against reality: finite networks trained by full-batch gradient descent.

The networks are the foundation's modules (``stax.serial(...).to_module``, NTK
parameterization), trained on ``0.5 * mean((f - y)**2)`` (or cross-entropy) with plain
gradient descent of step ``lr``. After ``k`` steps they should match the predictors at
``t = k`` with ``learning_rate=lr``, up to (a) the finite-width error, O(1/√width) for a
single network and O(1/width) for ensemble averages, and (b) the discretization error of
gradient descent against gradient flow, which is below ``a / (2e)`` per eigenmode for
``a = lr · λ_max / y.size`` (here ``a ≤ 0.04``, so < 0.8 %).
"""

from __future__ import annotations

import math

import pytest
import torch

from tangents import predict, stax

D, N_TRAIN, N_TEST = 6, 16, 8


def _net(width: int, out: int = 1, activation: stax.Layer | None = None) -> stax.Layer:
    return stax.serial(
        stax.Dense(width, W_std=1.5, b_std=0.05),
        activation if activation is not None else stax.Relu(),
        stax.Dense(out, W_std=1.5, b_std=0.05),
    )


def _data(seed: int = 1, n_train: int = N_TRAIN, n_test: int = N_TEST, d: int = D):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train, d, generator=g)
    x_test = torch.randn(n_test, d, generator=g)
    y = torch.sin(x.sum(1, keepdim=True))
    return x, x_test, y


def _train(model: torch.nn.Module, x, x_test, y, lr: float, steps: int, loss_fn=None):
    """Full-batch gradient descent; returns (f_train_0, f_test_0, f_train, f_test, losses)."""
    loss_fn = loss_fn or (lambda f, y: 0.5 * ((f - y) ** 2).mean())
    with torch.no_grad():
        f0, ft0 = model(x), model(x_test)
    params = list(model.parameters())
    losses = []
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        losses.append(loss.item())
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
    with torch.no_grad():
        return f0, ft0, model(x), model(x_test), losses


def _finite_vs_infinite_error(width: int, seeds, steps: int = 200, fraction: float = 0.02) -> list[float]:
    x, x_test, y = _data()
    kernel_fn = _net(width).kernel_fn
    k, k_test = kernel_fn(x, None, "ntk"), kernel_fn(x_test, x, "ntk")
    lr = fraction * predict.max_learning_rate(k, y.numel())
    predict_fn = predict.gradient_descent_mse(k, y, learning_rate=lr)
    errors = []
    for seed in seeds:
        f0, ft0, f, ft, _ = _train(_net(width).to_module((-1, D), seed=seed), x, x_test, y, lr, steps)
        pred_train, pred_test = predict_fn(steps, f0, ft0, k_test)
        err = max((f - pred_train).abs().max().item(), (ft - pred_test).abs().max().item())
        errors.append(err / y.abs().max().item())
    return errors


def test_wide_network_matches_gradient_descent_mse():
    """Width 4096, 200 steps at 2 % of the maximal learning rate: within 15 % of max |y|
    (the finite-width error of a single network is ~√(3/width) ≈ 3 % per kernel entry)."""
    (err,) = _finite_vs_infinite_error(4096, seeds=[0])
    assert err < 0.15


@pytest.mark.slow
def test_finite_width_error_shrinks_with_width():
    """Mean error over 4 networks per width; O(1/√width) predicts a ratio 4 from 256 to 4096."""
    mean_err = {w: sum(_finite_vs_infinite_error(w, seeds=range(4))) / 4 for w in (256, 1024, 4096)}
    assert mean_err[4096] < mean_err[1024] < mean_err[256]
    assert mean_err[256] / mean_err[4096] > 2.0
    assert mean_err[4096] < 0.1


def _train_ensemble(width: int, members: int, x, x_test, y, lr: float, steps: int):
    """Trains ``members`` independent networks at once (vmapped over stacked parameters)."""
    models = [_net(width, out=y.shape[1]).to_module((-1, x.shape[1]), seed=1000 + i) for i in range(members)]
    params, _ = torch.func.stack_module_state(models)
    base = models[0]
    apply = torch.vmap(lambda p, inputs: torch.func.functional_call(base, p, (inputs,)), in_dims=(0, None))
    tensors = list(params.values())
    for _ in range(steps):
        out = apply(params, x)
        loss = (0.5 * ((out - y) ** 2).mean(dim=(1, 2))).sum()  # independent members
        grads = torch.autograd.grad(loss, tensors)
        with torch.no_grad():
            for p, g in zip(tensors, grads):
                p -= lr * g
    with torch.no_grad():
        return apply(params, x_test)  # (members, N_test, C)


def _matches_ensemble(samples: torch.Tensor, expected: predict.Gaussian, z: float = 4.0, slack: float = 0.01) -> bool:
    """Sample mean and covariance of ``samples`` (members, N_test, C) against ``expected``.

    Each output channel is an independent draw with its own mean and the same covariance,
    so the covariance has S = members · C samples. Standard errors: mean √(Σ_ii / members);
    covariance √((Σ_ii Σ_jj + Σ_ij²) / S). ``slack``
    (relative to max Σ_ii) absorbs the O(1/width) bias and the discretization error.
    """
    members, _, channels = samples.shape
    mean_hat = samples.mean(0)  # (N_test, C)
    centred = (samples - mean_hat).permute(0, 2, 1).reshape(-1, samples.shape[1])  # (S, N_test)
    n_samples = members * channels
    cov_hat = centred.T @ centred / (n_samples - channels)
    cov = expected.covariance
    diag = torch.diagonal(cov).clamp_min(0)
    scale = diag.max()
    se_mean = torch.sqrt(diag / members)[:, None]
    mean_ok = torch.all((mean_hat - expected.mean).abs() <= z * se_mean + slack * scale.sqrt())
    se_cov = torch.sqrt((diag[:, None] * diag[None, :] + cov**2) / n_samples)
    cov_ok = torch.all((cov_hat - cov).abs() <= z * se_cov + slack * scale)
    return bool(mean_ok and cov_ok)


@pytest.mark.slow
@pytest.mark.parametrize("t", ["finite", "infinite"])
def test_ensemble_of_trained_networks_matches_gradient_descent_mse_ensemble(t):
    """128 networks of width 512 (2 outputs each) trained on 8 points; a tolerance of 4
    standard errors (the correct prediction sits at ~2, wrong times or 'nngp' at 4-10)."""
    g = torch.Generator().manual_seed(3)
    x, x_test = torch.randn(8, 4, generator=g), torch.randn(5, 4, generator=g)
    y = torch.stack([torch.sin(x.sum(1)), torch.cos(x[:, 0])], 1)
    kernel_fn = _net(512, out=2).kernel_fn
    mlr = predict.max_learning_rate(kernel_fn(x, None, "ntk"), y.numel())
    if t == "finite":
        lr, steps, t_pred = 0.02 * mlr, 150, 150.0
    else:
        lr, steps, t_pred = 0.9 * mlr, 200, None
    samples = _train_ensemble(512, 128, x, x_test, y, lr, steps)
    predict_fn = predict.gradient_descent_mse_ensemble(kernel_fn, x, y, learning_rate=lr)
    assert _matches_ensemble(samples, predict_fn(t=t_pred, x_test=x_test, get="ntk", compute_cov=True))
    # the check has power: the untrained prior (t = 0) is rejected by the same samples
    assert not _matches_ensemble(samples, predict_fn(t=0.0, x_test=x_test, get="ntk", compute_cov=True))


def test_wide_network_with_cross_entropy_tracks_gradient_descent():
    """Width 4096, 3 classes, cross-entropy; the ODE prediction within 10 % of max |f|."""
    g = torch.Generator().manual_seed(5)
    x, x_test = torch.randn(12, D, generator=g), torch.randn(6, D, generator=g)
    labels = torch.randint(0, 3, (12,), generator=g)
    y = torch.nn.functional.one_hot(labels, 3).to(x.dtype)

    def cross_entropy(f: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        return -(torch.log_softmax(f, -1) * y_hat).mean()

    net = _net(4096, out=3)
    k, k_test = net.kernel_fn(x, None, "ntk"), net.kernel_fn(x_test, x, "ntk")
    lr = 0.2 * predict.max_learning_rate(k, y.numel())
    steps = 300
    f0, ft0, f, ft, losses = _train(net.to_module((-1, D), seed=0), x, x_test, y, lr, steps, cross_entropy)
    assert losses[-1] < 0.5 * losses[0]  # it did learn
    pred_train, pred_test = predict.gradient_descent(cross_entropy, k, y, learning_rate=lr)(steps, f0, ft0, k_test)
    scale = max(f.abs().max().item(), ft.abs().max().item())
    assert (f - pred_train).abs().max().item() < 0.1 * scale
    assert (ft - pred_test).abs().max().item() < 0.1 * scale
    # and the prediction moved as much as the network did (the test is not trivially passed)
    assert (pred_train - f0).abs().max().item() > 0.3 * scale


def test_max_learning_rate_separates_convergence_from_divergence():
    """A width-2048 network converges at 0.9 × max_learning_rate and diverges at 2.5 ×
    (between 1 × and 2 × wide networks may 'catapult' and still converge)."""
    x, x_test, y = _data()
    k = _net(1).kernel_fn(x, None, "ntk")
    mlr = predict.max_learning_rate(k, y.numel())
    *_, losses = _train(_net(2048).to_module((-1, D), seed=0), x, x_test, y, 0.9 * mlr, 200)
    assert losses[-1] < 1e-4 * losses[0]
    *_, losses = _train(_net(2048).to_module((-1, D), seed=0), x, x_test, y, 2.5 * mlr, 100)
    assert not math.isfinite(losses[-1]) or losses[-1] > 1e6 * losses[0]
