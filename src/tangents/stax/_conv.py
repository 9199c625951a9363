r"""Convolutions: `Conv`, `ConvTranspose` and `ConvLocal` (neural-tangents' ``_Conv``).

Finite width, NTK parameterization: ``z = W_std / √fan_in · (W ⋆ x) + b_std · b`` with
``W, b ~ N(0, 1)`` and ``fan_in = in_chan · prod(filter_shape)``; standard:
``W ~ N(0, W_std² / (fan_in / s[0]))``, ``z = (W ⋆ x) / √s[0] + b``.

Infinite width: a convolution with filter ``k`` averages the input covariance over the
filter window, the same tap shifting both locations of a pair, then applies the affine
map of `affine_kernel`:

    Σ'(x, x')[i, j] = W_std² / |k| · Σ_t Σ(x, x')[i s + t, j s + t] + b_std²

(per spatial dimension; zero padding contributes 0, CIRCULAR wraps; a filter dilated by
``d``, ``rhs_dilation``, has its taps ``t`` at multiples of ``d``). On diagonal
covariances ``(N1, N2, H, W)`` this is a box filter; on full ones
``(N1, N2, H, H', W, W')`` a diagonal filter on each location pair. `ConvLocal` has
independent weights per location, so only coincident locations stay correlated.

Layout: tangents is channels-first like ``torch.nn.Conv2d``: ``dimension_numbers=None``
means ``('NCHW', 'OIHW', 'NCHW')`` (1-D ``('NCH', 'OIH', 'NCH')``, 3-D
``('NCHWD', 'OIHWD', 'NCHWD')``). Any ``lax``-style triple is accepted, e.g. NT's
``('NHWC', 'HWIO', 'NHWC')``. Kernels keep NT's layout whatever the input layout; like NT,
a shared-weight convolution on full covariances stores its spatial axes in reverse order
and flips ``Kernel.is_reversed`` (readouts and fan-ins undo it).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .._kernel import Kernel
from ._checks import check_parameterization, check_std
from ._dense import affine_kernel
from ._layer import Layer, Params, ShapeTree
from ._requirements import Bool, Diagonal, Requirements
from ._spatial import (
    Padding,
    add_on_spatial_diagonal,
    axis_padding,
    check_ints,
    check_kernel_axes,
    check_padding,
    diagonal_window_sum,
    dilate,
    effective_window,
    fold_circular,
    map_covariances,
    output_size,
    pad,
    pool_mask,
    permute_spatial,
    reverse_spatial,
    transpose_output_size,
    transpose_pads,
    window_pads,
    window_sum,
)

_SPATIAL_LETTERS = "HWDABEFGJKLMPQRSTUVXYZ"
_TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def default_dimension_numbers(n: int) -> tuple[str, str, str]:
    """tangents' channels-first default: ``('NCHW', 'OIHW', 'NCHW')`` for ``n = 2``."""
    spatial = _SPATIAL_LETTERS[:n]
    return "NC" + spatial, "OI" + spatial, "NC" + spatial


def check_dimension_numbers(layer: str, dimension_numbers: Any, n: int) -> tuple[str, str, str]:
    """Validates a ``(lhs_spec, rhs_spec, out_spec)`` triple for ``n`` spatial axes."""
    if dimension_numbers is None:
        return default_dimension_numbers(n)
    example = "('NCHW', 'OIHW', 'NCHW') or NT's ('NHWC', 'HWIO', 'NHWC')"
    if (
        not isinstance(dimension_numbers, (tuple, list))
        or len(dimension_numbers) != 3
        or not all(isinstance(s, str) for s in dimension_numbers)
    ):
        raise ValueError(
            f"{layer}: dimension_numbers must be None or three strings (lhs, rhs, out), e.g. "
            f"{example}; got {dimension_numbers!r}."
        )
    lhs, rhs, out = (s.upper() for s in dimension_numbers)
    ok = (
        all(len(s) == n + 2 and len(set(s)) == n + 2 for s in (lhs, rhs, out))
        and {"N", "C"} <= set(lhs)
        and {"N", "C"} <= set(out)
        and {"I", "O"} <= set(rhs)
    )
    if ok:
        spatial = set(rhs) - {"I", "O"}
        ok = set(lhs) - {"N", "C"} == spatial and set(out) - {"N", "C"} == spatial
    if not ok:
        raise ValueError(
            f"{layer}: dimension_numbers {dimension_numbers!r} do not describe a {n}-D convolution "
            f"(filter_shape has {n} entries): lhs and out need 'N', 'C' and {n} spatial letters, rhs "
            f"'O', 'I' and the same spatial letters, e.g. {example}."
        )
    return lhs, rhs, out


def conv_covariance(
    t: torch.Tensor,
    batch_ndim: int,
    filter_shape: tuple[int, ...],
    strides: tuple[int, ...],
    padding: Padding,
    diagonal_spatial: bool,
    transpose: bool,
    dilation: tuple[int, ...] | None = None,
) -> torch.Tensor:
    r"""The covariance after a shared-weight convolution, before the affine scaling.

    Args:
        t: a covariance ``(*B, S1, ..., Sd)`` (``diagonal_spatial``) or
            ``(*B, S1, S1', ..., Sd, Sd')`` with ``batch_ndim`` leading batch axes.
        filter_shape, strides: per spatial dimension, in ``t``'s storage order.
        padding: ``'VALID'``, ``'SAME'``, ``'CIRCULAR'`` or ``(lo, hi)`` pairs in ``t``'s
            storage order (of the dilated input, for a transposed convolution).
        transpose: a transposed convolution (``lax.conv_transpose``) instead.
        dilation: the filter's dilation per spatial dimension (default 1).

    Returns:
        ``(1/|k|) Σ_t`` over the filter taps, diagonal (box) or pairwise-diagonal, with the
        same layout and the output spatial sizes.
    """
    circular = padding == "CIRCULAR"
    dilation = (1,) * len(filter_shape) if dilation is None else dilation
    spans = [effective_window(k, d) for k, d in zip(filter_shape, dilation)]
    if diagonal_spatial:
        axes = list(range(batch_ndim, t.ndim))
        if transpose:
            sizes = [t.shape[a] for a in axes]
            t = dilate(t, axes, strides)
            pads = [transpose_pads(w, s, axis_padding(padding, i)) for i, (w, s) in enumerate(zip(spans, strides))]
            t = window_sum(t, axes, filter_shape, (1,) * len(axes), pads, dilation)
            if circular:
                t = fold_circular(t, axes, [n * s for n, s in zip(sizes, strides)])
        else:
            pads = [
                window_pads(t.shape[a], w, s, axis_padding(padding, i))
                for i, (a, w, s) in enumerate(zip(axes, spans, strides))
            ]
            if circular:
                t, pads = pad(t, axes, pads, circular=True), [(0, 0)] * len(axes)
            t = window_sum(t, axes, filter_shape, strides, pads, dilation)
    else:
        for i, (k, s, d, w) in enumerate(zip(filter_shape, strides, dilation, spans)):
            a, b = batch_ndim + 2 * i, batch_ndim + 2 * i + 1
            if transpose:
                size = t.shape[a]
                t = dilate(t, (a, b), (s, s))
                t = diagonal_window_sum(t, a, b, k, 1, transpose_pads(w, s, axis_padding(padding, i)), d)
                if circular:
                    t = fold_circular(t, (a, b), (size * s, size * s))
            else:
                pads = window_pads(t.shape[a], w, s, axis_padding(padding, i))
                if circular:
                    t, pads = pad(t, (a, b), [pads, pads], circular=True), (0, 0)
                t = diagonal_window_sum(t, a, b, k, s, pads, d)
    return t.mul_(1 / math.prod(filter_shape))  # t is a new tensor here


def local_conv_covariance(
    t: torch.Tensor, batch_ndim: int, filter_shape: tuple[int, ...], strides: tuple[int, ...], padding: Padding
) -> torch.Tensor:
    """The covariance after an unshared convolution (`ConvLocal`), before scaling.

    Weights differ across locations, so distinct output locations are uncorrelated: the
    location diagonal is the box-filtered input diagonal, every other entry is 0.
    """
    n = (t.ndim - batch_ndim) // 2
    diag = t
    for _ in range(n):
        diag = torch.diagonal(diag, 0, batch_ndim, batch_ndim + 1)  # moves the pair's diagonal last
    out = conv_covariance(diag, batch_ndim, filter_shape, strides, padding, True, False)
    for i in range(n):
        out = torch.movedim(out, batch_ndim + 2 * i, -1)
        out = torch.diag_embed(out, 0, batch_ndim + 2 * i, batch_ndim + 2 * i + 1)
    return out


class _Conv(Layer):
    """Shared implementation of `Conv`, `ConvTranspose` and `ConvLocal`."""

    param_names = ("W", "b")
    hyperparameter_names = ("W_std", "b_std")
    remask = True
    transpose = False
    shared_weights = True

    def __init__(
        self,
        out_chan: int,
        filter_shape: tuple[int, ...],
        strides: tuple[int, ...] | None = None,
        padding: str = "VALID",
        W_std: float | torch.Tensor = 1.0,
        b_std: float | torch.Tensor | None = None,
        dimension_numbers: tuple[str, str, str] | None = None,
        parameterization: str = "ntk",
        s: tuple[int, int] = (1, 1),
        rhs_dilation: tuple[int, ...] | None = None,
    ) -> None:
        name = type(self).__name__
        if isinstance(out_chan, bool) or not isinstance(out_chan, int) or out_chan < 1:
            raise ValueError(f"{name}: out_chan must be a positive integer, got {out_chan!r}.")
        self.out_chan = out_chan
        self.filter_shape = check_ints(name, "filter_shape", filter_shape)
        n = len(self.filter_shape)
        self.strides = (1,) * n if strides is None else check_ints(name, "strides", strides, n)
        self.padding = check_padding(name, padding, n)
        self.rhs_dilation = (1,) * n if rhs_dilation is None else check_ints(name, "rhs_dilation", rhs_dilation, n)
        if not self.shared_weights and any(d != 1 for d in self.rhs_dilation):
            raise ValueError(
                f"{name}: rhs_dilation={self.rhs_dilation} is not supported by the unshared convolution; "
                f"use Conv for a dilated filter."
            )
        self.W_std = check_std(name, "W_std", W_std, allow_none=False, allow_tensor=True)
        self.b_std = check_std(name, "b_std", b_std, allow_none=True, allow_tensor=True)
        self.dimension_numbers = check_dimension_numbers(name, dimension_numbers, n)
        self.parameterization = check_parameterization(name, parameterization)
        if (
            not isinstance(s, (tuple, list))
            or len(s) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in s)
        ):
            raise ValueError(f"{name}: s must be a pair of positive integers, got {s!r}.")
        self.s = tuple(s)
        lhs, rhs, out = self.dimension_numbers
        #: spatial letters in filter (rhs) order, and in input / output order
        self._filter_letters = [c for c in rhs if c not in "IO"]
        self._in_letters = [c for c in lhs if c not in "NC"]
        self._out_letters = [c for c in out if c not in "NC"]

    def __repr__(self) -> str:
        dilation = "" if all(d == 1 for d in self.rhs_dilation) else f", rhs_dilation={self.rhs_dilation}"
        return (
            f"{self.name}({self.out_chan}, {self.filter_shape}, strides={self.strides}, "
            f"padding={self.padding!r}{dilation}, W_std={self.W_std}, b_std={self.b_std}, "
            f"dimension_numbers={self.dimension_numbers}, parameterization={self.parameterization!r})"
        )

    def _spans(self) -> tuple[int, ...]:
        """The filter's effective size per spatial axis (filter order), ``d (k − 1) + 1``."""
        return tuple(effective_window(k, d) for k, d in zip(self.filter_shape, self.rhs_dilation))

    # ------------------------------------------------------------------ shapes

    @property
    def requirements(self) -> Requirements:
        lhs = self.dimension_numbers[0]
        return Requirements(
            diagonal_spatial=Diagonal(output=Bool.NO if self.shared_weights else Bool.MAYBE),
            batch_axis=lhs.index("N"),
            channel_axis=lhs.index("C"),
        )

    def _width(self) -> int:
        return self.out_chan * (self.s[1] if self.parameterization == "standard" else 1)

    def _check_shape(self, input_shape: Any) -> tuple[int, ...]:
        lhs = self.dimension_numbers[0]
        if not isinstance(input_shape, tuple) or len(input_shape) != len(lhs):
            raise ValueError(
                f"{self.name}: expects {len(lhs)}-D inputs laid out as {lhs!r} (dimension_numbers="
                f"{self.dimension_numbers}), got shape {input_shape}. Images default to channels-first "
                f"(N, C, H, W); pass dimension_numbers=('NHWC', 'HWIO', 'NHWC') for channels-last."
            )
        return input_shape

    def _spatial_out(self, input_shape: tuple[int, ...]) -> dict[str, int]:
        """Output size of each spatial letter."""
        lhs = self.dimension_numbers[0]
        sizes = {}
        for i, (c, k, st) in enumerate(zip(self._filter_letters, self._spans(), self.strides)):
            n = input_shape[lhs.index(c)]
            if self.transpose:
                sizes[c] = transpose_output_size(n, k, st, axis_padding(self.padding, i))
            else:
                sizes[c] = output_size(n, k, st, axis_padding(self.padding, i))
            if n >= 0 and sizes[c] < 1:
                raise ValueError(
                    f"{self.name}: the filter {self.filter_shape} (span {k}) is larger than the input's "
                    f"spatial size {n} on axis {c!r} with padding={self.padding!r}; use padding='SAME' or a "
                    f"smaller filter."
                )
        return sizes

    def output_shape(self, input_shape: ShapeTree) -> ShapeTree:
        input_shape = self._check_shape(input_shape)
        lhs, _, out = self.dimension_numbers
        sizes = self._spatial_out(input_shape)
        return tuple(
            input_shape[lhs.index("N")] if c == "N" else self._width() if c == "C" else sizes[c] for c in out
        )

    def _fan_in(self, input_shape: tuple[int, ...]) -> int:
        return input_shape[self.dimension_numbers[0].index("C")] * math.prod(self.filter_shape)

    # ------------------------------------------------------------------ finite width

    def init_params(self, generator, input_shape, dtype, device) -> Params:  # noqa: ANN001
        input_shape = self._check_shape(input_shape)
        lhs, rhs, out = self.dimension_numbers
        in_chan = input_shape[lhs.index("C")]
        if in_chan < 1:
            raise ValueError(f"{self.name}: the input's channel axis must have a known size, got shape {input_shape}.")
        width = self._width()
        out_shape = self.output_shape(input_shape)
        if self.shared_weights:
            filt = dict(zip(self._filter_letters, self.filter_shape))
            w_shape = [width if c == "O" else in_chan if c == "I" else filt[c] for c in rhs]
            b_shape = [width if c == "C" else 1 for c in out]
        else:
            sizes = self._spatial_out(input_shape)
            patch = in_chan * math.prod(self.filter_shape)
            w_shape = [width if c == "O" else patch if c == "I" else sizes[c] for c in rhs]
            b_shape = [1 if c == "N" else out_shape[i] for i, c in enumerate(out)]
        W = torch.randn(w_shape, generator=generator, dtype=dtype, device=device)
        b = None
        if self.b_std is not None:
            b = torch.randn(b_shape, generator=generator, dtype=dtype, device=device)
        if self.parameterization == "standard":
            W = W * (self.W_std / math.sqrt(self._fan_in(input_shape) / self.s[0]))
            b = None if b is None else b * self.b_std
        return (W, b)

    def apply(self, params: Params, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        W, b = params
        self._check_shape(tuple(x.shape))
        lhs, rhs, out = self.dimension_numbers
        in_chan = x.shape[lhs.index("C")]
        fan_in = in_chan * math.prod(self.filter_shape)
        n = len(self.filter_shape)
        # to torch's (N, C, *S) with the spatial axes in filter order
        x = x.permute([lhs.index("N"), lhs.index("C")] + [lhs.index(c) for c in self._filter_letters])
        w = W.permute([rhs.index("O"), rhs.index("I")] + [rhs.index(c) for c in self._filter_letters])
        per_channel = 1 if self.shared_weights else math.prod(self.filter_shape)
        if w.shape[1] != in_chan * per_channel:
            raise ValueError(
                f"{self.name}: the input has {in_chan} channels on axis {lhs.index('C')} (layout {lhs!r}), "
                f"but the layer was initialised for {w.shape[1] // per_channel}."
            )
        axes = list(range(2, 2 + n))
        if self.transpose:
            y = self._transpose_forward(x, w, axes)
        else:
            pads = [
                window_pads(x.shape[a], k, st, axis_padding(self.padding, i))
                for i, (a, k, st) in enumerate(zip(axes, self._spans(), self.strides))
            ]
            x = pad(x, axes, pads, self.padding == "CIRCULAR")
            y = self._conv(x, w, self.strides) if self.shared_weights else self._local_forward(x, w)
        # back to the out spec
        y = y.permute([0 if c == "N" else 1 if c == "C" else 2 + self._filter_letters.index(c) for c in out])
        if self.parameterization == "ntk":
            y = y * (self.W_std / math.sqrt(fan_in))
            if b is not None:
                y = y + self.b_std * b
        else:
            y = y / math.sqrt(self.s[0])
            if b is not None:
                y = y + b
        return y

    def _conv(self, x: torch.Tensor, w: torch.Tensor, strides: tuple[int, ...]) -> torch.Tensor:
        fn = _TORCH_CONV.get(x.ndim - 2)
        if fn is None:
            raise ValueError(
                f"{self.name}: the finite-width forward pass supports 1-, 2- and 3-D convolutions "
                f"(torch.nn.functional.conv1d/2d/3d), got {x.ndim - 2} spatial axes."
            )
        return fn(x, w, stride=strides, dilation=self.rhs_dilation)

    def _transpose_forward(self, x: torch.Tensor, w: torch.Tensor, axes: list[int]) -> torch.Tensor:
        """``lax.conv_transpose``: dilate by the strides, pad, correlate (filter unflipped)."""
        sizes = [x.shape[a] for a in axes]
        x = dilate(x, axes, self.strides)
        pads = [transpose_pads(k, st, axis_padding(self.padding, i)) for i, (k, st) in enumerate(zip(self._spans(), self.strides))]
        x = pad(x, axes, pads, False)
        y = self._conv(x, w, (1,) * len(axes))
        if self.padding == "CIRCULAR":
            y = fold_circular(y, axes, [n * st for n, st in zip(sizes, self.strides)])
        return y

    def _local_forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Unshared convolution: each output location has its own ``(C·|k|, O)`` weights.

        ``w`` is ``(O, C·|k|, *S_out)``; patches are flattened channel-major, then filter taps.
        """
        n = x.ndim - 2
        patches = x
        for i, (k, st) in enumerate(zip(self.filter_shape, self.strides)):
            patches = patches.unfold(2 + i, k, st)  # (N, C, *S_out, *k)
        order = [0] + list(range(2, 2 + n)) + [1] + list(range(2 + n, 2 + 2 * n))
        patches = patches.permute(order).reshape(patches.shape[0], *patches.shape[2 : 2 + n], -1)
        w = torch.movedim(w, (0, 1), (-1, -2))  # (*S_out, C·|k|, O)
        y = torch.einsum("n...i,...io->n...o", patches, w)
        return torch.movedim(y, -1, 1)

    def mask(self, mask: torch.Tensor, input_shape: ShapeTree) -> torch.Tensor:
        """Masked if all channels are, then strided like the outputs (NT's ``_pool_mask``); a
        transposed convolution's output is masked if any masked entry reaches it (as NT)."""
        lhs, _, out = self.dimension_numbers
        mask = mask.all(dim=lhs.index("C"), keepdim=True)
        if self.transpose:  # NT: lax.conv_transpose of the mask with a ones filter (CIRCULAR as SAME)
            m = mask.permute([lhs.index("N"), lhs.index("C")] + [lhs.index(c) for c in self._filter_letters])
            padding = "SAME" if self.padding == "CIRCULAR" else self.padding
            m = conv_covariance(
                m.to(torch.float64), 2, self.filter_shape, self.strides, padding, True, True, self.rhs_dilation
            ) > 0
            return m.permute([0 if c == "N" else 1 if c == "C" else 2 + self._filter_letters.index(c) for c in out])
        filt = dict(zip(self._filter_letters, self._spans()))
        steps = dict(zip(self._filter_letters, self.strides))
        axes = [lhs.index(c) for c in self._in_letters]
        padding = self._padding_in([self._filter_letters.index(c) for c in self._in_letters])
        mask = pool_mask(mask, axes, [filt[c] for c in self._in_letters], [steps[c] for c in self._in_letters], padding)
        return mask.permute([lhs.index(c) for c in out])

    # ------------------------------------------------------------------ infinite width

    @property
    def replays_covariances(self) -> bool:
        return self.shared_weights  # ConvLocal's per-location biases read the mapped cov1

    def propagate(self, k: Kernel, **kwargs: Any) -> Kernel:
        if not isinstance(k, Kernel):
            raise ValueError(f"{self.name}: expects a single input, got a list of {len(k)} branches.")
        lhs = self.dimension_numbers[0]
        check_kernel_axes(self.name, k, lhs.index("N"), lhs.index("C"))
        n = len(self.filter_shape)
        spatial_ndim = k.nngp.ndim - 2
        if spatial_ndim != (n if k.diagonal_spatial else 2 * n):
            raise ValueError(
                f"{self.name}: a {n}-D convolution needs inputs with {n} spatial axes laid out as "
                f"{self.dimension_numbers[0]!r}, but the kernel has "
                f"{spatial_ndim if k.diagonal_spatial else spatial_ndim // 2}; check dimension_numbers "
                f"(tangents defaults to channels-first (N, C, H, W))."
            )
        self._spatial_out(self._check_shape(k.shape1))  # a filter too wide for the input: a clear error
        # filter and strides in the kernel's storage order
        perm = [self._filter_letters.index(c) for c in self._in_letters]
        filt = tuple(self.filter_shape[p] for p in perm)
        strides = tuple(self.strides[p] for p in perm)
        dilation = tuple(self.rhs_dilation[p] for p in perm)
        padding = self._padding_in(perm)
        if k.is_reversed and not k.diagonal_spatial:
            filt, strides, dilation = filt[::-1], strides[::-1], dilation[::-1]
            padding = padding if isinstance(padding, str) else padding[::-1]
        full_shared = self.shared_weights and not k.diagonal_spatial
        if self.shared_weights or k.diagonal_spatial:

            def fn(t: torch.Tensor, batch_ndim: int) -> torch.Tensor:
                return conv_covariance(
                    t, batch_ndim, filt, strides, padding, k.diagonal_spatial, self.transpose, dilation
                )

        else:

            def fn(t: torch.Tensor, batch_ndim: int) -> torch.Tensor:
                return local_conv_covariance(t, batch_ndim, filt, strides, padding)

        unscaled = k.replace(**map_covariances(k, fn))
        fan_in = self._fan_in(k.shape1) / self.s[0]
        if self.shared_weights or k.diagonal_spatial:
            # the window sums are new tensors (the mapped ones, at least): scaled in place
            fresh = all(getattr(unscaled, f) is not getattr(k, f) for f in ("nngp", "ntk", "cov1", "cov2")
                        if getattr(k, f) is not None and getattr(k, f).ndim > 0)
            out = affine_kernel(unscaled, self.W_std, self.b_std, self.parameterization, fan_in, in_place=fresh)
        else:
            out = self._local_affine(unscaled, fan_in)
        if full_shared:  # NT stores the result in reverse spatial order
            out = out.replace(
                **map_covariances(out, lambda t, b: reverse_spatial(t, b, False)), is_reversed=not out.is_reversed
            )
        out = self._to_out_order(out)
        _, _, out_spec = self.dimension_numbers
        return out.replace(batch_axis=out_spec.index("N"), channel_axis=out_spec.index("C"))

    def _padding_in(self, perm: list[int]) -> Padding:
        """The padding with explicit pairs reordered from filter order by ``perm``."""
        return self.padding if isinstance(self.padding, str) else tuple(self.padding[p] for p in perm)

    def _local_affine(self, k: Kernel, fan_in: float) -> Kernel:
        """`affine_kernel` with per-location biases: b_std² only where locations coincide."""
        out = affine_kernel(k, self.W_std, None, self.parameterization, fan_in)
        if self.b_std is None:
            return out
        b2 = self.b_std**2
        cov_batch = 1 if out.diagonal_batch else 2
        shift = b2 if self.parameterization == "ntk" else 1.0
        return out.replace(
            nngp=add_on_spatial_diagonal(out.nngp, b2, 2),
            ntk=None if out.ntk is None else add_on_spatial_diagonal(out.ntk, shift, 2),
            cov1=add_on_spatial_diagonal(out.cov1, b2, cov_batch),
            cov2=None if out.cov2 is None else add_on_spatial_diagonal(out.cov2, b2, cov_batch),
        )

    def _to_out_order(self, k: Kernel) -> Kernel:
        """Reorders spatial dimensions when ``out_spec`` orders them unlike ``lhs_spec``."""
        if self._out_letters == self._in_letters:
            return k
        perm = [self._in_letters.index(c) for c in self._out_letters]
        if k.is_reversed and not k.diagonal_spatial:
            m = len(perm)
            perm = [m - 1 - perm[m - 1 - i] for i in range(m)]
        return k.replace(**map_covariances(k, lambda t, b: permute_spatial(t, b, k.diagonal_spatial, perm)))


class Conv(_Conv):
    r"""General convolution (neural-tangents' ``stax.Conv``), channels-first by default.

    Finite width (NTK parameterization): ``z = W_std / √(C_in |k|) · (W ⋆ x) + b_std b``,
    ``W, b ~ N(0, 1)``. Kernel: Σ' = W_std² · (1/|k|) Σ_taps Σ + b_std² (the covariance
    averaged over the filter window along each location pair), Θ' = Σ' + W_std² · (same
    average of Θ); standard parameterization as `Dense` with ``n = C_in |k| / s[0]``.

    Args:
        out_chan: output channels (ignored by the NTK-parameterization kernel).
        filter_shape: filter size per spatial axis, e.g. ``(3, 3)`` (1-D to 3-D).
        strides: stride per spatial axis (default 1).
        padding: ``'VALID'``, ``'SAME'`` (lax's convention: the extra pad of an even filter
            goes at the end) or ``'CIRCULAR'`` (periodic).
        W_std: weight standard deviation (a number, or a 0-d tensor to differentiate the
            kernel in it).
        b_std: bias standard deviation (likewise); ``None`` for no bias.
        dimension_numbers: ``(lhs, rhs, out)`` layout strings as in ``lax.conv_general_dilated``;
            ``None`` means channels-first ``('NCHW', 'OIHW', 'NCHW')`` (weights shaped like
            ``torch.nn.Conv2d.weight``). NT's channels-last ``('NHWC', 'HWIO', 'NHWC')`` works too.
        parameterization: ``'ntk'`` or ``'standard'``.
        s: width scalings ``(s_in, s_out)`` of the standard parameterization.

    Example:
        >>> net = stax.serial(stax.Conv(64, (3, 3), padding='SAME'), stax.Relu(),
        ...                   stax.GlobalAvgPool(), stax.Dense(1))
        >>> x = torch.randn(4, 3, 8, 8)          # (N, C, H, W)
        >>> net.kernel_fn(x, None, 'ntk').shape
        torch.Size([4, 4])
    """


class ConvTranspose(_Conv):
    r"""Transposed convolution (neural-tangents' ``stax.ConvTranspose``), as ``lax.conv_transpose``.

    Output size per axis: ``n·s`` (SAME, CIRCULAR) or ``n·s + max(k − s, 0)`` (VALID). The
    input is dilated by the strides, padded and correlated with the (unflipped) filter;
    kernels transform the same way with the box/diagonal filter of `Conv`. Arguments as
    in `Conv`.
    """

    transpose = True


class ConvLocal(_Conv):
    r"""Locally connected (unshared) convolution (neural-tangents' ``stax.ConvLocal``).

    Each output location has its own filter and bias, so the kernel keeps only coincident
    locations: Σ'[i, i] is `Conv`'s diagonal, Σ'[i, j] = 0 for i ≠ j. Weights are
    ``(O, C_in·|k|, *S_out)`` in the default layout; the bias is per location. Arguments as
    in `Conv`.
    """

    shared_weights = False
