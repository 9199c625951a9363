"""The experiments of `tangents.evidence.run`: data on the unit circle, the analytic kernels and
predictions, the finite networks and their linearisations trained by gradient descent, and the
numbers of `EvidenceReport`."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._version import __version__
from ..empirical import NtkImplementation, empirical_ntk_fn
from .._linearize import linearize
from ..plot import fit_power_law
from ..predict import gradient_descent_mse, gradient_descent_mse_ensemble, max_learning_rate
from ._report import EvidenceError, EvidenceReport, rms

if TYPE_CHECKING:
    from ..stax import Layer

__all__ = ["LR_FRACTION", "N_ANGLES", "experiments"]

#: Angles of the test points x(γ) on the unit circle; γ = 0 (x₀) is the middle one.
N_ANGLES = 129
#: The learning rate's share of the largest stable one, 2N / λ_max(Θ), when it is automatic.
LR_FRACTION = 0.25


def _git_revision() -> str | None:
    """``git describe --always --dirty`` of the checkout tangents is imported from, if any."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


@dataclasses.dataclass(frozen=True)
class _Data:
    """Training points on the unit circle (sorted by angle) and the test angles."""

    gamma_train: torch.Tensor  # (N,)
    x_train: torch.Tensor  # (N, 2)
    y_train: torch.Tensor  # (N, 1)
    gamma: torch.Tensor  # (G,)
    x_test: torch.Tensor  # (G, 2)

    @property
    def z(self) -> torch.Tensor:
        """All points, train then test, ``(N + G, 2)``."""
        return torch.cat([self.x_train, self.x_test])


def _circle(gamma: torch.Tensor) -> torch.Tensor:
    return torch.stack([gamma.cos(), gamma.sin()], dim=1)


def _data(n_train: int, seed: int, dtype: torch.dtype, device: torch.device) -> _Data:
    angles = np.sort(np.random.default_rng(seed).uniform(-math.pi, math.pi, n_train))
    gamma_train = torch.as_tensor(angles, dtype=dtype, device=device)
    x_train = _circle(gamma_train)
    gamma = torch.linspace(-math.pi, math.pi, N_ANGLES, dtype=dtype, device=device)
    return _Data(gamma_train, x_train, (x_train[:, 0] * x_train[:, 1])[:, None], gamma, _circle(gamma))


@dataclasses.dataclass
class _Analytic:
    """The infinite-width quantities of one width (float64)."""

    ntk_zz: torch.Tensor  # Θ on all points, (N + G, N + G)
    lr: float
    predict: Any  # gradient_descent_mse on Θ(X, X), for per-network predictions
    ensemble: Any  # gradient_descent_mse_ensemble


def _analytic(layer: Layer, data: _Data, lr: float | None, width: int) -> _Analytic:
    z = data.z.double()
    n = data.x_train.shape[0]
    ntk_zz = layer.kernel_fn(z, None, "ntk")
    if ntk_zz.shape != (len(z), len(z)) or not torch.isfinite(ntk_zz).all():
        raise ValueError(
            f"evidence.run: network({width}).kernel_fn on 2-D inputs must give a finite (N, N) NTK for one "
            f"output (end the network with a Dense(1) layer), got shape {tuple(ntk_zz.shape)}."
        )
    k_train = ntk_zz[:n, :n]
    max_lr = max_learning_rate(k_train, n)  # 2N / λ_max(Θ)
    if lr is None:
        lr = LR_FRACTION * max_lr
    elif lr >= max_lr:
        raise ValueError(
            f"evidence.run: lr={lr:.4g} is at or above the largest stable learning rate 2N/λ_max(Θ) = "
            f"{max_lr:.4g} of network({width}); gradient descent would diverge. Use a smaller lr or lr=None."
        )
    y = data.y_train.double()
    return _Analytic(
        ntk_zz=ntk_zz,
        lr=float(lr),
        predict=gradient_descent_mse(k_train, y, learning_rate=lr),
        ensemble=gradient_descent_mse_ensemble(layer.kernel_fn, data.x_train.double(), y, learning_rate=lr),
    )


@dataclasses.dataclass
class _Network:
    """What one trained network (one width, one seed) contributes to the report."""

    n_parameters: int
    ntk_init: np.ndarray  # Θ̂₀ on all points
    ntk_trained: np.ndarray  # Θ̂_T on all points
    weight_change: float
    train_outputs: np.ndarray  # (T + 1, N)
    outputs: np.ndarray  # (K, G) at the snapshot steps
    lin_test: np.ndarray  # (G,) linearisation at step T
    ntk_test: np.ndarray  # (G,) NTK prediction at step T from the same f₀


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _train(
    model: torch.nn.Module, data: _Data, lr: float, steps: int, snapshots: Iterable[int] = (), record: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Full-batch gradient descent on ``‖f(X) − Y‖² / (2N)``.

    Returns the training outputs at every step ``(T + 1, N)`` if ``record`` (else ``(0, N)``)
    and the test outputs at the ``snapshots`` steps ``(K, G)`` (always including step T last
    if asked).
    """
    snap = sorted(set(snapshots))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    train_rows: list[torch.Tensor] = []
    test_rows: list[torch.Tensor] = []
    initial = None
    for step in range(steps + 1):
        if step in snap:
            with torch.no_grad():
                test_rows.append(model(data.x_test)[:, 0])
        out = model(data.x_train)
        if record:
            train_rows.append(out.detach()[:, 0])
        loss = 0.5 * torch.mean((out - data.y_train) ** 2)
        if initial is None:
            initial = loss.item()
        if step == steps:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    final = loss.item()
    if not (math.isfinite(final) and final <= 10 * max(initial, 1e-30)):
        raise EvidenceError(
            f"gradient descent diverged (loss {initial:.3e} -> {final:.3e} at lr = {lr:.4g}); the infinite-width "
            f"network is stable below 2N/lambda_max(NTK) but this finite one is not: use a smaller lr or larger widths"
        )

    def stack(rows: list[torch.Tensor], width: int) -> np.ndarray:
        if not rows:
            return np.zeros((0, width))
        return torch.stack(rows).double().cpu().numpy()

    return stack(train_rows, data.x_train.shape[0]), stack(test_rows, data.x_test.shape[0])


def _one_network(
    layer: Layer, seed: int, data: _Data, analytic: _Analytic, steps: int, snapshots: tuple[int, ...],
    dtype: torch.dtype, device: torch.device,
) -> _Network:
    model = layer.to_module((-1, 2), seed=seed, dtype=dtype, device=device)
    ntk_fn = empirical_ntk_fn(model, vmap_axes=0, implementation=NtkImplementation.STRUCTURED_DERIVATIVES)
    z = data.z
    ntk_init = ntk_fn(z, None).double()
    theta0 = _flat(model)
    lin = linearize(model)  # expanded around θ₀, before training moves the model
    with torch.no_grad():
        f0_train, f0_test = model(data.x_train).double(), model(data.x_test).double()
    train_outputs, outputs = _train(model, data, analytic.lr, steps, snapshots, record=True)
    ntk_trained = ntk_fn(z, None).double()
    weight_change = (torch.linalg.vector_norm(_flat(model) - theta0) / torch.linalg.vector_norm(theta0)).item()
    _, lin_test = _train(lin, data, analytic.lr, steps, (steps,))
    n = data.x_train.shape[0]
    _, ntk_test = analytic.predict(
        t=float(steps), fx_train_0=f0_train, fx_test_0=f0_test, k_test_train=analytic.ntk_zz[n:, :n]
    )
    return _Network(
        n_parameters=theta0.numel(),
        ntk_init=ntk_init.cpu().numpy(),
        ntk_trained=ntk_trained.cpu().numpy(),
        weight_change=weight_change,
        train_outputs=train_outputs,
        outputs=outputs,
        lin_test=lin_test[-1],
        ntk_test=ntk_test[:, 0].cpu().numpy(),
    )


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    """``‖a − b‖_F / ‖b‖_F``."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _expected_distance(widths: tuple[int, ...], rmse: np.ndarray) -> float:
    """``c / √n`` at the widest width, ``c`` the geometric mean of ``rmse · √n`` over the others."""
    scaled = rmse[:-1] * np.sqrt(np.asarray(widths[:-1], dtype=np.float64))[:, None]
    return float(np.exp(np.log(scaled).mean()) / math.sqrt(widths[-1]))


def _efold(decay: np.ndarray) -> np.ndarray:
    """The first step at which each column of ``decay (T + 1, N)`` is at most 1/e (inf if never)."""
    below = decay <= math.exp(-1)
    first = np.argmax(below, axis=0).astype(np.float64)
    first[~below.any(axis=0)] = math.inf
    return first


def experiments(
    layers: dict[int, Layer],
    all_widths: tuple[int, ...],
    circle: tuple[int, ...],
    seed_list: tuple[int, ...],
    data_seed: int,
    n_train: int,
    steps: int,
    lr: float | None,
    torch_dtype: torch.dtype,
    dev: torch.device,
    progress: bool | None,
    timings: dict[str, float],
) -> EvidenceReport:
    """The experiments of `run` on checked arguments; fills ``timings`` stage by stage."""
    widest = all_widths[-1]
    snapshots = tuple(sorted({0, max(1, round(steps / 10)), steps}))
    t0 = time.perf_counter()
    data = _data(n_train, data_seed, torch_dtype, dev)
    analytic = {w: _analytic(layers[w], data, lr, w) for w in all_widths}
    g = N_ANGLES
    x0 = n_train + g // 2  # index of x₀ = (1, 0) among all points
    ensemble = {}
    for w in all_widths:
        gauss = analytic[w].ensemble(
            t=torch.tensor(snapshots, dtype=torch.float64), x_test=data.x_test.double(), get="ntk", compute_cov=True
        )
        ensemble[w] = (
            gauss.mean[..., 0].cpu().numpy(),
            torch.diagonal(gauss.covariance, dim1=-2, dim2=-1).clamp_min(0).sqrt().cpu().numpy(),
        )
    timings["analytic kernels and predictions"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    from tqdm import tqdm

    results: dict[tuple[int, int], _Network] = {}
    # Seed by seed through all widths, so that the bar's rate (and time left) is an average
    # over widths from the first round on, not the narrow networks' pace.
    jobs = [(w, s) for s in seed_list for w in all_widths]
    bar = tqdm(jobs, desc="evidence", unit="network", disable=None if progress is None else not progress, file=sys.stderr)
    for w, s in bar:
        bar.set_postfix(width=w, seed=s, refresh=False)
        results[w, s] = _one_network(layers[w], s, data, analytic[w], steps, snapshots, torch_dtype, dev)
    bar.close()
    timings["finite networks"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_w, n_s = len(all_widths), len(seed_list)
    grid_of = lambda w, s, field: getattr(results[w, s], field)  # noqa: E731
    ntk_error = np.empty((n_w, n_s))
    ntk_change = np.empty((n_w, n_s))
    weight_change = np.empty((n_w, n_s))
    rmse = {name: np.empty((n_w, n_s)) for name in ("net_lin", "net_ntk", "lin_ntk")}
    mean_z, std_ratio = np.empty(n_w), np.empty(n_w)
    outputs: dict[int, np.ndarray] = {}
    lee_outputs = np.empty((n_w, 3, g))
    for i, w in enumerate(all_widths):
        reference = analytic[w].ntk_zz.cpu().numpy()
        for j, s in enumerate(seed_list):
            r = results[w, s]
            ntk_error[i, j] = _relative(r.ntk_init, reference)
            ntk_change[i, j] = _relative(r.ntk_trained, r.ntk_init)
            weight_change[i, j] = r.weight_change
            net_test = r.outputs[-1]
            rmse["net_lin"][i, j] = rms(net_test - r.lin_test)
            rmse["net_ntk"][i, j] = rms(net_test - r.ntk_test)
            rmse["lin_ntk"][i, j] = rms(r.lin_test - r.ntk_test)
        outputs[w] = np.stack([grid_of(w, s, "outputs") for s in seed_list])  # (S, K, G)
        mu, sigma = ensemble[w]
        mean_z[i] = rms(outputs[w].mean(axis=0) - mu) / (rms(sigma) / math.sqrt(n_s))
        std_ratio[i] = rms(outputs[w].std(axis=0, ddof=1)) / rms(sigma)
        first = results[w, seed_list[0]]
        lee_outputs[i] = np.stack([first.outputs[-1], first.lin_test, first.ntk_test])

    # Spectrum of the widest width's training kernel and the residuals projected on it.
    k_train = analytic[widest].ntk_zz[:n_train, :n_train].cpu().numpy()
    lam, vec = np.linalg.eigh(k_train)
    lam, vec = lam[::-1].copy(), vec[:, ::-1].copy()
    y = data.y_train[:, 0].double().cpu().numpy()
    projections = np.stack([(results[widest, s].train_outputs - y) @ vec for s in seed_list])  # (S, T + 1, N)
    power = np.sqrt(np.mean(projections**2, axis=0))  # (T + 1, N)
    residual_decay = power / np.where(power[0] > 0, power[0], np.nan)
    factor = np.abs(1 - analytic[widest].lr * lam / n_train)
    predicted = factor[None, :] ** np.arange(steps + 1)[:, None]
    timings["numbers"] = time.perf_counter() - t0

    return EvidenceReport(
        network=repr(layers[all_widths[0]]),
        widths=all_widths,
        circle_widths=circle,
        seeds=seed_list,
        data_seed=data_seed,
        n_train=n_train,
        steps=steps,
        lr={w: analytic[w].lr for w in all_widths},
        n_parameters={w: results[w, seed_list[0]].n_parameters for w in all_widths},
        dtype=str(torch_dtype).removeprefix("torch."),
        device=str(dev),
        version=__version__,
        git_revision=_git_revision(),
        timings=timings,
        gamma_train=data.gamma_train.double().cpu().numpy(),
        y_train=y,
        gamma=data.gamma.double().cpu().numpy(),
        ntk_circle={w: analytic[w].ntk_zz[x0, n_train:].cpu().numpy() for w in all_widths},
        ntk_circle_init={w: np.stack([results[w, s].ntk_init[x0, n_train:] for s in seed_list]) for w in circle},
        ntk_circle_trained={w: np.stack([results[w, s].ntk_trained[x0, n_train:] for s in seed_list]) for w in circle},
        snapshot_steps=np.asarray(snapshots, dtype=np.float64),
        outputs=outputs,
        ensemble_mean={w: ensemble[w][0] for w in all_widths},
        ensemble_std={w: ensemble[w][1] for w in all_widths},
        mean_z=mean_z,
        std_ratio=std_ratio,
        ntk_error=ntk_error,
        ntk_change=ntk_change,
        weight_change=weight_change,
        ntk_error_fit=fit_power_law(all_widths, ntk_error),
        ntk_change_fit=fit_power_law(all_widths, ntk_change),
        weight_change_fit=fit_power_law(all_widths, weight_change),
        rmse_net_lin=rmse["net_lin"],
        rmse_net_ntk=rmse["net_ntk"],
        rmse_lin_ntk=rmse["lin_ntk"],
        rmse_net_ntk_fit=fit_power_law(all_widths, rmse["net_ntk"]),
        rmse_net_ntk_expected=_expected_distance(all_widths, rmse["net_ntk"]),
        target_rms=rms(y),
        lee_outputs=lee_outputs,
        eigenvalues=lam,
        eigenvectors=vec,
        residual_decay=residual_decay,
        residual_decay_predicted=predicted,
        efold_steps=_efold(residual_decay),
        efold_steps_predicted=_efold(predicted),
        kernel_train=k_train,
    )
