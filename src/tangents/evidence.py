r"""The claims behind the neural tangent kernel, reproduced with finite networks (``tangents evidence``).

`run` trains finite networks of several widths by full-batch gradient descent and measures
what the theory says about them; `EvidenceReport` holds every number behind every figure,
draws the figures (`EvidenceReport.figures`) and writes them with a markdown report
(`EvidenceReport.save`).

The setting (Jacot et al. 2018, §6): a network ``network(width)`` (default `default_network`,
``[Dense(width, W_std=1, b_std=0.1), Relu] × depth, Dense(1)`` in the NTK parameterization,
Jacot's β = 0.1) on 2-D inputs; ``n_train`` training points on the unit circle,
``x = (cos γ, sin γ)`` at random angles, with targets ``f*(x) = x₁ x₂`` (Jacot's); test points
``x(γ)`` at 129 angles γ ∈ [−π, π], including ``x₀ = (1, 0)``. Every network is trained for
``steps`` steps of gradient descent on ``L = ‖f(X) − Y‖² / (2N)`` with learning rate η (default
``η = N / (2 λ_max(Θ))``, a quarter of the largest stable one), so that after ``t`` steps the
infinite-width network's outputs are, in neural-tangents' convention (``τ = η t / N``),

    f_t(X) = Y + e^{−τΘ} (f₀(X) − Y),    f_t(x) = f₀(x) − Θ(x, X) Θ⁻¹ (I − e^{−τΘ}) (f₀(X) − Y).

What is measured, for every width n and seed s (one network each):

1. **Jacot, Figure 1**: the empirical NTK ``Θ̂(x₀, x(γ))`` at initialisation and after
   training, against the analytic ``Θ(x₀, x(γ))`` (it converges to it and stays there as n grows).
2. **Jacot, Figure 2**: the outputs ``f_t(x(γ))`` at a few times t, against the infinite
   ensemble's Gaussian (`tangents.predict.gradient_descent_mse_ensemble`, mean and covariance):
   ``mean_z`` compares the networks' mean with the ensemble mean in units of its standard
   error ``σ/√S``, ``std_ratio`` their spread with ``σ`` (both ≈ 1 at infinite width).
3. **Convergence and lazy training**: ``‖Θ̂₀ − Θ‖_F / ‖Θ‖_F`` on all train and test points
   against width, with its fitted log-log slope (−1/2: the fluctuations of a sum of n
   independent terms); the relative change during training of the kernel,
   ``‖Θ̂_T − Θ̂₀‖_F / ‖Θ̂₀‖_F``, and of the parameters, ``‖θ_T − θ₀‖ / ‖θ₀‖`` (both → 0).
4. **Lee et al. 2019**: on the test points at time T, the trained network, its linearisation
   ``f₀ + J₀ (θ − θ₀)`` (`tangents.linearize`, trained by the same gradient descent) and the
   NTK prediction from the same ``f₀`` (`tangents.predict.gradient_descent_mse`); their
   pairwise RMSEs against width.
5. **Spectrum**: the eigenvalues ``λᵢ`` and eigenvectors ``vᵢ`` of ``Θ(X, X)``, and the
   training residual ``r_t = f_t(X) − Y`` of the widest networks projected on them,
   ``ρᵢ(t) = ‖⟨vᵢ, r_t⟩‖ / ‖⟨vᵢ, r₀⟩‖`` (root mean square over the seeds), against the
   kernel's discrete-time prediction ``|1 − η λᵢ / N|ᵗ``: fast along the top eigenvectors.

Example:
    >>> from tangents import evidence
    >>> report = evidence.run(widths=(64, 256, 1024), circle_widths=(64, 1024), seeds=range(4), steps=50)
    >>> round(report.ntk_error_fit.slope, 1)  # about -0.5
    >>> report.save("evidence")  # PNG figures and report.md
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._evidence._experiments import LR_FRACTION, N_ANGLES, experiments
from ._evidence._report import EvidenceError, EvidenceReport
from .blocks import available_memory

if TYPE_CHECKING:
    from .stax import Layer

__all__ = [
    "DEFAULT_CIRCLE_WIDTHS",
    "DEFAULT_WIDTHS",
    "LR_FRACTION",
    "N_ANGLES",
    "EvidenceError",
    "EvidenceReport",
    "default_network",
    "run",
]

#: Widths of the convergence, lazy-training and Lee et al. sweeps (at least 4, 2 decades).
DEFAULT_WIDTHS = (100, 500, 2000, 10000)
#: Widths of Jacot's Figures 1 and 2 (his were 500 and 10,000).
DEFAULT_CIRCLE_WIDTHS = (500, 10000)
#: Bytes per parameter, counted in floats, that one network needs at once: the network and
#: its gradients, the linearisation's θ₀, θ and gradients, and the empirical NTK's work.
_FLOATS_PER_PARAMETER = 8


def default_network(width: int, depth: int = 1, W_std: float = 1.0, b_std: float = 0.1) -> Layer:
    """Jacot et al.'s network: ``[Dense(width, W_std, b_std), Relu] × depth, Dense(1, W_std, b_std)``.

    NTK parameterization (``z = W_std/√n · x W + b_std · b``); ``b_std = 0.1`` is Jacot's β.
    Jacot's Figure 1 used depth 3 (his L = 4); the default, 1, keeps width 10,000 cheap
    (a depth-3 network of width 10,000 has 2·10⁸ parameters).

    Example:
        >>> net = default_network(512)
        >>> net.kernel_fn(torch.randn(3, 2), None, "ntk").shape
        torch.Size([3, 3])
    """
    from . import stax

    for name, value in (("width", width), ("depth", depth)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"default_network: {name} must be a positive int, got {value!r}.")
    layers: list[Any] = []
    for _ in range(depth):
        layers += [stax.Dense(width, W_std=W_std, b_std=b_std), stax.Relu()]
    return stax.serial(*layers, stax.Dense(1, W_std=W_std, b_std=b_std))


# ---------------------------------------------------------------------- argument checks


def _positive_ints(value: Any, name: str, minimum_count: int, what: str) -> tuple[int, ...]:
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"evidence.run: {name} must be a sequence of ints, got {type(value).__name__}.") from None
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in items):
        raise TypeError(f"evidence.run: {name} must be a sequence of ints, got {items!r}.")
    items = tuple(int(v) for v in items)
    low = 0 if name == "seeds" else 1
    if any(v < low for v in items):
        raise ValueError(f"evidence.run: every entry of {name} must be >= {low}, got {items!r}.")
    if len(set(items)) != len(items) or len(items) < minimum_count:
        raise ValueError(f"evidence.run: {name} must hold at least {minimum_count} different {what}, got {items!r}.")
    return items


def _int_at_least(value: Any, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"evidence.run: {name} must be an int {bound}, got {value!r}.")
    return int(value)


def _check_dtype(dtype: torch.dtype | str) -> torch.dtype:
    allowed = {"float32": torch.float32, "float64": torch.float64}
    if isinstance(dtype, str) and dtype in allowed:
        return allowed[dtype]
    if dtype in (torch.float32, torch.float64):
        return dtype  # type: ignore[return-value]
    raise ValueError(f"evidence.run: dtype must be 'float32' or 'float64' (or the torch dtype), got {dtype!r}.")


def _check_device(device: torch.device | str | None) -> torch.device:
    try:
        d = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError):
        raise ValueError(f"evidence.run: device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}.") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"evidence.run: device {device!r} was asked for but CUDA is not available here; use device='cpu'.")
    return d


def _layer(network: Callable[[int], Layer], width: int) -> Layer:
    layer = network(width)
    if not all(hasattr(layer, name) for name in ("kernel_fn", "to_module", "init_fn")):
        raise TypeError(
            f"evidence.run: network(width) must return a tangents.stax layer (e.g. stax.serial(...)), "
            f"got {type(layer).__name__} from network({width})."
        )
    return layer


def _check_output(layer: Layer, width: int) -> None:
    """A ValueError unless ``layer`` maps ``(N, 2)`` inputs to ``(N, 1)`` outputs."""
    try:
        out_shape = layer.output_shape((-1, 2))
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as error:
        raise ValueError(
            f"evidence.run: network({width}) must accept inputs of shape (N, 2) (points on the unit circle), but "
            f"it says: {error}"
        ) from None
    if not (isinstance(out_shape, tuple) and len(out_shape) == 2 and out_shape[1] == 1):
        raise ValueError(
            f"evidence.run: network({width}) must map (N, 2) inputs to (N, 1) outputs (end it with stax.Dense(1)), "
            f"got outputs of shape {out_shape}."
        )


def _estimated_parameters(network: Callable[[int], Layer], width: int) -> int | None:
    """About how many parameters ``network(width)`` has, without allocating it.

    Fully-connected networks have ``a + b·width + c·width²`` parameters: the quadratic through
    the counts at widths 8, 16 and 24 (built on the CPU, a few thousand floats). None if the
    network cannot be built at those widths.
    """
    from ._torch_private import tree_flatten

    counts = []
    for w in (8, 16, 24):
        try:
            _, params = network(w).init_fn(0, (-1, 2))
        except Exception:  # a network that needs other widths: no estimate, no guard
            return None
        leaves, _ = tree_flatten(params)
        counts.append(Fraction(sum(leaf.numel() for leaf in leaves if isinstance(leaf, torch.Tensor))))
    first, second = (counts[1] - counts[0]) / 8, (counts[2] - 2 * counts[1] + counts[0]) / 128
    return max(0, round(counts[0] + (width - 8) * first + (width - 8) * (width - 16) * second))


def run(
    network: Callable[[int], Layer] | None = None,
    out: str | Path | None = None,
    widths: Iterable[int] = DEFAULT_WIDTHS,
    circle_widths: Iterable[int] = DEFAULT_CIRCLE_WIDTHS,
    seeds: Iterable[int] = range(10),
    data_seed: int = 0,
    n_train: int = 16,
    steps: int = 200,
    lr: float | None = None,
    dtype: torch.dtype | str = "float64",
    device: torch.device | str | None = None,
    progress: bool | None = None,
    dpi: int = 100,
    threads: int | None = 1,
) -> EvidenceReport:
    """Trains finite networks of several widths and measures the theory's claims (module docstring).

    Every width in ``widths`` and ``circle_widths`` gets one network per seed; each is
    trained twice (itself and its linearisation) for ``steps`` steps. The cost is dominated by
    the widest: with the defaults (widths up to 10,000, 10 seeds, 200 steps, depth 1) about a
    minute of CPU.

    Args:
        network: ``network(width)`` returns a `tangents.stax` layer mapping ``(N, 2)`` inputs
            to ``(N, 1)`` outputs; default `default_network` (depth 1).
        out: if given, the directory where `EvidenceReport.save` writes figures and report.
        widths: at least 3 different widths for the convergence, lazy-training and Lee et al.
            sweeps (default 100, 500, 2000, 10000).
        circle_widths: the widths of Jacot's Figures 1 and 2 (default 500 and 10000; added
            to the sweep).
        seeds: the seeds of the networks (at least 2), the same at every width.
        data_seed: the seed of the training angles.
        n_train: the number of training points (2 to 512).
        steps: gradient-descent steps (at least 1).
        lr: the learning rate, or None for ``N / (2 λ_max(Θ(X, X)))`` (per width).
        dtype: of the finite networks, ``"float64"`` (default) or ``"float32"``.
        device: torch device of the finite networks (default CPU).
        progress: a progress bar on stderr (default: when stderr is a terminal).
        dpi: resolution of the saved figures.
        threads: CPU threads for torch during the run (torch's setting is restored after);
            None keeps torch's setting. The default, 1, is fastest: the matrices here are
            small, and with more threads OpenMP's spin-waiting made the same run 10× slower
            on a 2-core machine that other processes were using.

    Returns:
        The `EvidenceReport`.

    Raises:
        ValueError, TypeError: a bad argument, with the fix.
        MemoryError: the widest network would not fit in the memory available.
        EvidenceError: training diverged.
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    if network is None:
        network = default_network
    elif not callable(network):
        raise TypeError(
            f"evidence.run: network must be a function width -> stax layer, e.g. "
            f"lambda n: stax.serial(stax.Dense(n), stax.Relu(), stax.Dense(1)), got {type(network).__name__}."
        )
    sweep = _positive_ints(widths, "widths", 3, "widths (a log-log slope)")
    circle = _positive_ints(circle_widths, "circle_widths", 1, "widths")
    seed_list = _positive_ints(seeds, "seeds", 2, "seeds (a spread between networks)")
    data_seed = _int_at_least(data_seed, "data_seed", 0)
    n_train = _int_at_least(n_train, "n_train", 2, 512)
    steps = _int_at_least(steps, "steps", 1)
    dpi = _int_at_least(dpi, "dpi", 20, 600)
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0):
        raise ValueError(f"evidence.run: lr must be a positive finite number or None (automatic), got {lr!r}.")
    if threads is not None:
        threads = _int_at_least(threads, "threads", 1)
    torch_dtype = _check_dtype(dtype)
    dev = _check_device(device)
    all_widths = tuple(sorted(set(sweep) | set(circle)))

    layers = {w: _layer(network, w) for w in all_widths}
    for w in all_widths:
        _check_output(layers[w], w)
    widest = all_widths[-1]
    estimate = _estimated_parameters(network, widest)
    need = _FLOATS_PER_PARAMETER * (torch.finfo(torch_dtype).bits // 8) * (estimate or 0)
    if estimate is not None and need > available_memory(dev):
        raise MemoryError(
            f"evidence.run: the widest network (width {widest}, about {estimate:,} parameters) needs about "
            f"{need / 2**30:.1f} GiB while training, but {available_memory(dev) / 2**30:.1f} GiB are available on "
            f"{dev}; use smaller widths or a shallower network."
        )

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        report = experiments(
            layers, all_widths, tuple(sorted(circle)), seed_list, data_seed, n_train, steps, lr,
            torch_dtype, dev, progress, timings,
        )
    finally:
        torch.set_num_threads(previous_threads)
    timings["total"] = time.perf_counter() - t_start
    if out is not None:
        t0 = time.perf_counter()
        report.save(out, dpi=dpi)
        timings["figures and report"] = time.perf_counter() - t0
    return report
