r"""Reading ``W_std`` and ``b_std`` from a torch module's weights.

In the standard parameterization a layer ``z = W x + b`` with ``fan_in`` inputs per output
has the infinite-width kernel ``Σ' = W_std² Σ + b_std²`` with

    W_std² = fan_in · Var(W),        b_std² = Var(b).

So the variance of the entries is what is read. torch draws them from a known distribution,
but the tensor does not record which one, so each weight tensor is compared with the
variances of the initialisers people use (``fan_in``/``fan_out`` as torch computes them for
that tensor):

====================================  ============================  =============================
initialiser                           Var(W)                        W_std (nn.Linear, nn.Conv)
====================================  ============================  =============================
torch's default (kaiming_uniform_,    1 / (3 fan_in)                1/√3 ≈ 0.577
a=√5) of Linear and Conv
kaiming_* (He, fan_in, ReLU gain)     2 / fan_in                    √2
kaiming_* (mode='fan_out')            2 / fan_out                   √(2 fan_in / fan_out)
xavier_* (Glorot)                     2 / (fan_in + fan_out)        √(2 fan_in / (fan_in+fan_out))
LeCun, N(0, 1/fan_in)                 1 / fan_in                    1
zeros_                                0                             0
====================================  ============================  =============================

and bias tensors with torch's default U(−1/√fan_in, 1/√fan_in) (Var = 1/(3 fan_in), so
b_std = 1/√(3 fan_in)) and zeros. A tensor is read as torch's default when every entry lies
within the default's bound and its second moment m = mean(W²) is within `Z_ACCEPT` standard
errors of the default variance (the standard error of m is √(Var(W²)/n), from the sample's
fourth moment, or that of a Gaussian for fewer than 32 entries): a model that was not
re-initialised is read exactly even where another initialiser's variance is close (xavier's
2/(27 + 144) against the default 1/81 for a 3→16 channel 3×3 convolution). Otherwise m is
matched to the nearest other candidate within `Z_ACCEPT`, whose exact value is used. Otherwise the estimate √(fan_in · m) is
used and marked as estimated, with its relative standard error. A user who wants exact
values for such a layer passes them (``stds=``).

Weights and biases must have mean zero (the kernel is that of zero-mean Gaussian weights);
a tensor whose mean is further than `Z_MEAN` standard errors from 0 is an error.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ._trace import LiftError

#: A candidate initialiser is accepted when the sample's second moment is within this many
#: standard errors of its variance (a default-initialised model is misread with probability
#: below 1e-6 per tensor).
Z_ACCEPT = 5.0
#: Tensors whose mean is further than this many standard errors from 0 are rejected.
Z_MEAN = 6.0
#: Below this many entries the fourth moment is not estimated (a Gaussian's is assumed).
_FEW = 32


@dataclasses.dataclass(frozen=True)
class Std:
    """A standard deviation read from a tensor, and how.

    Attributes:
        value: ``W_std`` or ``b_std`` (``None``: no bias).
        source: how it was obtained, e.g. ``"torch default (kaiming_uniform_, a=√5)"``.
        exact: ``False`` when estimated from the sample.
    """

    value: float | None
    source: str
    exact: bool = True

    def describe(self, name: str) -> str:
        if self.value is None:
            return f"{name}=None (no bias)"
        return f"{name}={self.value:.6g} [{self.source}]"


def tensor_fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` as ``torch.nn.init`` computes them for a weight of ``shape``."""
    if len(shape) < 2:
        raise ValueError(f"fans need a weight with at least 2 dimensions, got shape {shape}.")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _moments(t: torch.Tensor) -> tuple[int, float, float, float, float]:
    """``(n, mean, centred variance, m2 = mean(t²), Var(t²))`` in float64."""
    x = t.detach().to("cpu", torch.float64).reshape(-1)
    n = x.numel()
    mean = float(x.mean())
    centred = float(((x - mean) ** 2).mean())
    squares = x**2
    m2 = float(squares.mean())
    var_sq = float(((squares - m2) ** 2).mean())
    return n, mean, centred, m2, var_sq


def _check_zero_mean(t: torch.Tensor, what: str, where: str) -> tuple[int, float, float]:
    n, mean, centred, m2, var_sq = _moments(t)
    if not all(math.isfinite(v) for v in (mean, m2)):
        raise LiftError(f"from_torch: {what} of {where} has NaN or infinite entries; re-initialise it.")
    if n >= 8 and mean**2 > Z_MEAN**2 * centred / n + 1e-300 and abs(mean) > 1e-12:
        raise LiftError(
            f"from_torch: {what} of {where} has mean {mean:.4g} (entries {centred ** 0.5:.3g} apart around it): "
            f"the infinite-width kernel is that of zero-mean Gaussian weights, and a non-zero mean shifts "
            f"every unit alike (it does not average out). Re-initialise it with a zero-mean initialiser "
            f"(nn.init.zeros_, normal_, kaiming_uniform_, ...)."
        )
    return n, m2, var_sq


def _match(
    m2: float, var_sq: float, n: int, candidates: list[tuple[str, float]]
) -> tuple[str, float] | None:
    """The candidate ``(name, variance)`` nearest to the second moment ``m2`` in standard errors,
    among those within `Z_ACCEPT` of it."""
    best, best_z = None, Z_ACCEPT
    for name, v in candidates:
        if v == 0:
            if m2 == 0:
                return name, v
            continue
        spread = var_sq if n >= _FEW else 2 * v * v  # Var(W²): measured, or a Gaussian's
        z = abs(m2 - v) / math.sqrt(max(spread, 1e-300) / n)
        if z < best_z or (best is None and z <= best_z):
            best, best_z = (name, v), z
    return best


def _is_default(t: torch.Tensor, m2: float, var_sq: float, n: int, var: float) -> bool:
    """Whether ``t`` is consistent with torch's default U(−a, a), Var = a²/3: every entry within
    the bound and the second moment within `Z_ACCEPT` standard errors (a model that was not
    re-initialised is read as such even where another initialiser's variance is close)."""
    bound = math.sqrt(3 * var)
    if float(t.detach().abs().max()) > bound * (1 + 1e-6):
        return False
    return _match(m2, var_sq, n, [("default", var)]) is not None


def read_weight_std(
    weight: torch.Tensor, fan_in: float, where: str, default_var: float | None
) -> Std:
    """``W_std = √(fan_in · Var(W))`` of a weight tensor.

    Args:
        weight: the tensor (``(out, in, *k)`` as torch stores Linear/Conv weights; any shape
            with torch's fans otherwise).
        fan_in: the number of inputs each output sums over (the kernel's ``n``).
        where: the module path for messages.
        default_var: the variance of the owning module's default initialiser (``None``: none).
    """
    if weight.numel() == 0:
        raise LiftError(f"from_torch: the weight of {where} is empty; the layer has no inputs or outputs.")
    n, m2, var_sq = _check_zero_mean(weight, "the weight", where)
    t_in, t_out = tensor_fans(tuple(weight.shape)) if weight.ndim >= 2 else (weight.numel(), weight.numel())
    if default_var is not None and _is_default(weight, m2, var_sq, n, default_var):
        return Std(math.sqrt(fan_in * default_var), f"torch default init, U(±{math.sqrt(3 * default_var):.4g})")
    candidates: list[tuple[str, float]] = [
        ("zeros_", 0.0),
        ("kaiming (He) init, fan_in, ReLU gain: Var = 2/fan_in", 2.0 / t_in),
        ("kaiming (He) init, mode='fan_out': Var = 2/fan_out", 2.0 / t_out),
        ("xavier (Glorot) init: Var = 2/(fan_in + fan_out)", 2.0 / (t_in + t_out)),
        ("LeCun init: Var = 1/fan_in", 1.0 / t_in),
    ]
    found = _match(m2, var_sq, n, candidates)
    if found is not None:
        name, var = found
        return Std(math.sqrt(fan_in * var), name)
    rel = 0.5 * math.sqrt(max(var_sq, 0.0) / n) / m2 if m2 > 0 else 0.0
    return Std(math.sqrt(fan_in * m2), f"estimated from {n} entries, ±{100 * rel:.2g}%", exact=False)


def read_bias_std(bias: torch.Tensor | None, where: str, default_var: float | None) -> Std:
    """``b_std = √Var(b)`` of a bias (``None`` -> no bias)."""
    if bias is None:
        return Std(None, "no bias")
    n, m2, var_sq = _check_zero_mean(bias, "the bias", where)
    if m2 == 0:
        return Std(0.0, "zeros")
    if default_var is not None and _is_default(bias, m2, var_sq, n, default_var):
        return Std(math.sqrt(default_var), f"torch default init, U(±{math.sqrt(3 * default_var):.4g})")
    found = _match(m2, var_sq, n, [("zeros", 0.0)])
    if found is not None:
        name, var = found
        return Std(math.sqrt(var), name)
    rel = 0.5 * math.sqrt(max(var_sq, 0.0) / n) / m2 if m2 > 0 else 0.0
    return Std(math.sqrt(m2), f"estimated from {n} entries, ±{100 * rel:.2g}%", exact=False)


def given_std(value: object, name: str, where: str) -> Std:
    """A user-given standard deviation (``stds=``), validated."""
    if value is None and name == "b_std":
        return Std(None, "given")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise LiftError(
            f"from_torch: stds[{where!r}][{name!r}] must be a finite non-negative number"
            f"{' or None' if name == 'b_std' else ''}, got {value!r}."
        )
    return Std(float(value), "given")
