r"""`Aggregate`: message passing over a graph (neural-tangents' ``stax.Aggregate``).

Each example ``n`` comes with a graph on the locations of its aggregate axes (``K`` of the
spatial axes, ``V`` vertices in all). With a weighted adjacency ``A[n, i, j]`` (an arc from
tail ``i`` to head ``j``) every vertex is replaced by the weighted sum of its predecessors,

    out[n, c, j] = Σ_i x[n, c, i] A[n, i, j],

independently along every other axis. The map is linear and fixed, so the output of a
Gaussian layer stays Gaussian and its covariance is aggregated on both sides:

    Σ'(x1, x2)[j, j'] = Σ_{i, i'} A1[n1, i, j] Σ(x1, x2)[i, i'] A2[n2, i', j'],

i.e. ``A1ᵀ Σ A2`` per pair of examples, which needs the full location–location
covariances. ``implementation='DENSE'`` takes adjacency tensors ``(N, *A, *A)``
(``to_dense`` may decode another format first); ``'SPARSE'`` takes integer edge lists
``(N, E, K, 2)`` (tails, heads; ``(N, E, 2)`` when ``K = 1``), repeated edges counting
with their multiplicity and edges whose head has a negative coordinate dropped (padding).

Layout: tangents is channels-first, ``channel_axis`` defaults to 1 (neural-tangents: -1).
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .._kernel import Kernel
from ._layer import Layer, Params
from ._requirements import Bool, Diagonal, Requirements
from ._spatial import check_kernel_axes, map_covariances, reverse_spatial

IMPLEMENTATIONS = ("DENSE", "SPARSE")


def _identity(p: Any) -> Any:
    return p


def _as_pattern(pattern: Any, what: str, like: torch.Tensor | None, integer: bool) -> torch.Tensor:
    if isinstance(pattern, np.ndarray):
        pattern = torch.from_numpy(np.ascontiguousarray(pattern))
    if not isinstance(pattern, torch.Tensor):
        raise TypeError(f"Aggregate: {what} must be a torch.Tensor or a numpy array, got {type(pattern).__name__}.")
    if integer:
        if pattern.is_floating_point() or pattern.is_complex() or pattern.dtype == torch.bool:
            raise TypeError(
                f"Aggregate: with implementation='SPARSE' {what} must be an integer edge list "
                f"(N, n_edges, K, 2), got dtype {pattern.dtype}; use implementation='DENSE' for adjacency tensors."
            )
        return pattern.to(torch.long if like is None else like.device)
    if like is not None:
        pattern = pattern.to(dtype=like.dtype, device=like.device)
    return pattern


class Aggregate(Layer):
    r"""Aggregation over a graph (neural-tangents' ``stax.Aggregate``; graph networks).

    ``apply_fn(params, x, pattern=A)`` replaces each vertex by the (weighted) sum of its
    direct predecessors; ``kernel_fn(x1, x2, pattern=(A1, A2))`` gives
    ``Σ' = A1ᵀ Σ A2`` per pair of examples on the aggregate axes. ``pattern=None``
    (``(None, None)`` for the kernel) means the identity.

    Args:
        aggregate_axis: the (spatial) axes holding the graph's vertices; ``None`` means
            every axis that is neither the batch nor the channel axis.
        batch_axis: the batch axis of the inputs.
        channel_axis: the channel axis (tangents' default 1, channels-first, e.g. graphs
            ``(N, C, V)``; neural-tangents' default is -1, ``(N, V, C)``).
        to_dense: ``'DENSE'`` only: maps each ``pattern`` to a dense ``(N, *A, *A)``
            adjacency on every call (default: the identity).
        implementation: ``'DENSE'`` (``pattern`` is ``(N, *A, *A)`` weights, ``A[n, i, j]``
            the weight of the arc ``i → j``) or ``'SPARSE'`` (``pattern`` is an integer
            ``(N, n_edges, K, 2)`` list of (tail, head) vertex coordinates; ``(N, n_edges, 2)``
            when ``K = 1``; edges whose head has a negative coordinate are padding and
            ignored; a negative tail coordinate, as in neural-tangents, reads the last vertex).

    Example:
        >>> net = stax.serial(stax.Dense(64, channel_axis=1), stax.Relu(), stax.Aggregate(),
        ...                   stax.Dense(64, channel_axis=1), stax.Relu(), stax.GlobalAvgPool(),
        ...                   stax.Dense(1))
        >>> x = torch.randn(4, 5, 6)                    # (N, C, V)
        >>> A = (torch.rand(4, 6, 6) < 0.5).double()    # (N, V, V)
        >>> net.kernel_fn(x, None, 'ntk', pattern=(A, A)).shape
        torch.Size([4, 4])
    """

    remask = True

    kernel_kwargs = frozenset({"pattern"})
    apply_kwargs = frozenset({"pattern"})

    def __init__(
        self,
        aggregate_axis: int | Sequence[int] | None = None,
        batch_axis: int = 0,
        channel_axis: int = 1,
        to_dense: Callable[[Any], Any] | None = _identity,
        implementation: str = "DENSE",
    ) -> None:
        for name, value in (("batch_axis", batch_axis), ("channel_axis", channel_axis)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"Aggregate: {name} must be an integer axis, got {value!r}.")
        if aggregate_axis is not None:
            axes = (aggregate_axis,) if isinstance(aggregate_axis, int) else tuple(aggregate_axis)
            if not axes or any(isinstance(a, bool) or not isinstance(a, int) for a in axes):
                raise ValueError(
                    f"Aggregate: aggregate_axis must be None, an axis or a tuple of axes, got {aggregate_axis!r}."
                )
            aggregate_axis = axes
        impl = getattr(implementation, "value", implementation)
        if not isinstance(impl, str) or impl.upper() not in IMPLEMENTATIONS:
            raise ValueError(f"Aggregate: implementation must be 'DENSE' or 'SPARSE', got {implementation!r}.")
        if to_dense is not None and not callable(to_dense):
            raise TypeError(f"Aggregate: to_dense must be a function (or None), got {type(to_dense).__name__}.")
        self.aggregate_axis = aggregate_axis
        self.batch_axis, self.channel_axis = batch_axis, channel_axis
        self.to_dense = _identity if to_dense is None else to_dense
        self.implementation = impl.upper()

    def __repr__(self) -> str:
        return (
            f"Aggregate(aggregate_axis={self.aggregate_axis}, batch_axis={self.batch_axis}, "
            f"channel_axis={self.channel_axis}, implementation={self.implementation!r})"
        )

    @property
    def requirements(self) -> Requirements:
        return Requirements(
            diagonal_spatial=Diagonal(input=Bool.NO, output=Bool.NO),
            batch_axis=self.batch_axis,
            channel_axis=self.channel_axis,
        )

    # ------------------------------------------------------------------ axes and patterns

    def _axes(self, ndim: int) -> tuple[list[int], int, int]:
        """``(aggregate axes, batch axis, channel axis)`` of ``ndim``-D activations."""
        b, c = self.batch_axis % ndim, self.channel_axis % ndim
        if b == c:
            raise ValueError(
                f"Aggregate: batch_axis={self.batch_axis} and channel_axis={self.channel_axis} are the same "
                f"axis of {ndim}-D inputs; for channels-first graphs (N, C, V) use batch_axis=0, channel_axis=1."
            )
        if self.aggregate_axis is None:
            return [i for i in range(ndim) if i not in (b, c)], b, c
        axes = []
        for a in self.aggregate_axis:
            if not -ndim <= a < ndim:
                raise ValueError(f"Aggregate: aggregate_axis {a} is out of range for {ndim}-D inputs.")
            if a % ndim in (b, c):
                raise ValueError(
                    f"Aggregate: aggregate_axis {self.aggregate_axis} includes the batch or channel axis "
                    f"({b}, {c}); aggregate over spatial (vertex) axes only."
                )
            axes.append(a % ndim)
        if len(set(axes)) != len(axes):
            raise ValueError(f"Aggregate: aggregate_axis {self.aggregate_axis} repeats an axis.")
        return axes, b, c

    def _dense(self, pattern: Any, n: int, agg_shape: tuple[int, ...], like: torch.Tensor, which: str) -> torch.Tensor:
        """The ``(n, V, V)`` adjacency of ``pattern`` (dense, or counted from an edge list)."""
        v = math.prod(agg_shape)
        k = len(agg_shape)
        expected = (n,) + agg_shape * 2
        if self.implementation == "DENSE":
            a = _as_pattern(self.to_dense(pattern), which, like, integer=False)
            if tuple(a.shape) != expected:
                raise ValueError(
                    f"Aggregate: {which} must be a dense adjacency of shape (N, *A, *A) = {expected} "
                    f"(batch size {n}, aggregate-axis sizes {agg_shape}), got {tuple(a.shape)}"
                    + (" after to_dense." if self.to_dense is not _identity else ".")
                )
            return a.reshape(n, v, v)
        e = _as_pattern(pattern, which, None, integer=True)
        if e.ndim == 0 or e.shape[-1] != 2:
            raise ValueError(
                f"Aggregate: {which} must be an edge list (N, n_edges, K, 2) with (tail, head) on the last "
                f"axis, got shape {tuple(e.shape)}."
            )
        if k == 1 and e.ndim == 3:
            e = e[:, :, None, :]
        if e.ndim != 4 or e.shape[2] != k or e.shape[0] != n:
            raise ValueError(
                f"Aggregate: {which} must have shape (N, n_edges, K, 2) = ({n}, n_edges, {k}, 2) (batch size "
                f"{n}, {k} aggregate axes{'; (N, n_edges, 2) also works' if k == 1 else ''}), got {tuple(e.shape)}."
            )
        tails, heads = self._ravel(e[..., 0], agg_shape), self._ravel(e[..., 1], agg_shape)
        tails = torch.where(tails < 0, v - 1, tails)  # NT reads x[-1] for a negative tail
        keep = heads >= 0
        rows = torch.arange(n, device=e.device)[:, None].expand_as(heads)
        a = torch.zeros(n * v * v, dtype=like.dtype, device=like.device)
        flat = (rows * v * v + tails * v + heads)[keep].to(like.device)
        a.index_add_(0, flat, torch.ones(flat.shape, dtype=like.dtype, device=like.device))
        return a.reshape(n, v, v)

    @staticmethod
    def _ravel(coords: torch.Tensor, agg_shape: tuple[int, ...]) -> torch.Tensor:
        """Raveled vertex indices of ``(N, E, K)`` coordinates (wrapped), -1 if any is negative."""
        index = torch.zeros(coords.shape[:2], dtype=torch.long, device=coords.device)
        for d, size in enumerate(agg_shape):
            index = index * size + coords[..., d] % size
        return torch.where((coords >= 0).all(-1), index, torch.full_like(index, -1))

    # ------------------------------------------------------------------ finite width

    def apply(self, params: Params, x: torch.Tensor, *, pattern: Any = None, **kwargs: Any) -> torch.Tensor:
        if pattern is None:
            return x
        axes, b, _ = self._axes(x.ndim)
        agg_shape = tuple(x.shape[a] for a in axes)
        rest = [i for i in range(x.ndim) if i != b and i not in axes]
        xs = x.permute([b] + axes + rest)  # (N, *A, *R)
        moved = xs.shape
        xs = xs.reshape(x.shape[b], math.prod(agg_shape), -1)  # (N, V, R)
        adjacency = self._dense(pattern, x.shape[b], agg_shape, x, "pattern")
        out = torch.einsum("nvr,nvw->nwr", xs, adjacency).reshape(moved)
        return out.permute(list(np.argsort([b] + axes + rest)))

    # ------------------------------------------------------------------ infinite width

    def propagate(self, k: Kernel, *, pattern: Any = (None, None), **kwargs: Any) -> Kernel:
        if not isinstance(k, Kernel):
            raise ValueError(f"Aggregate: expects a single input, got a list of {len(k)} branches.")
        if pattern is None:
            pattern = (None, None)
        if not isinstance(pattern, (tuple, list)) or len(pattern) != 2:
            raise ValueError(
                "Aggregate: kernel_fn needs pattern=(pattern1, pattern2), the graphs of x1 and x2 "
                f"((pattern1, pattern1) when x2 is None), got {type(pattern).__name__}."
            )
        p1, p2 = pattern
        if p1 is None and p2 is None:
            return k
        if p1 is None or p2 is None:
            raise ValueError(
                "Aggregate: pattern=(pattern1, pattern2) must give both graphs or neither; got one None. "
                "When x2 is None pass pattern=(pattern1, pattern1)."
            )
        check_kernel_axes("Aggregate", k, self.batch_axis, self.channel_axis)
        if k.diagonal_spatial:
            raise ValueError("Aggregate: needs full location-location covariances; call with diagonal_spatial=False.")
        ndim = len(k.shape1)
        axes, b, c = self._axes(ndim)
        spatial = [i for i in range(ndim) if i not in (b, c)]
        positions = [spatial.index(a) for a in axes]
        agg_shape = tuple(k.shape1[a] for a in axes)
        if tuple(k.shape2[a] for a in axes) != agg_shape:
            raise ValueError(f"Aggregate: x1 and x2 have different vertex shapes {k.shape1} and {k.shape2}.")
        a1 = self._dense(p1, k.shape1[b], agg_shape, k.nngp, "pattern1")
        a2 = self._dense(p2, k.shape2[b], agg_shape, k.nngp, "pattern2")
        if k.is_reversed:
            k = k.replace(**map_covariances(k, lambda t, bn: reverse_spatial(t, bn, False)), is_reversed=False)
        n_spatial = len(spatial)

        def aggregate(t: torch.Tensor, batch_ndim: int, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
            letters = iter(string.ascii_letters)
            batch = [next(letters) for _ in range(batch_ndim)]
            ins = [[next(letters), next(letters)] for _ in range(n_spatial)]  # (i, i') per spatial dim
            outs = [list(pair) for pair in ins]
            for p in positions:
                outs[p] = [next(letters), next(letters)]
            # flatten the aggregate dimensions of each side into one vertex index
            t = self._group(t, batch_ndim, positions, n_spatial)
            lb, rb = batch[0], batch[-1]
            src = batch + [x for p in range(n_spatial) if p not in positions for x in ins[p]] + ["V", "W"]
            dst = batch + [x for p in range(n_spatial) if p not in positions for x in ins[p]] + ["X", "Y"]
            eq = f"{lb}VX,{''.join(src)},{rb}WY->{''.join(dst)}"
            out = torch.einsum(eq, left, t, right)
            return self._ungroup(out, batch_ndim, positions, n_spatial, agg_shape)

        cov_batch = 1 if k.diagonal_batch else 2
        return k.replace(
            nngp=aggregate(k.nngp, 2, a1, a2),
            ntk=None if k.ntk is None or k.ntk.ndim == 0 else aggregate(k.ntk, 2, a1, a2),
            cov1=aggregate(k.cov1, cov_batch, a1, a1),
            cov2=None if k.cov2 is None else aggregate(k.cov2, cov_batch, a2, a2),
            batch_axis=b,
            channel_axis=c,
        )

    @staticmethod
    def _group(t: torch.Tensor, batch_ndim: int, positions: list[int], n_spatial: int) -> torch.Tensor:
        """``(*B, s1, s1', ...)`` → ``(*B, <other pairs>, V, V')`` with the aggregate pairs flattened."""
        rest = [p for p in range(n_spatial) if p not in positions]
        order = list(range(batch_ndim))
        order += [batch_ndim + 2 * p + j for p in rest for j in (0, 1)]
        order += [batch_ndim + 2 * p for p in positions] + [batch_ndim + 2 * p + 1 for p in positions]
        t = t.permute(order)
        v = math.prod(t.shape[t.ndim - 2 * len(positions) : t.ndim - len(positions)])
        return t.reshape(t.shape[: t.ndim - 2 * len(positions)] + (v, v))

    @staticmethod
    def _ungroup(
        t: torch.Tensor, batch_ndim: int, positions: list[int], n_spatial: int, agg_shape: tuple[int, ...]
    ) -> torch.Tensor:
        """The inverse of `_group`."""
        t = t.reshape(t.shape[:-2] + agg_shape + agg_shape)
        rest = [p for p in range(n_spatial) if p not in positions]
        order = list(range(batch_ndim))
        order += [batch_ndim + 2 * p + j for p in rest for j in (0, 1)]
        order += [batch_ndim + 2 * p for p in positions] + [batch_ndim + 2 * p + 1 for p in positions]
        return t.permute(list(np.argsort(order)))
