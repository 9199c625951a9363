r"""`LayerNorm`: normalisation over feature (and optionally spatial or batch) axes.

Finite width: ``(x − mean) / √(eps + var)`` over ``axis`` (no learnable scale or shift,
as in neural-tangents). Infinite width: with infinitely many channels the mean over
channels of a zero-mean Gaussian layer vanishes and the variance over channels is the
kernel's diagonal, so every covariance is divided by the geometric mean of the two
variances, averaged over the other normalised axes:

    Σ'(a, b) = Σ(a, b) / √(m(a) m(b)),   Θ'(a, b) = Θ(a, b) / √(m(a) m(b)),
    m = mean over the normalised spatial (and batch) axes of (eps + Σ(a, a)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import torch

from .._kernel import Kernel
from ._covariance import entry_variances, variances
from ._layer import Layer, Params
from ._masking import mask_layout
from ._requirements import Requirements

Axes = Union[int, Sequence[int]]


def canonical_axes(layer: str, axis: Axes, ndim: int) -> list[int]:
    """``axis`` as a sorted list of non-negative axes of an ``ndim``-dimensional tensor."""
    axes = [axis] if isinstance(axis, int) else list(axis)
    out = []
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, int) or not -ndim <= a < ndim:
            raise ValueError(
                f"{layer}: axis must be an int or a sequence of ints in [-{ndim}, {ndim}) for "
                f"{ndim}-dimensional inputs, got axis={axis!r}."
            )
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{layer}: axis has repeated entries, got axis={axis!r}.")
    return sorted(out)


class LayerNorm(Layer):
    r"""Layer normalisation (neural-tangents' ``stax.LayerNorm``).

    ``apply``: ``(x − mean(x)) / √(eps + var(x))`` with the mean and (biased) variance over
    ``axis``. Kernel: Σ'(a, b) = Σ(a, b) / √(m(a) m(b)) and likewise for Θ, cov1, cov2,
    where m is eps + the variance Σ(a, a), averaged over the axes of ``axis`` other than
    the channel axis (spatial axes, and the batch axis if included). The input must be
    Gaussian (an affine layer before), and ``axis`` must include the channel axis: only
    then does the normalisation converge to a deterministic kernel at infinite width.

    Args:
        axis: axis or axes of the finite-width input to normalise over.
        eps: added to the variance before the square root.
        batch_axis: the batch axis of the inputs.
        channel_axis: the channel (feature) axis of the inputs.

    Example:
        >>> net = stax.serial(stax.Dense(512), stax.LayerNorm(), stax.Relu(), stax.Dense(1))
    """

    def __init__(self, axis: Axes = -1, eps: float = 1e-12, batch_axis: int = 0, channel_axis: int = -1) -> None:
        if not isinstance(axis, int) and not (
            isinstance(axis, Sequence) and len(axis) > 0 and all(isinstance(a, int) for a in axis)
        ):
            raise ValueError(f"LayerNorm: axis must be an int or a non-empty sequence of ints, got {axis!r}.")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            raise ValueError(f"LayerNorm: eps must be a non-negative number, got {eps!r}.")
        self.axis = axis if isinstance(axis, int) else tuple(axis)
        self.eps = float(eps)
        self.batch_axis, self.channel_axis = batch_axis, channel_axis

    def __repr__(self) -> str:
        return f"LayerNorm(axis={self.axis}, eps={self.eps})"

    @property
    def requirements(self) -> Requirements:
        return Requirements(batch_axis=self.batch_axis, channel_axis=self.channel_axis)

    def apply(self, params: Params, x: torch.Tensor, mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        axes = canonical_axes("LayerNorm", self.axis, x.ndim)
        if mask is None:
            mean = x.mean(dim=axes, keepdim=True)
            var = x.var(dim=axes, correction=0, keepdim=True)
        else:  # NT's mean_and_var: sums over all entries, divided by the unmasked count
            count = (~mask.expand(x.shape)).sum(dim=axes, keepdim=True).clamp(min=1)
            mean = x.sum(dim=axes, keepdim=True) / count
            var = ((x - mean) ** 2).sum(dim=axes, keepdim=True) / count
        return (x - mean) / torch.sqrt(self.eps + var)

    def kernel_axes(self, k: Kernel) -> tuple[int, ...]:
        """Axes of the per-example variances ``(N, *S)`` to average over (``0`` is the batch)."""
        ndim = len(k.shape1)
        channel = self.channel_axis % ndim
        batch = self.batch_axis % ndim
        axes = canonical_axes("LayerNorm", self.axis, ndim)
        if channel not in axes:
            raise ValueError(
                f"LayerNorm: the infinite-width kernel exists only when the normalisation "
                f"includes the channel axis ({channel}), got axis={self.axis!r} for inputs of "
                f"shape {k.shape1}. Include the channel axis, e.g. LayerNorm(axis=-1)."
            )
        spatial = [i for i in range(ndim) if i not in (channel, batch)]
        if k.is_reversed:
            spatial = spatial[::-1]
        out = (0,) if batch in axes else ()
        return out + tuple(1 + spatial.index(i) for i in axes if i not in (channel, batch))

    def propagate(self, k: Kernel, **kwargs: Any) -> Kernel:
        if not isinstance(k, Kernel):
            raise ValueError(f"LayerNorm: expects a single input, got a list of {len(k)} branches.")
        if not k.is_gaussian:
            raise ValueError(
                "LayerNorm: the infinite-width kernel is only defined for Gaussian inputs; put "
                "an affine layer (Dense, Conv) directly before LayerNorm."
            )
        axes = self.kernel_axes(k)

        def mean_variance(cov: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            var = variances(cov, k.diagonal_batch, k.diagonal_spatial) + self.eps
            if not axes:
                return var
            if mask is None:
                return var.mean(dim=axes, keepdim=True)
            # NT's mean_and_var: the sum over all entries by the number of unmasked ones
            unmasked = (~mask_layout(k, mask).expand(var.shape)).sum(dim=axes, keepdim=True).clamp(min=1)
            return var.sum(dim=axes, keepdim=True) / unmasked

        m1 = mean_variance(k.cov1, k.mask1)
        m2 = m1 if k.cov2 is None else mean_variance(k.cov2, k.mask2)
        a, b = entry_variances(m1, m2, k.diagonal_spatial, two_batch_axes=True)
        scale12 = torch.sqrt(a * b)

        def within(cov: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            a, b = entry_variances(m, m, k.diagonal_spatial, two_batch_axes=not k.diagonal_batch)
            return cov / torch.sqrt(a * b)

        return k.replace(
            nngp=k.nngp / scale12,
            ntk=None if k.ntk is None else k.ntk / scale12,
            cov1=within(k.cov1, m1),
            cov2=None if k.cov2 is None else within(k.cov2, m2),
        )
