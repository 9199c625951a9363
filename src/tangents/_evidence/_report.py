"""`EvidenceReport`: the numbers behind the figures of `tangents.evidence`, and its files."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..plot import PowerLawFit

__all__ = ["EvidenceError", "EvidenceReport", "rms", "rms_rows"]


class EvidenceError(RuntimeError):
    """An experiment cannot go on (training diverged, the network does not fit in memory)."""


@dataclasses.dataclass(frozen=True)
class EvidenceReport:
    """Every number behind the figures of `run` (arrays are float64 numpy arrays).

    Shapes: ``W = len(widths)``, ``S = len(seeds)``, ``N = n_train``, ``G = 129`` test angles,
    ``K = len(snapshot_steps)``; dicts are keyed by width.

    Attributes:
        network: a description of the network (``repr(network(width))`` of the first width).
        widths, circle_widths, seeds, data_seed, n_train, steps: the configuration.
        lr: the learning rate per width.
        n_parameters: the number of parameters per width.
        dtype, device: of the finite networks (analytic kernels are computed in float64).
        version, git_revision: of tangents (the revision is None outside a git checkout).
        timings: wall-clock seconds per stage.
        gamma_train (N,), y_train (N,): the training angles and targets.
        gamma (G,): the test angles; ``gamma[G // 2] = 0`` is x₀.
        ntk_circle (dict of (G,)): analytic ``Θ(x₀, x(γ))``.
        ntk_circle_init, ntk_circle_trained (dict of (S, G)): empirical, circle widths only.
        snapshot_steps (K,): the training steps at which outputs are recorded.
        outputs (dict of (S, K, G)): ``f_t(x(γ))`` of every network at those steps.
        ensemble_mean, ensemble_std (dict of (K, G)): the infinite ensemble at those steps.
        mean_z, std_ratio (W,): ``RMS(mean_s f − μ) / (RMS(σ)/√S)`` and ``RMS(std_s f) / RMS(σ)``
            over steps and angles (≈ 1 when the networks follow the ensemble's Gaussian).
        ntk_error (W, S): ``‖Θ̂₀ − Θ‖_F / ‖Θ‖_F`` on all train and test points.
        ntk_change (W, S): ``‖Θ̂_T − Θ̂₀‖_F / ‖Θ̂₀‖_F``.
        weight_change (W, S): ``‖θ_T − θ₀‖ / ‖θ₀‖``.
        ntk_error_fit, ntk_change_fit, weight_change_fit: log-log power-law fits of the above.
        rmse_net_lin, rmse_net_ntk, rmse_lin_ntk (W, S): RMSEs over the test angles at step T
            between the network, its linearisation and the NTK prediction (same f₀).
        rmse_net_ntk_fit: the power-law fit of ``rmse_net_ntk``.
        rmse_net_ntk_expected: the network's expected distance from the NTK prediction at
            the widest width: Lee et al. bound it by ``c/√width``; ``c`` is the geometric
            mean of ``rmse_net_ntk · √width`` over the narrower widths (and seeds).
        target_rms: ``RMS(Y)``, the scale of the outputs.
        lee_outputs (W, 3, G): network, linearisation and NTK prediction at step T for the
            first seed.
        eigenvalues (N,), eigenvectors (N, N): of the widest width's ``Θ(X, X)``, decreasing.
        residual_decay (T + 1, N): ``ρᵢ(t)`` measured on the widest networks.
        residual_decay_predicted (T + 1, N): ``|1 − η λᵢ / N|ᵗ``.
        efold_steps, efold_steps_predicted (N,): the first step with ``ρᵢ ≤ 1/e``
            (``inf`` if not reached within T steps).
        kernel_train (N, N): the widest width's ``Θ(X, X)``, training points sorted by angle.
    """

    network: str
    widths: tuple[int, ...]
    circle_widths: tuple[int, ...]
    seeds: tuple[int, ...]
    data_seed: int
    n_train: int
    steps: int
    lr: dict[int, float]
    n_parameters: dict[int, int]
    dtype: str
    device: str
    version: str
    git_revision: str | None
    timings: dict[str, float]
    gamma_train: np.ndarray
    y_train: np.ndarray
    gamma: np.ndarray
    ntk_circle: dict[int, np.ndarray]
    ntk_circle_init: dict[int, np.ndarray]
    ntk_circle_trained: dict[int, np.ndarray]
    snapshot_steps: np.ndarray
    outputs: dict[int, np.ndarray]
    ensemble_mean: dict[int, np.ndarray]
    ensemble_std: dict[int, np.ndarray]
    mean_z: np.ndarray
    std_ratio: np.ndarray
    ntk_error: np.ndarray
    ntk_change: np.ndarray
    weight_change: np.ndarray
    ntk_error_fit: PowerLawFit
    ntk_change_fit: PowerLawFit
    weight_change_fit: PowerLawFit
    rmse_net_lin: np.ndarray
    rmse_net_ntk: np.ndarray
    rmse_lin_ntk: np.ndarray
    rmse_net_ntk_fit: PowerLawFit
    rmse_net_ntk_expected: float
    target_rms: float
    lee_outputs: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    residual_decay: np.ndarray
    residual_decay_predicted: np.ndarray
    efold_steps: np.ndarray
    efold_steps_predicted: np.ndarray
    kernel_train: np.ndarray

    @property
    def circle_error(self) -> dict[int, np.ndarray]:
        """``RMS_γ(Θ̂₀ − Θ)(x₀, x(γ)) / RMS_γ Θ(x₀, x(γ))`` per circle width, ``(S,)``: Figure 1 at t = 0."""
        return {w: rms_rows(self.ntk_circle_init[w] - self.ntk_circle[w]) / rms(self.ntk_circle[w]) for w in self.circle_widths}

    @property
    def circle_change(self) -> dict[int, np.ndarray]:
        """``RMS_γ(Θ̂_T − Θ̂₀)(x₀, x(γ)) / RMS_γ Θ(x₀, x(γ))`` per circle width, ``(S,)``: how far training moved it."""
        return {
            w: rms_rows(self.ntk_circle_trained[w] - self.ntk_circle_init[w]) / rms(self.ntk_circle[w])
            for w in self.circle_widths
        }

    def figures(self, dpi: int = 100) -> dict[str, Any]:
        """The five figures as ``matplotlib.figure.Figure`` objects, by file stem.

        ``jacot_fig1_ntk_on_circle``, ``jacot_fig2_dynamics``, ``convergence_and_lazy_training``,
        ``lee_linearization`` and ``spectrum`` (see the module docstring). Needs matplotlib
        (``pip install 'tangents[plot]'``).
        """
        from ._figures import draw_figures

        return draw_figures(self, dpi)

    def to_markdown(self, figure_files: Mapping[str, str] | None = None) -> str:
        """The report: configuration, seeds, the numbers of each claim, links to the figures."""
        from ._figures import markdown

        return markdown(self, figure_files or {})

    def save(self, out: str | Path, dpi: int = 100) -> dict[str, Path]:
        """Writes the figures as ``OUT/<name>.png`` and the report as ``OUT/report.md``.

        Args:
            out: the directory (created if missing).
            dpi: resolution of the PNGs (100 keeps each under ~100 KB).

        Returns:
            The written files by name (``"report"`` for the markdown).
        """
        from ._figures import save_png

        directory = Path(out)
        directory.mkdir(parents=True, exist_ok=True)
        written: dict[str, Path] = {}
        for name, figure in self.figures(dpi).items():
            path = directory / f"{name}.png"
            save_png(figure, path, dpi)
            written[name] = path
        report = directory / "report.md"
        report.write_text(self.to_markdown({name: path.name for name, path in written.items()}), encoding="utf-8")
        written["report"] = report
        return written


def rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a))))


def rms_rows(a: np.ndarray) -> np.ndarray:
    """The root mean square of each row of ``a (S, G)``, ``(S,)``."""
    return np.sqrt(np.mean(np.square(a), axis=-1))
