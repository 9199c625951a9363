"""`Dense`: the fully-connected affine layer, in NTK and standard parameterization."""

from __future__ import annotations

import math
from typing import Any, Union

import torch

from .._kernel import Kernel
from .._numerics import differentiable
from ._checks import check_parameterization, check_std
from ._layer import Layer, Params, ShapeTree
from ._requirements import Diagonal, Requirements

#: A standard deviation: a number, or a 0-d tensor the kernel is differentiable in.
Std = Union[float, torch.Tensor]


def affine(cov: torch.Tensor | None, W_std: Std, b_std: Std | None) -> torch.Tensor | None:
    """σ_W² Σ + σ_b²: the covariance after a random affine map (``None`` passes through)."""
    if cov is None:
        return None
    out = W_std**2 * cov
    return out if b_std is None else out + b_std**2


def affine_kernel(
    k: Kernel, W_std: Std, b_std: Std | None, parameterization: str, fan_in: float, *, in_place: bool = False
) -> Kernel:
    r"""The kernel after a random affine layer with ``fan_in`` inputs per output.

    NTK parameterization:      Σ' = σ_W² Σ + σ_b²,   Θ' = Σ' + σ_W² Θ.
    Standard parameterization: Σ' = σ_W² Σ + σ_b²,   Θ' = n Σ + σ_W² Θ (+ 1 with a bias),
    where n = ``fan_in`` is the width of the layer's input (its weights are trained at
    unit learning-rate scale, so the NTK grows with the width).

    ``in_place``: ``k``'s covariances are new tensors only the caller holds (a convolution's
    window sums): they are scaled in place, two passes and no allocation each, when nothing
    is differentiated or compiled.
    """
    if in_place and _updatable_in_place(k) and not differentiable(W_std, b_std):
        return _affine_kernel_in_place(k, W_std, b_std, parameterization, fan_in)
    ntk = k.ntk
    if parameterization == "ntk":
        nngp = affine(k.nngp, W_std, b_std)
        if ntk is not None:
            ntk = nngp + W_std**2 * ntk
    else:
        if ntk is not None:
            ntk = fan_in * k.nngp + W_std**2 * ntk
            if b_std is not None:
                ntk = ntk + 1.0
        nngp = affine(k.nngp, W_std, b_std)
    return k.replace(
        nngp=nngp,
        ntk=ntk,
        cov1=affine(k.cov1, W_std, b_std),
        cov2=affine(k.cov2, W_std, b_std),
        is_gaussian=True,
        is_input=False,
    )


def _updatable_in_place(k: Kernel) -> bool:
    tensors = [t for t in (k.nngp, k.ntk, k.cov1, k.cov2) if t is not None]
    distinct = len({id(t) for t in tensors}) == len(tensors)
    return distinct and k.nngp.ndim > 0 and not torch.compiler.is_compiling() and not differentiable(*tensors)


def _affine_kernel_in_place(
    k: Kernel, W_std: Std, b_std: Std | None, parameterization: str, fan_in: float
) -> Kernel:
    """`affine_kernel` updating ``k``'s (caller-owned) covariances in place."""
    w2 = W_std**2

    def scale(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        t.mul_(w2)
        return t if b_std is None else t.add_(b_std**2)

    ntk = k.ntk
    if ntk is not None and ntk.ndim == 0:  # the raw inputs' zero NTK: a scalar, not in place
        ntk = w2 * ntk
    elif ntk is not None:
        ntk.mul_(w2)
    if parameterization != "ntk" and ntk is not None:  # Θ' = n Σ + σ_W² Θ (+ 1), before Σ changes
        ntk = ntk.add_(k.nngp, alpha=fan_in) if ntk.ndim else ntk + fan_in * k.nngp
        if b_std is not None:
            ntk = ntk.add_(1.0)
    nngp = scale(k.nngp)
    if parameterization == "ntk" and ntk is not None:  # Θ' = Σ' + σ_W² Θ
        ntk = ntk.add_(nngp) if ntk.ndim else nngp + ntk
    return k.replace(nngp=nngp, ntk=ntk, cov1=scale(k.cov1), cov2=scale(k.cov2), is_gaussian=True, is_input=False)


class Dense(Layer):
    r"""Fully-connected layer (neural-tangents' ``stax.Dense``).

    NTK parameterization (default): W, b ~ N(0, 1) and
    ``z = W_std / sqrt(n_in) * x @ W + b_std * b``. Standard: W ~ N(0, W_std² / n_in),
    b ~ N(0, b_std²) and ``z = x @ W / sqrt(s[0]) + b``.

    Kernel: Σ' = W_std² Σ + b_std²; Θ' = Σ' + W_std² Θ (NTK) or
    Θ' = (n_in / s[0]) Σ + W_std² Θ (+1 with a bias) (standard). ``b_std=None`` means no
    bias, which differs from ``b_std=0.0`` in the standard parameterization's NTK.

    Args:
        out_dim: output width (ignored by the kernel in NTK parameterization).
        W_std: weight standard deviation (a number, or a 0-d tensor to differentiate the
            kernel in it).
        b_std: bias standard deviation (likewise); ``None`` for no bias.
        batch_axis: the batch axis of the inputs.
        channel_axis: the feature axis of the inputs.
        parameterization: ``"ntk"`` or ``"standard"``.
        s: width scalings ``(s_in, s_out)`` of the standard parameterization.

    Example:
        >>> layer = stax.Dense(512, W_std=1.5, b_std=0.05)
    """

    param_names = ("W", "b")
    hyperparameter_names = ("W_std", "b_std")
    remask = True

    def __init__(
        self,
        out_dim: int,
        W_std: Std = 1.0,
        b_std: Std | None = None,
        batch_axis: int = 0,
        channel_axis: int = -1,
        parameterization: str = "ntk",
        s: tuple[int, int] = (1, 1),
    ) -> None:
        if isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1:
            raise ValueError(f"Dense: out_dim must be a positive integer, got {out_dim!r}.")
        self.out_dim = out_dim
        self.W_std = check_std("Dense", "W_std", W_std, allow_none=False, allow_tensor=True)
        self.b_std = check_std("Dense", "b_std", b_std, allow_none=True, allow_tensor=True)
        self.batch_axis = batch_axis
        self.channel_axis = channel_axis
        self.parameterization = check_parameterization("Dense", parameterization)
        if len(s) != 2 or any(not isinstance(v, int) or v < 1 for v in s):
            raise ValueError(f"Dense: s must be a pair of positive integers, got {s!r}.")
        self.s = tuple(s)

    def __repr__(self) -> str:
        return (
            f"Dense({self.out_dim}, W_std={self.W_std}, b_std={self.b_std}, "
            f"parameterization={self.parameterization!r})"
        )

    @property
    def requirements(self) -> Requirements:
        return Requirements(
            diagonal_spatial=Diagonal(), batch_axis=self.batch_axis, channel_axis=self.channel_axis
        )

    def _out_width(self) -> int:
        return self.out_dim * (self.s[1] if self.parameterization == "standard" else 1)

    def output_shape(self, input_shape: ShapeTree) -> ShapeTree:
        if not isinstance(input_shape, tuple):
            raise ValueError(f"Dense: expects a single input, got a list of {len(input_shape)}.")
        axis = self._axis(len(input_shape))
        return input_shape[:axis] + (self._out_width(),) + input_shape[axis + 1 :]

    def init_params(self, generator, input_shape, dtype, device) -> Params:  # noqa: ANN001
        axis = self.channel_axis % len(input_shape)
        fan_in = input_shape[axis]
        if fan_in < 1:
            raise ValueError(f"Dense: the input's feature axis {self.channel_axis} must have a known size, got {input_shape}.")
        width = self._out_width()
        W = torch.randn(fan_in, width, generator=generator, dtype=dtype, device=device)
        b = None
        if self.b_std is not None:
            b_shape = [1] * len(input_shape)
            b_shape[axis] = width
            b = torch.randn(b_shape, generator=generator, dtype=dtype, device=device)
        if self.parameterization == "standard":
            W = W * (self.W_std / math.sqrt(fan_in / self.s[0]))
            b = None if b is None else b * self.b_std
        return (W, b)

    def apply(self, params: Params, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        W, b = params
        axis = self.channel_axis % x.ndim
        if x.shape[axis] != W.shape[0]:
            raise ValueError(
                f"Dense: the input has {x.shape[axis]} features on axis {self.channel_axis}, "
                f"but the layer was initialised for {W.shape[0]}."
            )
        out = torch.movedim(torch.tensordot(x, W, dims=([axis], [0])), -1, axis)
        if self.parameterization == "ntk":
            out = out * (self.W_std / math.sqrt(x.shape[axis]))
            if b is not None:
                out = out + self.b_std * b
        else:
            out = out / math.sqrt(self.s[0])
            if b is not None:
                out = out + b
        return out

    def _axis(self, ndim: int) -> int:
        if not -ndim <= self.channel_axis < ndim:
            raise ValueError(
                f"Dense: channel_axis={self.channel_axis} is out of range for {ndim}-dimensional "
                f"inputs; use an axis in [-{ndim}, {ndim}), e.g. the default -1."
            )
        return self.channel_axis % ndim

    def mask(self, mask: torch.Tensor, input_shape: ShapeTree) -> torch.Tensor:
        """A location is masked only if all its input features are."""
        return mask.all(dim=self._axis(mask.ndim), keepdim=True)

    def propagate(self, k: Kernel, **kwargs: Any) -> Kernel:
        fan_in = k.shape1[self._axis(len(k.shape1))] / self.s[0]
        return affine_kernel(k, self.W_std, self.b_std, self.parameterization, fan_in)
