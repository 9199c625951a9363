"""Layouts of covariance tensors, and the variances that pair with each entry.

A covariance between two batches is ``(N1, N2, *S)``; one within a batch is ``(N, *S)``
(``diagonal_batch``) or ``(N, N, *S)``. The spatial part ``*S`` is ``(H, W, ...)`` when
``diagonal_spatial`` and interleaved pairs ``(H, H', W, W', ...)`` otherwise.

Elementwise nonlinearities need, for every covariance entry Σ(a, b), the two variances
Σ(a, a) and Σ(b, b). `entry_variances` returns them broadcastable against the covariance.
"""

from __future__ import annotations

from typing import Any

import torch

from .._kernel import Kernel
from ..blocks import swap_pairs


def interleave(x: torch.Tensor, start: int) -> torch.Tensor:
    """``(..., S1, ..., Sd, S1', ..., Sd')`` → ``(..., S1, S1', ..., Sd, Sd')`` from ``start``."""
    d = (x.ndim - start) // 2
    if d <= 1:
        return x
    order = list(range(start))
    for i in range(d):
        order += [start + i, start + d + i]
    return x.permute(order)


def variances(cov: torch.Tensor, diagonal_batch: bool, diagonal_spatial: bool) -> torch.Tensor:
    """The per-example, per-location variances ``(N, *S_diag)`` stored in ``cov``."""
    if not diagonal_batch:
        cov = torch.movedim(torch.diagonal(cov, 0, 0, 1), -1, 0)
    if not diagonal_spatial:
        for _ in range((cov.ndim - 1) // 2):
            cov = torch.diagonal(cov, 0, 1, 2)
    return cov


def _spread(var: torch.Tensor, leading: tuple[int, ...], first: bool, diagonal_spatial: bool) -> torch.Tensor:
    """Reshapes ``(N, *S_diag)`` variances to broadcast against a covariance layout."""
    spatial = var.shape[1:]
    if diagonal_spatial:
        shape = leading + spatial
    else:
        shape = leading
        for s in spatial:
            shape += (s, 1) if first else (1, s)
    return var.reshape(shape)


def entry_variances(
    var1: torch.Tensor, var2: torch.Tensor, diagonal_spatial: bool, two_batch_axes: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Variances ``(Σ(a, a), Σ(b, b))`` for every entry of a covariance Σ(a, b).

    Args:
        var1: ``(N1, *S_diag)`` variances of the first batch.
        var2: ``(N2, *S_diag)`` variances of the second batch (``var1`` for a batch with
            itself).
        diagonal_spatial: the covariance's spatial layout.
        two_batch_axes: ``True`` for a ``(N1, N2, *S)`` covariance, ``False`` for a
            ``(N, *S)`` one (``var1`` and ``var2`` are then the same batch).

    Returns:
        Two tensors broadcastable against the covariance.
    """
    if two_batch_axes:
        a = _spread(var1, (var1.shape[0], 1), True, diagonal_spatial)
        b = _spread(var2, (1, var2.shape[0]), False, diagonal_spatial)
    else:
        a = _spread(var1, (var1.shape[0],), True, diagonal_spatial)
        b = _spread(var2, (var2.shape[0],), False, diagonal_spatial)
    return a, b


def kernel_variances(k: Kernel) -> tuple[torch.Tensor, torch.Tensor]:
    """``(var1, var2)``: per-example variances ``(N1, *S_diag)``, ``(N2, *S_diag)`` of ``k``."""
    var1 = variances(k.cov1, k.diagonal_batch, k.diagonal_spatial)
    var2 = var1 if k.cov2 is None else variances(k.cov2, k.diagonal_batch, k.diagonal_spatial)
    return var1, var2


def with_exact_diagonal(k: Kernel, nngp: torch.Tensor, cov1: torch.Tensor) -> torch.Tensor:
    """``nngp`` with its batch diagonal set to ``cov1`` when the two batches are one.

    When ``x2`` is ``x1``, Σ(a, a) is stored twice: on the diagonal of ``nngp`` and in
    ``cov1``. Kept bit-identical, nonlinearities see exactly coincident points there
    (√(v₁v₂ − c²) = 0) instead of rounding noise that square roots amplify to ~1e-8.
    """
    if not (k.x1_is_x2 and k.diagonal_batch and nngp.shape[0] == nngp.shape[1] and nngp.ndim == cov1.ndim + 1):
        return nngp
    if torch.compiler.is_compiling():  # a select the compiler fuses into the layer's loop
        rows = torch.arange(nngp.shape[0], device=nngp.device)
        same = (rows[:, None] == rows[None, :]).reshape(nngp.shape[:2] + (1,) * (nngp.ndim - 2))
        return torch.where(same, cov1.unsqueeze(0), nngp)
    return torch.diagonal_scatter(nngp, torch.movedim(cov1, 0, -1), 0, 0, 1)


def symmetrized(k: Any) -> Any:
    """``k`` (or each `Kernel` of a list of them) with every covariance of a batch with
    itself replaced by (K + Kᵀ)/2, so that it is exactly symmetric: ``nngp`` and ``ntk``
    when the two batches are one (``x1_is_x2``), ``cov1``/``cov2`` when they hold whole
    ``(N, N, *S)`` covariances (``diagonal_batch=False``).

    Every entry is computed by the same formula as its mirror image, but not always by
    the same machine instructions (a vectorised ``atan2`` or ``erf`` and its scalar
    remainder loop, a matrix product's blocking, a quadrature that treats its two
    arguments differently), so the two can differ in the last bits. Kᵀ swaps the batch
    axes and each interleaved spatial pair (`blocks.swap_pairs`).
    """
    if not isinstance(k, Kernel):
        return type(k)(symmetrized(ki) for ki in k)
    names = (("nngp", "ntk") if k.x1_is_x2 else ()) + (() if k.diagonal_batch else ("cov1", "cov2"))
    changes = {}
    for name in names:
        t = getattr(k, name)
        if t is not None and t.ndim >= 2 and t.shape[0] == t.shape[1]:
            changes[name] = (t + swap_pairs(t, k.diagonal_spatial)).mul_(0.5)
    if k.x1_is_x2 and not k.diagonal_batch and k.cov1 is k.nngp and "nngp" in changes:
        changes["cov1"] = changes["nngp"]
    return k.replace(**changes) if changes else k
