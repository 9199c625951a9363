r"""Spatial primitives shared by convolutions and pooling: padding, window sums, layouts.

Everything follows ``jax.lax`` conventions, which neural-tangents uses, so that finite
networks and kernels agree with it exactly:

* ``VALID``: no padding, ``out = (n − k) // s + 1``;
* ``SAME``: ``out = ⌈n / s⌉``, zero padding of total ``max((out − 1) s + k − n, 0)``
  split as ``(p // 2, p − p // 2)`` (the extra zero goes at the end, unlike
  ``torch``'s ``padding='same'`` for even filters);
* ``CIRCULAR``: the ``SAME`` amounts, filled periodically (wrap-around), then ``VALID``;
* explicit ``((lo, hi), ...)`` pairs, one per spatial axis (``lax``'s explicit padding, e.g.
  ``torch.nn.Conv2d(padding=1)`` is ``((1, 1), (1, 1))``): zeros, negative amounts crop.

A filter dilated by ``d`` (``rhs_dilation``, ``torch``'s ``dilation``) has taps ``d`` apart,
an effective size ``d (k − 1) + 1`` (which ``SAME`` pads for).

Transposed convolutions follow ``lax.conv_transpose``: the input is dilated by the
stride, padded by `transpose_pads`, and correlated with the (unflipped) filter.

All functions act on any tensor axes, so they serve finite activations ``(N, C, *S)``,
diagonal covariances ``(N1, N2, *S)`` and full covariances ``(N1, N2, H, H', W, W')``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import torch

from .._kernel import Kernel
from ._tape import skipping_covariances

PADDINGS = ("VALID", "SAME", "CIRCULAR")
Pads = list[tuple[int, int]]
#: A padding name, or explicit ``(lo, hi)`` pairs, one per spatial axis.
Padding = Union[str, tuple[tuple[int, int], ...]]


# ---------------------------------------------------------------------- argument checks


def check_padding(layer: str, padding: Any, n: int | None = None) -> Padding:
    """Validates a padding: a name (``'VALID'``, ``'SAME'`` or ``'CIRCULAR'``, any case) or
    explicit ``(lo, hi)`` integer pairs, one per spatial axis (``n`` of them, if given)."""
    if isinstance(padding, str):
        if padding.upper() not in PADDINGS:
            raise ValueError(
                f"{layer}: padding must be one of 'VALID', 'SAME', 'CIRCULAR' or (lo, hi) pairs, got {padding!r}."
            )
        return padding.upper()
    pairs = None
    if isinstance(padding, Sequence) and len(padding) > 0:
        pairs = tuple(tuple(p) if isinstance(p, Sequence) else None for p in padding)
    ok = pairs is not None and all(
        p is not None and len(p) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in p) for p in pairs
    )
    if not ok or (n is not None and len(pairs) != n):
        count = "" if n is None else f"{n} "
        raise ValueError(
            f"{layer}: padding must be 'VALID', 'SAME', 'CIRCULAR' or a sequence of {count}(lo, hi) integer pairs, "
            f"one per spatial axis (e.g. ((1, 1), (1, 1)) for torch's padding=1), got {padding!r}."
        )
    return pairs  # type: ignore[return-value]


def axis_padding(padding: Padding, i: int) -> str | tuple[int, int]:
    """The padding of spatial axis ``i``: the name, or that axis's ``(lo, hi)`` pair."""
    return padding if isinstance(padding, str) else padding[i]


def effective_window(window: int, dilation: int) -> int:
    """The span ``d (k − 1) + 1`` of a window of ``k`` taps ``d`` apart."""
    return dilation * (window - 1) + 1


def window_pads(size: int, window: int, stride: int, padding: str | tuple[int, int]) -> tuple[int, int]:
    """``(lo, hi)`` zero (or periodic) padding of one axis for a window op; ``window`` is the span."""
    if isinstance(padding, tuple):
        return padding
    return (0, 0) if padding == "VALID" else same_pads(size, window, stride)


def check_ints(layer: str, name: str, value: Any, length: int | None = None) -> tuple[int, ...]:
    """Validates a tuple of positive integers (``filter_shape``, ``strides``, ...)."""
    if isinstance(value, (int, bool)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"{layer}: {name} must be a non-empty tuple of positive integers, got {value!r}.")
    out = tuple(value)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in out):
        raise ValueError(f"{layer}: {name} must be a tuple of positive integers, got {value!r}.")
    if length is not None and len(out) != length:
        raise ValueError(f"{layer}: {name} must have {length} entries (one per spatial axis), got {value!r}.")
    return out


# ---------------------------------------------------------------------- sizes and pads


def same_pads(size: int, window: int, stride: int) -> tuple[int, int]:
    """``lax`` SAME padding ``(before, after)`` of one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def output_size(size: int, window: int, stride: int, padding: str | tuple[int, int]) -> int:
    """Output length of a window op over an axis of length ``size`` (``window``: the span)."""
    if size < 0:
        return -1
    if isinstance(padding, tuple):
        return max((size + padding[0] + padding[1] - window) // stride + 1, 0)
    if padding == "VALID":
        return max((size - window) // stride + 1, 0)
    return -(-size // stride)


def transpose_pads(window: int, stride: int, padding: str | tuple[int, int]) -> tuple[int, int]:
    """Padding of the dilated input in ``lax.conv_transpose`` (CIRCULAR uses VALID's; explicit
    pairs are the dilated input's padding, as in ``lax.conv_transpose``)."""
    if isinstance(padding, tuple):
        return padding
    if padding == "SAME":
        total = window + stride - 2
        before = window - 1 if stride > window - 1 else -(-total // 2)
    else:
        total = window + stride - 2 + max(window - stride, 0)
        before = window - 1
    return before, total - before


def transpose_output_size(size: int, window: int, stride: int, padding: str | tuple[int, int]) -> int:
    """Output length of ``lax.conv_transpose`` (SAME and CIRCULAR: ``n s``; ``window``: the span)."""
    if size < 0:
        return -1
    if isinstance(padding, tuple):
        return max((size - 1) * stride + 1 + padding[0] + padding[1] - window + 1, 0)
    if padding == "VALID":
        return size * stride + max(window - stride, 0)
    return size * stride


# ---------------------------------------------------------------------- tensor primitives


def pad(x: torch.Tensor, axes: Sequence[int], pads: Pads, circular: bool) -> torch.Tensor:
    """Pads ``axes`` of ``x`` by ``pads`` with zeros, or periodically if ``circular``;
    negative amounts crop."""
    for axis, (lo, hi) in zip(axes, pads):
        if lo < 0 or hi < 0:
            start, stop = max(-lo, 0), x.shape[axis] - max(-hi, 0)
            x = x.narrow(axis, start, max(stop - start, 0))
            lo, hi = max(lo, 0), max(hi, 0)
        if lo == 0 and hi == 0:
            continue
        n = x.shape[axis]
        if circular:
            index = torch.arange(-lo, n + hi, device=x.device) % n
            x = torch.index_select(x, axis, index)
        else:
            shape = list(x.shape)
            shape[axis] = n + lo + hi
            out = x.new_zeros(shape)
            out.narrow(axis, lo, n).copy_(x)
            x = out
    return x


def _zero_pad(x: torch.Tensor, pads: dict[int, tuple[int, int]]) -> torch.Tensor:
    """``x`` padded with zeros by ``(lo, hi)`` along each axis in ``pads`` (functional)."""
    spec = [0] * (2 * x.ndim)  # constant_pad_nd lists (lo, hi) from the last axis backwards
    for axis, (lo, hi) in pads.items():
        back = x.ndim - 1 - axis % x.ndim
        spec[2 * back], spec[2 * back + 1] = lo, hi
    return torch.constant_pad_nd(x, spec) if any(spec) else x


def _strided(x: torch.Tensor, axis: int, start: int, count: int, stride: int) -> torch.Tensor:
    """``x[..., start : start + stride (count − 1) + 1 : stride, ...]`` along ``axis``."""
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, start + stride * (count - 1) + 1, stride)
    return x[tuple(index)]


def _tap_range(size: int, count: int, tap: int, stride: int, before: int) -> tuple[int, int, int] | None:
    """Outputs ``i`` whose tap (at offset ``tap``) reads a real entry ``p = i s + tap − before``
    (0 <= p < size).

    Returns:
        ``(first output, first input, number of outputs)``, or ``None`` if there are none.
    """
    first = max(0, -(-(before - tap) // stride))
    last = min(count - 1, (size - 1 + before - tap) // stride)
    if last < first:
        return None
    return first, first * stride + tap - before, last - first + 1


def _out_count(size: int, window: int, stride: int, pads: tuple[int, int], what: str) -> int:
    count = (size + pads[0] + pads[1] - window) // stride + 1
    if count < 1:
        raise ValueError(
            f"a {what} of {window} does not fit in a spatial axis of length {size}; "
            f"use padding='SAME' or a smaller {what}."
        )
    return count


def window_sum(
    x: torch.Tensor,
    axes: Sequence[int],
    window: Sequence[int],
    strides: Sequence[int],
    pads: Pads | None = None,
    dilation: Sequence[int] | None = None,
) -> torch.Tensor:
    """Sums over windows along each of ``axes`` (a box filter), with implicit zero padding.

    The box filter is separable, so each axis is summed on its own; along an axis of
    length n padded by ``(lo, hi)`` the result has ``(n + lo + hi − d (k − 1) − 1) // s + 1``
    entries, the ``k`` taps of a window ``d`` = ``dilation`` apart (default 1). Padding is
    never materialised: each tap adds its in-range block. Always returns a new tensor.
    """
    pads = [(0, 0)] * len(axes) if pads is None else pads
    dilation = [1] * len(axes) if dilation is None else dilation
    for axis, k, s, p, d in zip(axes, window, strides, pads, dilation):
        n = x.shape[axis]
        count = _out_count(n, effective_window(k, d), s, p, "window")
        if torch.compiler.is_compiling():  # a sum of shifted views, fused into one loop
            padded = _zero_pad(x, {axis: p})
            x = sum(_strided(padded, axis, t * d, count, s) for t in range(k))
            continue
        shape = list(x.shape)
        shape[axis] = count
        out = x.new_zeros(shape)
        for t in range(k):
            r = _tap_range(n, count, t * d, s, p[0])
            if r is not None:
                out.narrow(axis, r[0], r[2]).add_(_strided(x, axis, r[1], r[2], s))
        x = out
    return x


def _empty_like_layout(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` whose axes are ordered in memory as ``x``'s.

    Covariances are often permuted views (`reverse_spatial`); results stored in the same
    order keep every later pass reading and writing memory sequentially.
    """
    order = sorted(range(x.ndim), key=lambda a: (-x.stride(a), a))
    out = x.new_empty([shape[a] for a in order])
    return out.permute([order.index(a) for a in range(x.ndim)])


def diagonal_window_sum(
    x: torch.Tensor,
    axis1: int,
    axis2: int,
    window: int,
    stride: int,
    pads: tuple[int, int] = (0, 0),
    dilation: int = 1,
) -> torch.Tensor:
    r"""``out[i, j] = Σ_t x[i s + t d − lo, j s + t d − lo]`` over a pair of axes (a diagonal
    filter of ``window`` taps ``d`` = ``dilation`` apart).

    This is the covariance map of a shared-weight convolution on a location pair
    ``(X, X')`` (up to the 1/k normalisation): both locations shift by the same tap ``t``.
    Entries outside ``x`` (zero padding ``pads`` on both axes) contribute 0 and are never
    materialised. Always returns a new tensor.
    """
    n1, n2 = x.shape[axis1], x.shape[axis2]
    span = effective_window(window, dilation)
    c1 = _out_count(n1, span, stride, pads, "filter")
    c2 = _out_count(n2, span, stride, pads, "filter")
    taps = [t * dilation for t in range(window)]
    if torch.compiler.is_compiling():  # a sum of shifted views, fused into one loop
        padded = _zero_pad(x, {axis1: pads, axis2: pads})
        return sum(
            _strided(_strided(padded, axis1, t, c1, stride), axis2, t, c2, stride) for t in taps
        )
    ranges = [(_tap_range(n1, c1, t, stride, pads[0]), _tap_range(n2, c2, t, stride, pads[0])) for t in taps]
    # a tap that reaches every output (the centre one, for SAME) initialises the sum: one
    # pass fewer than zero-filling, and the same sum (addition commutes)
    first = next((t for t, (r1, r2) in enumerate(ranges) if r1 and r2 and r1[2] == c1 and r2[2] == c2), None)
    shape = list(x.shape)
    shape[axis1], shape[axis2] = c1, c2
    out = _empty_like_layout(x, shape)
    if first is None:
        out.zero_()
    else:
        (_, p1, _), (_, p2, _) = ranges[first]
        out.copy_(_strided(_strided(x, axis1, p1, c1, stride), axis2, p2, c2, stride))
    for t, (r1, r2) in enumerate(ranges):
        if r1 is None or r2 is None or t == first:
            continue
        target = out.narrow(axis1, r1[0], r1[2]).narrow(axis2, r2[0], r2[2])
        target.add_(_strided(_strided(x, axis1, r1[1], r1[2], stride), axis2, r2[1], r2[2], stride))
    return out


def dilate(x: torch.Tensor, axes: Sequence[int], strides: Sequence[int]) -> torch.Tensor:
    """Inserts ``s − 1`` zeros between neighbours along each axis (``lhs_dilation``)."""
    for axis, s in zip(axes, strides):
        if s == 1:
            continue
        n = x.shape[axis]
        shape = list(x.shape)
        shape[axis] = (n - 1) * s + 1
        out = x.new_zeros(shape)
        index = [slice(None)] * x.ndim
        index[axis] = slice(None, None, s)
        out[tuple(index)] = x
        x = out
    return x


def fold_circular(x: torch.Tensor, axes: Sequence[int], out_sizes: Sequence[int]) -> torch.Tensor:
    """Crops ``axes`` to ``out_sizes``, adding every entry onto its periodic image.

    The transpose of CIRCULAR padding (neural-tangents' ``_same_pad_for_filter_shape_transpose``):
    along an axis of length L, ``w = 2⌈L / n⌉ // 2 + 1`` shifted copies at multiples of the
    output length n are summed (lax SAME window of ``(w − 1) n + 1``), and the centre is kept.
    """
    for axis, n in zip(axes, out_sizes):
        length = x.shape[axis]
        w = (-(-length // n)) // 2 * 2 + 1
        lo, hi = same_pads(length, (w - 1) * n + 1, 1)
        padded = pad(x, [axis], [(lo, hi)], circular=False)
        total = None
        for j in range(w):
            term = padded.narrow(axis, j * n, length)
            total = term if total is None else total + term
        start = (length - n) // 2
        x = total.narrow(axis, start, n)
    return x


# ---------------------------------------------------------------------- kernel layouts


def check_kernel_axes(layer: str, k: Kernel, batch_axis: int | None, channel_axis: int | None) -> None:
    """Raises if the kernel's finite-width layout disagrees with what the layer expects."""
    ndim = len(k.shape1)
    for name, axis, have in (("batch_axis", batch_axis, k.batch_axis), ("channel_axis", channel_axis, k.channel_axis)):
        if axis is not None and axis % ndim != have % ndim:
            raise ValueError(
                f"{layer}: {name}={axis} (axis {axis % ndim} of the {ndim}-D activations {k.shape1}), but the "
                f"previous layer puts it on axis {have % ndim}. Use one layout throughout: tangents "
                f"defaults to channels-first (N, C, H, W); for NT's channels-last pass "
                f"dimension_numbers=('NHWC', 'HWIO', 'NHWC') to convolutions and channel_axis=-1 to pooling."
            )


def spatial_axes_of(cov: torch.Tensor, batch_ndim: int, diagonal_spatial: bool) -> list[list[int]]:
    """For each spatial dimension, the axes of ``cov`` that hold it (one, or a pair)."""
    if diagonal_spatial:
        return [[a] for a in range(batch_ndim, cov.ndim)]
    return [[a, a + 1] for a in range(batch_ndim, cov.ndim, 2)]


def map_covariances(k: Kernel, fn: Any) -> dict[str, torch.Tensor | None]:
    """``fn(tensor, batch_ndim)`` applied to nngp, ntk, cov1 and cov2 (0-d / None pass).

    While `skipping_covariances` (a tile replaying recorded self-covariances), ``cov1`` and
    ``cov2`` are not computed: ``None``.

    Returns:
        The new ``nngp``, ``ntk``, ``cov1``, ``cov2`` as keyword arguments for ``replace``.
    """
    cov_batch = 1 if k.diagonal_batch else 2

    def apply(t: torch.Tensor | None, batch_ndim: int) -> torch.Tensor | None:
        if t is None or t.ndim <= batch_ndim:
            return t
        return fn(t, batch_ndim)

    skip = skipping_covariances()
    return {
        "nngp": apply(k.nngp, 2),
        "ntk": apply(k.ntk, 2),
        "cov1": None if skip else apply(k.cov1, cov_batch),
        "cov2": None if skip else apply(k.cov2, cov_batch),
    }


def reverse_spatial(t: torch.Tensor, batch_ndim: int, diagonal_spatial: bool) -> torch.Tensor:
    """The spatial dimensions of a covariance in the opposite order (pairs kept together)."""
    groups = spatial_axes_of(t, batch_ndim, diagonal_spatial)
    order = list(range(batch_ndim)) + [a for g in reversed(groups) for a in g]
    return t.permute(order)


def permute_spatial(t: torch.Tensor, batch_ndim: int, diagonal_spatial: bool, perm: Sequence[int]) -> torch.Tensor:
    """Reorders the spatial dimensions: new dimension ``i`` is old dimension ``perm[i]``."""
    groups = spatial_axes_of(t, batch_ndim, diagonal_spatial)
    order = list(range(batch_ndim)) + [a for p in perm for a in groups[p]]
    return t.permute(order)


def add_on_spatial_diagonal(t: torch.Tensor, value: float, batch_ndim: int) -> torch.Tensor:
    """``t + value`` on the entries whose location pairs coincide (``(…, X, X, Y, Y)``)."""
    mask = None
    for a in range(batch_ndim, t.ndim, 2):
        eye = torch.eye(t.shape[a], dtype=torch.bool, device=t.device)
        shape = [1] * t.ndim
        shape[a], shape[a + 1] = t.shape[a], t.shape[a + 1]
        eye = eye.reshape(shape)
        mask = eye if mask is None else mask & eye
    return t + value * mask.to(t.dtype)


def pool_mask(
    mask: torch.Tensor, axes: Sequence[int], window: Sequence[int], strides: Sequence[int], padding: Padding
) -> torch.Tensor:
    """The mask of a window op's outputs (neural-tangents' ``_pool_mask``).

    Each output keeps the mask of its window's centre entry ``i s − lo + (k − 1) // 2``;
    the mask is unchanged when the output has the input's shape. ``padding``: a name, or
    one ``(lo, hi)`` pair per axis of ``axes``.
    """
    sizes = [mask.shape[a] for a in axes]
    paddings = [axis_padding("SAME" if padding == "CIRCULAR" else padding, i) for i in range(len(axes))]
    outs = [output_size(n, k, s, p) for n, k, s, p in zip(sizes, window, strides, paddings)]
    if outs == sizes:
        return mask
    index = [slice(None)] * mask.ndim
    for a, n, k, s, o, p in zip(axes, sizes, window, strides, outs, paddings):
        lo = window_pads(n, k, s, p)[0]
        start = -lo + (k - 1) // 2
        index[a] = slice(start, start + 1 + (o - 1) * s, s)
    return mask[tuple(index)]
