r"""Figures of kernels and of training: the plotting helpers behind ``tangents evidence``.

Each helper draws one kind of picture on a matplotlib ``Axes`` and returns it:

* `kernel_heatmap`: a kernel matrix ``K (N1, N2)`` as an image;
* `kernel_vs_angle`: ``Θ(x₀, x(γ))`` along the unit circle, ``x(γ) = (cos γ, sin γ)``, the
  analytic curve against the curves of finite networks (Jacot et al. 2018, Figure 1);
* `spectrum`: the eigenvalues ``λ₁ ≥ λ₂ ≥ …`` of a kernel on a log scale;
* `trajectories`: outputs (or residuals) of finite networks against the kernel's
  prediction, its mean and its ``q``–``1−q`` Gaussian band ``μ ± z_q σ``, along an input
  coordinate or along training time;
* `residual_projections`: the training residual along chosen eigenvectors of the kernel over
  time, measured against predicted (fast along the top eigenvectors);
* `convergence`: a quantity against width on log-log axes, one point per seed, the mean
  per width and the fitted power law ``c · widthˢ`` (`fit_power_law`) with its slope.

`new_axes` and `figure_grid` make the figures the helpers draw on when no ``ax`` is given.

matplotlib is an optional dependency (``pip install 'tangents[plot]'``), imported when a
helper is first called. The helpers build ``matplotlib.figure.Figure`` objects directly,
without ``pyplot``: they never change the user's backend or open a window, and
``ax.figure.savefig("k.png")`` writes the file with matplotlib's Agg renderer (in a notebook,
``ax.figure`` as a cell's last expression displays it). Arrays may be numpy arrays or torch tensors (on any
device; they are copied to the CPU).

Example:
    >>> import torch
    >>> from tangents import plot, stax
    >>> _, _, kernel_fn = stax.serial(stax.Dense(512), stax.Relu(), stax.Dense(1))
    >>> x = torch.randn(20, 3, dtype=torch.float64)
    >>> ax = plot.kernel_heatmap(kernel_fn(x, None, "ntk"), title="NTK")
    >>> ax.figure.savefig("ntk.png", dpi=100)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "COLORS",
    "PowerLawFit",
    "convergence",
    "figure_grid",
    "fit_power_law",
    "kernel_heatmap",
    "kernel_vs_angle",
    "new_axes",
    "residual_projections",
    "spectrum",
    "trajectories",
]

ArrayLike = Any  # a numpy array, a torch tensor, or a nested sequence of numbers

#: Colours of successive series (matplotlib's default cycle, written out so that every
#: figure gives the same series the same colour whatever the user's style).
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _matplotlib() -> Any:
    """The ``matplotlib.figure`` module, or an ImportError that says what to install."""
    try:
        import matplotlib.figure
    except ImportError:
        raise ImportError(
            "tangents.plot needs matplotlib, which is not installed; install it with: "
            "pip install 'tangents[plot]' (or pip install matplotlib)"
        ) from None
    return matplotlib.figure


def new_axes(figsize: tuple[float, float] = (5.0, 3.6)) -> Axes:
    """A fresh ``Axes`` on a new ``matplotlib.figure.Figure`` (no pyplot, no window).

    Args:
        figsize: the figure's (width, height) in inches.
    """
    figure = _matplotlib().Figure(figsize=figsize, layout="constrained")
    return figure.add_subplot()


def _array(value: ArrayLike, name: str, caller: str, ndim: tuple[int, ...]) -> np.ndarray:
    """``value`` as a float64 numpy array with one of the allowed ``ndim``, else a ValueError."""
    if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
        value = value.detach().cpu().double().numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{caller}: {name} must be an array of numbers, got {type(value).__name__}.") from None
    if array.ndim not in ndim:
        shapes = " or ".join(f"{d}-D" for d in ndim)
        raise ValueError(f"{caller}: {name} must be {shapes}, got shape {array.shape}.")
    return array


def _same_length(x: np.ndarray, y: np.ndarray, x_name: str, y_name: str, caller: str) -> None:
    if y.shape[-1] != x.shape[0]:
        raise ValueError(
            f"{caller}: {y_name} must have {x.shape[0]} values along its last axis (one per entry "
            f"of {x_name}), got shape {y.shape}."
        )


def kernel_heatmap(
    kernel: ArrayLike,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    cmap: str = "viridis",
    colorbar: bool = True,
) -> Axes:
    """Draws a kernel matrix ``K (N1, N2)`` as an image, row ``i`` at the top.

    Args:
        kernel: the kernel, shape ``(N1, N2)`` (e.g. ``kernel_fn(x, None, "ntk")``).
        ax: the Axes to draw on (default: a new figure).
        title: the Axes' title.
        cmap: a matplotlib colormap name.
        colorbar: whether to add a colour bar.

    Returns:
        The Axes.

    Example:
        >>> ax = plot.kernel_heatmap(torch.eye(4), title="identity")
    """
    k = _array(kernel, "kernel", "kernel_heatmap", (2,))
    ax = new_axes((4.2, 3.6)) if ax is None else ax
    image = ax.imshow(k, cmap=cmap, interpolation="nearest", aspect="equal")
    if colorbar:
        ax.figure.colorbar(image, ax=ax, shrink=0.85)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("x₂ index")
    ax.set_ylabel("x₁ index")
    if title:
        ax.set_title(title)
    return ax


def kernel_vs_angle(
    gamma: ArrayLike,
    analytic: ArrayLike | None = None,
    finite: Mapping[str, ArrayLike] | None = None,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    ylabel: str = "Θ(x₀, x(γ))",
) -> Axes:
    """Draws ``Θ(x₀, x(γ))`` along the unit circle: the analytic curve and finite networks'.

    ``x(γ) = (cos γ, sin γ)``; with ``x₀ = (1, 0)`` the kernel depends on the angle γ between
    the two inputs only (for a rotation-invariant network), peaking at γ = 0.

    Args:
        gamma: the angles, shape ``(G,)``, in radians.
        analytic: the infinite-width kernel at those angles, ``(G,)``, drawn in black.
        finite: label -> the curves of finite networks, ``(S, G)`` (one per network) or
            ``(G,)``; each label gets one colour and one legend entry.
        ax: the Axes to draw on (default: a new figure).
        title: the Axes' title.
        ylabel: the label of the vertical axis.

    Returns:
        The Axes, its horizontal axis in units of π.

    Example:
        >>> gamma = torch.linspace(-math.pi, math.pi, 65)
        >>> x = torch.stack([gamma.cos(), gamma.sin()], 1)
        >>> ax = plot.kernel_vs_angle(gamma, kernel_fn(x[32:33], x, "ntk")[0])
    """
    caller = "kernel_vs_angle"
    g = _array(gamma, "gamma", caller, (1,))
    ax = new_axes() if ax is None else ax
    for i, (label, curves) in enumerate((finite or {}).items()):
        c = _array(curves, f"finite[{label!r}]", caller, (1, 2))
        _same_length(g, c, "gamma", f"finite[{label!r}]", caller)
        for j, row in enumerate(np.atleast_2d(c)):
            ax.plot(g / math.pi, row, color=COLORS[i % len(COLORS)], lw=0.8, alpha=0.7, label=label if j == 0 else None)
    if analytic is not None:
        a = _array(analytic, "analytic", caller, (1,))
        _same_length(g, a, "gamma", "analytic", caller)
        ax.plot(g / math.pi, a, color="black", lw=1.8, ls="--", label="analytic (infinite width)")
    ax.set_xlabel("γ / π")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return ax


def spectrum(
    eigenvalues: ArrayLike,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    highlight: Mapping[int, str] | None = None,
) -> Axes:
    """Draws a kernel's eigenvalues ``λ₁ ≥ λ₂ ≥ …`` against their rank on a log scale.

    Args:
        eigenvalues: the eigenvalues, ``(N,)``, in any order (e.g. ``torch.linalg.eigvalsh(k)``);
            they are sorted in decreasing order, and the non-positive ones (rounding) are
            left out of the log scale.
        ax: the Axes to draw on (default: a new figure).
        title: the Axes' title.
        highlight: rank (0 = largest) -> colour, for eigenvalues to mark, e.g. those whose
            eigenvectors another panel follows.

    Returns:
        The Axes.

    Example:
        >>> ax = plot.spectrum(torch.linalg.eigvalsh(kernel_fn(x, None, "ntk")))
    """
    lam = np.sort(_array(eigenvalues, "eigenvalues", "spectrum", (1,)))[::-1]
    ax = new_axes() if ax is None else ax
    rank = np.arange(1, len(lam) + 1)
    positive = lam > 0
    ax.semilogy(rank[positive], lam[positive], "o-", color="black", ms=3.5, lw=0.8)
    for r, colour in (highlight or {}).items():
        if 0 <= r < len(lam) and lam[r] > 0:
            ax.semilogy([r + 1], [lam[r]], "o", color=colour, ms=7)
    ax.set_xlabel("rank i")
    ax.set_ylabel("eigenvalue λᵢ")
    if title:
        ax.set_title(title)
    return ax


def trajectories(
    x: ArrayLike,
    finite: Mapping[str, ArrayLike] | None = None,
    mean: ArrayLike | None = None,
    std: ArrayLike | None = None,
    *,
    ax: Axes | None = None,
    band: float = 0.1,
    points: tuple[ArrayLike, ArrayLike] | None = None,
    title: str | None = None,
    xlabel: str = "",
    ylabel: str = "f(x)",
    prediction_label: str = "kernel prediction",
    log_y: bool = False,
    log_x: bool = False,
) -> Axes:
    """Draws finite networks' outputs against a kernel's prediction along ``x``.

    ``x`` is an input coordinate (outputs at one training time) or the training time
    (outputs, residuals or losses over training). The prediction is drawn as its mean and, if
    ``std`` is given, the Gaussian band from the ``band`` to the ``1 − band`` quantile,
    ``μ ± z σ`` with ``z = Φ⁻¹(1 − band)`` (1.28 for the default 10 %–90 %).

    Args:
        x: the horizontal coordinate, ``(G,)``.
        finite: label -> curves of finite networks, ``(S, G)`` or ``(G,)``; one colour per label.
        mean: the prediction's mean, ``(G,)``.
        std: the prediction's standard deviation, ``(G,)`` (an infinite ensemble's spread).
        ax: the Axes to draw on (default: a new figure).
        band: the lower quantile of the band, in (0, 0.5).
        points: ``(x_points, y_points)`` to mark, e.g. the training set.
        title, xlabel, ylabel: labels.
        prediction_label: the legend entry of the prediction.
        log_y, log_x: logarithmic axes (for residuals and times).

    Returns:
        The Axes.

    Example:
        >>> ax = plot.trajectories(gamma, {"width 512": outputs}, mean=mu, std=sigma)
    """
    caller = "trajectories"
    if not (isinstance(band, (int, float)) and 0 < band < 0.5):
        raise ValueError(f"{caller}: band must be a quantile in (0, 0.5) (0.1 for a 10%-90% band), got {band!r}.")
    xs = _array(x, "x", caller, (1,))
    ax = new_axes() if ax is None else ax
    if mean is not None:
        mu = _array(mean, "mean", caller, (1,))
        _same_length(xs, mu, "x", "mean", caller)
        if std is not None:
            sigma = _array(std, "std", caller, (1,))
            _same_length(xs, sigma, "x", "std", caller)
            z = NormalDist().inv_cdf(1 - band)
            ax.fill_between(
                xs, mu - z * sigma, mu + z * sigma, color="0.8", lw=0,
                label=f"{prediction_label}: {100 * band:g}%–{100 * (1 - band):g}%",
            )
        ax.plot(xs, mu, color="black", lw=1.8, ls="--", label=prediction_label + (" mean" if std is not None else ""))
    for i, (label, curves) in enumerate((finite or {}).items()):
        c = _array(curves, f"finite[{label!r}]", caller, (1, 2))
        _same_length(xs, c, "x", f"finite[{label!r}]", caller)
        for j, row in enumerate(np.atleast_2d(c)):
            ax.plot(xs, row, color=COLORS[i % len(COLORS)], lw=0.8, alpha=0.75, label=label if j == 0 else None)
    if points is not None:
        px = _array(points[0], "points[0]", caller, (1,))
        py = _array(points[1], "points[1]", caller, (1,))
        if px.shape != py.shape:
            raise ValueError(f"{caller}: points must be two arrays of one shape, got {px.shape} and {py.shape}.")
        ax.plot(px, py, "o", color="black", ms=4, label="training points")
    if log_y:
        ax.set_yscale("log")
    if log_x:
        ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return ax


def residual_projections(
    steps: ArrayLike,
    measured: ArrayLike,
    predicted: ArrayLike | None = None,
    labels: Sequence[str] | None = None,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    ylabel: str = "|⟨vᵢ, r_t⟩| / |⟨vᵢ, r₀⟩|",
) -> Axes:
    """Draws the training residual along eigenvectors of the kernel over time, on a log scale.

    For gradient descent on MSE with kernel Θ = Σᵢ λᵢ vᵢ vᵢᵀ the residual ``r_t = f_t(X) − Y``
    decays along ``vᵢ`` as ``(1 − η λᵢ / N)ᵗ`` (``e^{−η λᵢ t / N}`` in continuous time): the
    top eigenvectors are learnt first.

    Args:
        steps: the training steps, ``(T,)``.
        measured: the measured (normalised) projections, ``(T, k)``, one column per eigenvector.
        predicted: the predicted ones, ``(T, k)``, drawn dashed in the same colours.
        labels: a legend entry per column, e.g. ``"λ₁ = 3.8"``.
        ax: the Axes to draw on (default: a new figure).
        title, ylabel: labels.

    Returns:
        The Axes.

    Example:
        >>> ax = plot.residual_projections(range(T + 1), decay[:, :3], predicted[:, :3], ["v1", "v2", "v3"])
    """
    caller = "residual_projections"
    t = _array(steps, "steps", caller, (1,))
    m = _array(measured, "measured", caller, (2,))
    if m.shape[0] != t.shape[0]:
        raise ValueError(f"{caller}: measured must have one row per step ({t.shape[0]}), got shape {m.shape}.")
    p = None
    if predicted is not None:
        p = _array(predicted, "predicted", caller, (2,))
        if p.shape != m.shape:
            raise ValueError(f"{caller}: predicted must have the shape of measured {m.shape}, got {p.shape}.")
    if labels is not None and len(labels) != m.shape[1]:
        raise ValueError(f"{caller}: labels must name the {m.shape[1]} columns of measured, got {len(labels)}.")
    ax = new_axes() if ax is None else ax
    tiny = np.finfo(np.float64).tiny
    for i in range(m.shape[1]):
        colour = COLORS[i % len(COLORS)]
        ax.semilogy(t, np.maximum(m[:, i], tiny), "-", color=colour, lw=1.4, label=None if labels is None else labels[i])
        if p is not None:
            ax.semilogy(t, np.maximum(p[:, i], tiny), "--", color=colour, lw=1.0)
    if p is not None:
        ax.plot([], [], "k-", lw=1.4, label="finite networks")
        ax.plot([], [], "k--", lw=1.0, label="kernel prediction")
    ax.set_xlabel("step t")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return ax


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    """``value ≈ 10^intercept · width^slope``, fitted by least squares on log-log axes.

    Attributes:
        slope: the exponent s.
        intercept: log10 of the prefactor.
        slope_se: the standard error of the slope (from the residuals; ``nan`` with fewer
            than three points).
    """

    slope: float
    intercept: float
    slope_se: float

    def __call__(self, width: ArrayLike) -> np.ndarray:
        """The fitted values at ``width``."""
        return 10.0**self.intercept * np.asarray(width, dtype=np.float64) ** self.slope


def fit_power_law(widths: ArrayLike, values: ArrayLike) -> PowerLawFit:
    """Fits ``log10 value = intercept + slope · log10 width`` by least squares.

    Every value counts as one point: with ``values`` of shape ``(W, S)`` (S seeds per width)
    the fit uses all ``W·S`` points, so that the slope's standard error reflects the spread
    between seeds.

    Args:
        widths: the widths, ``(W,)``, positive.
        values: positive values, ``(W,)`` or ``(W, S)``.

    Returns:
        A `PowerLawFit`.

    Example:
        >>> plot.fit_power_law([10, 100, 1000], [1.0, 0.316, 0.1]).slope  # about -0.5
    """
    caller = "fit_power_law"
    w = _array(widths, "widths", caller, (1,))
    v = _array(values, "values", caller, (1, 2))
    if v.shape[0] != w.shape[0]:
        raise ValueError(f"{caller}: values must have one row per width ({w.shape[0]}), got shape {v.shape}.")
    if not (np.all(w > 0) and np.all(v > 0) and np.all(np.isfinite(v)) and np.all(np.isfinite(w))):
        raise ValueError(f"{caller}: widths and values must be positive and finite for a log-log fit, got {w} and {v}.")
    if len(np.unique(w)) < 2:
        raise ValueError(f"{caller}: a slope needs at least two different widths, got {w}.")
    x = np.repeat(np.log10(w), 1 if v.ndim == 1 else v.shape[1])
    y = np.log10(v).reshape(-1)
    xm = x - x.mean()
    slope = float((xm * (y - y.mean())).sum() / (xm**2).sum())
    intercept = float(y.mean() - slope * x.mean())
    se = math.nan
    if len(x) > 2:
        residual = y - (intercept + slope * x)
        se = float(math.sqrt((residual**2).sum() / (len(x) - 2) / (xm**2).sum()))
    return PowerLawFit(slope, intercept, se)


def convergence(
    widths: ArrayLike,
    values: ArrayLike,
    *,
    ax: Axes | None = None,
    label: str = "",
    color: str | None = None,
    fit: bool = True,
    reference_slope: float | None = -0.5,
    title: str | None = None,
    ylabel: str = "relative error",
) -> Axes:
    """Draws a quantity against width on log-log axes, with its fitted power law.

    One faint point per seed, the geometric mean per width joined by a line, and (``fit``)
    the least-squares power law `fit_power_law` dashed, its slope in the legend.

    Args:
        widths: the widths, ``(W,)``.
        values: positive values, ``(W,)`` or ``(W, S)`` (S seeds per width).
        ax: the Axes to draw on (default: a new figure); call again on it to add series.
        label: the series' legend entry.
        color: its colour (default: the next of `COLORS` on this Axes).
        fit: draw the fitted power law and give its slope in the legend.
        reference_slope: a grey guide line ``∝ width^reference_slope`` through the first
            mean (``None``: none); the default −1/2 is the 1/√width rate of the theory.
        title, ylabel: labels.

    Returns:
        The Axes.

    Example:
        >>> ax = plot.convergence([64, 256, 1024, 4096], errors, label="‖Θ̂ − Θ‖/‖Θ‖")
    """
    caller = "convergence"
    w = _array(widths, "widths", caller, (1,))
    v = _array(values, "values", caller, (1, 2))
    if v.shape[0] != w.shape[0]:
        raise ValueError(f"{caller}: values must have one row per width ({w.shape[0]}), got shape {v.shape}.")
    ax = new_axes() if ax is None else ax
    if color is None:  # the next colour after the series already on these Axes
        series = [line for line in ax.get_lines() if not line.get_label().startswith(("_", "∝"))]
        color = COLORS[len(series) % len(COLORS)]
    v2 = v.reshape(len(w), -1)
    mean = np.exp(np.log(np.where(v2 > 0, v2, np.nan)).mean(axis=1))
    ax.loglog(np.repeat(w, v2.shape[1]), v2.reshape(-1), "o", color=color, alpha=0.25, ms=3.5)
    text = label
    if fit and v2.shape[0] >= 2:
        result = fit_power_law(w, v2)
        text = f"{label}: slope {result.slope:.3f}" if label else f"slope {result.slope:.3f}"
        ax.loglog(w, result(w), "--", color=color, lw=1.2)
    ax.loglog(w, mean, "o-", color=color, ms=5, lw=1.2, label=text or None)
    if reference_slope is not None and np.isfinite(mean[0]):
        guide = mean[0] * (w / w[0]) ** reference_slope
        ax.loglog(w, guide, ":", color="0.5", lw=1.0, label=f"∝ width^{reference_slope:g}")
    ax.set_xticks(w, [f"{x:g}" for x in w])
    ax.set_xticks([], minor=True)  # the widths label the axis; no 2×10¹-style minor labels
    ax.set_xlabel("width")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if text or reference_slope is not None:
        ax.legend(fontsize="small")
    return ax


def figure_grid(rows: int, cols: int, size: Sequence[float] = (11.0, 4.0)) -> tuple[Any, np.ndarray]:
    """A new figure (no pyplot) with a ``rows × cols`` array of Axes, for composite figures.

    Args:
        rows, cols: the grid.
        size: the figure's (width, height) in inches.

    Returns:
        ``(figure, axes)`` with ``axes`` a numpy array of shape ``(rows, cols)``.
    """
    for name, value in (("rows", rows), ("cols", cols)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"figure_grid: {name} must be a positive int, got {value!r}.")
    figure = _matplotlib().Figure(figsize=(float(size[0]), float(size[1])), layout="constrained")
    return figure, figure.subplots(rows, cols, squeeze=False)
