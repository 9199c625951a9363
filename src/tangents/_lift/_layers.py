r"""Small stax layers that torch graphs need and neural-tangents has no name for.

They live here (floor 4) because only lifted networks use them; each is an ordinary
`tangents.stax.Layer` (finite-width ``apply``, infinite-width ``propagate``):

* `Scale`: ``c · x`` (scalar multiples, ``-x``, ``x / c``): Σ' = c² Σ, Θ' = c² Θ.
* `ChannelAffine`: the per-channel scale and shift of ``nn.LayerNorm`` / ``nn.BatchNorm``
  (γ = c for every channel, β = 0): Σ' = c² Σ, Θ' = c² Θ + Σ (γ trained) + 1 (β trained).
* `Permute`, `Reshape`: moving, splitting or merging channel axes (attention heads),
  moving the channel axis among the spatial ones, permuting or reshaping the spatial axes
  among themselves (``x.flatten(2)``, unit axes): the covariances' spatial axes follow.
* `DeferredFlatten`: ``x.view(N, -1)`` whose kernel stays spatial until a dense layer
  needs the flat features (elementwise layers in between commute with flattening).
* `Attend`: ``softmax(c/d · q qᵀ) v`` with tied queries and keys (``q`` of ``d`` channels
  per head): G(x) = softmax(c Σ_q(x, x)) and Σ' = G(x) Σ_v G(y)ᵀ, Θ' = G(x) Θ_v G(y)ᵀ
  (Hron et al. 2020; neural-tangents' ``GlobalSelfAttention`` with ``linear_scaling=True``
  without its value and output weights).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .._kernel import Kernel
from ..stax import Layer
from ..stax._branching import _reverse
from ..stax._requirements import Bool, Diagonal, Requirements
from ..stax._spatial import map_covariances, permute_spatial

Shape = tuple[int, ...]


def _scaled(t: torch.Tensor | None, factor: float) -> torch.Tensor | None:
    return None if t is None else t * factor


class Scale(Layer):
    """``c · x`` for a constant ``c``: Σ' = c² Σ, Θ' = c² Θ; Gaussian stays Gaussian.

    Args:
        c: the constant.
    """

    def __init__(self, c: float) -> None:
        self.c = float(c)

    def __repr__(self) -> str:
        return f"Scale({self.c:g})"

    @property
    def requirements(self) -> Requirements:
        return Requirements(diagonal_spatial=Diagonal())

    def apply(self, params: Any, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return x * self.c

    def propagate(self, k: Kernel, **kwargs: Any) -> Kernel:
        c2 = self.c**2
        return k.replace(nngp=k.nngp * c2, ntk=_scaled(k.ntk, c2), cov1=_scaled(k.cov1, c2), cov2=_scaled(k.cov2, c2))


class ChannelAffine(Layer):
    r"""``γ ⊙ x + β`` per channel with γ = ``gamma`` and β = 0 at initialisation (trainable).

    Kernel: Σ' = γ² Σ; Θ' = γ² Θ + Σ (if γ is trained: ∂(γ x)/∂γ = x, averaged over the
    infinitely many channels) + 1 (if β is trained).

    Args:
        gamma: the common value of γ.
        weight: whether γ is a parameter.
        bias: whether β is a parameter.
        channel_axis: the channel axis of the inputs.
    """

    param_names = ("weight", "bias")

    def __init__(self, gamma: float, weight: bool, bias: bool, channel_axis: int) -> None:
        self.gamma, self.weight, self.bias, self.channel_axis = float(gamma), weight, bias, channel_axis

    def __repr__(self) -> str:
        return f"ChannelAffine(gamma={self.gamma:g}, weight={self.weight}, bias={self.bias})"

    @property
    def requirements(self) -> Requirements:
        return Requirements(diagonal_spatial=Diagonal(), channel_axis=self.channel_axis)

    def init_params(self, generator, input_shape, dtype, device):  # noqa: ANN001, ANN201
        shape = [1] * len(input_shape)
        axis = self.channel_axis % len(input_shape)
        shape[axis] = input_shape[axis]
        w = torch.full(shape, self.gamma, dtype=dtype, device=device) if self.weight else None
        b = torch.zeros(shape, dtype=dtype, device=device) if self.bias else None
        return (w, b)

    def apply(self, params: Any, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        w, b = params
        x = x * (self.gamma if w is None else w)
        return x if b is None else x + b

    def propagate(self, k: Kernel, **kwargs: Any) -> Kernel:
        g2 = self.gamma**2
        ntk = k.ntk
        if ntk is not None:
            ntk = g2 * ntk
            if self.weight:
                ntk = ntk + k.nngp
            if self.bias:
                ntk = ntk + 1.0
        return k.replace(nngp=g2 * k.nngp, ntk=ntk, cov1=_scaled(k.cov1, g2), cov2=_scaled(k.cov2, g2))


class Permute(Layer):
    """``x.permute(perm)`` that keeps the batch axis first: the channel axis moves, and the
    spatial dimensions of every covariance are permuted alike (``spatial_perm``).

    Args:
        perm: the permutation, as for ``torch.permute``.
        channel_in: the channel axis of the inputs.
        channel_out: the channel axis of the outputs.
        spatial_perm: new spatial dimension ``i`` is old spatial dimension ``spatial_perm[i]``.
    """

    def __init__(
        self, perm: Sequence[int], channel_in: int, channel_out: int, spatial_perm: Sequence[int] | None = None
    ) -> None:
        self.perm, self.channel_in, self.channel_out = tuple(perm), channel_in, channel_out
        #: new spatial dimension i is old spatial dimension spatial_perm[i] (None: unchanged)
        self.spatial_perm = None if spatial_perm is None else tuple(spatial_perm)

    def __repr__(self) -> str:
        return f"Permute({self.perm})"

    @property
    def requirements(self) -> Requirements:
        return Requirements(diagonal_spatial=Diagonal(), batch_axis=0, channel_axis=self.channel_in)

    def output_shape(self, input_shape: Any) -> Any:
        return tuple(input_shape[p] for p in self.perm)

    def apply(self, params: Any, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return x.permute(self.perm)

    def propagate(self, k: Kernel, **kwargs: Any) -> Kernel:
        perm = self.spatial_perm
        if perm is not None and perm != tuple(range(len(perm))):
            if k.is_reversed and not k.diagonal_spatial:
                k = _reverse(k)
            k = k.replace(**map_covariances(k, lambda t, b: permute_spatial(t, b, k.diagonal_spatial, perm)))
        return k.replace(batch_axis=0, channel_axis=self.channel_out)


def reshape_spatial(t: torch.Tensor, batch_ndim: int, sizes: Sequence[int], diagonal: bool) -> torch.Tensor:
    """A covariance whose spatial block is reshaped (row-major, like ``torch.reshape``) to ``sizes``.

    Args:
        t: ``(*B, S1, ..., Sd)`` (``diagonal``) or ``(*B, S1, S1', ..., Sd, Sd')``.
        sizes: the new spatial sizes (same product; unit sizes add or remove axes).
    """
    batch = tuple(t.shape[:batch_ndim])
    sizes = tuple(sizes)
    if diagonal:
        return t.reshape(batch + sizes)
    d = (t.ndim - batch_ndim) // 2
    first = [batch_ndim + 2 * i for i in range(d)]
    t = t.permute(list(range(batch_ndim)) + first + [a + 1 for a in first]).reshape(batch + sizes + sizes)
    e = len(sizes)
    order = list(range(batch_ndim))
    for i in range(e):
        order += [batch_ndim + i, batch_ndim + e + i]
    return t.permute(order)


def spatial_sizes(t: torch.Tensor, batch_ndim: int, diagonal: bool) -> tuple[int, ...]:
    """The spatial sizes ``(S1, ..., Sd)`` of a covariance."""
    return tuple(t.shape[batch_ndim:]) if diagonal else tuple(t.shape[batch_ndim::2])


class Reshape(Layer):
    """``x.reshape(N, *sizes)`` that splits or merges channel axes and reshapes the spatial
    axes among themselves (merging ``H, W`` into ``H·W``, adding or removing unit axes), the
    batch axis first: the spatial block of every covariance is reshaped alike.

    Args:
        sizes: the output's non-batch sizes.
        channel_in: the channel axis of the inputs.
        channel_out: the channel axis of the outputs (the last part of split channels).
        spatial_out: the output's spatial sizes, in order.
    """

    def __init__(self, sizes: Sequence[int], channel_in: int, channel_out: int, spatial_out: Sequence[int]) -> None:
        self.sizes, self.channel_in, self.channel_out = tuple(sizes), channel_in, channel_out
        self.spatial_out = tuple(spatial_out)

    def __repr__(self) -> str:
        return f"Reshape((N, {', '.join(map(str, self.sizes))}))"

    @property
    def requirements(self) -> Requirements:
        return Requirements(diagonal_spatial=Diagonal(), batch_axis=0, channel_axis=self.channel_in)

    def output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0],) + self.sizes

    def apply(self, params: Any, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return x.reshape((x.shape[0],) + self.sizes)

    def propagate(self, k: Kernel, **kwargs: Any) -> Kernel:
        if spatial_sizes(k.nngp, 2, k.diagonal_spatial) != self.spatial_out:
            if k.is_reversed and not k.diagonal_spatial:
                k = _reverse(k)
            cov_batch = 1 if k.diagonal_batch else 2

            def reshape(t: torch.Tensor | None, b: int) -> torch.Tensor | None:
                if t is None or t.ndim < b:
                    return t
                return reshape_spatial(t, b, self.spatial_out, k.diagonal_spatial)

            k = k.replace(
                nngp=reshape(k.nngp, 2),
                ntk=k.ntk if k.ntk is None or k.ntk.ndim == 0 else reshape(k.ntk, 2),
                cov1=reshape(k.cov1, cov_batch),
                cov2=reshape(k.cov2, cov_batch),
            )
        return k.replace(batch_axis=0, channel_axis=self.channel_out)


class DeferredFlatten(Layer):
    """``x.reshape(N, -1)`` for the finite network; the kernel is passed on unchanged (spatial).

    Elementwise layers commute with flattening, so the lifted network flattens the kernel
    (`stax.Flatten`) only where a dense layer reads the flat features.
    """

    def __repr__(self) -> str:
        return "Flatten(deferred)"

    def output_shape(self, input_shape: Any) -> Any:
        rest = input_shape[1:]
        return (input_shape[0], -1 if any(s < 0 for s in rest) else math.prod(rest))

    def apply(self, params: Any, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)

    def _transform(self, k: Any, **kwargs: Any) -> Any:
        return k


def _per_example(cov: torch.Tensor, diagonal_batch: bool) -> torch.Tensor:
    """``(N, L, L')`` self-covariances from ``cov1``/``cov2``."""
    if diagonal_batch:
        return cov
    return torch.movedim(torch.diagonal(cov, 0, 0, 1), -1, 0)


class Attend(Layer):
    r"""Self-attention with tied queries and keys, ``softmax(scale · q qᵀ) v`` over a sequence.

    Inputs ``[q, v]``, each ``(N, ..., L, d)`` (heads in the leading non-batch axes). With
    ``c = scale · d`` held fixed as the width grows, the logits converge to c Σ_q(x, x) and

        G(x) = softmax(c Σ_q(x, x)) (over keys),   Σ' = G(x) Σ_v(x, y) G(y)ᵀ,
        Θ' = G(x) Θ_v(x, y) G(y)ᵀ,

    the parameters of q contributing nothing to the NTK in that limit.

    Args:
        scale: the finite-width logit scale (as ``F.scaled_dot_product_attention``'s).
        c: ``scale · d``, the kernel's logit scale.
    """

    def __init__(self, scale: float, c: float) -> None:
        self.scale, self.c = float(scale), float(c)

    def __repr__(self) -> str:
        return f"Attend(softmax(c Σ_q), c={self.c:g})"

    @property
    def requirements(self) -> Requirements:
        return Requirements(diagonal_spatial=Diagonal(input=Bool.NO))

    def output_shape(self, input_shape: Any) -> Any:
        return input_shape[1]

    def apply(self, params: Any, x: Any, **kwargs: Any) -> torch.Tensor:
        q, v = x
        return F.scaled_dot_product_attention(q, q, v, scale=self.scale)

    def propagate(self, k: Any, **kwargs: Any) -> Kernel:
        kq, kv = k
        if kq.diagonal_spatial or kv.diagonal_spatial:
            raise ValueError(
                "Attend: needs the full location-location covariances; compute the kernel with "
                "diagonal_spatial=False."
            )
        g1 = torch.softmax(self.c * _per_example(kq.cov1, kq.diagonal_batch), dim=-1)
        g2 = g1 if kq.cov2 is None else torch.softmax(self.c * _per_example(kq.cov2, kq.diagonal_batch), dim=-1)

        def cross(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None or t.ndim == 0:
                return t
            return g1[:, None] @ t @ g2[None].transpose(-1, -2)

        def within(t: torch.Tensor | None, g: torch.Tensor) -> torch.Tensor | None:
            if t is None:
                return None
            if kv.diagonal_batch:
                return g @ t @ g.transpose(-1, -2)
            return g[:, None] @ t @ g[None].transpose(-1, -2)

        return kv.replace(
            nngp=cross(kv.nngp),
            ntk=cross(kv.ntk),
            cov1=within(kv.cov1, g1),
            cov2=None if kv.cov2 is None else within(kv.cov2, g2),
            mask1=None,
            mask2=None,
        )
