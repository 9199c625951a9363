"""What the scikit-learn kernel and estimators share: the import guard, inputs, networks."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

try:
    import sklearn  # noqa: F401
except ImportError as error:  # pragma: no cover - the test extra installs it
    raise ImportError(
        "tangents.sklearn needs scikit-learn, an optional dependency: pip install 'tangents[sklearn]'."
    ) from error

from .. import stax
from ..blocks import available_memory
from ..stax import Layer

__all__ = [
    "ACTIVATIONS", "TRAIN_COPIES", "as_inputs", "check_device", "check_input_shape", "check_kernel_shape",
    "check_train_memory", "prediction_block_rows",
]

#: ``(N, N)`` float64 arrays an estimator's ``fit`` holds at once besides its kernels: the
#: regularised kernel, its factor (Cholesky or eigenvectors) and one work array.
TRAIN_COPIES = 3

#: Bytes of one ``(B, N)`` test-train array a prediction block may take (~0.5 GB).
_TEST_BLOCK_BYTES = 2**29

#: ``activation=`` names of the estimators' simple architecture -> the stax layer.
ACTIVATIONS: dict[str, Callable[[], Layer]] = {
    "relu": stax.Relu,
    "erf": stax.Erf,
    "gelu": stax.Gelu,
    "abs": stax.Abs,
    "leaky_relu": lambda: stax.LeakyRelu(0.1),
    "sigmoid_like": stax.Sigmoid_like,
}


def check_input_shape(where: str, input_shape: Any) -> tuple[int, ...] | None:
    """``input_shape`` as a tuple of positive ints (``None`` passes through)."""
    if input_shape is None:
        return None
    ok = isinstance(input_shape, (tuple, list)) and len(input_shape) > 0 and all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in input_shape
    )
    if not ok:
        raise ValueError(
            f"{where}: input_shape must be None or a tuple of positive ints giving one example's "
            f"shape, e.g. (1, 8, 8) for 8x8 grey images (channels first), got {input_shape!r}."
        )
    return tuple(int(d) for d in input_shape)


def check_device(where: str, device: Any) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{where}: device must name a torch device such as 'cpu' or 'cuda', got {device!r}.") from None


def as_inputs(
    where: str, X: np.ndarray, input_shape: tuple[int, ...] | None, device: torch.device
) -> torch.Tensor:
    """The rows of a validated float64 ``X`` ``(N, d)`` as network inputs ``(N, *input_shape)``
    (``(N, d)`` when ``input_shape`` is ``None``), a float64 tensor on ``device`` (a copy:
    read-only arrays are fine)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{where}: X must be a 2-D array (n_samples, n_features), got shape {X.shape}.")
    x = torch.tensor(X, dtype=torch.float64, device=device)
    if input_shape is None:
        return x
    if math.prod(input_shape) != X.shape[1]:
        raise ValueError(
            f"{where}: input_shape={input_shape} holds {math.prod(input_shape)} numbers per example, but X "
            f"has {X.shape[1]} features; give the shape of one example (its product must be n_features)."
        )
    return x.reshape((X.shape[0],) + input_shape)


def check_kernel_shape(where: str, k: torch.Tensor, n1: int, n2: int) -> None:
    """A GP kernel needs one number per pair of examples: ``(N1, N2)``."""
    if tuple(k.shape) != (n1, n2):
        raise ValueError(
            f"{where}: the network's kernel has shape {tuple(k.shape)}, but a scikit-learn kernel needs one "
            f"number per pair of examples, ({n1}, {n2}); end the network with layers that remove the "
            f"spatial axes (e.g. stax.GlobalAvgPool() or stax.Flatten(), then stax.Dense(1))."
        )


def check_train_memory(where: str, n: int, n_kernels: int, device: torch.device) -> None:
    """Raises a MemoryError naming the fix before ``fit`` allocates ``(N, N)`` arrays that cannot fit.

    ``fit`` keeps ``n_kernels`` train-train kernels and makes `TRAIN_COPIES` more ``(N, N)``
    float64 arrays (8 N² bytes each) to factorise them; this is a lower bound of its memory.
    """
    per = 8 * n * n
    needed = per * (n_kernels + TRAIN_COPIES)
    free = available_memory(device)
    if needed > free:
        most = math.isqrt(free // (8 * (n_kernels + TRAIN_COPIES)))
        raise MemoryError(
            f"{where}: {n} training examples need at least {needed / 2**30:.1f} GB ({n_kernels + TRAIN_COPIES} "
            f"arrays of {n} x {n} float64 for the train-train kernels and their factorisation), but only "
            f"{free / 2**30:.1f} GB is free on {device}; fit on a random subset of at most ~{most} examples "
            f"(e.g. sklearn.utils.resample(X, y, n_samples={most}, replace=False))."
        )


def prediction_block_rows(n_train: int) -> int:
    """Test points per prediction block: a ``(B, N)`` float64 array stays under ~0.5 GB."""
    return max(1, _TEST_BLOCK_BYTES // (8 * max(n_train, 1)))
