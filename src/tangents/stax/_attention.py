r"""`GlobalSelfAttention`: multi-head dot-product self-attention over all spatial locations.

Finite width (neural-tangents' parameterization; ``X`` is one example's ``(L, C)`` input,
``L`` the number of locations, ``C`` its channels, optional positional embeddings added or
concatenated; one head ``h``):

    G_h = φ(σ_QK · X W_Q,h (X W_K,h)ᵀ / (C · n_key^α)),   heads_h = G_h X_V W_V,h,
    f(X) = σ_OV · [heads_1, ..., heads_H] W_O / √(n_val · H · C_V) + σ_b b,

with all weights N(0, 1), σ_QK = W_query_std · W_key_std, σ_OV = W_out_std · W_value_std,
φ the attention mechanism (softmax over the key locations, identity, |·| or ReLU), and
``α = 1`` with tied ``W_Q = W_K`` (``linear_scaling=True``) or ``α = ½`` and independent
weights (``linear_scaling=False``).

Infinite width (Hron et al. 2020, "Infinite attention"), for Σ the input covariance over
location pairs and Σ̃ = a Σ + p R its interpolation with the positional-embedding
covariance R:

* ``linear_scaling=True``: the attention weights converge to G(x) = φ(σ_QK Σ̃(x, x)) (per
  example, a matrix over location pairs) and

      Σ'(x, y) = σ_OV² G(x) Σ_V(x, y) G(y)ᵀ + σ_b²,
      Θ'(x, y) = σ_OV² G(x) Θ_V(x, y) G(y)ᵀ + σ_b² + 2 (Σ' − σ_b²);

* ``linear_scaling=False`` (IDENTITY only; other mechanisms have no closed form):

      Σ'(x, y) = σ_QK² σ_OV² ⟨Σ̃(x, y), Σ_V(x, y)⟩ Σ̃(x, y) + σ_b²,

  with ⟨·,·⟩ the sum over all location pairs (the NTK follows by the product rule).

Kernel layout as neural-tangents: ``(N1, N2, X, X', Y, Y', ...)``; the weighting needs the
full location–location covariances (``Diagonal(input=NO)``).

Masking (``mask_constant``, as neural-tangents): a location is masked when every channel
is. Masked keys get logits −10²⁰ (softmax, so their weight is 0) or 0 (other mechanisms)
before φ, at finite width and in G(x) above; positional embeddings are zeroed at masked
entries (R at pairs with a masked location); the output mask is the input's reduced over
channels, and output covariances involving a masked location are zeroed (``remask``).
As in neural-tangents, the ``linear_scaling=False`` kernel uses the masks only through R
(its weights involve no softmax over keys).

Layout: tangents is channels-first, so ``channel_axis`` defaults to 1 (neural-tangents: -1).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any

import torch

from .._kernel import Kernel
from ._checks import check_number, check_std
from ._dense import affine
from ._layer import Layer, Params, ShapeTree
from ._masking import mask_layout, mask_products
from ._requirements import Bool, Diagonal, Requirements
from ._spatial import check_kernel_axes, reverse_spatial


#: The logit of a masked key under softmax (neural-tangents' ``_NEG_INF``: finite, so an
#: example whose keys are all masked gets uniform weights rather than NaN).
_NEG_INF = -1e20


class AttentionMechanism(enum.Enum):
    """The nonlinearity φ applied to the key–query dot products (neural-tangents' names)."""

    SOFTMAX = "SOFTMAX"
    IDENTITY = "IDENTITY"
    ABS = "ABS"
    RELU = "RELU"


class PositionalEmbedding(enum.Enum):
    """How random positional embeddings enter the keys/queries (and values)."""

    NONE = "NONE"
    SUM = "SUM"
    CONCAT = "CONCAT"


def _enum(layer: str, name: str, cls: type[enum.Enum], value: Any) -> Any:
    if isinstance(value, cls):
        return value
    if isinstance(value, str) and value.upper() in cls.__members__:
        return cls[value.upper()]
    choices = ", ".join(repr(m.value) for m in cls)
    raise ValueError(f"{layer}: {name} must be one of {choices}, got {value!r}.")


def _positive_int(layer: str, name: str, value: Any, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{layer}: {name} must be a positive integer{extra}, got {value!r}.")
    return value


def _bool(layer: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{layer}: {name} must be True or False, got {value!r}.")
    return value


def _location_mask(mask: torch.Tensor | None, c_axis: int) -> torch.Tensor | None:
    """``mask`` ``(N, C, *S)`` as ``(N, 1, *S)`` if each location is masked in all or none of its
    channels; ``None`` if some location is masked in some channels only."""
    if mask is None or mask.shape[c_axis] == 1:
        return mask
    reduced = mask.all(dim=c_axis, keepdim=True)
    return reduced if torch.equal(reduced, mask.any(dim=c_axis, keepdim=True)) else None


def _mechanism_fn(mechanism: AttentionMechanism, logits: torch.Tensor) -> torch.Tensor:
    """φ applied to ``(..., L, L')`` logits; softmax normalises over the key locations L'."""
    if mechanism == AttentionMechanism.SOFTMAX:
        return torch.softmax(logits, dim=-1)
    if mechanism == AttentionMechanism.ABS:
        return logits.abs()
    if mechanism == AttentionMechanism.RELU:
        return logits.clamp_min(0)
    return logits


# ---------------------------------------------------------------------- covariance layouts


def _flatten_pairs(t: torch.Tensor, batch_ndim: int) -> torch.Tensor:
    """``(*B, X, X', Y, Y', ...)`` → ``(*B, L, L')`` with ``L = X·Y·...`` (row-major)."""
    batch = t.shape[:batch_ndim]
    d = (t.ndim - batch_ndim) // 2
    order = list(range(batch_ndim))
    order += [batch_ndim + 2 * i for i in range(d)] + [batch_ndim + 2 * i + 1 for i in range(d)]
    size1 = math.prod(t.shape[batch_ndim + 2 * i] for i in range(d))
    size2 = math.prod(t.shape[batch_ndim + 2 * i + 1] for i in range(d))
    return t.permute(order).reshape(batch + (size1, size2))


def _unflatten_pairs(t: torch.Tensor, batch_ndim: int, spatial: tuple[int, ...]) -> torch.Tensor:
    """The inverse of `_flatten_pairs`: ``(*B, L, L')`` → ``(*B, X, X', Y, Y', ...)``."""
    d = len(spatial)
    t = t.reshape(t.shape[:batch_ndim] + tuple(spatial) + tuple(spatial))
    order = list(range(batch_ndim))
    for i in range(d):
        order += [batch_ndim + i, batch_ndim + d + i]
    return t.permute(order)


def _spatial_of(t: torch.Tensor, batch_ndim: int) -> tuple[int, ...]:
    """The spatial sizes ``(X, Y, ...)`` of an interleaved covariance."""
    return tuple(t.shape[batch_ndim::2])


def positional_covariance(
    spatial: tuple[int, ...],
    p_norm: float,
    decay_fn: Callable[[torch.Tensor], torch.Tensor] | None,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    r"""Covariance R of the positional embeddings over location pairs, ``(X, X', Y, Y', ...)``.

    R = 1[x = x'] (one-hot embeddings) if ``decay_fn`` is ``None``, else
    R[x, x'] = decay_fn(Σ_i |x_i − x'_i|^p) (the unnormalised L-p distance to the power p).
    """
    d = len(spatial)
    if decay_fn is None:
        out = torch.ones((1,) * (2 * d), dtype=dtype, device=device)
        for i, n in enumerate(spatial):
            shape = [1] * (2 * d)
            shape[2 * i], shape[2 * i + 1] = n, n
            out = out * torch.eye(n, dtype=dtype, device=device).reshape(shape)
        return out
    dist = torch.zeros((1,) * (2 * d), dtype=dtype, device=device)
    for i, n in enumerate(spatial):
        r = torch.arange(n, dtype=dtype, device=device)
        shape = [1] * (2 * d)
        shape[2 * i], shape[2 * i + 1] = n, n
        dist = dist + ((r[:, None] - r[None, :]).abs() ** p_norm).reshape(shape)
    out = decay_fn(dist)
    if not isinstance(out, torch.Tensor) or out.shape != dist.shape:
        raise ValueError(
            "GlobalSelfAttention: pos_emb_decay_fn must map a torch tensor of distances to a tensor of "
            f"the same shape {tuple(dist.shape)} (e.g. lambda d: torch.exp(-d)), got "
            f"{type(out).__name__}{'' if not isinstance(out, torch.Tensor) else tuple(out.shape)}."
        )
    return out.to(dtype)


class GlobalSelfAttention(Layer):
    r"""Global scaled dot-product self-attention (neural-tangents' ``stax.GlobalSelfAttention``).

    See the module docstring for the finite- and infinite-width maps. The kernel is the
    limit of infinitely many heads and key/value/output channels.

    Args:
        n_chan_out: output channels.
        n_chan_key: key/query channels per head.
        n_chan_val: value channels per head.
        n_heads: number of heads.
        linear_scaling: ``True``: logits scaled by 1/n_chan_key with tied key and query
            weights (closed-form kernel for every mechanism; ``W_query`` is unused, so its
            parameter is ``None``); ``False``: 1/√n_chan_key and independent weights (kernel
            only for ``IDENTITY``).
        W_key_std, W_query_std: key/query weight stds (the kernel uses their product).
        W_value_std, W_out_std: value/output weight stds (the kernel uses their product).
        b_std: output bias std; ``None`` for no bias.
        attention_mechanism: ``'SOFTMAX'``, ``'IDENTITY'``, ``'ABS'`` or ``'RELU'``.
        pos_emb_type: ``'NONE'``, ``'SUM'`` (added to the inputs) or ``'CONCAT'``
            (concatenated along channels) random positional embeddings.
        pos_emb_p_norm: ``p`` of the L-p distance passed to ``pos_emb_decay_fn``.
        pos_emb_decay_fn: maps a torch tensor of distances ``Σ_i |x_i − x'_i|^p`` to the
            embeddings' covariance, e.g. ``lambda d: torch.exp(-d)``; ``None`` means
            one-hot (independent) embeddings, R = 1[x = x']. It must give a positive
            definite covariance for the finite-width forward pass (a Cholesky factor).
        n_chan_pos_emb: embedding channels (``None``: as many as the inputs; with
            ``'SUM'`` it must equal the input channels).
        W_pos_emb_std: std of the embeddings.
        val_pos_emb: whether values see the embeddings too (default: keys/queries only).
        batch_axis: the batch axis of the inputs.
        channel_axis: the channel axis (tangents' default 1, channels-first
            ``(N, C, L)`` / ``(N, C, H, W)``; neural-tangents' default is -1).

    Shapes: inputs ``(N, C, *S)`` → outputs ``(N, n_chan_out, *S)``; kernel
    ``(N1, N2, X, X', Y, Y', ...)`` → same.

    Unlike neural-tangents, ``init_fn`` does not warn that the query weights are ignored
    under ``linear_scaling=True``.

    Example:
        >>> net = stax.serial(stax.Conv(64, (3,), padding='SAME'),
        ...                   stax.GlobalSelfAttention(64, 64, 64, n_heads=4),
        ...                   stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1))
        >>> x = torch.randn(3, 2, 7, dtype=torch.float64)   # (N, C, L)
        >>> net.kernel_fn(x, None, 'nngp').shape
        torch.Size([3, 3])
    """

    param_names = ("W_query", "W_key", "W_value", "W_out", "b", "pos_emb")
    remask = True

    def __init__(
        self,
        n_chan_out: int,
        n_chan_key: int,
        n_chan_val: int,
        n_heads: int,
        linear_scaling: bool = True,
        W_key_std: float = 1.0,
        W_value_std: float = 1.0,
        W_query_std: float = 1.0,
        W_out_std: float = 1.0,
        b_std: float | None = None,
        attention_mechanism: str = AttentionMechanism.SOFTMAX.name,
        pos_emb_type: str = PositionalEmbedding.NONE.name,
        pos_emb_p_norm: float = 2,
        pos_emb_decay_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        n_chan_pos_emb: int | None = None,
        W_pos_emb_std: float = 1.0,
        val_pos_emb: bool = False,
        batch_axis: int = 0,
        channel_axis: int = 1,
    ) -> None:
        name = "GlobalSelfAttention"
        self.n_chan_out = _positive_int(name, "n_chan_out", n_chan_out)
        self.n_chan_key = _positive_int(name, "n_chan_key", n_chan_key)
        self.n_chan_val = _positive_int(name, "n_chan_val", n_chan_val)
        self.n_heads = _positive_int(name, "n_heads", n_heads)
        self.linear_scaling = _bool(name, "linear_scaling", linear_scaling)
        self.W_key_std = check_std(name, "W_key_std", W_key_std, allow_none=False)
        self.W_value_std = check_std(name, "W_value_std", W_value_std, allow_none=False)
        self.W_query_std = check_std(name, "W_query_std", W_query_std, allow_none=False)
        self.W_out_std = check_std(name, "W_out_std", W_out_std, allow_none=False)
        self.b_std = check_std(name, "b_std", b_std, allow_none=True)
        self.attention_mechanism = _enum(name, "attention_mechanism", AttentionMechanism, attention_mechanism)
        self.pos_emb_type = _enum(name, "pos_emb_type", PositionalEmbedding, pos_emb_type)
        self.pos_emb_p_norm = check_number(name, "pos_emb_p_norm", pos_emb_p_norm)
        if pos_emb_decay_fn is not None and not callable(pos_emb_decay_fn):
            raise ValueError(
                f"{name}: pos_emb_decay_fn must be None or a function of a distance tensor such as "
                f"lambda d: torch.exp(-d), got {pos_emb_decay_fn!r}."
            )
        self.pos_emb_decay_fn = pos_emb_decay_fn
        self.n_chan_pos_emb = _positive_int(name, "n_chan_pos_emb", n_chan_pos_emb, allow_none=True)
        self.W_pos_emb_std = check_std(name, "W_pos_emb_std", W_pos_emb_std, allow_none=False)
        self.val_pos_emb = _bool(name, "val_pos_emb", val_pos_emb)
        for axis_name, axis in (("batch_axis", batch_axis), ("channel_axis", channel_axis)):
            if isinstance(axis, bool) or not isinstance(axis, int):
                raise ValueError(f"{name}: {axis_name} must be an integer axis, got {axis!r}.")
        self.batch_axis, self.channel_axis = batch_axis, channel_axis
        self.QK_std = self.W_query_std * self.W_key_std
        self.OV_std = self.W_out_std * self.W_value_std

    def __repr__(self) -> str:
        return (
            f"GlobalSelfAttention({self.n_chan_out}, {self.n_chan_key}, {self.n_chan_val}, {self.n_heads}, "
            f"linear_scaling={self.linear_scaling}, attention_mechanism={self.attention_mechanism.value!r}, "
            f"pos_emb_type={self.pos_emb_type.value!r}, batch_axis={self.batch_axis}, "
            f"channel_axis={self.channel_axis})"
        )

    @property
    def requirements(self) -> Requirements:
        return Requirements(
            diagonal_spatial=Diagonal(input=Bool.NO), batch_axis=self.batch_axis, channel_axis=self.channel_axis
        )

    # ------------------------------------------------------------------ shapes and params

    def _axes(self, ndim: int) -> tuple[int, int, list[int]]:
        """``(batch axis, channel axis, spatial axes)`` of ``ndim``-D inputs."""
        for axis_name, axis in (("batch_axis", self.batch_axis), ("channel_axis", self.channel_axis)):
            if not -ndim <= axis < ndim:
                raise ValueError(
                    f"GlobalSelfAttention: {axis_name}={axis} is out of range for {ndim}-D inputs; "
                    f"tangents defaults to channels-first (N, C, L) or (N, C, H, W)."
                )
        b, c = self.batch_axis % ndim, self.channel_axis % ndim
        if b == c:
            raise ValueError(
                f"GlobalSelfAttention: batch_axis={self.batch_axis} and channel_axis={self.channel_axis} are "
                f"the same axis of {ndim}-D inputs; for channels-first (N, C, L) use batch_axis=0, channel_axis=1."
            )
        return b, c, [i for i in range(ndim) if i not in (b, c)]

    def _n_pos_emb(self, n_chan_in: int) -> int:
        """Channels of the positional embeddings for inputs with ``n_chan_in`` channels."""
        return n_chan_in if self.n_chan_pos_emb is None else self.n_chan_pos_emb

    def output_shape(self, input_shape: ShapeTree) -> ShapeTree:
        if not isinstance(input_shape, tuple):
            raise ValueError(f"GlobalSelfAttention: expects a single input, got a list of {len(input_shape)}.")
        _, c, _ = self._axes(len(input_shape))
        return input_shape[:c] + (self.n_chan_out,) + input_shape[c + 1 :]

    def mask(self, mask: torch.Tensor, input_shape: ShapeTree) -> torch.Tensor:
        """A location of the output is masked iff every channel of it was: ``(N, 1, *S)``."""
        _, c, _ = self._axes(mask.ndim)
        return mask.all(dim=c, keepdim=True)

    def _masked_logit(self) -> float:
        """What a masked key's logit becomes before φ: −10²⁰ for softmax, else 0."""
        return _NEG_INF if self.attention_mechanism == AttentionMechanism.SOFTMAX else 0.0

    def _check_sum_channels(self, n_chan_in: int) -> None:
        if self.pos_emb_type == PositionalEmbedding.SUM and self._n_pos_emb(n_chan_in) != n_chan_in:
            raise ValueError(
                f"GlobalSelfAttention: pos_emb_type='SUM' adds the embeddings to the inputs, so "
                f"n_chan_pos_emb={self.n_chan_pos_emb} must equal the input channels {n_chan_in}; "
                f"use n_chan_pos_emb=None or pos_emb_type='CONCAT'."
            )

    def init_params(self, generator, input_shape, dtype, device) -> Params:  # noqa: ANN001
        self.output_shape(input_shape)
        b_axis, c_axis, spatial = self._axes(len(input_shape))
        n_chan_in = input_shape[c_axis]
        if n_chan_in < 1:
            raise ValueError(f"GlobalSelfAttention: the channel axis must have a known size, got {input_shape}.")
        self._check_sum_channels(n_chan_in)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=generator, dtype=dtype, device=device)

        n_keys_in = n_vals_in = n_chan_in
        pos_emb = None
        if self.pos_emb_type != PositionalEmbedding.NONE:
            if any(input_shape[a] < 1 for a in spatial):
                raise ValueError(
                    f"GlobalSelfAttention: positional embeddings need known spatial sizes, got {input_shape}."
                )
            n_pe = self._n_pos_emb(n_chan_in)
            shape = list(input_shape)
            shape[c_axis], shape[b_axis] = n_pe, 1
            pos_emb = randn(*shape)
            if self.pos_emb_type == PositionalEmbedding.CONCAT:
                n_keys_in += n_pe
                if self.val_pos_emb:
                    n_vals_in += n_pe
        W_query = None if self.linear_scaling else randn(self.n_heads, n_keys_in, self.n_chan_key)
        W_key = randn(self.n_heads, n_keys_in, self.n_chan_key)
        W_value = randn(self.n_heads, n_vals_in, self.n_chan_val)
        W_out = randn(self.n_chan_val * self.n_heads, self.n_chan_out)
        b = None
        if self.b_std is not None:
            b_shape = [1] * len(input_shape)
            b_shape[c_axis] = self.n_chan_out
            b = randn(*b_shape)
        return (W_query, W_key, W_value, W_out, b, pos_emb)

    # ------------------------------------------------------------------ finite width

    def _embeddings(self, pos_emb: torch.Tensor, spatial_axes: list[int], spatial: tuple[int, ...]) -> torch.Tensor:
        """Scaled embeddings; correlated by the Cholesky factor of R if a decay_fn is given."""
        if self.pos_emb_decay_fn is not None:
            R = positional_covariance(spatial, self.pos_emb_p_norm, self.pos_emb_decay_fn, pos_emb.dtype, pos_emb.device)
            size = math.prod(spatial)
            L, info = torch.linalg.cholesky_ex(_flatten_pairs(R, 0).reshape(size, size))
            if int(info) != 0:
                raise ValueError(
                    "GlobalSelfAttention: the positional-embedding covariance given by pos_emb_decay_fn is not "
                    "positive definite, so embeddings with it cannot be sampled at finite width; use a decay "
                    "such as lambda d: torch.exp(-d) or pos_emb_decay_fn=None."
                )
            moved = torch.movedim(pos_emb, spatial_axes, list(range(len(spatial_axes))))
            rest = moved.shape[len(spatial_axes) :]
            moved = (L @ moved.reshape(size, -1)).reshape(tuple(spatial) + rest)
            pos_emb = torch.movedim(moved, list(range(len(spatial_axes))), spatial_axes)
        return pos_emb * self.W_pos_emb_std

    def _mask_embeddings(self, pe: torch.Tensor, mask: torch.Tensor, c_axis: int) -> torch.Tensor:
        """Embeddings ``(1, C_pe, *S)`` zeroed where ``mask`` ``(N, C or 1, *S)`` is set: ``(N, C_pe, *S)``."""
        if mask.shape[c_axis] != pe.shape[c_axis]:
            mask = _location_mask(mask, c_axis)
            if mask is None:
                raise ValueError(
                    f"GlobalSelfAttention: the input mask masks some but not all channels of a location, so "
                    f"it cannot mask {pe.shape[c_axis]} positional-embedding channels (neural-tangents cannot "
                    f"either); mask whole locations, use n_chan_pos_emb=None, or put a Dense/Conv layer first."
                )
        return torch.where(mask, pe.new_zeros(()), pe)

    def apply(
        self, params: Params, x: torch.Tensor, mask: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """The forward pass; ``mask`` ``(N, C or 1, *S)`` (``True`` = masked) as in neural-tangents."""
        W_query, W_key, W_value, W_out, b, pos_emb = params
        b_axis, c_axis, spatial_axes = self._axes(x.ndim)
        spatial = tuple(x.shape[a] for a in spatial_axes)
        n = x.shape[b_axis]
        if mask is not None and mask.ndim != x.ndim:
            raise ValueError(
                f"GlobalSelfAttention: the mask has shape {tuple(mask.shape)} but the input {tuple(x.shape)}; "
                f"they must have the same number of axes."
            )
        inputs_val = None
        if self.pos_emb_type != PositionalEmbedding.NONE:
            if pos_emb is None:
                raise ValueError("GlobalSelfAttention: the parameters lack the positional embeddings.")
            pe = self._embeddings(pos_emb, spatial_axes, spatial)
            if mask is not None:
                pe = self._mask_embeddings(pe, mask, c_axis)
            if self.pos_emb_type == PositionalEmbedding.SUM:
                self._check_sum_channels(x.shape[c_axis])
                inputs_val = None if self.val_pos_emb else x
                x = x + pe
            else:
                inputs_val = None if self.val_pos_emb else x
                shape = list(x.shape)
                shape[c_axis] = pe.shape[c_axis]
                x = torch.cat([x, pe.expand(shape)], dim=c_axis)

        def flat(t: torch.Tensor) -> torch.Tensor:  # (N, L, C)
            t = torch.movedim(t, (b_axis, c_axis), (0, -1))
            return t.reshape(n, -1, t.shape[-1])

        inputs = flat(x)
        if inputs.shape[-1] != W_key.shape[1]:
            raise ValueError(
                f"GlobalSelfAttention: the input has {x.shape[c_axis]} channels on axis {self.channel_axis} "
                f"(keys see {inputs.shape[-1]}), but the layer was initialised for {W_key.shape[1]}; "
                f"tangents defaults to channels-first (N, C, L) — pass channel_axis=-1 for (N, L, C)."
            )
        values_in = inputs if inputs_val is None else flat(inputs_val)
        values = torch.einsum("nlc,hcv->hnlv", values_in, W_value)
        keys = torch.einsum("nlc,hck->hnlk", inputs, W_key)
        queries = keys if self.linear_scaling else torch.einsum("nlc,hck->hnlk", inputs, W_query)
        norm = inputs.shape[-1] * self.n_chan_key ** (1.0 if self.linear_scaling else 0.5)
        logits = queries @ keys.transpose(-1, -2) * (self.QK_std / norm)  # (H, N, L, L')
        if mask is not None:  # a key is masked if all its channels are
            key_mask = mask.all(dim=c_axis, keepdim=True).expand(x.shape[:c_axis] + (1,) + x.shape[c_axis + 1 :])
            logits = logits.masked_fill(flat(key_mask).reshape(1, n, 1, -1), self._masked_logit())
        heads = _mechanism_fn(self.attention_mechanism, logits) @ values  # (H, N, L, V)
        heads = torch.movedim(heads, 0, -1).reshape(n, heads.shape[2], -1)  # (N, L, V·H), head fastest
        out = heads @ W_out * (self.OV_std / math.sqrt(self.n_chan_val * self.n_heads * values_in.shape[-1]))
        out = out.reshape((n,) + spatial + (self.n_chan_out,))
        out = torch.movedim(out, (0, -1), (b_axis, c_axis))
        if b is not None:
            out = out + self.b_std * b
        return out

    # ------------------------------------------------------------------ infinite width

    def _interpolation_weights(self, k: Kernel) -> tuple[float, float]:
        """``(a, p)`` of Σ̃ = a Σ + p R: CONCAT weighs each part by its share of channels."""
        input_weight, pos_weight = 1.0, self.W_pos_emb_std**2
        if self.pos_emb_type == PositionalEmbedding.CONCAT:
            n_in = k.shape1[self.channel_axis % len(k.shape1)]
            n_pe = self._n_pos_emb(n_in)
            input_weight *= n_in / (n_in + n_pe)
            pos_weight *= n_pe / (n_in + n_pe)
        return input_weight, pos_weight

    def _positional(self, k: Kernel) -> torch.Tensor | None:
        """R over location pairs in the kernel's storage order, ``(X, X', Y, Y', ...)``."""
        if self.pos_emb_type == PositionalEmbedding.NONE:
            return None
        ndim = len(k.shape1)
        axes = (k.batch_axis % ndim, k.channel_axis % ndim)
        spatial = tuple(s for i, s in enumerate(k.shape1) if i not in axes)
        R = positional_covariance(spatial, self.pos_emb_p_norm, self.pos_emb_decay_fn, k.dtype, k.device)
        return reverse_spatial(R, 0, False) if k.is_reversed else R

    def _key_mask(self, k: Kernel, mask: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor | None:
        """Masked key locations ``(N, L)`` (storage order) from an input mask ``(N, C or 1, *S)``
        of inputs of ``shape`` (``k.shape1`` for ``mask1``, ``k.shape2`` for ``mask2``)."""
        if mask is None:
            return None
        c = k.channel_axis % len(shape)
        m = mask_layout(k, mask.all(dim=c, keepdim=True).expand(shape[:c] + (1,) + shape[c + 1 :]))
        return m.reshape(m.shape[0], -1)

    def _location_masks(self, k: Kernel) -> Kernel:
        """``k`` with masks reduced to one channel (masked locations), for masking R."""
        c = k.channel_axis % len(k.shape1)
        m1, m2 = _location_mask(k.mask1, c), _location_mask(k.mask2, c)
        if (m1 is None and k.mask1 is not None) or (m2 is None and k.mask2 is not None):
            raise ValueError(
                "GlobalSelfAttention: positional embeddings with inputs masked in some but not all channels of "
                "a location have no infinite-width kernel (neural-tangents raises too); mask whole locations "
                "(every channel), or put a Dense/Conv layer first."
            )
        return k.replace(mask1=m1, mask2=m2)

    def _attention_weights(
        self, cov: torch.Tensor | None, diagonal_batch: bool, key_mask: torch.Tensor | None
    ) -> torch.Tensor | None:
        """G = φ(σ_QK Σ̃(x, x)) per example, ``(N, L, L')`` (softmax over L'; masked keys L' as in NT)."""
        if cov is None:
            return None
        if not diagonal_batch:
            cov = torch.movedim(torch.diagonal(cov, 0, 0, 1), -1, 0)
        logits = _flatten_pairs(cov, 1)
        if key_mask is not None:
            logits = logits.masked_fill(key_mask[:, None, :], self._masked_logit())
        return _mechanism_fn(self.attention_mechanism, self.QK_std * logits)

    def propagate(self, k: Kernel, **kwargs: Any) -> Kernel:
        if not isinstance(k, Kernel):
            raise ValueError(f"GlobalSelfAttention: expects a single input, got a list of {len(k)} branches.")
        check_kernel_axes("GlobalSelfAttention", k, self.batch_axis, self.channel_axis)
        if k.diagonal_spatial:
            raise ValueError(
                "GlobalSelfAttention: needs the full location-location covariances, but the kernel stores "
                "only their diagonal; compute it with diagonal_spatial=False."
            )
        if not self.linear_scaling and self.attention_mechanism != AttentionMechanism.IDENTITY:
            raise ValueError(
                f"GlobalSelfAttention: the kernel with linear_scaling=False has no known closed form for "
                f"attention_mechanism={self.attention_mechanism.value!r} (neural-tangents raises too); use "
                f"linear_scaling=True, or attention_mechanism='IDENTITY', or estimate it with "
                f"tangents.monte_carlo_kernel_fn."
            )
        cov_batch = 1 if k.diagonal_batch else 2
        a, p = self._interpolation_weights(k)
        R = self._positional(k)
        # R is zero at pairs involving a masked location (the embeddings are zeroed there)
        m11, m12, m22 = (None, None, None) if R is None else mask_products(self._location_masks(k))

        def interp(t: torch.Tensor | None, batch_ndim: int, m: torch.Tensor | None) -> torch.Tensor | None:
            if t is None or R is None:
                return t
            r = R.reshape((1,) * batch_ndim + R.shape)
            if m is not None:
                r = torch.where(m, r.new_zeros(()), r)
            return a * t + p * r

        cov1_i, cov2_i = interp(k.cov1, cov_batch, m11), interp(k.cov2, cov_batch, m22)
        nngp_i, ntk_i = interp(k.nngp, 2, m12), interp(k.ntk, 2, m12)
        if self.linear_scaling:
            out = self._linear_scaling(k, cov1_i, cov2_i, nngp_i, ntk_i)
        else:
            out = self._identity_sqrt_scaling(k, cov1_i, cov2_i, nngp_i, ntk_i)
        return k.replace(**out, is_gaussian=True, is_input=False)

    def _linear_scaling(self, k: Kernel, cov1_i, cov2_i, nngp_i, ntk_i) -> dict[str, Any]:  # noqa: ANN001
        """Σ' = σ_OV² G(x) Σ_V G(y)ᵀ + σ_b²,  Θ' = σ_OV² G(x) Θ_V G(y)ᵀ + σ_b² + 2 (Σ' − σ_b²)."""
        G1 = self._attention_weights(cov1_i, k.diagonal_batch, self._key_mask(k, k.mask1, k.shape1))
        G2 = self._attention_weights(cov2_i, k.diagonal_batch, self._key_mask(k, k.mask2, k.shape2))
        G2_or_G1 = G1 if G2 is None else G2
        use_interp = self.val_pos_emb

        def weigh(t: torch.Tensor | None, Ga: torch.Tensor, Gb: torch.Tensor, batch_ndim: int) -> torch.Tensor | None:
            if t is not None and t.ndim != 0:
                spatial = _spatial_of(t, batch_ndim)
                flat = _flatten_pairs(t, batch_ndim)
                if batch_ndim == 2:  # (N1, N2, L, L'): G(x) on the left, G(y) on the right
                    flat = Ga[:, None] @ flat @ Gb[None].transpose(-1, -2)
                else:
                    flat = Ga @ flat @ Gb.transpose(-1, -2)
                t = _unflatten_pairs(flat, batch_ndim, spatial)
            return affine(t, self.OV_std, self.b_std)

        cov_batch = 1 if k.diagonal_batch else 2
        cov1 = weigh(cov1_i if use_interp else k.cov1, G1, G1, cov_batch)
        cov2 = None if G2 is None else weigh(cov2_i if use_interp else k.cov2, G2, G2, cov_batch)
        nngp = weigh(nngp_i if use_interp else k.nngp, G1, G2_or_G1, 2)
        ntk = None
        if k.ntk is not None:
            trained = nngp if self.b_std is None else nngp - self.b_std**2
            ntk = weigh(ntk_i if use_interp else k.ntk, G1, G2_or_G1, 2) + 2 * trained
        return {"nngp": nngp, "ntk": ntk, "cov1": cov1, "cov2": cov2}

    def _identity_sqrt_scaling(self, k: Kernel, cov1_i, cov2_i, nngp_i, ntk_i) -> dict[str, Any]:  # noqa: ANN001
        """IDENTITY with 1/√n_key: Σ' = σ_QK² σ_OV² ⟨Σ̃, Σ_V⟩ Σ̃ + σ_b² (and its NTK)."""

        def dot(lhs: torch.Tensor | None, rhs: torch.Tensor | None, batch_ndim: int) -> torch.Tensor | None:
            """⟨lhs, rhs⟩ over all location pairs (``rhs=None``: ⟨lhs, lhs⟩), kept broadcastable."""
            if lhs is None:
                return None
            prod = lhs * lhs if rhs is None else lhs * rhs.expand_as(lhs)
            dims = tuple(range(batch_ndim, lhs.ndim))
            return prod.sum(dim=dims, keepdim=True) if dims else prod

        cov_batch = 1 if k.diagonal_batch else 2
        val = self.val_pos_emb
        dot11 = dot(cov1_i, None if val else k.cov1, cov_batch)
        dot12 = dot(nngp_i, None if val else k.nngp, 2)
        dot22 = dot(cov2_i, None if val else k.cov2, cov_batch)
        std = self.QK_std * self.OV_std
        nngp = affine(dot12 * nngp_i, std, self.b_std)
        cov1 = affine(dot11 * cov1_i, std, self.b_std)
        cov2 = None if dot22 is None else affine(dot22 * cov2_i, std, self.b_std)
        ntk = None
        if ntk_i is not None:
            if val or self.pos_emb_type == PositionalEmbedding.NONE:
                grad = 2 * dot(nngp_i, ntk_i, 2)
            else:
                grad = dot(nngp_i, k.ntk, 2) + dot(k.nngp, ntk_i, 2)
            ntk = affine(grad * nngp_i + dot12 * (ntk_i + 4 * nngp_i), std, self.b_std)
        return {"nngp": nngp, "ntk": ntk, "cov1": cov1, "cov2": cov2}
