"""`tangents.plot`: each helper draws the data it is given, the fitted slopes are least squares,
bad shapes are clear errors, and matplotlib stays optional (and pyplot untouched)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib", reason="tangents.plot draws with matplotlib (pip install -e '.[test]')")

from scipy import stats  # noqa: E402

from tangents import plot  # noqa: E402


def test_fit_power_law_is_least_squares_on_log_log_axes() -> None:
    widths = np.array([64.0, 256.0, 1024.0, 4096.0])
    exact = plot.fit_power_law(widths, 3.0 * widths**-0.5)
    assert exact.slope == pytest.approx(-0.5, abs=1e-12)
    assert exact.intercept == pytest.approx(math.log10(3.0), abs=1e-12)
    assert exact.slope_se == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(exact(widths), 3.0 * widths**-0.5, rtol=1e-12)
    # (W, S) values: every seed is a point; the slope and its standard error are scipy's.
    values = np.exp(np.random.default_rng(0).normal(size=(4, 5))) * widths[:, None] ** -0.5
    fit = plot.fit_power_law(widths, values)
    reference = stats.linregress(np.repeat(np.log10(widths), 5), np.log10(values).reshape(-1))
    assert fit.slope == pytest.approx(reference.slope, rel=1e-12)
    assert fit.intercept == pytest.approx(reference.intercept, rel=1e-12)
    assert fit.slope_se == pytest.approx(reference.stderr, rel=1e-10)
    assert math.isnan(plot.fit_power_law([1, 10], [1.0, 0.5]).slope_se)  # two points: no residuals


@pytest.mark.parametrize(
    ("widths", "values", "message"),
    [
        ([1, 2, 3], [1.0, 2.0], r"fit_power_law: values must have one row per width \(3\), got shape \(2,\)"),
        ([1, 2, 3], [1.0, -2.0, 3.0], r"fit_power_law: widths and values must be positive and finite"),
        ([1, 2, 3], [1.0, float("nan"), 3.0], r"fit_power_law: widths and values must be positive and finite"),
        ([5, 5, 5], [1.0, 2.0, 3.0], r"fit_power_law: a slope needs at least two different widths"),
        ([[1, 2]], [1.0, 2.0], r"fit_power_law: widths must be 1-D, got shape \(1, 2\)"),
    ],
)
def test_fit_power_law_rejects_what_has_no_slope(widths: list, values: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plot.fit_power_law(widths, values)


def test_kernel_heatmap_shows_the_matrix() -> None:
    k = torch.arange(12, dtype=torch.float64).reshape(3, 4).requires_grad_()  # any tensor, even one needing grad
    ax = plot.kernel_heatmap(k, title="K")
    np.testing.assert_array_equal(ax.images[0].get_array(), k.detach().numpy())
    assert ax.get_title() == "K" and len(ax.figure.axes) == 2  # the image and its colour bar
    with pytest.raises(ValueError, match=r"kernel_heatmap: kernel must be 2-D, got shape \(3,\)"):
        plot.kernel_heatmap(np.ones(3))
    with pytest.raises(TypeError, match=r"kernel_heatmap: kernel must be an array of numbers, got str"):
        plot.kernel_heatmap("not a kernel")


def test_kernel_vs_angle_draws_the_analytic_and_every_finite_curve() -> None:
    gamma = np.linspace(-math.pi, math.pi, 9)
    finite = {"width 10": np.ones((3, 9)), "width 100": np.zeros(9)}
    ax = plot.kernel_vs_angle(gamma, np.cos(gamma), finite)
    assert len(ax.lines) == 3 + 1 + 1
    analytic = ax.lines[-1]
    np.testing.assert_allclose(analytic.get_xdata(), gamma / math.pi)  # the axis is in units of π
    np.testing.assert_allclose(analytic.get_ydata(), np.cos(gamma))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["width 10", "width 100", "analytic (infinite width)"]
    with pytest.raises(ValueError, match=r"kernel_vs_angle: finite\['w'\] must have 9 values along its last axis"):
        plot.kernel_vs_angle(gamma, None, {"w": np.ones((2, 8))})


def test_trajectories_band_is_the_gaussian_quantiles() -> None:
    x = np.linspace(0, 1, 5)
    mean, std = np.sin(x), 0.1 + x
    ax = plot.trajectories(x, {"nets": np.zeros((2, 5))}, mean, std, band=0.1, points=([0.5], [0.2]))
    band = ax.collections[0].get_paths()[0].vertices
    z = 1.2815515655446004  # Φ⁻¹(0.9), from a table
    assert band[:, 1].max() == pytest.approx((mean + z * std).max(), rel=1e-12)
    assert band[:, 1].min() == pytest.approx((mean - z * std).min(), rel=1e-12)
    assert "kernel prediction: 10%–90%" in [t.get_text() for t in ax.get_legend().get_texts()]
    with pytest.raises(ValueError, match=r"trajectories: band must be a quantile in \(0, 0.5\)"):
        plot.trajectories(x, band=0.7)
    with pytest.raises(ValueError, match=r"trajectories: std must have 5 values along its last axis"):
        plot.trajectories(x, mean=mean, std=std[:3])
    with pytest.raises(ValueError, match=r"trajectories: points must be two arrays of one shape"):
        plot.trajectories(x, points=([1.0, 2.0], [1.0]))


def test_spectrum_sorts_and_skips_non_positive_eigenvalues() -> None:
    ax = plot.spectrum(np.array([0.5, 2.0, -1e-17, 1.0]), highlight={0: "red"})
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [2.0, 1.0, 0.5])
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [1, 2, 3])
    assert ax.get_yscale() == "log"


def test_residual_projections_draw_measured_and_predicted() -> None:
    steps = np.arange(4)
    measured = np.array([[1.0, 1.0], [0.5, 0.9], [0.25, 0.8], [0.0, 0.7]])
    ax = plot.residual_projections(steps, measured, measured**1.1, ["top", "bottom"])
    assert ax.lines[0].get_ydata()[-1] > 0  # zeros are clipped for the log scale
    np.testing.assert_allclose(ax.lines[3].get_ydata(), measured[:, 1] ** 1.1)
    with pytest.raises(ValueError, match=r"residual_projections: predicted must have the shape of measured \(4, 2\)"):
        plot.residual_projections(steps, measured, measured[:, :1])
    with pytest.raises(ValueError, match=r"residual_projections: labels must name the 2 columns"):
        plot.residual_projections(steps, measured, None, ["one"])
    with pytest.raises(ValueError, match=r"residual_projections: measured must have one row per step \(3\), got shape \(4, 2\)"):
        plot.residual_projections(steps[:3], measured)


def test_convergence_draws_points_means_fit_and_guide() -> None:
    widths = np.array([10.0, 100.0, 1000.0])
    values = np.array([[1.0, 1.2], [0.3, 0.34], [0.1, 0.11]])
    ax = plot.convergence(widths, values, label="error")
    fit = plot.fit_power_law(widths, values)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == [f"error: slope {fit.slope:.3f}", "∝ width^-0.5"]
    fitted = ax.lines[1]
    np.testing.assert_allclose(fitted.get_ydata(), fit(widths), rtol=1e-12)
    means = ax.lines[2]
    np.testing.assert_allclose(means.get_ydata(), np.sqrt(values[:, 0] * values[:, 1]), rtol=1e-12)  # geometric
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "100", "1000"]
    second = plot.convergence(widths, values / 2, ax=ax, label="other", reference_slope=None)
    assert second is ax and ax.get_lines()[-1].get_color() == plot.COLORS[1]  # the next series' colour
    with pytest.raises(ValueError, match=r"convergence: values must have one row per width \(3\)"):
        plot.convergence(widths, values[:2])


def test_figure_grid_and_errors() -> None:
    figure, axes = plot.figure_grid(2, 3)
    assert axes.shape == (2, 3) and len(figure.axes) == 6
    with pytest.raises(ValueError, match=r"figure_grid: rows must be a positive int, got 0"):
        plot.figure_grid(0, 1)


def test_missing_matplotlib_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"tangents.plot needs matplotlib, .* pip install 'tangents\[plot\]'"):
        plot.new_axes()


def test_plot_leaves_pyplot_and_torch_alone(tmp_path: Path) -> None:
    """Importing and using tangents.plot imports neither torch nor pyplot (which would pick a
    backend and could open windows); saving works with matplotlib's Agg renderer."""
    script = (
        "import sys, numpy as np\n"
        "from tangents import plot\n"
        "ax = plot.kernel_heatmap(np.eye(3))\n"
        f"ax.figure.savefig({str(tmp_path / 'k.png')!r})\n"
        "print('torch', 'torch' in sys.modules, 'pyplot', 'matplotlib.pyplot' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout.strip() == "torch False pyplot False", (done.stdout, done.stderr)
    assert (tmp_path / "k.png").read_bytes()[:4] == b"\x89PNG"


def test_public_names() -> None:
    import tangents

    assert tangents.plot is plot and "plot" in tangents.__all__ and "evidence" in tangents.__all__
    assert tangents.evidence.run is not None
    for name in plot.__all__:
        assert hasattr(plot, name), name
