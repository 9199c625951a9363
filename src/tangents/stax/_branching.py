"""Branching: `Identity`, `FanOut` and the fan-ins `FanInSum`, `FanInProd`, `FanInConcat`.

Fan-ins assume their inputs are independent (each branch has its own affine layer), as in
neural-tangents: for independent zero-mean Gaussians the covariance of a sum is the sum of
the covariances, of a product the product, and a channel concatenation averages the
branches' covariances weighted by their widths.
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import torch

from .._kernel import Kernel
from ._layer import KernelTree, Layer, ShapeTree


class Identity(Layer):
    """The identity, ``f(x) = x``; the kernel is unchanged."""

    def apply(self, params: Any, x: Any, **kwargs: Any) -> Any:
        return x

    def propagate(self, k: KernelTree, **kwargs: Any) -> KernelTree:
        return k


class FanOut(Layer):
    """``num`` copies of the input, for ``num`` parallel branches.

    Args:
        num: the number of branches.
    """

    def __init__(self, num: int) -> None:
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"FanOut: num must be a positive integer, got {num!r}.")
        self.num = num

    def __repr__(self) -> str:
        return f"FanOut({self.num})"

    def output_shape(self, input_shape: ShapeTree) -> ShapeTree:
        return [input_shape] * self.num

    def apply(self, params: Any, x: Any, **kwargs: Any) -> Any:
        return [x] * self.num

    def propagate(self, k: KernelTree, **kwargs: Any) -> KernelTree:
        return [k] * self.num


class _FanIn(Layer):
    """Shared checks of the fan-in layers: a list of inputs with one covariance layout."""

    def _inputs(self, xs: Any, what: str) -> list:
        if not isinstance(xs, (list, tuple)) or len(xs) == 0:
            raise ValueError(
                f"{self.name}: expected a list of {what} from parallel branches (use stax.FanOut "
                f"and stax.parallel before it), got {type(xs).__name__}."
            )
        return list(xs)

    def _kernels(self, ks: Any) -> list[Kernel]:
        ks = self._inputs(ks, "kernels")
        first = ks[0]
        for k in ks[1:]:
            if (k.diagonal_batch, k.diagonal_spatial, k.batch_axis, k.channel_axis) != (
                first.diagonal_batch,
                first.diagonal_spatial,
                first.batch_axis,
                first.channel_axis,
            ):
                raise ValueError(f"{self.name}: all branches must produce kernels of the same layout.")
        n_reversed = sum(k.is_reversed for k in ks)
        target = n_reversed > len(ks) / 2
        return [k if k.is_reversed == target else _reverse(k) for k in ks]

    def mask(self, mask: Any, input_shape: ShapeTree) -> Any:
        """An entry is masked only if it is masked in every branch (NT's ``_sum_masks``)."""
        masks = [m for m in mask if m is not None]
        return functools.reduce(operator.and_, masks) if masks else None

    def _same_input_shapes(self, input_shape: ShapeTree) -> tuple[int, ...]:
        """The branches' common shape (``-1``, any size, matches every size)."""
        shapes = self._inputs(input_shape, "input shapes")
        first = shapes[0]

        def agree(a: Any, b: Any) -> bool:
            if not (isinstance(a, tuple) and isinstance(b, tuple)) or len(a) != len(b):
                return a == b
            return all(i == j or i == -1 or j == -1 for i, j in zip(a, b))

        if any(not agree(s, first) for s in shapes[1:]):
            raise ValueError(
                f"{self.name}: all branches must have the same output shape, got {list(shapes)}; "
                f"give the branches' last layers the same width (e.g. Dense(n) in every branch)."
            )
        if not isinstance(first, tuple):
            return first
        return tuple(next((d for d in dims if d != -1), -1) for dims in zip(*shapes))

    def _same_shapes(self, ks: list[Kernel]) -> None:
        if any(k.shape1 != ks[0].shape1 or k.shape2 != ks[0].shape2 for k in ks[1:]):
            raise ValueError(
                f"{self.name}: all branches must have the same output shape, got "
                f"{[k.shape1 for k in ks]}; give the branches' last layers the same width "
                f"(e.g. Dense(n) in every branch)."
            )


def _reverse(k: Kernel) -> Kernel:
    """The kernel with its spatial axes stored in the opposite order."""
    if k.diagonal_spatial:
        n = k.nngp.ndim - 2
        perm_pair = [0, 1] + list(range(2 + n - 1, 1, -1))
    else:
        n = (k.nngp.ndim - 2) // 2
        perm_pair = [0, 1]
        for i in reversed(range(n)):
            perm_pair += [2 + 2 * i, 3 + 2 * i]

    def rev(t: torch.Tensor | None, batch_dims: int) -> torch.Tensor | None:
        if t is None or t.ndim <= batch_dims:
            return t
        perm = list(range(batch_dims)) + [p - 2 + batch_dims for p in perm_pair[2:]]
        return t.permute(perm)

    cov_batch = 1 if k.diagonal_batch else 2
    return k.replace(
        nngp=rev(k.nngp, 2),
        ntk=rev(k.ntk, 2),
        cov1=rev(k.cov1, cov_batch),
        cov2=rev(k.cov2, cov_batch),
        is_reversed=not k.is_reversed,
    )


def _sum(ts: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if ts[0] is None else functools.reduce(operator.add, ts)


class FanInSum(_FanIn):
    """Sum of the branches' outputs: Σ = Σ₁ + Σ₂ + ..., Θ = Θ₁ + Θ₂ + ...

    The branches must be independent zero-mean Gaussians (each ends in an affine layer).
    """

    def output_shape(self, input_shape: ShapeTree) -> ShapeTree:
        return self._same_input_shapes(input_shape)

    def apply(self, params: Any, x: Any, **kwargs: Any) -> Any:
        return functools.reduce(operator.add, self._inputs(x, "inputs"))

    def propagate(self, k: KernelTree, **kwargs: Any) -> KernelTree:
        ks = self._kernels(k)
        self._same_shapes(ks)
        if len(ks) > 1 and not all(ki.is_gaussian for ki in ks):
            raise ValueError(
                "FanInSum: every branch must end in an affine layer (Dense, Conv, ...) so that "
                "its output is a zero-mean Gaussian; got a branch ending in a nonlinearity or "
                "the raw inputs. Add a Dense layer at the end of that branch."
            )
        return ks[0].replace(
            nngp=_sum([ki.nngp for ki in ks]),
            ntk=_sum([ki.ntk for ki in ks]),
            cov1=_sum([ki.cov1 for ki in ks]),
            cov2=_sum([ki.cov2 for ki in ks]),
            is_gaussian=all(ki.is_gaussian for ki in ks),
            mask1=None,
            mask2=None,
        )


class FanInProd(_FanIn):
    """Elementwise product of the branches' outputs.

    For independent zero-mean branches, Σ = Π Σᵢ and Θ = Σᵢ Θᵢ Π_{j≠i} Σⱼ.
    """

    def output_shape(self, input_shape: ShapeTree) -> ShapeTree:
        return self._same_input_shapes(input_shape)

    def apply(self, params: Any, x: Any, **kwargs: Any) -> Any:
        return functools.reduce(operator.mul, self._inputs(x, "inputs"))

    def propagate(self, k: KernelTree, **kwargs: Any) -> KernelTree:
        ks = self._kernels(k)
        self._same_shapes(ks)
        nngp: Any = 1.0
        ntk: Any = 0.0
        compute_ntk = all(ki.ntk is not None for ki in ks)
        for ki in ks:
            if compute_ntk:
                ntk = ntk * ki.nngp + nngp * ki.ntk
            nngp = nngp * ki.nngp
        cov1 = functools.reduce(operator.mul, [ki.cov1 for ki in ks])
        cov2s = [ki.cov2 for ki in ks]
        cov2 = None if any(c is None for c in cov2s) else functools.reduce(operator.mul, cov2s)
        return ks[0].replace(
            nngp=nngp,
            ntk=ntk if compute_ntk else None,
            cov1=cov1,
            cov2=cov2,
            is_gaussian=len(ks) == 1 and ks[0].is_gaussian,
            mask1=None,
            mask2=None,
        )


class FanInConcat(_FanIn):
    """Concatenation of the branches' outputs along ``axis`` (default: channels).

    Along the channel axis, the covariance is the width-weighted average
    Σ = Σᵢ wᵢ Σᵢ / Σᵢ wᵢ (a plain average when all widths are equal); the result is no
    longer Gaussian-distributed per channel, so a nonlinearity cannot follow directly.

    Args:
        axis: the axis to concatenate along.
    """

    def __init__(self, axis: int = -1) -> None:
        self.axis = axis

    def __repr__(self) -> str:
        return f"FanInConcat(axis={self.axis})"

    def output_shape(self, input_shape: ShapeTree) -> ShapeTree:
        shapes = self._inputs(input_shape, "input shapes")
        axis = self.axis % len(shapes[0])
        rest = [s[:axis] + s[axis + 1 :] for s in shapes]
        if any(r != rest[0] for r in rest[1:]):
            raise ValueError(
                f"FanInConcat: the branches' shapes must agree except along axis {self.axis}, got {shapes}."
            )
        sizes = [s[axis] for s in shapes]
        total = -1 if any(n < 0 for n in sizes) else sum(sizes)
        return shapes[0][:axis] + (total,) + shapes[0][axis + 1 :]

    def apply(self, params: Any, x: Any, **kwargs: Any) -> Any:
        return torch.cat(self._inputs(x, "inputs"), dim=self.axis)

    def mask(self, mask: Any, input_shape: ShapeTree) -> Any:
        """The branches' masks concatenated along ``axis`` (a missing mask: nothing masked)."""
        if all(m is None for m in mask):
            return None
        axis = self.axis % len(input_shape[0])
        like = next(m for m in mask if m is not None)
        parts = []
        for m, shape in zip(mask, input_shape):
            target = [max(a, b) if i != axis else shape[axis] for i, (a, b) in enumerate(zip(like.shape, shape))]
            target = [t if like.shape[i] > 1 or (m is not None and m.shape[i] > 1) else 1 for i, t in enumerate(target)]
            target[axis] = shape[axis]
            parts.append(torch.zeros(target, dtype=torch.bool, device=like.device) if m is None else m.expand(target))
        return torch.cat(parts, dim=axis)

    def propagate(self, k: KernelTree, **kwargs: Any) -> KernelTree:
        ks = self._kernels(k)
        ndim = len(ks[0].shape1)
        axis = self.axis % ndim
        if axis != ks[0].channel_axis:
            raise ValueError(
                f"FanInConcat: the infinite-width kernel supports concatenation along the "
                f"channel axis ({ks[0].channel_axis}) only, got axis={self.axis}."
            )
        widths = [ki.shape1[axis] for ki in ks]
        if all(w == widths[0] for w in widths):
            widths = [1] * len(ks)
        total = sum(widths)

        def mix(ts: list[torch.Tensor | None]) -> torch.Tensor | None:
            if ts[0] is None:
                return None
            return functools.reduce(operator.add, [t * w for t, w in zip(ts, widths)]) / total

        return ks[0].replace(
            nngp=mix([ki.nngp for ki in ks]),
            ntk=mix([ki.ntk for ki in ks]),
            cov1=mix([ki.cov1 for ki in ks]),
            cov2=mix([ki.cov2 for ki in ks]),
            is_gaussian=False,
            mask1=None,
            mask2=None,
        )
