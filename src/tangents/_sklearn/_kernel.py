r"""`InfiniteWidthKernel`: a network's NNGP or NTK as a scikit-learn Gaussian-process kernel.

The hyperparameters are the network's (`tangents.stax.hyperparameters`: each layer's
``W_std``, ``b_std`` and activation parameters), exposed on scikit-learn's log scale,
:math:`\theta_j = \log v_j`. ``eval_gradient=True`` returns
:math:`\partial K / \partial \theta_j = v_j \, \partial K / \partial v_j` by forward-mode
automatic differentiation, one pass per hyperparameter, so
``GaussianProcessRegressor(kernel=...)`` tunes them by maximising the log marginal
likelihood, alone or composed with scikit-learn's kernels (``+ WhiteKernel()``,
``* ConstantKernel()``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.autograd.forward_ad as forward_ad
from sklearn.gaussian_process.kernels import Hyperparameter, Kernel

from .._torch_private import load_jvp_decompositions
from ..stax import Layer, hyperparameters, with_hyperparameters
from ._common import as_inputs, check_device, check_input_shape, check_kernel_shape

# forward mode's first use imports torch modules that warn (torch.jit.script is deprecated)
load_jvp_decompositions()

__all__ = ["InfiniteWidthKernel"]

#: Examples per block when only the diagonal k(x, x) is wanted (`InfiniteWidthKernel.diag`).
_DIAGONAL_BLOCK = 128


class InfiniteWidthKernel(Kernel):
    r"""The NNGP or NTK of an infinitely wide network, as a scikit-learn GP kernel.

    ``k(x, x') = kernel_fn(x, x', get)`` of any `tangents.stax` network with one number per
    pair of examples. Its hyperparameters (every ``W_std``, ``b_std`` and activation
    parameter with a positive value, named as in `tangents.stax.hyperparameters`, e.g.
    ``"0.W_std"``) are exposed on scikit-learn's log scale (``theta``, ``bounds``,
    ``hyperparameters``); ``eval_gradient=True`` differentiates the kernel in them by
    forward-mode autograd. Zero or negative values (``b_std=0``, ``Abs``'s slope ``a=-1``)
    cannot be on a log scale and stay fixed; give ``b_std`` a small positive value to tune it.

    The tuned network is ``kernel.network`` (``gp.kernel_.network`` after fitting a
    ``GaussianProcessRegressor``), usable anywhere in tangents.

    Args:
        network: a `tangents.stax` layer; its kernel of two batches must be ``(N1, N2)``
            (one output per example: end CNNs with ``GlobalAvgPool`` or ``Flatten``).
        get: ``"nngp"`` (the prior of the infinitely wide network) or ``"ntk"``.
        input_shape: the shape of one example, e.g. ``(1, 8, 8)``, when rows of ``X`` are
            flattened images; ``None`` feeds rows ``(N, d)`` as they are.
        hyperparameter_bounds: ``(low, high)`` for every tuned value (not its log), or
            ``"fixed"`` to tune none.
        fixed: names of hyperparameters to keep fixed.
        device: where the kernel is computed (results come back as numpy arrays).

    Example:
        >>> from sklearn.gaussian_process import GaussianProcessRegressor
        >>> from sklearn.gaussian_process.kernels import WhiteKernel
        >>> net = stax.serial(stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(),
        ...                   stax.Dense(1, W_std=1.5, b_std=0.05))
        >>> gp = GaussianProcessRegressor(InfiniteWidthKernel(net) + WhiteKernel()).fit(X, y)
        >>> gp.kernel_.k1.network   # the network with the tuned W_std and b_std
    """

    def __init__(
        self,
        network: Layer,
        get: str = "nngp",
        input_shape: tuple[int, ...] | None = None,
        hyperparameter_bounds: tuple[float, float] | str = (1e-3, 1e3),
        fixed: Sequence[str] = (),
        device: str = "cpu",
    ) -> None:
        self.network = network
        self.get = get
        self.input_shape = input_shape
        self.hyperparameter_bounds = hyperparameter_bounds
        self.fixed = fixed
        self.device = device
        self._check()

    # ------------------------------------------------------------------ validation

    def _check(self) -> None:
        where = "InfiniteWidthKernel"
        if not isinstance(self.network, Layer):
            raise TypeError(
                f"{where}: network must be a tangents.stax layer, e.g. stax.serial(stax.Dense(512), stax.Relu(), "
                f"stax.Dense(1)), got {type(self.network).__name__}."
            )
        if self.get not in ("nngp", "ntk"):
            raise ValueError(f"{where}: get must be 'nngp' or 'ntk', got {self.get!r}.")
        check_input_shape(where, self.input_shape)
        check_device(where, self.device)
        bounds = self.hyperparameter_bounds
        if not (isinstance(bounds, str) and bounds == "fixed"):
            ok = isinstance(bounds, (tuple, list)) and len(bounds) == 2 and all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and b > 0 for b in bounds
            )
            if not ok or bounds[0] >= bounds[1]:
                raise ValueError(
                    f"{where}: hyperparameter_bounds must be 'fixed' or (low, high) with 0 < low < high, "
                    f"got {bounds!r}."
                )
        if isinstance(self.fixed, str) or not all(isinstance(n, str) for n in self.fixed):
            raise TypeError(f"{where}: fixed must be a tuple of hyperparameter names, got {self.fixed!r}.")
        unknown = sorted(set(self.fixed) - set(hyperparameters(self.network)))
        if unknown:
            raise ValueError(
                f"{where}: fixed names {unknown}, which the network does not have; its hyperparameters are "
                f"{', '.join(hyperparameters(self.network)) or 'none'}."
            )

    # ------------------------------------------------------------------ hyperparameters

    def _values(self) -> dict[str, float]:
        return {name: _number(value) for name, value in hyperparameters(self.network).items()}

    def _tuned(self) -> list[str]:
        """Names on the log scale: positive values, not fixed, unless all are fixed."""
        if isinstance(self.hyperparameter_bounds, str):
            return []
        return [name for name, value in self._values().items() if value > 0 and name not in self.fixed]

    @property
    def hyperparameters(self) -> list[Hyperparameter]:
        """One ``Hyperparameter`` per network hyperparameter (the untuned ones ``fixed``)."""
        tuned = set(self._tuned())
        return [
            Hyperparameter(name, "numeric", self.hyperparameter_bounds if name in tuned else "fixed")
            for name in self._values()
        ]

    @property
    def theta(self) -> np.ndarray:
        """The logarithms of the tuned hyperparameters, in network order."""
        values = self._values()
        return np.log(np.array([values[name] for name in self._tuned()], dtype=np.float64))

    @theta.setter
    def theta(self, theta: np.ndarray) -> None:
        names = self._tuned()
        theta = np.asarray(theta, dtype=np.float64).reshape(-1)
        if theta.shape[0] != len(names):
            raise ValueError(
                f"InfiniteWidthKernel.theta: got {theta.shape[0]} values for {len(names)} tuned hyperparameters "
                f"({', '.join(names) or 'none'})."
            )
        self.network = with_hyperparameters(self.network, {n: float(np.exp(v)) for n, v in zip(names, theta)})

    # ------------------------------------------------------------------ the kernel

    def __call__(self, X: np.ndarray, Y: np.ndarray | None = None, eval_gradient: bool = False) -> Any:
        """``K(X, Y)`` ``(N1, N2)`` and, with ``eval_gradient``, ``∂K/∂θ`` ``(N1, N1, n_dims)``.

        Args:
            X: ``(N1, n_features)``.
            Y: ``(N2, n_features)``, or ``None`` for ``Y = X``.
            eval_gradient: also return the gradient in ``theta`` (only when ``Y`` is ``None``).
        """
        if eval_gradient and Y is not None:
            raise ValueError("InfiniteWidthKernel: the gradient can only be evaluated when Y is None.")
        x = self._inputs(X)
        y = None if Y is None else self._inputs(Y)
        n2 = x.shape[0] if y is None else y.shape[0]
        if not eval_gradient:
            with torch.no_grad():
                k = self.network.kernel_fn(x, y, self.get)
            check_kernel_shape("InfiniteWidthKernel", k, x.shape[0], n2)
            return k.cpu().numpy()
        return self._with_gradient(x)

    def _with_gradient(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``K`` and ``dK/dθ`` by one forward-mode pass per tuned hyperparameter."""
        names = self._tuned()
        values = self._values()
        n = x.shape[0]
        if not names:
            with torch.no_grad():
                k = self.network.kernel_fn(x, None, self.get)
            check_kernel_shape("InfiniteWidthKernel", k, n, n)
            return k.cpu().numpy(), np.empty((n, n, 0))
        log_values = torch.tensor([math.log(values[name]) for name in names], dtype=torch.float64, device=x.device)
        gradient = np.empty((n, n, len(names)))
        k = None
        for j in range(len(names)):
            with forward_ad.dual_level():
                direction = torch.zeros_like(log_values)
                direction[j] = 1.0
                exp_values = forward_ad.make_dual(log_values, direction).exp()  # dv/dθ = v
                network = with_hyperparameters(self.network, {n: exp_values[i] for i, n in enumerate(names)})
                dual = network.kernel_fn(x, None, self.get)
                primal, tangent = forward_ad.unpack_dual(dual)
            if k is None:
                check_kernel_shape("InfiniteWidthKernel", primal, n, n)
                k = primal.detach().cpu().numpy()
            gradient[:, :, j] = 0.0 if tangent is None else tangent.detach().cpu().numpy()
        return k, gradient

    def diag(self, X: np.ndarray) -> np.ndarray:
        """``k(x, x)`` for every row of ``X``, ``(N,)``, in blocks (not the whole ``N × N``)."""
        x = self._inputs(X)
        out = []
        for start in range(0, x.shape[0], _DIAGONAL_BLOCK):
            block = x[start : start + _DIAGONAL_BLOCK]
            with torch.no_grad():
                k = self.network.kernel_fn(block, None, self.get)
            check_kernel_shape("InfiniteWidthKernel", k, block.shape[0], block.shape[0])
            out.append(torch.diagonal(k).cpu().numpy())
        return np.concatenate(out) if out else np.empty(0)

    def is_stationary(self) -> bool:
        """``False``: the kernel depends on the inputs themselves, not only on ``x - x'``."""
        return False

    @property
    def requires_vector_input(self) -> bool:
        return True

    def _inputs(self, X: Any) -> torch.Tensor:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(f"InfiniteWidthKernel: X must be 2-D (n_samples, n_features), got shape {X.shape}.")
        if not np.isfinite(X).all():
            raise ValueError("InfiniteWidthKernel: X contains NaN or infinite values; impute or drop them first.")
        self._check()
        return as_inputs(
            "InfiniteWidthKernel", X, check_input_shape("InfiniteWidthKernel", self.input_shape), torch.device(self.device)
        )

    # ------------------------------------------------------------------ comparison and display

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return False
        assert isinstance(other, InfiniteWidthKernel)
        return (
            self.get == other.get
            and self.input_shape == other.input_shape
            and self.hyperparameter_bounds == other.hyperparameter_bounds
            and tuple(self.fixed) == tuple(other.fixed)
            and str(self.device) == str(other.device)
            and _same_layer(self.network, other.network)
        )

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={value:.3g}" for name, value in self._values().items())
        return f"InfiniteWidthKernel({self.get}: {values})"


def _number(value: float | torch.Tensor) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _same_layer(a: Any, b: Any) -> bool:
    """Structural equality of two layers (a clone's deep copy equals the original)."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a, b = torch.as_tensor(a).detach().cpu(), torch.as_tensor(b).detach().cpu()
        return a.shape == b.shape and bool(torch.equal(a.to(b.dtype), b))
    if isinstance(a, Layer) or isinstance(b, Layer):
        if type(a) is not type(b) or set(vars(a)) != set(vars(b)):
            return False
        return all(_same_layer(vars(a)[key], vars(b)[key]) for key in vars(a))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same_layer(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):
        return False
