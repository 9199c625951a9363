r"""Pooling and flattening: `AvgPool`, `SumPool`, `GlobalAvgPool`, `GlobalSumPool`, `Flatten`.

Pooling is linear, so a pooled Gaussian stays Gaussian and its covariance is the pooled
covariance on *both* locations of a pair (window ``k`` along each spatial dimension):

    Σ'[i, j] = c · Σ_{t, t'} Σ[i s + t, j s + t'],   c = 1 (sum) or 1 / |k|² (average).

This needs the full location–location covariances (``Diagonal(input=MAYBE)``: with only
the diagonal stored, off-diagonal entries are taken as zero, as in neural-tangents).
Global pooling averages (sums) over all location pairs; `Flatten` followed by a dense
readout sees the mean of the location diagonal, so it only needs diagonal covariances.

Layout: tangents is channels-first, so ``channel_axis`` defaults to 1 (neural-tangents: -1);
spatial axes are those that are neither the batch nor the channel axis, in order.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._kernel import Kernel
from ._layer import Layer, Params, ShapeTree
from ._masking import mask_products
from ._requirements import Bool, Diagonal, Requirements
from ._spatial import (
    Padding,
    axis_padding,
    check_ints,
    check_kernel_axes,
    check_padding,
    map_covariances,
    output_size,
    pad,
    pool_mask,
    same_pads,
    spatial_axes_of,
    window_pads,
    window_sum,
)


def _check_axis(layer: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{layer}: {name} must be an integer axis, got {value!r}.")
    return value


def _check_axes(layer: str, batch_axis: Any, channel_axis: Any) -> tuple[int, int]:
    batch_axis = _check_axis(layer, "batch_axis", batch_axis)
    channel_axis = _check_axis(layer, "channel_axis", channel_axis)
    if batch_axis == channel_axis:
        _spatial_axes(layer, max(batch_axis + 1, -batch_axis, 1), batch_axis, channel_axis)
    return batch_axis, channel_axis


def _spatial_axes(layer: str, ndim: int, batch_axis: int, channel_axis: int) -> list[int]:
    """The axes of an ``ndim``-D input that are neither batch nor channel."""
    b, c = batch_axis % ndim, channel_axis % ndim
    if b == c:
        raise ValueError(
            f"{layer}: batch_axis={batch_axis} and channel_axis={channel_axis} are the same axis of "
            f"{ndim}-D inputs; for channels-first (N, C, H, W) use batch_axis=0, channel_axis=1."
        )
    return [i for i in range(ndim) if i not in (b, c)]


def _check_channel_mask(layer: str, mask: torch.Tensor, channel_axis: int) -> None:
    if mask.shape[channel_axis] != 1:
        raise ValueError(
            f"{layer}: masks that differ across channels (shape {tuple(mask.shape)}) are not supported by "
            f"pooling; mask whole locations, or put a Dense/Conv layer first."
        )


def _unmasked_count(mask: torch.Tensor, axes: list[int]) -> torch.Tensor:
    """Entries not masked along ``axes`` (at least 1), as in NT's ``mean_and_var``."""
    return (~mask).sum(axes).clamp(min=1)


def _window_counts(
    size: int, window: int, stride: int, padding: str | tuple[int, int], like: torch.Tensor
) -> torch.Tensor:
    """How many real (unpadded) entries each output window covers along one axis."""
    ones = torch.ones(size, dtype=like.dtype, device=like.device)
    if padding == "CIRCULAR":
        return window_sum(pad(ones, [0], [same_pads(size, window, stride)], circular=True), [0], [window], [stride])
    return window_sum(ones, [0], [window], [stride], [window_pads(size, window, stride, padding)])


def pool_normalize(
    out: torch.Tensor,
    axes: list[int],
    sizes: list[int],
    window: tuple[int, ...],
    strides: tuple[int, ...],
    padding: Padding,
    normalize: str | None,
) -> torch.Tensor:
    """Divides window sums by the window size (``'window'``), by the number of unpadded
    entries (``'edges'``, SAME or explicit padding, as ``ostax.AvgPool`` and ``torch``'s
    ``count_include_pad=False``), or not at all (``None``). Explicit ``padding``: one
    ``(lo, hi)`` pair per axis of ``axes``."""
    if normalize is None:
        return out
    if normalize == "window" or padding in ("VALID", "CIRCULAR"):
        return out / math.prod(window)
    for i, (a, n, k, s) in enumerate(zip(axes, sizes, window, strides)):
        counts = _window_counts(n, k, s, axis_padding(padding, i), out)
        shape = [1] * out.ndim
        shape[a] = counts.shape[0]
        out = out / counts.reshape(shape)
    return out


def pool_sum(
    x: torch.Tensor,
    axes: list[int],
    window: tuple[int, ...],
    strides: tuple[int, ...],
    padding: Padding,
    normalize: str | None,
) -> torch.Tensor:
    """Windowed sum over ``axes`` (lax ``reduce_window``), normalised by `pool_normalize`.
    Explicit ``padding``: one ``(lo, hi)`` pair per axis of ``axes``."""
    sizes = [x.shape[a] for a in axes]
    pads = [window_pads(n, k, s, axis_padding(padding, i)) for i, (n, k, s) in enumerate(zip(sizes, window, strides))]
    if padding == "CIRCULAR":
        x, pads = pad(x, axes, pads, circular=True), [(0, 0)] * len(axes)
    out = window_sum(x, axes, window, strides, pads)
    return pool_normalize(out, axes, sizes, window, strides, padding, normalize)


class _Pool(Layer):
    """Shared implementation of `AvgPool` and `SumPool`."""

    average = True
    remask = True
    replays_covariances = True  # every covariance is pooled alone (`map_covariances`)

    def __init__(
        self,
        window_shape: tuple[int, ...],
        strides: tuple[int, ...] | None,
        padding: str,
        normalize_edges: bool,
        batch_axis: int,
        channel_axis: int,
    ) -> None:
        name = type(self).__name__
        self.window_shape = check_ints(name, "window_shape", window_shape)
        n = len(self.window_shape)
        self.strides = (1,) * n if strides is None else check_ints(name, "strides", strides, n)
        self.padding = check_padding(name, padding, n)
        if not isinstance(normalize_edges, (bool, np.bool_)):
            raise ValueError(f"{name}: normalize_edges must be True or False, got {normalize_edges!r}.")
        self.normalize_edges = bool(normalize_edges)
        self.batch_axis, self.channel_axis = _check_axes(name, batch_axis, channel_axis)

    def __repr__(self) -> str:
        return (
            f"{self.name}({self.window_shape}, strides={self.strides}, padding={self.padding!r}, "
            f"batch_axis={self.batch_axis}, channel_axis={self.channel_axis})"
        )

    @property
    def requirements(self) -> Requirements:
        return Requirements(
            diagonal_spatial=Diagonal(input=Bool.MAYBE), batch_axis=self.batch_axis, channel_axis=self.channel_axis
        )

    def _axes(self, ndim: int) -> list[int]:
        axes = _spatial_axes(self.name, ndim, self.batch_axis, self.channel_axis)
        if len(axes) != len(self.window_shape):
            raise ValueError(
                f"{self.name}: window_shape {self.window_shape} has {len(self.window_shape)} entries but the "
                f"{ndim}-D inputs have {len(axes)} spatial axes (batch_axis={self.batch_axis}, "
                f"channel_axis={self.channel_axis}; tangents defaults to channels-first (N, C, H, W))."
            )
        return axes

    def _normalize(self) -> str | None:
        if not self.average:
            return None
        return "edges" if self.normalize_edges else "window"

    def output_shape(self, input_shape: ShapeTree) -> ShapeTree:
        if not isinstance(input_shape, tuple):
            raise ValueError(f"{self.name}: expects a single input, got a list of {len(input_shape)}.")
        shape = list(input_shape)
        for i, (a, k, s) in enumerate(zip(self._axes(len(shape)), self.window_shape, self.strides)):
            shape[a] = output_size(shape[a], k, s, axis_padding(self.padding, i))
            if shape[a] == 0:
                raise ValueError(
                    f"{self.name}: the window {self.window_shape} is larger than the input {input_shape} "
                    f"with padding={self.padding!r}; use padding='SAME' or a smaller window."
                )
        return tuple(shape)

    def mask(self, mask: torch.Tensor, input_shape: ShapeTree) -> torch.Tensor:
        axes = self._axes(mask.ndim)
        _check_channel_mask(self.name, mask, self.channel_axis)
        return pool_mask(mask, axes, self.window_shape, self.strides, self.padding)

    def apply(self, params: Params, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.output_shape(tuple(x.shape))
        return pool_sum(x, self._axes(x.ndim), self.window_shape, self.strides, self.padding, self._normalize())

    def propagate(self, k: Kernel, **kwargs: Any) -> Kernel:
        if not isinstance(k, Kernel):
            raise ValueError(f"{self.name}: expects a single input, got a list of {len(k)} branches.")
        check_kernel_axes(self.name, k, self.batch_axis, self.channel_axis)
        n = len(self.window_shape)
        window, strides, padding = self.window_shape, self.strides, self.padding
        if k.is_reversed and not k.diagonal_spatial:
            window, strides = window[::-1], strides[::-1]
            padding = padding if isinstance(padding, str) else padding[::-1]
        normalize = self._normalize()

        def fn(t: torch.Tensor, batch_ndim: int) -> torch.Tensor:
            groups = spatial_axes_of(t, batch_ndim, k.diagonal_spatial)
            if len(groups) != n:
                raise ValueError(
                    f"{self.name}: window_shape {self.window_shape} has {n} entries but the kernel has "
                    f"{len(groups)} spatial axes; check batch_axis/channel_axis."
                )
            axes = [a for g in groups for a in g]
            sizes = [t.shape[a] for a in axes]
            windows = tuple(w for g, w in zip(groups, window) for _ in g)
            steps = tuple(s for g, s in zip(groups, strides) for _ in g)
            pads = padding if isinstance(padding, str) else tuple(p for g, p in zip(groups, padding) for _ in g)
            out = pool_sum(t, axes, windows, steps, pads, normalize)
            if k.diagonal_spatial:
                # only the location diagonal is known and off-diagonal covariances count as
                # 0, so an average's variance is divided by the window size once more
                out = pool_normalize(out, axes, sizes, windows, steps, pads, normalize)
            return out

        return k.replace(**map_covariances(k, fn))


class AvgPool(_Pool):
    r"""Average pooling (neural-tangents' ``stax.AvgPool``).

    Kernel: Σ'[i, j] = (1/|k|²) Σ_{t, t'} Σ[i s + t, j s + t'] on full covariances.

    Args:
        window_shape: window size per spatial axis, e.g. ``(2, 2)``.
        strides: stride per spatial axis (default 1).
        padding: ``'VALID'``, ``'SAME'``, ``'CIRCULAR'`` (periodic), or explicit zero padding
            ``((lo, hi), ...)``, one pair per spatial axis (``torch``'s ``padding=p`` is
            ``((p, p), ...)``).
        normalize_edges: with SAME or explicit padding, divide by the number of real entries
            in each window (like ``torch``'s ``count_include_pad=False``) instead of the
            window size (``count_include_pad=True``).
        batch_axis: the batch axis of the inputs.
        channel_axis: the channel axis of the inputs (tangents' default 1, channels-first;
            NT's default is -1).

    Example:
        >>> net = stax.serial(stax.Conv(32, (3, 3), padding='SAME'), stax.Relu(),
        ...                   stax.AvgPool((2, 2), strides=(2, 2)), stax.Flatten(), stax.Dense(1))
    """

    average = True

    def __init__(
        self,
        window_shape: tuple[int, ...],
        strides: tuple[int, ...] | None = None,
        padding: str = "VALID",
        normalize_edges: bool = False,
        batch_axis: int = 0,
        channel_axis: int = 1,
    ) -> None:
        super().__init__(window_shape, strides, padding, normalize_edges, batch_axis, channel_axis)


class SumPool(_Pool):
    r"""Sum pooling (neural-tangents' ``stax.SumPool``): Σ'[i, j] = Σ_{t, t'} Σ[i s + t, j s + t'].

    Arguments as in `AvgPool` (without ``normalize_edges``).
    """

    average = False

    def __init__(
        self,
        window_shape: tuple[int, ...],
        strides: tuple[int, ...] | None = None,
        padding: str = "VALID",
        batch_axis: int = 0,
        channel_axis: int = 1,
    ) -> None:
        super().__init__(window_shape, strides, padding, False, batch_axis, channel_axis)


class _GlobalPool(Layer):
    """Shared implementation of `GlobalAvgPool` and `GlobalSumPool`."""

    average = True

    def __init__(self, batch_axis: int = 0, channel_axis: int = 1) -> None:
        self.batch_axis, self.channel_axis = _check_axes(self.name, batch_axis, channel_axis)

    def __repr__(self) -> str:
        return f"{self.name}(batch_axis={self.batch_axis}, channel_axis={self.channel_axis})"

    @property
    def requirements(self) -> Requirements:
        return Requirements(
            diagonal_spatial=Diagonal(input=Bool.MAYBE, output=Bool.YES),
            batch_axis=self.batch_axis,
            channel_axis=self.channel_axis,
        )

    def output_shape(self, input_shape: ShapeTree) -> ShapeTree:
        if not isinstance(input_shape, tuple):
            raise ValueError(f"{self.name}: expects a single input, got a list of {len(input_shape)}.")
        axes = _spatial_axes(self.name, len(input_shape), self.batch_axis, self.channel_axis)
        return tuple(s for i, s in enumerate(input_shape) if i not in axes)

    def mask(self, mask: torch.Tensor, input_shape: ShapeTree) -> torch.Tensor:
        _check_channel_mask(self.name, mask, self.channel_axis)
        axes = _spatial_axes(self.name, mask.ndim, self.batch_axis, self.channel_axis)
        return mask.all(dim=axes) if axes else mask

    def apply(self, params: Params, x: torch.Tensor, mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        axes = _spatial_axes(self.name, x.ndim, self.batch_axis, self.channel_axis)
        if not axes:
            return x
        if not self.average:
            return x.sum(axes)
        if mask is None:
            return x.mean(axes)
        return x.sum(axes) / _unmasked_count(mask.expand(x.shape), axes)

    def propagate(self, k: Kernel, **kwargs: Any) -> Kernel:
        if not isinstance(k, Kernel):
            raise ValueError(f"{self.name}: expects a single input, got a list of {len(k)} branches.")
        check_kernel_axes(self.name, k, self.batch_axis, self.channel_axis)

        m11, m12, m22 = mask_products(k)

        def fn(t: torch.Tensor, batch_ndim: int, mask: torch.Tensor | None = None) -> torch.Tensor:
            axes = list(range(batch_ndim, t.ndim))
            if not self.average:
                return t.sum(axes)
            # with masks (NT's mean_and_var): the sum over the unmasked location pairs' count
            out = t.mean(axes) if mask is None else t.sum(axes) / _unmasked_count(mask.expand(t.shape), axes)
            if k.diagonal_spatial:  # off-diagonal covariances count as 0
                out = out / math.prod(t.shape[batch_ndim:])
            return out

        ndim = len(k.shape1)
        batch_first = self.batch_axis % ndim < self.channel_axis % ndim
        covs = map_covariances(k, fn)
        if m12 is not None:
            cov_batch = 1 if k.diagonal_batch else 2
            covs["nngp"] = fn(k.nngp, 2, m12)
            covs["ntk"] = k.ntk if k.ntk is None or k.ntk.ndim == 0 else fn(k.ntk, 2, m12)
            covs["cov1"] = fn(k.cov1, cov_batch, m11)
            covs["cov2"] = None if k.cov2 is None else fn(k.cov2, cov_batch, m22)
        return k.replace(
            **covs,
            batch_axis=0 if batch_first else 1,
            channel_axis=1 if batch_first else 0,
            is_reversed=False,
        )


class GlobalAvgPool(_GlobalPool):
    r"""Global average pooling over all spatial axes (neural-tangents' ``stax.GlobalAvgPool``).

    ``(N, C, H, W) → (N, C)``; kernel: Σ' = mean over all location pairs of Σ
    ``(N1, N2, H, H', W, W') → (N1, N2)``.

    Args:
        batch_axis: the batch axis of the inputs.
        channel_axis: the channel axis (tangents' default 1, channels-first; NT's -1).
    """


class GlobalSumPool(_GlobalPool):
    r"""Global sum pooling over all spatial axes (neural-tangents' ``stax.GlobalSumPool``).

    Kernel: Σ' = sum over all location pairs of Σ. Arguments as in `GlobalAvgPool`.
    """

    average = False


class Flatten(Layer):
    r"""Flattens all non-batch axes (neural-tangents' ``stax.Flatten``).

    ``(N, C, H, W) → (N, C·H·W)`` (channel-major, like ``torch.flatten``). With infinitely
    many channels a dense readout of the flattened features sees the mean over locations
    of the location-diagonal covariance: Σ' = (1/|S|) Σ_i Σ[i, i].

    Args:
        batch_axis: the batch axis of the inputs.
        batch_axis_out: 0 for ``(N, features)`` outputs, 1 for ``(features, N)``.
    """

    def __init__(self, batch_axis: int = 0, batch_axis_out: int = 0) -> None:
        self.batch_axis = _check_axis("Flatten", "batch_axis", batch_axis)
        if batch_axis_out in (0, -2):
            self.batch_axis_out, self.channel_axis_out = 0, 1
        elif batch_axis_out in (1, -1):
            self.batch_axis_out, self.channel_axis_out = 1, 0
        else:
            raise ValueError(f"Flatten: batch_axis_out must be 0 or 1, got {batch_axis_out!r}.")

    def __repr__(self) -> str:
        return f"Flatten(batch_axis={self.batch_axis}, batch_axis_out={self.batch_axis_out})"

    @property
    def requirements(self) -> Requirements:
        return Requirements(diagonal_spatial=Diagonal(output=Bool.YES), batch_axis=self.batch_axis)

    def output_shape(self, input_shape: ShapeTree) -> ShapeTree:
        if not isinstance(input_shape, tuple):
            raise ValueError(f"Flatten: expects a single input, got a list of {len(input_shape)}.")
        b = self.batch_axis % len(input_shape)
        features = math.prod(s for i, s in enumerate(input_shape) if i != b)
        if any(s < 0 for i, s in enumerate(input_shape) if i != b):
            features = -1
        n = input_shape[b]
        return (n, features) if self.batch_axis_out == 0 else (features, n)

    def mask(self, mask: torch.Tensor, input_shape: ShapeTree) -> torch.Tensor:
        return self.apply((), mask.expand(input_shape))

    def apply(self, params: Params, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        x = torch.movedim(x, self.batch_axis % x.ndim, 0)
        x = x.reshape(x.shape[0], -1)
        return x if self.batch_axis_out == 0 else x.T

    def propagate(self, k: Kernel, **kwargs: Any) -> Kernel:
        if not isinstance(k, Kernel):
            raise ValueError(f"Flatten: expects a single input, got a list of {len(k)} branches.")
        check_kernel_axes("Flatten", k, self.batch_axis, None)

        def fn(t: torch.Tensor, batch_ndim: int) -> torch.Tensor:
            if k.diagonal_spatial:
                return t.mean(list(range(batch_ndim, t.ndim)))
            while t.ndim > batch_ndim:
                t = torch.diagonal(t, 0, -2, -1).sum(-1) / t.shape[-1]
            return t

        return k.replace(
            **map_covariances(k, fn),
            is_gaussian=False,
            is_reversed=False,
            batch_axis=self.batch_axis_out,
            channel_axis=self.channel_axis_out,
            diagonal_spatial=False,
        )
