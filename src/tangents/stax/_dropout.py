r"""`Dropout`, with neural-tangents' convention that ``rate`` is the KEEP probability.

Finite width (train mode): each unit is kept with probability p = ``rate`` and scaled by
1/p, so E[out] = x and E[out_i out_j] = x_i x_j (1 + δ_ij (1/p − 1)). At infinite width the
independent masks of two different examples (or locations) average out, while a unit's
product with itself keeps the extra factor 1/p:

    Σ'(a, b) = Σ(a, b) · (1/p if a and b are the same example and location else 1),

and Θ' likewise. As in neural-tangents, ``nngp`` and ``ntk`` are rescaled on their batch
diagonal only when ``x2`` is ``x1`` (``kernel_fn(x1, None)``); with ``x2`` given, the two
batches are treated as different examples, so ``kernel_fn(x, None)`` and
``kernel_fn(x, x)`` differ on the diagonal. ``cov1``/``cov2`` (a batch with itself) are
always rescaled on their diagonal.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

from .._kernel import Kernel
from ._layer import Layer, Params

_MODES = ("train", "test")


def _check_mode(caller: str, mode: Any) -> str:
    if mode not in _MODES:
        raise ValueError(f"{caller}: mode must be 'train' or 'test', got {mode!r}.")
    return mode


def scale_diagonal(x: torch.Tensor | None, factor: float, diagonal_batch: bool, diagonal_spatial: bool) -> torch.Tensor | None:
    """Multiplies the "same example, same location" entries of a covariance by ``factor``.

    Args:
        x: ``(N, *S)`` if ``diagonal_batch`` else ``(N1, N2, *S)``, with ``*S`` the
            spatial axes, interleaved pairs ``(H, H', W, W', ...)`` unless
            ``diagonal_spatial``. ``None`` and 0-d tensors pass through.
        factor: the multiplier.
        diagonal_batch: whether ``x`` has a single batch axis (every entry is on the
            batch diagonal).
        diagonal_spatial: whether ``x`` stores only location-diagonal entries.

    Returns:
        A tensor like ``x``. A two-batch covariance with N1 ≠ N2 has no diagonal and is
        returned unchanged.
    """
    if x is None or x.ndim == 0 or factor == 1:
        return x
    pairs = []
    if not diagonal_batch:
        if x.shape[0] != x.shape[1]:
            return x
        pairs.append(0)
    start = 1 if diagonal_batch else 2
    if not diagonal_spatial:
        pairs += list(range(start, x.ndim - 1, 2))
    if not pairs:
        return x * factor
    mask = torch.ones((1,) * x.ndim, dtype=torch.bool, device=x.device)
    for axis in pairs:
        shape = [1] * x.ndim
        shape[axis], shape[axis + 1] = x.shape[axis], x.shape[axis + 1]
        mask = mask & torch.eye(x.shape[axis], dtype=torch.bool, device=x.device).reshape(shape)
    return torch.where(mask, x * factor, x)


class Dropout(Layer):
    r"""Dropout (neural-tangents' ``stax.Dropout``); ``rate`` is the probability to KEEP a unit.

    ``apply`` in train mode: ``where(keep, x / rate, 0)`` with ``keep ~ Bernoulli(rate)``
    drawn from the ``rng`` keyword (a ``torch.Generator``) or torch's global RNG. The call's
    ``mode`` keyword (``StaxModule`` passes ``'train'`` in ``module.train()`` and
    ``'test'`` in ``module.eval()``) can turn dropout off; a layer built with
    ``mode='test'`` is always the identity.

    Kernel (train mode): entries of the same example and location are multiplied by
    1/rate: always in ``cov1``/``cov2``, and in ``nngp``/``ntk`` only when ``x2`` is
    ``None`` (the two batches are one). The output is no longer Gaussian. Test mode: the
    identity.

    Args:
        rate: keep probability, 0 < rate <= 1 (``rate=1`` keeps everything).
        mode: ``'train'`` or ``'test'``.

    Example:
        >>> net = stax.serial(stax.Dense(512), stax.Relu(), stax.Dropout(0.8), stax.Dense(1))
    """

    apply_kwargs = frozenset({"rng", "mode"})

    def __init__(self, rate: float, mode: str = "train") -> None:
        _check_mode("Dropout", mode)
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 < rate <= 1:
            raise ValueError(
                f"Dropout: rate is the probability to KEEP a unit and must satisfy 0 < rate <= 1, "
                f"got {rate!r} (to drop 10% of units, write Dropout(0.9))."
            )
        self.rate, self.mode = float(rate), mode

    def __repr__(self) -> str:
        return f"Dropout(rate={self.rate}, mode={self.mode!r})"

    def apply(
        self, params: Params, x: torch.Tensor, *, mode: str | None = None, rng: torch.Generator | None = None, **kwargs: Any
    ) -> torch.Tensor:
        mode = self.mode if mode is None else _check_mode("Dropout.apply_fn", mode)
        if self.mode == "test" or mode == "test":
            return x
        if rng is not None and not isinstance(rng, torch.Generator):
            raise TypeError(
                f"Dropout.apply_fn: rng must be a torch.Generator or None (torch's global RNG), "
                f"got {type(rng).__name__}."
            )
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        keep = torch.rand(x.shape, generator=rng, dtype=dtype, device=x.device) < self.rate
        return torch.where(keep, x / self.rate, torch.zeros_like(x))

    def propagate(self, k: Kernel, **kwargs: Any) -> Kernel:
        if self.mode == "test":
            return k
        if not isinstance(k, Kernel):
            raise ValueError(f"Dropout: expects a single input, got a list of {len(k)} branches.")
        if k.is_input:
            raise ValueError("Dropout: cannot be applied to the input layer; put it after a layer.")
        factor = 1.0 / self.rate
        pair_factor = factor if k.x1_is_x2 else 1.0
        return k.replace(
            nngp=scale_diagonal(k.nngp, pair_factor, False, k.diagonal_spatial),
            ntk=scale_diagonal(k.ntk, pair_factor, False, k.diagonal_spatial),
            cov1=scale_diagonal(k.cov1, factor, k.diagonal_batch, k.diagonal_spatial),
            cov2=scale_diagonal(k.cov2, factor, k.diagonal_batch, k.diagonal_spatial),
            is_gaussian=False,
        )
