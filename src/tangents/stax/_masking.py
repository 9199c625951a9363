r"""Masking of variable-length inputs (neural-tangents' ``mask_constant``).

``kernel_fn(x1, x2, mask_constant=c)`` and ``apply_fn(params, x, mask_constant=c)`` treat
input entries equal to ``c`` (NaN matches NaN) as absent: they are replaced by 0 and a
boolean mask (``True`` = masked) travels with the activations, in their finite-width
layout (``Kernel.mask1``/``mask2``; a size-1 axis broadcasts).

One mechanism in `Layer.transform` carries it through every layer:

* ``Layer.mask(mask, input_shape)`` maps an input mask to the output's (identity by
  default, so most layers need nothing: ``Kernel.replace`` keeps the masks). Dense and
  convolutions reduce it over channels (masked only if every channel is), pooling strides
  it, global pooling and flattening reshape it, fan-ins combine it.
* ``Layer.remask = True`` (neural-tangents' ``supports_masking(remask_kernel=True)``)
  zeroes every covariance entry with a masked location on either side after the layer.

Layers that average over locations (global average pooling, attention) use
`mask_products` to average over unmasked pairs only.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch

from .._kernel import Kernel


class MaskedArray(NamedTuple):
    """Outputs of ``apply_fn(..., mask_constant=c)``: the values and their boolean mask."""

    masked_value: Any
    mask: Any


def input_mask(x: Any, mask_constant: float | None) -> tuple[Any, torch.Tensor | None]:
    """``(x with masked entries set to 0, mask)``; ``mask`` is ``x == mask_constant`` (NaN-aware)."""
    if mask_constant is None or x is None:
        return x, None
    if isinstance(x, (list, tuple)):
        pairs = [input_mask(xi, mask_constant) for xi in x]
        return type(x)(p[0] for p in pairs), type(x)(p[1] for p in pairs)
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"mask_constant: inputs must be tensors or numpy arrays, got {type(x).__name__}.")
    if isinstance(mask_constant, bool) or not isinstance(mask_constant, (int, float)):
        raise TypeError(f"mask_constant must be None or a number (NaN and inf allowed), got {mask_constant!r}.")
    mask = torch.isnan(x) if math.isnan(mask_constant) else x == mask_constant
    return x.masked_fill(mask, 0), mask


def mask_layout(k: Kernel, m: torch.Tensor) -> torch.Tensor:
    """A finite-layout mask ``(N, ..., 1, ...)`` as ``(N, *S)`` in the kernel's spatial storage order."""
    ndim = len(k.shape1)
    if m.ndim != ndim:
        raise ValueError(f"masking: a mask of shape {tuple(m.shape)} does not match {ndim}-D activations {k.shape1}.")
    c = k.channel_axis % ndim
    if m.shape[c] != 1:
        raise ValueError(
            f"masking: masks that differ across channels (shape {tuple(m.shape)}, channel axis {c}) are not "
            f"supported by infinite-width layers; mask whole locations (every channel of an entry), or put a "
            f"Dense/Conv layer first, which masks a location only if all its channels are."
        )
    m = torch.movedim(m, (k.batch_axis % ndim, c), (0, -1)).squeeze(-1)
    if k.is_reversed:
        m = m.permute([0] + list(range(m.ndim - 1, 0, -1)))
    return m


def _outer(a: torch.Tensor, b: torch.Tensor, batch_ndim: int, diagonal_spatial: bool) -> torch.Tensor:
    """``a[n1, s] | b[n2, s']`` in the covariance layout with ``batch_ndim`` batch axes."""
    n_spatial = a.ndim - 1
    if batch_ndim == 2:
        a = a.reshape(a.shape[:1] + (1,) + a.shape[1:])
        b = b.reshape((1,) + b.shape)
    if diagonal_spatial:
        return a | b
    shape_a, shape_b = list(a.shape[:batch_ndim]), list(b.shape[:batch_ndim])
    for i in range(n_spatial):
        shape_a += [a.shape[batch_ndim + i], 1]
        shape_b += [1, b.shape[batch_ndim + i]]
    return a.reshape(shape_a) | b.reshape(shape_b)


def mask_products(k: Kernel) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``(mask11, mask12, mask22)``: which entries of cov1, nngp/ntk, cov2 involve a masked location.

    Each broadcasts against its covariance; ``None`` where there is no mask.
    """
    if k.mask1 is None and k.mask2 is None:
        return None, None, None
    m1 = None if k.mask1 is None else mask_layout(k, k.mask1)
    m2 = None if k.mask2 is None else mask_layout(k, k.mask2)
    if m2 is None and k.cov2 is None:
        m2 = m1  # x2 is x1
    cov_batch = 1 if k.diagonal_batch else 2
    d = k.diagonal_spatial

    def prod(a: torch.Tensor | None, b: torch.Tensor | None, batch_ndim: int) -> torch.Tensor | None:
        if a is None and b is None:
            return None
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        return _outer(a, b, batch_ndim, d)

    m11 = None if m1 is None else prod(m1, m1, cov_batch)
    m22 = None if m2 is None else prod(m2, m2, cov_batch)
    return m11, prod(m1, m2, 2), m22


def remask(k: Kernel) -> Kernel:
    """``k`` with every covariance entry that involves a masked location set to 0."""
    m11, m12, m22 = mask_products(k)

    def zero(t: torch.Tensor | None, m: torch.Tensor | None) -> torch.Tensor | None:
        if t is None or m is None or t.ndim == 0:
            return t
        return t.masked_fill(m, 0)

    return k.replace(nngp=zero(k.nngp, m12), ntk=zero(k.ntk, m12), cov1=zero(k.cov1, m11), cov2=zero(k.cov2, m22))


def _tree_masks(k: Any, attr: str) -> Any:
    if isinstance(k, Kernel):
        return getattr(k, attr)
    return type(k)(_tree_masks(ki, attr) for ki in k)


def _tree_shapes(k: Any, attr: str) -> Any:
    if isinstance(k, Kernel):
        return getattr(k, attr)
    return type(k)(_tree_shapes(ki, attr) for ki in k)


def has_masks(k: Any) -> bool:
    """Whether any kernel in the tree ``k`` carries a mask."""
    if isinstance(k, Kernel):
        return k.mask1 is not None or k.mask2 is not None
    return any(has_masks(ki) for ki in k)


def propagate_masks(layer: Any, k_in: Any, out: Any, maps_masks: bool) -> Any:
    """Sets ``out``'s masks to ``layer.mask`` of ``k_in``'s (when ``maps_masks``: the layer
    changes masks) and, if ``layer.remask``, zeroes the covariances of masked entries (called
    by `Layer.transform` when masks are present)."""
    if maps_masks:

        def new(attr: str, shape_attr: str) -> Any:
            m = _tree_masks(k_in, attr)
            if m is None or (isinstance(m, (list, tuple)) and all(x is None for x in m)):
                return None
            return layer.mask(m, _tree_shapes(k_in, shape_attr))

        out = _set(out, new("mask1", "shape1"), new("mask2", "shape2"))
    if layer.remask:
        out = _map(out, remask)
    return out


def _set(out: Any, m1: Any, m2: Any) -> Any:
    if isinstance(out, Kernel):
        return out.replace(mask1=m1, mask2=m2)
    m1s = m1 if isinstance(m1, (list, tuple)) else [m1] * len(out)
    m2s = m2 if isinstance(m2, (list, tuple)) else [m2] * len(out)
    return type(out)(_set(o, a, b) for o, a, b in zip(out, m1s, m2s))


def _map(out: Any, fn: Any) -> Any:
    if isinstance(out, Kernel):
        return fn(out)
    return type(out)(_map(o, fn) for o in out)


def _zero_masked(x: Any, mask: Any) -> Any:
    if mask is None:
        return x
    if isinstance(x, (list, tuple)):
        masks = mask if isinstance(mask, (list, tuple)) else [mask] * len(x)
        return type(x)(_zero_masked(xi, mi) for xi, mi in zip(x, masks))
    return x.masked_fill(mask, 0)


def apply_leaf_masked(layer: Any, params: Any, x: Any, mask: Any, **kwargs: Any) -> tuple[Any, Any]:
    """A leaf layer's finite-width forward pass with masks: ``(outputs, mask)``.

    The layer sees 0 at masked entries (as in NT) and receives ``mask=`` (pooling averages
    over unmasked entries); the output's mask is ``layer.mask`` of the input's. Combinators
    carry masks through their children (`Layer.apply_with_masks`).
    """
    shape = [tuple(xi.shape) for xi in x] if isinstance(x, (list, tuple)) else tuple(x.shape)
    x = _zero_masked(x, mask)
    out = layer.apply(params, x, mask=mask, **kwargs)
    if mask is None or (isinstance(mask, (list, tuple)) and all(m is None for m in mask)):
        return out, None
    return out, layer.mask(mask, shape)
