"""From user inputs (validated by `_validate.as_input_tensors`) to the first `Kernel`.

The input kernel of ``x1`` ``(N1, *S, C)`` and ``x2`` ``(N2, *S, C)`` (after moving the
batch axis first and the channel axis last) is the channel-averaged second moment

    nngp[n1, n2, s, s'] = (1/C) Σ_c x1[n1, s, c] x2[n2, s', c],

stored with the spatial pairs interleaved ``(N1, N2, H, H', W, W')``, or only the
``s = s'`` diagonal ``(N1, N2, H, W)`` when ``diagonal_spatial``.
"""

from __future__ import annotations

import torch

from .._kernel import Kernel
from ._covariance import interleave, with_exact_diagonal


def _standard_layout(x: torch.Tensor, batch_axis: int, channel_axis: int | None) -> torch.Tensor:
    """Moves the batch axis first and the channel axis last: ``(N, *S, C)``."""
    if channel_axis is None:
        return torch.movedim(x, batch_axis, 0).reshape(x.shape[batch_axis], -1)
    return torch.movedim(x, (batch_axis % x.ndim, channel_axis % x.ndim), (0, -1))


def input_covariance(
    x1: torch.Tensor, x2: torch.Tensor | None, diagonal_spatial: bool
) -> torch.Tensor:
    """``(1/C) x1 x2ᵀ`` over channels for inputs in ``(N, *S, C)`` layout.

    Returns:
        ``(N1, N2, *S)`` if ``diagonal_spatial`` else ``(N1, N2, S1, S1', S2, S2', ...)``.
    """
    x2 = x1 if x2 is None else x2
    channels = x1.shape[-1]
    n_spatial = x1.ndim - 2
    if n_spatial == 0:
        return x1 @ x2.T / channels
    if diagonal_spatial:
        return torch.einsum("a...c,b...c->ab...", x1, x2) / channels
    full = torch.tensordot(x1, x2, dims=([x1.ndim - 1], [x2.ndim - 1]))  # (N1, *S, N2, *S')
    full = torch.movedim(full, 1 + n_spatial, 1)  # (N1, N2, *S, *S')
    return interleave(full, start=2) / channels


def input_variance(x: torch.Tensor, diagonal_spatial: bool) -> torch.Tensor:
    """Per-example covariances ``(1/C) Σ_c x[n, s, c] x[n, s', c]``.

    Returns:
        ``(N, *S)`` if ``diagonal_spatial`` else ``(N, S1, S1', S2, S2', ...)``.
    """
    channels = x.shape[-1]
    n_spatial = x.ndim - 2
    if n_spatial == 0 or diagonal_spatial:
        return (x * x).sum(-1) / channels
    full = torch.einsum("n...c,nzc->n...z", x, x.reshape(x.shape[0], -1, channels))
    full = full.reshape(x.shape[:-1] + x.shape[1:-1])
    return interleave(full, start=1) / channels


def same_inputs(x1: torch.Tensor, x2: torch.Tensor | None) -> bool:
    """Whether ``x2`` is ``None`` or holds exactly the inputs ``x1``."""
    return x2 is None or x2 is x1 or (x1.shape == x2.shape and bool(torch.equal(x1, x2)))


def inputs_to_kernel(
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    *,
    diagonal_batch: bool,
    diagonal_spatial: bool,
    compute_ntk: bool,
    batch_axis: int,
    channel_axis: int | None,
    x1_is_x2: bool | None = None,
) -> Kernel:
    """The `Kernel` of the raw inputs (validated by `as_input_tensors`).

    ``x1_is_x2`` (default: compared here) says whether ``x2`` holds the same inputs as ``x1``;
    compiled tiles pass it, as the comparison depends on the data.
    """
    batch_axis %= x1.ndim
    shape1 = tuple(x1.shape)
    shape2 = shape1 if x2 is None else tuple(x2.shape)
    if channel_axis is None:
        diagonal_spatial = False
    a = _standard_layout(x1, batch_axis, channel_axis)
    b = None if x2 is None else _standard_layout(x2, batch_axis, channel_axis)
    if x1_is_x2 is None:
        x1_is_x2 = same_inputs(x1, x2)
    nngp = input_covariance(a, b, diagonal_spatial)
    if diagonal_batch:
        cov1 = input_variance(a, diagonal_spatial)
        cov2 = None if b is None else input_variance(b, diagonal_spatial)
    else:
        cov1 = nngp if b is None else input_covariance(a, None, diagonal_spatial)
        cov2 = None if b is None else input_covariance(b, None, diagonal_spatial)
    ntk = torch.zeros((), dtype=nngp.dtype, device=nngp.device) if compute_ntk else None
    k = Kernel(
        nngp=nngp,
        ntk=ntk,
        cov1=cov1,
        cov2=cov2,
        x1_is_x2=x1_is_x2,
        is_gaussian=False,
        is_reversed=False,
        is_input=False,
        diagonal_batch=diagonal_batch,
        diagonal_spatial=diagonal_spatial,
        shape1=shape1,
        shape2=shape2,
        batch_axis=batch_axis,
        channel_axis=(x1.ndim - 1) if channel_axis is None else channel_axis % x1.ndim,
    )
    return k.replace(nngp=with_exact_diagonal(k, nngp, cov1))
