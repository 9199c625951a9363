"""The figures and the markdown report of `tangents.evidence` (drawn with `tangents.plot`).

`EvidenceReport.figures`, ``.to_markdown`` and ``.save`` call these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import plot

if TYPE_CHECKING:
    from ._report import EvidenceReport

__all__ = ["FIGURES", "N_FOLLOWED", "draw_figures", "markdown", "save_png"]

#: File stem -> what the figure shows (the captions of the report and the README).
FIGURES: dict[str, str] = {
    "jacot_fig1_ntk_on_circle": "Jacot et al. Figure 1: the NTK Θ(x₀, x(γ)) on the unit circle, "
    "analytic against finite networks, at initialisation and after training.",
    "jacot_fig2_dynamics": "Jacot et al. Figure 2: the outputs of finite networks during training against the "
    "infinite ensemble's Gaussian (mean and 10%–90% band) at the same times.",
    "convergence_and_lazy_training": "Convergence of the empirical NTK to the analytic one, and the relative "
    "change of the NTK and of the parameters during training, against width.",
    "lee_linearization": "Lee et al.: a trained network, its linearisation and the NTK prediction at the same "
    "time, and the RMSE between them against width.",
    "spectrum": "The NTK on the training set, its eigenvalues, and the training residual along its top and "
    "bottom eigenvectors over time.",
}
#: How many eigenvectors the spectrum figure follows at each end of the spectrum.
N_FOLLOWED = 3


def _pi(values: np.ndarray) -> np.ndarray:
    return np.asarray(values) / math.pi


def _fig1(r: EvidenceReport, dpi: int) -> Any:
    figure, axes = plot.figure_grid(1, 2, (11.0, 4.0))
    widest = r.ntk_circle[max(r.circle_widths)]
    # One analytic curve in the NTK parameterization; one per width where Θ depends on it
    # (the standard parameterization), each dashed in its width's colour.
    shared = all(np.allclose(r.ntk_circle[w], widest, rtol=1e-10, atol=0) for w in r.circle_widths)
    for ax, curves, when in (
        (axes[0, 0], r.ntk_circle_init, "at initialisation"),
        (axes[0, 1], r.ntk_circle_trained, f"after {r.steps} steps of gradient descent"),
    ):
        plot.kernel_vs_angle(
            r.gamma, widest if shared else None, {f"width {w}": curves[w] for w in r.circle_widths}, ax=ax,
            title=f"Θ(x₀, x(γ)) {when}",
        )
        if not shared:
            for i, w in enumerate(r.circle_widths):
                ax.plot(_pi(r.gamma), r.ntk_circle[w], "--", color=plot.COLORS[i % len(plot.COLORS)], lw=1.8,
                        label=f"analytic, width {w}")
            ax.legend(fontsize="small")
    figure.suptitle(f"NTK on the unit circle, {len(r.seeds)} networks per width")
    figure.set_dpi(dpi)
    return figure


def _fig2(r: EvidenceReport, dpi: int) -> Any:
    steps = [int(s) for s in r.snapshot_steps]
    figure, axes = plot.figure_grid(len(r.circle_widths), len(steps), (3.9 * len(steps), 3.2 * len(r.circle_widths)))
    for i, w in enumerate(r.circle_widths):
        for k, step in enumerate(steps):
            plot.trajectories(
                _pi(r.gamma),
                {f"width {w}": r.outputs[w][:, k]},
                r.ensemble_mean[w][k],
                r.ensemble_std[w][k],
                ax=axes[i, k],
                points=(_pi(r.gamma_train), r.y_train),
                title=f"width {w}, step {step}",
                xlabel="γ / π",
                ylabel="f(x(γ))",
                prediction_label="infinite ensemble",
            )
            if i or k:
                axes[i, k].get_legend().remove()
    figure.suptitle(f"Outputs of {len(r.seeds)} networks per width during training against the NTK ensemble")
    figure.set_dpi(dpi)
    return figure


def _convergence(r: EvidenceReport, dpi: int) -> Any:
    figure, axes = plot.figure_grid(1, 2, (11.0, 4.0))
    plot.convergence(r.widths, r.ntk_error, ax=axes[0, 0], label="‖Θ̂₀ − Θ‖ / ‖Θ‖", title="NTK at initialisation")
    plot.convergence(
        r.widths, r.ntk_change, ax=axes[0, 1], label="‖Θ̂_T − Θ̂₀‖ / ‖Θ̂₀‖", reference_slope=None,
        title=f"Change during {r.steps} steps (lazy training)", ylabel="relative change",
    )
    plot.convergence(
        r.widths, r.weight_change, ax=axes[0, 1], label="‖θ_T − θ₀‖ / ‖θ₀‖", color=plot.COLORS[1],
        reference_slope=-0.5, ylabel="relative change",
    )
    figure.set_dpi(dpi)
    return figure


def _lee(r: EvidenceReport, dpi: int) -> Any:
    figure, axes = plot.figure_grid(1, 3, (15.0, 4.0))
    for ax, i in ((axes[0, 0], 0), (axes[0, 1], len(r.widths) - 1)):
        net, lin, ntk = r.lee_outputs[i]
        plot.trajectories(
            _pi(r.gamma), {"network": net, "linearisation": lin}, ntk, ax=ax,
            points=(_pi(r.gamma_train), r.y_train), title=f"width {r.widths[i]}, step {r.steps}, seed {r.seeds[0]}",
            xlabel="γ / π", ylabel="f(x(γ))", prediction_label="NTK prediction",
        )
    ax = axes[0, 2]
    plot.convergence(r.widths, r.rmse_net_ntk, ax=ax, label="network − NTK", reference_slope=None)
    plot.convergence(r.widths, r.rmse_net_lin, ax=ax, label="network − linearisation", color=plot.COLORS[1], reference_slope=None)
    plot.convergence(
        r.widths, r.rmse_lin_ntk, ax=ax, label="linearisation − NTK", color=plot.COLORS[2], reference_slope=-0.5,
        title=f"RMSE on the test points at step {r.steps}", ylabel="RMSE",
    )
    figure.set_dpi(dpi)
    return figure


def followed(n: int) -> list[int]:
    """The eigenvector indices the spectrum figure follows: the top and bottom `N_FOLLOWED`."""
    k = min(N_FOLLOWED, n // 2)
    return list(range(k)) + list(range(n - k, n))


def _spectrum(r: EvidenceReport, dpi: int) -> Any:
    figure, axes = plot.figure_grid(1, 3, (15.0, 4.0))
    plot.kernel_heatmap(r.kernel_train, ax=axes[0, 0], title=f"Θ(X, X), {r.n_train} points sorted by angle")
    shown = followed(r.n_train)
    plot.spectrum(
        r.eigenvalues, ax=axes[0, 1], title="eigenvalues of Θ(X, X)",
        highlight={i: plot.COLORS[j % len(plot.COLORS)] for j, i in enumerate(shown)},
    )
    plot.residual_projections(
        np.arange(r.steps + 1), r.residual_decay[:, shown], r.residual_decay_predicted[:, shown],
        [f"v{i + 1}, λ = {r.eigenvalues[i]:.2g}" for i in shown], ax=axes[0, 2],
        title=f"residual along eigenvectors, width {r.widths[-1]}",
    )
    axes[0, 2].set_ylim(bottom=max(1e-4, float(np.nanmin(r.residual_decay[:, shown])) / 2), top=2.0)
    figure.set_dpi(dpi)
    return figure


def draw_figures(r: EvidenceReport, dpi: int) -> dict[str, Any]:
    """The five figures (`FIGURES`), as ``matplotlib.figure.Figure`` objects."""
    return {
        "jacot_fig1_ntk_on_circle": _fig1(r, dpi),
        "jacot_fig2_dynamics": _fig2(r, dpi),
        "convergence_and_lazy_training": _convergence(r, dpi),
        "lee_linearization": _lee(r, dpi),
        "spectrum": _spectrum(r, dpi),
    }


def save_png(figure: Any, path: Path, dpi: int) -> None:
    """Writes ``figure`` as a PNG of at most 256 colours (a third of the size of full colour).

    Plots have few colours; their antialiased edges are what a palette loses, invisibly.
    Pillow comes with matplotlib.
    """
    import io

    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=256).save(path, format="PNG", optimize=True)


# ---------------------------------------------------------------------- markdown


def _g(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else "never"


def _geomean(a: np.ndarray) -> np.ndarray:
    return np.exp(np.log(a).mean(axis=-1))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _image(files: Mapping[str, str], name: str) -> list[str]:
    return [f"![{name}]({files[name]})", "", f"*{FIGURES[name]}*", ""] if name in files else []


def markdown(r: EvidenceReport, files: Mapping[str, str]) -> str:
    """The report as markdown; ``files`` maps figure names to their (relative) file names."""
    lines = [
        "# tangents evidence",
        "",
        f"tangents {r.version}" + (f" (git {r.git_revision})" if r.git_revision else "") + f", {r.dtype} on {r.device}.",
        "",
        "## Configuration",
        "",
        f"- network(width) at width {r.widths[0]}: `{r.network}`",
        f"- widths: {', '.join(map(str, r.widths))} (Jacot's figures: {', '.join(map(str, r.circle_widths))}); "
        f"parameters: {', '.join(f'{r.n_parameters[w]:,}' for w in r.widths)}",
        f"- network seeds (the same at every width): {', '.join(map(str, r.seeds))}; data seed: {r.data_seed}",
        f"- data: {r.n_train} training points on the unit circle at random angles, targets f*(x) = x₁x₂; "
        f"{len(r.gamma)} test points x(γ), γ ∈ [−π, π]",
        f"- training: {r.steps} steps of full-batch gradient descent on ‖f(X) − Y‖²/(2N), learning rate "
        + ", ".join(sorted({f'{v:.4g}' for v in r.lr.values()}))
        + " (NTK time convention: τ = η t / N)",
        "- timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in r.timings.items()),
        "",
        "## Jacot et al., Figure 1: the NTK converges and stays put",
        "",
    ]
    rows = [[str(w), _g(_geomean(r.circle_error[w])), _g(_geomean(r.circle_change[w]))] for w in r.circle_widths]
    lines += _table(["width", "RMS(Θ̂₀ − Θ)/RMS(Θ) on the circle", "RMS(Θ̂_T − Θ̂₀)/RMS(Θ)"], rows) + [""]
    lines += _image(files, "jacot_fig1_ntk_on_circle")
    lines += ["## Jacot et al., Figure 2: finite networks follow the kernel's dynamics", ""]
    lines += [
        f"At steps {', '.join(str(int(s)) for s in r.snapshot_steps)}: mean_z = RMS(mean of the networks − ensemble "
        f"mean) / (RMS σ / √{len(r.seeds)}) and std_ratio = RMS(std of the networks) / RMS σ, both ≈ 1 when the "
        "networks are draws from the ensemble's Gaussian.",
        "",
    ]
    lines += _table(
        ["width", "mean_z", "std_ratio"], [[str(w), f"{r.mean_z[i]:.3g}", f"{r.std_ratio[i]:.3g}"] for i, w in enumerate(r.widths)]
    ) + [""]
    lines += _image(files, "jacot_fig2_dynamics")
    lines += ["## Convergence with width and lazy training", ""]
    lines += _table(
        ["width", "‖Θ̂₀ − Θ‖/‖Θ‖", "‖Θ̂_T − Θ̂₀‖/‖Θ̂₀‖", "‖θ_T − θ₀‖/‖θ₀‖"],
        [[str(w), _g(_geomean(r.ntk_error[i])), _g(_geomean(r.ntk_change[i])), _g(_geomean(r.weight_change[i]))]
         for i, w in enumerate(r.widths)],
    )
    lines += [
        "",
        "(geometric means over the seeds.) Fitted log-log slopes (± standard error): "
        f"NTK error {r.ntk_error_fit.slope:.3f} ± {r.ntk_error_fit.slope_se:.3f} (theory −1/2), "
        f"NTK change {r.ntk_change_fit.slope:.3f} ± {r.ntk_change_fit.slope_se:.3f}, "
        f"parameter change {r.weight_change_fit.slope:.3f} ± {r.weight_change_fit.slope_se:.3f}.",
        "",
    ]
    lines += _image(files, "convergence_and_lazy_training")
    lines += ["## Lee et al.: wide networks evolve as their linearisation and the NTK prediction", ""]
    lines += _table(
        ["width", "RMSE network − linearisation", "RMSE network − NTK", "RMSE linearisation − NTK"],
        [[str(w), _g(_geomean(r.rmse_net_lin[i])), _g(_geomean(r.rmse_net_ntk[i])), _g(_geomean(r.rmse_lin_ntk[i]))]
         for i, w in enumerate(r.widths)],
    )
    lines += [
        "",
        f"RMS of the targets: {r.target_rms:.3g}. Network − NTK slope {r.rmse_net_ntk_fit.slope:.3f} ± "
        f"{r.rmse_net_ntk_fit.slope_se:.3f}; at width {r.widths[-1]} the distance is {_g(_geomean(r.rmse_net_ntk[-1]))} "
        f"against {_g(r.rmse_net_ntk_expected)} expected from the 1/√width law with the constant of the narrower widths.",
        "",
    ]
    lines += _image(files, "lee_linearization")
    lines += ["## The spectrum: training is fastest along the top eigenvectors", ""]
    lines += _table(
        ["eigenvector", "λ", "steps to decay by e: measured", "predicted (1 − ηλ/N)ᵗ"],
        [[f"v{i + 1}", f"{r.eigenvalues[i]:.3g}", _g(r.efold_steps[i]), _g(r.efold_steps_predicted[i])]
         for i in followed(r.n_train)],
    ) + [""]
    lines += _image(files, "spectrum")
    return "\n".join(lines) + "\n"
