r"""Fixed linear maps: `DotGeneral`, `Index` (with the `Slice` helper) and `ImageResize`.

Each is a fixed (non-trainable) linear map ``y = L x`` acting on the non-channel axes, so
a Gaussian input stays Gaussian with covariance ``L Σ Lᵀ``: the map is applied to the
"left" axes of a covariance with the first example's operand and to the "right" axes with
the second's, the channel axis (infinite) untouched. Kernel layouts stay neural-tangents'
(interleaved location pairs); a reversed kernel (``is_reversed``) is put back in order
first.

Layout: tangents is channels-first, so ``channel_axis`` defaults to 1 (neural-tangents: -1).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch

from .._kernel import Kernel
from ._layer import Layer, Params, ShapeTree
from ._requirements import Bool, Diagonal, Requirements
from ._spatial import check_kernel_axes, map_covariances, reverse_spatial

SliceType = Union[int, slice, "EllipsisType", tuple]  # noqa: F821


def _check_axis(layer: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{layer}: {name} must be an integer axis, got {value!r}.")
    return value


def _unreversed(k: Kernel) -> Kernel:
    """``k`` with its spatial axes in the activations' order (``is_reversed=False``)."""
    if not k.is_reversed or k.diagonal_spatial:
        return k.replace(is_reversed=False)
    return k.replace(**map_covariances(k, lambda t, b: reverse_spatial(t, b, False)), is_reversed=False)


# ====================================================================== DotGeneral


class DotGeneral(Layer):
    r"""Product with a constant tensor (neural-tangents' ``stax.DotGeneral``).

    ``apply_fn`` computes ``lax.dot_general(x, rhs, dimension_numbers)`` or
    ``lax.dot_general(lhs, x, dimension_numbers)``: outputs are ordered (dot-batch axes,
    lhs free axes, rhs free axes). Kernel: the covariance contracted on each side with the
    constant, ``Σ'[o, o'] = Σ_{i, i'} C[i, o] Σ[i, i'] C[i', o']``; the channel axis is
    infinite and may be neither contracted nor a dot-batch axis.

    Args:
        lhs: a constant tensor (or number) on the left; ``None``: the inputs are the lhs.
        rhs: a constant tensor (or number) on the right; ``None``: the inputs are the rhs.
            At most one of them is given; with neither the layer is the identity.
        dimension_numbers: ``((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch))``.
        precision: accepted for compatibility (tangents computes in the inputs' dtype).
        batch_axis: the batch axis of the inputs (may be a dot-batch axis, not contracted).
        channel_axis: the channel axis (tangents' default 1, channels-first; NT's -1).

    Example:
        >>> # difference of two stacked series, x: (N, C, 2, L)
        >>> layer = stax.DotGeneral(rhs=torch.tensor([1., -1.]),
        ...                         dimension_numbers=(((2,), (0,)), ((), ())))
    """

    def __init__(
        self,
        *,
        lhs: torch.Tensor | float | None = None,
        rhs: torch.Tensor | float | None = None,
        dimension_numbers: Any = (((), ()), ((), ())),
        precision: Any = None,
        batch_axis: int = 0,
        channel_axis: int = 1,
    ) -> None:
        if lhs is not None and rhs is not None:
            raise ValueError(
                "DotGeneral: at most one of the constants lhs and rhs can be given, since the other "
                "factor is the layer's inputs."
            )
        self.is_lhs = rhs is None
        other = lhs if self.is_lhs else rhs
        if other is not None and not isinstance(other, torch.Tensor):
            other = torch.as_tensor(np.asarray(other, dtype=np.float64))
        self.other = other
        try:
            (lc, rc), (lb, rb) = dimension_numbers
            lc, rc, lb, rb = (tuple(int(a) for a in t) for t in (lc, rc, lb, rb))
        except (TypeError, ValueError):
            raise ValueError(
                "DotGeneral: dimension_numbers must be ((lhs_contracting, rhs_contracting), "
                f"(lhs_batch, rhs_batch)), e.g. (((2,), (0,)), ((), ())); got {dimension_numbers!r}."
            ) from None
        if len(lc) != len(rc) or len(lb) != len(rb):
            raise ValueError(
                f"DotGeneral: dimension_numbers pair {len(lc)} lhs with {len(rc)} rhs contracting axes and "
                f"{len(lb)} with {len(rb)} batch axes; each pair needs the same number."
            )
        self.dimension_numbers = ((lc, rc), (lb, rb))
        self.precision = precision
        self.batch_axis = _check_axis("DotGeneral", "batch_axis", batch_axis)
        self.channel_axis = _check_axis("DotGeneral", "channel_axis", channel_axis)

    def __repr__(self) -> str:
        side = "lhs" if self.is_lhs else "rhs"
        shape = None if self.other is None else tuple(self.other.shape)
        return f"DotGeneral({side}: shape {shape}, dimension_numbers={self.dimension_numbers})"

    def _input_dims(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """``(input contracting, other contracting, input batch, other batch)`` axes."""
        (lc, rc), (lb, rb) = self.dimension_numbers
        return (rc, lc, rb, lb) if self.is_lhs else (lc, rc, lb, rb)

    @property
    def requirements(self) -> Requirements:
        trivial = self.other is None
        in_c = self._input_dims()[0]
        batch_contracted = self.batch_axis in in_c
        diag_in = Bool.YES if (trivial or in_c in ((), (self.batch_axis,))) else Bool.NO
        return Requirements(
            diagonal_batch=(not batch_contracted) or trivial,
            diagonal_spatial=Diagonal(input=diag_in),
            batch_axis=self.batch_axis,
            channel_axis=self.channel_axis,
        )

    # ------------------------------------------------------------------ shapes

    def _plan(self, ndim: int) -> tuple[list[int], list[int], list[int], list[int], list[tuple[str, int]]]:
        """Canonical axes, and the output's axes as ``('x' | 'o', source axis)``."""
        other = self.other
        n_other = other.ndim
        def canonical(axes: tuple[int, ...], n: int) -> list[int]:
            if not all(-n <= a < n for a in axes):
                raise ValueError(
                    f"DotGeneral: dimension_numbers {self.dimension_numbers} name axes outside the {ndim}-D "
                    f"inputs or the {n_other}-D constant."
                )
            return [a % n for a in axes]

        in_c, o_c, in_b, o_b = self._input_dims()
        in_c, in_b = canonical(in_c, ndim), canonical(in_b, ndim)
        o_c, o_b = canonical(o_c, n_other), canonical(o_b, n_other)
        x_free = [i for i in range(ndim) if i not in in_c + in_b]
        o_free = [i for i in range(n_other) if i not in o_c + o_b]
        out = [("x", a) for a in in_b]
        if self.is_lhs:
            out += [("o", a) for a in o_free] + [("x", a) for a in x_free]
        else:
            out += [("x", a) for a in x_free] + [("o", a) for a in o_free]
        return in_c, o_c, in_b, o_b, out

    def output_shape(self, input_shape: ShapeTree) -> ShapeTree:
        if self.other is None:
            return input_shape
        if not isinstance(input_shape, tuple):
            raise ValueError(f"DotGeneral: expects a single input, got a list of {len(input_shape)}.")
        in_c, o_c, in_b, o_b, out = self._plan(len(input_shape))
        for a, b in zip(in_c + in_b, o_c + o_b):
            if input_shape[a] >= 0 and input_shape[a] != self.other.shape[b]:
                raise ValueError(
                    f"DotGeneral: input axis {a} (size {input_shape[a]}) is paired with axis {b} of the "
                    f"constant (size {self.other.shape[b]}) by dimension_numbers {self.dimension_numbers}."
                )
        return tuple(input_shape[i] if s == "x" else self.other.shape[i] for s, i in out)

    # ------------------------------------------------------------------ finite width

    def apply(self, params: Params, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self.other is None:
            return x
        self.output_shape(tuple(x.shape))
        return self._dot(x, self.other.to(dtype=x.dtype, device=x.device))

    def _dot(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        in_c, o_c, in_b, o_b, out = self._plan(x.ndim)
        letters = iter(string.ascii_letters)
        xl = [next(letters) for _ in range(x.ndim)]
        ol = [next(letters) for _ in range(other.ndim)]
        for a, b in zip(in_c + in_b, o_c + o_b):
            ol[b] = xl[a]
        res = "".join(xl[i] if s == "x" else ol[i] for s, i in out)
        return torch.einsum(f"{''.join(xl)},{''.join(ol)}->{res}", x, other)

    def mask(self, mask: torch.Tensor, input_shape: ShapeTree) -> torch.Tensor:
        if self.other is None:
            return mask
        shape = list(input_shape)
        shape[self.channel_axis] = mask.shape[self.channel_axis]
        keep = (~mask.expand(shape)).to(torch.float64)
        reach = self._dot(keep, (self.other != 0).to(torch.float64))
        return ~(reach > 0)

    # ------------------------------------------------------------------ infinite width

    def propagate(self, k: Kernel, **kwargs: Any) -> Kernel:
        if self.other is None:
            return k
        if not isinstance(k, Kernel):
            raise ValueError(f"DotGeneral: expects a single input, got a list of {len(k)} branches.")
        check_kernel_axes("DotGeneral", k, self.batch_axis, self.channel_axis)
        ndim = len(k.shape1)
        b, c = k.batch_axis % ndim, k.channel_axis % ndim
        in_c, o_c, in_b, o_b, out = self._plan(ndim)
        if c in in_c + in_b:
            raise ValueError(
                f"DotGeneral: dimension_numbers {self.dimension_numbers} contract or batch the channel axis "
                f"{self.channel_axis}, which is infinitely wide in the kernel; contract spatial axes only "
                f"(tangents is channels-first: channel_axis=1)."
            )
        if b in in_c:
            raise ValueError(
                f"DotGeneral: contracting the batch axis {self.batch_axis} (summing over examples) is not "
                f"supported by tangents' kernels; contract spatial axes only."
            )
        self.output_shape(k.shape1)
        self.output_shape(k.shape2)
        k = _unreversed(k)
        other = self.other.to(dtype=k.dtype, device=k.device)
        diag = k.diagonal_spatial
        spatial_in = [i for i in range(ndim) if i not in (b, c)]
        out_b = out.index(("x", b))
        out_c = out.index(("x", c))
        spatial_out = [o for i, o in enumerate(out) if i not in (out_b, out_c)]

        def dot(t: torch.Tensor, batch_ndim: int) -> torch.Tensor:
            letters = iter(string.ascii_letters)
            left = {("x", b): next(letters)}
            right = {("x", b): next(letters) if batch_ndim == 2 else left[("x", b)]}
            for a in spatial_in:
                left[("x", a)] = next(letters)
                right[("x", a)] = left[("x", a)] if diag else next(letters)
            for j in range(other.ndim):
                if j not in o_c + o_b:
                    left[("o", j)] = next(letters)
                    right[("o", j)] = left[("o", j)] if diag else next(letters)
            t_letters = [left[("x", b)]] + ([right[("x", b)]] if batch_ndim == 2 else [])
            for a in spatial_in:
                t_letters += [left[("x", a)]] if diag else [left[("x", a)], right[("x", a)]]

            def o_letters(side: dict) -> str:
                ls = [side.get(("o", j)) for j in range(other.ndim)]
                for a, j in zip(in_c + in_b, o_c + o_b):
                    ls[j] = side[("x", a)]
                return "".join(ls)

            res = [left[("x", b)]] + ([right[("x", b)]] if batch_ndim == 2 else [])
            for o in spatial_out:
                res += [left[o]] if diag else [left[o], right[o]]
            eq = f"{o_letters(left)},{''.join(t_letters)},{o_letters(right)}->{''.join(res)}"
            return torch.einsum(eq, other, t, other)

        return k.replace(**map_covariances(k, dot), batch_axis=out_b, channel_axis=out_c)


# ====================================================================== Index


class _Slice:
    """``Slice[1:10, :, ::-1]`` returns the index ``(slice(1, 10), slice(None), slice(None, None, -1))``."""

    def __getitem__(self, idx: SliceType) -> SliceType:
        return idx

    def __repr__(self) -> str:
        return "stax.Slice"


#: Helper to write an `Index` layer's index: ``stax.Index(idx=stax.Slice[:, :, 1:, ::2])``.
Slice = _Slice()


def canonicalize_idx(idx: SliceType, ndim: int, layer: str = "Index") -> tuple[int | slice, ...]:
    """``idx`` as one ``int`` or ``slice`` per axis (``...`` expanded, missing axes ``:``)."""
    if idx is Ellipsis or isinstance(idx, (int, slice)):
        idx = (idx,)
    if not isinstance(idx, tuple):
        raise TypeError(
            f"{layer}: idx must be an int, a slice, ... or a tuple of them (write it as stax.Slice[...]), "
            f"got {type(idx).__name__}."
        )
    for s in idx:
        if not (s is Ellipsis or isinstance(s, slice) or (isinstance(s, int) and not isinstance(s, bool))):
            raise TypeError(f"{layer}: idx entries must be ints, slices or ..., got {s!r}.")
    if sum(s is Ellipsis for s in idx) > 1:
        raise ValueError(f"{layer}: idx may contain at most one ..., got {idx!r}.")
    if Ellipsis in idx:
        i = idx.index(Ellipsis)
        idx = idx[:i] + (slice(None),) * (ndim - len(idx) + 1) + idx[i + 1 :]
    if len(idx) > ndim:
        raise ValueError(f"{layer}: idx {idx!r} has {len(idx)} entries but the inputs are {ndim}-D.")
    return idx + (slice(None),) * (ndim - len(idx))


def _take(x: torch.Tensor, axes_idx: Sequence[tuple[int, int | slice]]) -> torch.Tensor:
    """Indexes each ``(axis, int | slice)`` (negative steps allowed), last axis first."""
    for axis, s in sorted(axes_idx, key=lambda p: -p[0]):
        n = x.shape[axis]
        if isinstance(s, int):
            if not -n <= s < n:
                raise ValueError(f"Index: index {s} is out of range for an axis of size {n}.")
            x = x.select(axis, s % n)
        elif s != slice(None):
            x = torch.index_select(x, axis, torch.arange(*s.indices(n), device=x.device))
    return x


class Index(Layer):
    r"""Indexing, as ``x[idx]`` in numpy (neural-tangents' ``stax.Index``).

    Kernel: the same selection on both locations of every covariance pair (and on both
    batch axes when the batch axis is indexed). The channel axis (infinite) cannot be
    indexed, and the batch axis only by slices (an int would remove it).

    Args:
        idx: the index, written with the `Slice` helper, e.g. ``stax.Slice[:, :, 1:, ::2]``
            (channels-first ``(N, C, H, W)``: crop H, stride W).
        batch_axis: the batch axis of the inputs.
        channel_axis: the channel axis (tangents' default 1, channels-first; NT's -1).

    Example:
        >>> net = stax.serial(stax.Conv(64, (3, 3)), stax.Relu(),
        ...                   stax.Index(idx=stax.Slice[:, :, :4, :4]),   # upper-left 4x4
        ...                   stax.GlobalAvgPool(), stax.Dense(1))
    """

    def __init__(self, idx: SliceType, batch_axis: int = 0, channel_axis: int = 1) -> None:
        canonicalize_idx(idx, 64)  # type checks
        self.idx = idx
        self.batch_axis = _check_axis("Index", "batch_axis", batch_axis)
        self.channel_axis = _check_axis("Index", "channel_axis", channel_axis)

    def __repr__(self) -> str:
        return f"Index(idx={self.idx!r}, batch_axis={self.batch_axis}, channel_axis={self.channel_axis})"

    @property
    def requirements(self) -> Requirements:
        return Requirements(batch_axis=self.batch_axis, channel_axis=self.channel_axis)

    def output_shape(self, input_shape: ShapeTree) -> ShapeTree:
        if not isinstance(input_shape, tuple):
            raise ValueError(f"Index: expects a single input, got a list of {len(input_shape)}.")
        idx = canonicalize_idx(self.idx, len(input_shape))
        out = []
        for a, (s, n) in enumerate(zip(idx, input_shape)):
            if n < 0:
                if s != slice(None):
                    raise ValueError(
                        f"Index: cannot index axis {a} of unknown size ({n}) with {s!r}; give its size in the "
                        f"input shape {input_shape}."
                    )
                out.append(n)
            elif isinstance(s, int):
                if not -n <= s < n:
                    raise ValueError(f"Index: index {s} is out of range for axis {a} of size {n}.")
            else:
                out.append(len(range(*s.indices(n))))
        return tuple(out)

    def apply(self, params: Params, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        idx = canonicalize_idx(self.idx, x.ndim)
        return _take(x, list(enumerate(idx)))

    def mask(self, mask: torch.Tensor, input_shape: ShapeTree) -> torch.Tensor:
        idx = canonicalize_idx(self.idx, mask.ndim)
        # a broadcast (size-1) mask axis keeps its single entry (an int still removes the axis)
        pairs = [(a, s if mask.shape[a] > 1 else (0 if isinstance(s, int) else slice(None))) for a, s in enumerate(idx)]
        return _take(mask, pairs)

    def propagate(self, k: Kernel, **kwargs: Any) -> Kernel:
        if not isinstance(k, Kernel):
            raise ValueError(f"Index: expects a single input, got a list of {len(k)} branches.")
        check_kernel_axes("Index", k, self.batch_axis, self.channel_axis)
        ndim = len(k.shape1)
        idx = canonicalize_idx(self.idx, ndim)
        b, c = k.batch_axis % ndim, k.channel_axis % ndim
        if idx[c] != slice(None):
            raise ValueError(
                f"Index: idx {self.idx!r} indexes the channel axis {c}, which is infinitely wide in the "
                f"kernel; index batch or spatial axes only (tangents is channels-first: channel_axis=1)."
            )
        if isinstance(idx[b], int):
            raise ValueError(
                f"Index: idx {self.idx!r} indexes the batch axis {b} with an integer, which would remove it; "
                f"use a slice such as {idx[b]}:{idx[b] + 1 if idx[b] != -1 else ''}."
            )
        spatial = [s for i, s in enumerate(idx) if i not in (b, c)]
        if k.is_reversed:
            spatial = spatial[::-1]

        def fn(t: torch.Tensor, batch_ndim: int) -> torch.Tensor:
            pairs = [(a, idx[b]) for a in range(batch_ndim)]
            step = 1 if k.diagonal_spatial else 2
            for j, s in enumerate(spatial):
                for r in range(step):
                    pairs.append((batch_ndim + step * j + r, s))
            return _take(t, pairs)

        def shift(axis: int) -> int:
            return axis - sum(isinstance(s, int) for i, s in enumerate(idx) if i < axis)

        return k.replace(**map_covariances(k, fn), batch_axis=shift(b), channel_axis=shift(c))


# ====================================================================== ImageResize

_METHODS = {
    "nearest": "nearest",
    "linear": "linear",
    "bilinear": "linear",
    "trilinear": "linear",
    "triangle": "linear",
    "cubic": "cubic",
    "bicubic": "cubic",
    "tricubic": "cubic",
    "lanczos3": "lanczos3",
    "lanczos5": "lanczos5",
}


def _filter(method: str, x: np.ndarray) -> np.ndarray:
    """The interpolation kernels of ``jax.image`` (triangle, Keys cubic, Lanczos)."""
    if method == "linear":
        return np.maximum(0, 1 - np.abs(x))
    if method == "cubic":
        out = ((1.5 * x - 2.5) * x) * x + 1.0
        out = np.where(x >= 1.0, ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0, out)
        return np.where(x >= 2.0, 0.0, out)
    radius = 3.0 if method == "lanczos3" else 5.0
    y = radius * np.sin(np.pi * x) * np.sin(np.pi * x / radius)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(x > 1e-3, y / np.where(x != 0, np.pi**2 * x**2, 1), 1)
    return np.where(x > radius, 0.0, out)


def resize_weights(n_in: int, n_out: int, method: str, antialias: bool) -> np.ndarray:
    r"""The ``(n_in, n_out)`` matrix of ``jax.image.resize`` along one axis (not 'nearest').

    Output ``j`` samples the input at ``f_j = (j + ½) n_in / n_out − ½`` with the filter
    ``φ(|f_j − i| / κ)`` (``κ = max(n_in / n_out, 1)`` with antialiasing, else 1),
    normalised to sum to one; samples outside ``[−½, n_in − ½]`` are 0.
    """
    scale = n_out / n_in
    inv = 1.0 / scale
    kappa = max(inv, 1.0) if antialias else 1.0
    f = (np.arange(n_out, dtype=np.float64) + 0.5) * inv - 0.5
    w = _filter(method, np.abs(f[None, :] - np.arange(n_in, dtype=np.float64)[:, None]) / kappa)
    total = w.sum(0, keepdims=True)
    w = np.where(np.abs(total) > 1000.0 * float(np.finfo(np.float32).eps), w / np.where(total != 0, total, 1), 0)
    return np.where(((f >= -0.5) & (f <= n_in - 0.5))[None, :], w, 0)


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """``jax.image``'s nearest-neighbour sources ``⌊(j + ½) n_in / n_out⌋``, in float32 like jax."""
    j = np.arange(n_out, dtype=np.float32)
    return np.floor((j + np.float32(0.5)) * np.float32(n_in) / np.float32(n_out)).astype(np.int64)


def resize_axes(x: torch.Tensor, sizes: Sequence[int], method: str, antialias: bool) -> torch.Tensor:
    """Resizes every axis of ``x`` whose size differs from ``sizes`` (``jax.image.resize``)."""
    for axis, n_out in enumerate(sizes):
        n_in = x.shape[axis]
        if n_in == n_out:
            continue
        if method == "nearest":
            x = torch.index_select(x, axis, torch.from_numpy(nearest_indices(n_in, n_out)).to(x.device))
        else:
            w = torch.from_numpy(resize_weights(n_in, n_out, method, antialias)).to(dtype=x.dtype, device=x.device)
            x = torch.movedim(torch.tensordot(x, w, dims=([axis], [0])), -1, axis)
    return x


class ImageResize(Layer):
    r"""Image resizing as ``jax.image.resize`` (neural-tangents' ``stax.ImageResize``).

    A fixed linear interpolation ``y = R x`` along each resized axis, so the kernel is
    ``R Σ Rᵀ`` on every location pair: ``jax.image.resize`` applied to the covariance
    tensor itself (both locations of a pair resized). ``kernel_fn`` supports ``'linear'``
    (and its aliases ``'bilinear'``, ``'trilinear'``, ``'triangle'``) and ``'nearest'``;
    ``'cubic'``, ``'lanczos3'``, ``'lanczos5'`` work in ``apply_fn`` only, as in NT.

    Like neural-tangents 0.6.5, ``kernel_fn`` applies the spatial targets in the kernel's
    storage order, so on a reversed kernel (``Kernel.is_reversed``, after an odd number of
    full-covariance convolutions) unequal targets ``(h, w)`` resize the kernel as
    ``(w, h)``; use equal targets (or a Dense/even number of convolutions before) when the
    finite network must match.

    Args:
        shape: the output shape, one entry per input axis (batch and channel included);
            ``-1`` keeps an axis, e.g. ``(-1, -1, 16, 16)`` for channels-first images. The
            channel axis must stay ``-1`` for ``kernel_fn``.
        method: ``'linear'``, ``'nearest'``, ... (a string or a ``jax.image.ResizeMethod``-like
            object with a ``name``).
        antialias: use a wider triangle filter when downsampling (no effect upsampling).
        precision: accepted for compatibility (ignored).
        batch_axis: the batch axis of the inputs.
        channel_axis: the channel axis (tangents' default 1, channels-first; NT's -1).

    Example:
        >>> net = stax.serial(stax.Conv(64, (3, 3), padding='SAME'), stax.Relu(),
        ...                   stax.ImageResize((-1, -1, 4, 4), 'linear'),
        ...                   stax.GlobalAvgPool(), stax.Dense(1))
    """

    remask = True

    def __init__(
        self,
        shape: Sequence[int],
        method: str,
        antialias: bool = True,
        precision: Any = "HIGHEST",
        batch_axis: int = 0,
        channel_axis: int = 1,
    ) -> None:
        if isinstance(shape, (int, str)) or not isinstance(shape, Sequence) or not shape:
            raise ValueError(f"ImageResize: shape must be a tuple with one entry per input axis, got {shape!r}.")
        if any(isinstance(s, bool) or not isinstance(s, int) or (s < 1 and s != -1) for s in shape):
            raise ValueError(f"ImageResize: shape entries must be positive integers or -1 (keep), got {shape!r}.")
        self.shape = tuple(shape)
        name = getattr(method, "name", method)
        if not isinstance(name, str) or name.lower() not in _METHODS:
            raise ValueError(
                f"ImageResize: unknown method {method!r}; use 'linear' or 'nearest' (also 'cubic', "
                f"'lanczos3', 'lanczos5' for apply_fn only)."
            )
        self.method = _METHODS[name.lower()]
        self.antialias = bool(antialias)
        self.precision = precision
        self.batch_axis = _check_axis("ImageResize", "batch_axis", batch_axis)
        self.channel_axis = _check_axis("ImageResize", "channel_axis", channel_axis)
        n = len(self.shape)
        self._b, self._c = self.batch_axis % n, self.channel_axis % n

    def __repr__(self) -> str:
        return f"ImageResize({self.shape}, {self.method!r}, antialias={self.antialias})"

    @property
    def requirements(self) -> Requirements:
        spatial_resized = any(s != -1 for i, s in enumerate(self.shape) if i not in (self._b, self._c))
        return Requirements(
            diagonal_batch=self.shape[self._b] == -1,
            diagonal_spatial=Diagonal(input=Bool.NO if spatial_resized else Bool.YES),
            batch_axis=self.batch_axis,
            channel_axis=self.channel_axis,
        )

    def _out(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        if len(input_shape) != len(self.shape):
            raise ValueError(
                f"ImageResize: shape {self.shape} has {len(self.shape)} entries but the inputs are "
                f"{len(input_shape)}-D {tuple(input_shape)}; give one entry per axis (-1 keeps it)."
            )
        return tuple(n if s == -1 else s for s, n in zip(self.shape, input_shape))

    def output_shape(self, input_shape: ShapeTree) -> ShapeTree:
        if not isinstance(input_shape, tuple):
            raise ValueError(f"ImageResize: expects a single input, got a list of {len(input_shape)}.")
        return self._out(input_shape)

    def apply(self, params: Params, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return resize_axes(x, self._out(x.shape), self.method, self.antialias)

    def mask(self, mask: torch.Tensor, input_shape: ShapeTree) -> torch.Tensor:
        # an output is masked only if all its contributions are (content wins over mask)
        sizes = tuple(1 if m == 1 and s == -1 else n for m, s, n in zip(mask.shape, self.shape, self._out(input_shape)))
        keep = resize_axes((~mask).to(torch.float64), sizes, self.method, self.antialias)
        return ~(keep != 0)

    def propagate(self, k: Kernel, **kwargs: Any) -> Kernel:
        if not isinstance(k, Kernel):
            raise ValueError(f"ImageResize: expects a single input, got a list of {len(k)} branches.")
        if self.method not in ("linear", "nearest"):
            raise ValueError(
                f"ImageResize: kernel_fn supports method 'linear' or 'nearest' only (as neural-tangents), got "
                f"{self.method!r}; {self.method!r} works in apply_fn."
            )
        check_kernel_axes("ImageResize", k, self.batch_axis, self.channel_axis)
        if self.shape[self._c] != -1:
            raise ValueError(
                f"ImageResize: resizing the channel axis {self._c} is not defined in the infinite-width "
                f"limit; set shape[{self._c}] = -1."
            )
        # As neural-tangents 0.6.5, the target sizes are taken in the activations' axis order
        # and applied to the kernel's stored axes even when ``k.is_reversed``: after an odd
        # number of full-covariance convolutions a resize to (h, w) acts as (w, h) on the
        # kernel. Identical for equal spatial targets (and unreversed kernels); kept for
        # agreement with NT's numbers.
        out1, out2 = self._out(k.shape1), self._out(k.shape2)
        spatial = [i for i in range(len(out1)) if i not in (self._b, self._c)]

        def sizes(first: Sequence[int], second: Sequence[int], two_batch: bool) -> list[int]:
            out = [first[self._b]] + ([second[self._b]] if two_batch else [])
            for i in spatial:
                out += [first[i]] if k.diagonal_spatial else [first[i], second[i]]
            return out

        def resize(t: torch.Tensor | None, first: Sequence[int], second: Sequence[int], two_batch: bool):
            if t is None or t.ndim == 0:
                return t
            return resize_axes(t, sizes(first, second, two_batch), self.method, self.antialias)

        return k.replace(
            nngp=resize(k.nngp, out1, out2, True),
            ntk=resize(k.ntk, out1, out2, True),
            cov1=resize(k.cov1, out1, out1, not k.diagonal_batch),
            cov2=resize(k.cov2, out2, out2, not k.diagonal_batch),
        )
