r"""The log marginal likelihood of a kernel, and hyperparameters learned by maximising it.

For a zero-mean Gaussian process with covariance :math:`K` (a network's NNGP, or its NTK)
observed with noise :math:`\sigma^2 I` and targets :math:`Y` of shape ``(N, C)`` (the C
columns independent, :math:`K \otimes I` as in the predictors' ``trace_axes=(-1,)``),

.. math::
    \log p(Y) = -\tfrac12 \operatorname{tr}(Y^\top (K + \sigma^2 I)^{-1} Y)
                - \tfrac{C}{2} \log\det(K + \sigma^2 I) - \tfrac{NC}{2} \log 2\pi,

with :math:`\sigma^2` = ``diag_reg`` times the mean of :math:`\operatorname{diag} K` (the
predictors' convention), or ``diag_reg`` itself with ``diag_reg_absolute_scale=True``.
Everything is differentiable in the kernel and in ``diag_reg``; with hyperparameters
given as tensors (`tangents.stax.hyperparameters`), in those too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..stax import Layer
from ..stax._hyperparameters import hyperparameters, with_hyperparameters
from ._common import ArrayLike, as_tensor, check_finite, get_attr

__all__ = ["MarginalLikelihood", "log_marginal_likelihood"]

_WHERE = "log_marginal_likelihood"

#: Hyperparameters that are standard deviations or scales (> 0): learned as their logarithm.
_POSITIVE = frozenset({"W_std", "b_std", "gamma", "diag_reg"})


def log_marginal_likelihood(
    k: Any,
    y: ArrayLike,
    diag_reg: float | torch.Tensor = 0.0,
    diag_reg_absolute_scale: bool = False,
    *,
    get: str = "nngp",
) -> torch.Tensor:
    r"""log p(Y) of targets under a zero-mean GP with kernel ``k`` plus ``diag_reg`` noise.

    .. math::
        \log p(Y) = -\tfrac12 \operatorname{tr}(Y^\top \tilde K^{-1} Y)
                    - \tfrac{C}{2} \log\det\tilde K - \tfrac{NC}{2}\log 2\pi,
        \qquad \tilde K = K + \sigma^2 I,

    with :math:`\sigma^2` = ``diag_reg · mean(diag K)`` (or ``diag_reg`` if
    ``diag_reg_absolute_scale``), computed by a Cholesky factorisation in float64.
    Differentiable (autograd, forward mode) in ``k``, ``y`` and a tensor ``diag_reg``.

    Args:
        k: the train-train kernel ``(N, N)``: a tensor or array, or a `tangents.Kernel` /
            named tuple whose field ``get`` is taken.
        y: targets ``(N,)`` or ``(N, C)`` (each column an independent draw).
        diag_reg: the noise, relative to the mean of the kernel's diagonal (``>= 0``; a
            number or a 0-d tensor).
        diag_reg_absolute_scale: ``True`` for the noise variance ``diag_reg`` itself.
        get: the field of a `Kernel` ``k`` to use, ``"nngp"`` (default) or ``"ntk"``.

    Returns:
        A 0-d float64 tensor (on ``k``'s device), the sum over the C columns.

    Raises:
        ValueError: shapes that do not match, NaN or infinite entries, a negative
            ``diag_reg``, or a kernel that is not positive definite (with the fix:
            increase ``diag_reg``).

    Example:
        >>> k = kernel_fn(x_train, None, "nngp")          # (N, N)
        >>> predict.log_marginal_likelihood(k, y_train, diag_reg=1e-2)
        tensor(-12.3...)
    """
    if get not in ("nngp", "ntk"):
        raise ValueError(f"{_WHERE}: get must be 'nngp' or 'ntk', got {get!r}.")
    kernel = as_tensor(get_attr(k, get, f"{_WHERE}: k"), "k")
    targets = as_tensor(y, "y", kernel.device)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(
            f"{_WHERE}: k must be a square (N, N) train-train kernel, got shape {tuple(kernel.shape)}; "
            f"compute it with kernel_fn(x_train, None, 'nngp') for a network with one output per example."
        )
    if targets.ndim not in (1, 2) or targets.shape[0] != kernel.shape[0]:
        raise ValueError(
            f"{_WHERE}: y must have shape (N,) or (N, C) with N = {kernel.shape[0]} rows like k, "
            f"got shape {tuple(targets.shape)}."
        )
    if isinstance(diag_reg, bool) or not isinstance(diag_reg, (int, float, torch.Tensor)):
        raise TypeError(f"{_WHERE}: diag_reg must be a number or a 0-d tensor, got {type(diag_reg).__name__}.")
    if isinstance(diag_reg, torch.Tensor) and diag_reg.ndim != 0:
        raise ValueError(f"{_WHERE}: diag_reg must be a 0-d tensor, got shape {tuple(diag_reg.shape)}.")
    reg = float(diag_reg.detach()) if isinstance(diag_reg, torch.Tensor) else float(diag_reg)
    if not math.isfinite(reg) or reg < 0:
        raise ValueError(f"{_WHERE}: diag_reg must be a finite number >= 0, got {reg!r}.")
    check_finite(kernel, f"{_WHERE}: k")
    if not bool(torch.isfinite(targets).all()):
        raise ValueError(f"{_WHERE}: y contains NaN or infinite entries; drop or impute those targets first.")

    kernel = kernel.to(torch.float64)
    targets = targets.to(torch.float64).reshape(kernel.shape[0], -1)
    n, c = targets.shape
    scale = 1.0 if diag_reg_absolute_scale else torch.diagonal(kernel).mean()
    noise = diag_reg * scale
    if isinstance(noise, torch.Tensor):
        noise = noise.to(device=kernel.device, dtype=torch.float64)
    regularised = kernel + noise * torch.eye(n, dtype=torch.float64, device=kernel.device)
    chol, info = torch.linalg.cholesky_ex(regularised)
    if int(info) != 0:
        raise ValueError(
            f"{_WHERE}: the kernel plus diag_reg is not positive definite (Cholesky failed at pivot "
            f"{int(info)}); increase diag_reg (got {reg:g}, e.g. try {max(10 * reg, 1e-6):g})."
        )
    alpha = torch.cholesky_solve(targets, chol)
    log_det = 2 * torch.log(torch.diagonal(chol)).sum()
    return -0.5 * (targets * alpha).sum() - 0.5 * c * log_det - 0.5 * n * c * math.log(2 * math.pi)


class MarginalLikelihood(nn.Module):
    r"""A network's hyperparameters (and ``diag_reg``) as ``nn.Parameter``\ s, for ``torch.optim``.

    ``model()`` is the log marginal likelihood of the training targets under the network's
    NNGP (or NTK) with the current hyperparameters; maximise it with any optimizer (or
    `fit`). Standard deviations, ``gamma`` and ``diag_reg`` are learned as their logarithm
    (so they stay positive), other activation parameters (``Erf``'s ``a, b, c``,
    ``LeakyRelu``'s slope ``a``, ...) as they are. Names are those of
    `tangents.stax.hyperparameters` (``"0.W_std"``, ``"2.b_std"``, ...) and ``"diag_reg"``.

    Args:
        network: a `tangents.stax` layer with one output per example.
        x_train: training inputs ``(N, ...)``.
        y_train: targets ``(N,)`` or ``(N, C)``.
        get: ``"nngp"`` (default) or ``"ntk"``: the kernel whose likelihood is maximised.
        diag_reg: the starting noise, relative to the mean of the kernel's diagonal (> 0 to
            learn it).
        diag_reg_absolute_scale: ``True`` for an absolute noise variance.
        learn: the names to learn; ``None`` (default) learns every hyperparameter of the
            network and ``diag_reg``. The others keep their values.

    Example:
        >>> net = stax.serial(stax.Dense(512, W_std=1.0, b_std=0.1), stax.Erf(),
        ...                   stax.Dense(1, W_std=1.0, b_std=0.1))
        >>> model = predict.MarginalLikelihood(net, x_train, y_train, diag_reg=0.1)
        >>> optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        >>> for _ in range(100):
        ...     optimizer.zero_grad()
        ...     loss = -model()
        ...     loss.backward()
        ...     optimizer.step()
        >>> model.network(), model.values()["diag_reg"]   # the learned network and noise
    """

    def __init__(
        self,
        network: Layer,
        x_train: ArrayLike,
        y_train: ArrayLike,
        get: str = "nngp",
        diag_reg: float = 1e-2,
        diag_reg_absolute_scale: bool = False,
        learn: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        where = "MarginalLikelihood"
        if not isinstance(network, Layer):
            raise TypeError(f"{where}: network must be a tangents.stax layer, got {type(network).__name__}.")
        if get not in ("nngp", "ntk"):
            raise ValueError(f"{where}: get must be 'nngp' or 'ntk', got {get!r}.")
        if isinstance(diag_reg, bool) or not isinstance(diag_reg, (int, float)) or not math.isfinite(diag_reg) or diag_reg < 0:
            raise ValueError(f"{where}: diag_reg must be a finite number >= 0, got {diag_reg!r}.")
        start = {name: float(torch.as_tensor(v).detach()) for name, v in hyperparameters(network).items()}
        start["diag_reg"] = float(diag_reg)
        names = list(start) if learn is None else list(learn)
        unknown = [name for name in names if name not in start]
        if unknown:
            raise ValueError(f"{where}: learn names {unknown} that the network does not have; valid names: {', '.join(start)}.")
        for name in names:
            if _positive(name) and start[name] <= 0:
                raise ValueError(
                    f"{where}: {name}={start[name]:g} cannot be learned on the log scale; start it at a small "
                    f"positive value (e.g. 0.01) or leave it out of learn=."
                )
        self.base = network
        self.get = get
        self.diag_reg_absolute_scale = bool(diag_reg_absolute_scale)
        self.x_train = as_tensor(x_train, "x_train")
        self.y_train = as_tensor(y_train, "y_train")
        self.names = tuple(names)
        self.fixed = {name: v for name, v in start.items() if name not in self.names}
        raw = [math.log(start[n]) if _positive(n) else start[n] for n in self.names]
        dtype = self.x_train.dtype if self.x_train.is_floating_point() else torch.get_default_dtype()
        self.raw = nn.Parameter(torch.tensor(raw, dtype=dtype, device=self.x_train.device))

    def values(self) -> dict[str, torch.Tensor]:
        """Every hyperparameter and ``diag_reg`` by name: learned ones as 0-d tensors (in the
        graph), the others as numbers."""
        out: dict[str, Any] = dict(self.fixed)
        for i, name in enumerate(self.names):
            out[name] = self.raw[i].exp() if _positive(name) else self.raw[i]
        return out

    def network(self) -> Layer:
        """The network with the current hyperparameters, as plain numbers (detached)."""
        values = {n: float(torch.as_tensor(v).detach()) for n, v in self.values().items() if n != "diag_reg"}
        return with_hyperparameters(self.base, values)

    def forward(self) -> torch.Tensor:
        """The log marginal likelihood of ``y_train`` (a 0-d float64 tensor, differentiable)."""
        values = self.values()
        diag_reg = values.pop("diag_reg")
        kernel = with_hyperparameters(self.base, values).kernel_fn(self.x_train, None, self.get)
        return log_marginal_likelihood(kernel, self.y_train, diag_reg, self.diag_reg_absolute_scale, get=self.get)

    def fit(
        self,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
        steps: int = 50,
    ) -> list[float]:
        """Maximises the log marginal likelihood with ``optimizer`` for ``steps`` steps.

        Args:
            optimizer: ``params -> torch.optim.Optimizer``, e.g.
                ``lambda p: torch.optim.Adam(p, lr=0.05)``; default L-BFGS with a strong
                Wolfe line search (``torch.optim.LBFGS(p, line_search_fn="strong_wolfe")``).
            steps: optimizer steps (each L-BFGS step runs up to 20 evaluations).

        Returns:
            The log marginal likelihood after each step.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"MarginalLikelihood.fit: steps must be a positive integer, got {steps!r}.")
        if optimizer is None:
            opt = torch.optim.LBFGS(self.parameters(), line_search_fn="strong_wolfe")
        else:
            opt = optimizer(self.parameters())

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = -self()
            loss.backward()
            return loss

        history = []
        for _ in range(steps):
            opt.step(closure)
            with torch.no_grad():
                history.append(float(self()))
        return history


def _positive(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in _POSITIVE
