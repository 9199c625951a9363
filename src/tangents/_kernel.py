"""The `Kernel` record: the infinite-width state that every layer maps to a new one.

A `Kernel` holds the covariances of the pre-activations (or activations) of an infinitely
wide network at one depth, for two batches of inputs `x1` (N1 examples) and `x2` (N2):

* ``nngp``  Σ(x1, x2), the NNGP covariance, shape ``(N1, N2, *S)``;
* ``ntk``   Θ(x1, x2), the neural tangent kernel, same shape (``None`` if not computed);
* ``cov1``  Σ(x1, x1), shape ``(N1, *S)`` if ``diagonal_batch`` else ``(N1, N1, *S)``;
* ``cov2``  Σ(x2, x2), like ``cov1``; ``None`` when ``x2`` is ``x1``.

``*S`` are the spatial axes: ``(H, W, ...)`` if ``diagonal_spatial`` else the pairs
``(H, H, W, W, ...)`` (location–location covariances), empty for fully-connected nets.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any, Union

import torch

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class Kernel:
    """Immutable infinite-width kernel state (neural-tangents' ``Kernel``, in torch).

    Attributes:
        nngp: NNGP covariance Σ(x1, x2), shape ``(N1, N2, *S)``.
        ntk: NTK Θ(x1, x2), shape ``(N1, N2, *S)``, a 0-d zero at the inputs, or ``None``.
        cov1: Σ(x1, x1): ``(N1, *S)`` if ``diagonal_batch`` else ``(N1, N1, *S)``.
        cov2: Σ(x2, x2), like ``cov1``, or ``None`` when ``x2`` is ``x1``.
        x1_is_x2: whether the two batches are the same inputs.
        is_gaussian: whether the layer's outputs are Gaussian (true after an affine layer);
            nonlinearities require it.
        is_reversed: whether the spatial axes are stored in reverse order.
        is_input: whether this is the kernel of the raw inputs.
        diagonal_batch: whether ``cov1``/``cov2`` store only the per-example variances.
        diagonal_spatial: whether only location-diagonal covariances are stored.
        shape1: shape of a finite-width layer's output on ``x1``.
        shape2: shape of a finite-width layer's output on ``x2``.
        batch_axis: the batch axis of the finite-width activations.
        channel_axis: the channel axis of the finite-width activations.
        mask1: optional boolean mask of ``x1`` entries to ignore.
        mask2: optional boolean mask of ``x2`` entries to ignore.
    """

    nngp: torch.Tensor
    ntk: torch.Tensor | None
    cov1: torch.Tensor
    cov2: torch.Tensor | None
    x1_is_x2: bool
    is_gaussian: bool
    is_reversed: bool
    is_input: bool
    diagonal_batch: bool
    diagonal_spatial: bool
    shape1: Shape
    shape2: Shape
    batch_axis: int
    channel_axis: int
    mask1: torch.Tensor | None = None
    mask2: torch.Tensor | None = None

    def replace(self, **changes: Any) -> Kernel:
        """Returns a copy with the given fields replaced (the original is unchanged)."""
        return dataclasses.replace(self, **changes)

    @property
    def dtype(self) -> torch.dtype:
        return self.nngp.dtype

    @property
    def device(self) -> torch.device:
        return self.nngp.device

    @property
    def cov2_or_cov1(self) -> torch.Tensor:
        """Σ(x2, x2), which is ``cov1`` when the second batch is the first."""
        return self.cov1 if self.cov2 is None else self.cov2

    def __repr__(self) -> str:
        def describe(t: torch.Tensor | None) -> str:
            return "None" if t is None else f"Tensor{tuple(t.shape)}"

        return (
            f"Kernel(nngp={describe(self.nngp)}, ntk={describe(self.ntk)}, "
            f"cov1={describe(self.cov1)}, cov2={describe(self.cov2)}, "
            f"is_gaussian={self.is_gaussian}, diagonal_batch={self.diagonal_batch}, "
            f"diagonal_spatial={self.diagonal_spatial}, shape1={self.shape1}, "
            f"shape2={self.shape2}, dtype={self.dtype})"
        )


#: Names a user may ask for with ``kernel_fn(..., get=...)``.
KERNEL_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Kernel))


#: What ``kernel_fn(..., get=...)`` takes: ``None`` (the whole `Kernel`), a name, or names.
Get = Union[None, str, Sequence[str]]


def check_get(get: Get) -> tuple[str, ...] | None:
    """The names asked for by ``get`` (``None`` for the whole `Kernel`), validated.

    Raises:
        TypeError: ``get`` is not ``None``, a string or a sequence of strings.
        ValueError: an unknown name, or an empty tuple.
    """
    if get is None:
        return None
    if not isinstance(get, (str, list, tuple)):
        raise TypeError(
            f"kernel_fn: get must be None, a name such as 'ntk' or a tuple of names, got {type(get).__name__}."
        )
    names = (get,) if isinstance(get, str) else tuple(get)
    if not names:
        raise ValueError("kernel_fn: get must be None, a name or a non-empty tuple of names, got ().")
    for name in names:
        if not isinstance(name, str) or name not in KERNEL_FIELDS:
            raise ValueError(
                f"kernel_fn: unknown get name {name!r}; valid names are {', '.join(KERNEL_FIELDS)}."
            )
    return names


_NAMED_TUPLES: dict[tuple[str, ...], type] = {}


def select(out: Any, get: Get) -> Any:
    """The fields ``get`` names of a `Kernel` (or of each `Kernel` of a list/tuple of them):
    the `Kernel` itself for ``None``, a tensor for a name, a named tuple ``AnalyticKernel``
    for a tuple of names."""
    if get is None:
        return out
    if not isinstance(out, Kernel):
        return type(out)(select(o, get) for o in out)
    if isinstance(get, str):
        return getattr(out, get)
    names = tuple(get)
    cls = _NAMED_TUPLES.get(names)
    if cls is None:
        cls = _NAMED_TUPLES[names] = collections.namedtuple("AnalyticKernel", names)  # type: ignore[misc]
    return cls(*(getattr(out, name) for name in names))
