"""NTK_VECTOR_PRODUCTS: the NTK column by column, as NTK-vector products Θ v = J1 (J2ᵀ v).

For every basis cotangent ``e`` on the outputs of ``x2``, a reverse-mode product gives the
parameter-space vector ``J2ᵀ e`` (these are the rows of the per-example Jacobian, computed
one example at a time when ``vmap_axes`` is given) and a forward-mode product
(``torch.func.jvp``) through the whole batch ``x1`` gives ``J1 (J2ᵀ e)``: a column of Θ.
No Jacobian is ever contracted; the price is ``|x2 outputs|`` forward passes over ``x1``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.func import jvp, vjp, vmap
from torch.utils._pytree import tree_map

from ._axes import OutputSpec, reduce_full
from ._function import Problem
from ._jacobian import jacobians


def jvp_any(fn: Callable, primals: tuple[torch.Tensor, ...], tangents: tuple[torch.Tensor, ...]) -> Any:
    """``J v`` by forward mode, or, for ops without forward-mode rules, by transposing the
    (linear) pullback: ``J v = ∂/∂u ⟨Jᵀu, v⟩`` (two reverse passes)."""
    try:
        return jvp(fn, primals, tangents)[1]
    except (NotImplementedError, RuntimeError) as err:
        if "forward AD" not in str(err) and "forward-mode" not in str(err):
            raise
    # The math attention backend is composite, so it has the double-backward the fused
    # CPU/GPU attention kernels lack.
    with sdpa_kernel([SDPBackend.MATH]):
        out, pull = vjp(fn, *primals)
        u0 = tree_map(torch.zeros_like, out)
        return vjp(lambda u: pull(u), u0)[1](tuple(tangents))[0]


def ntk_vp(problem: Problem, tensors: tuple[torch.Tensor, ...], x1: Any, kw1: dict[str, Any],
           tangents: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """``J(x1) v`` for one parameter-space vector ``v`` (a tuple shaped like ``tensors``)."""
    return jvp_any(lambda *t: problem.per_batch(t, x1, kw1), tensors, tangents)


def ntk_vector_products(
    problem: Problem,
    tensors: tuple[torch.Tensor, ...],
    x1: Any,
    kw1: dict[str, Any],
    x2: Any | None,
    kw2: dict[str, Any],
    specs: list[OutputSpec],
) -> list[torch.Tensor]:
    """Canonical kernels (one per output leaf) for a block of examples."""
    rows = jacobians(problem, tensors, x1 if x2 is None else x2, kw1 if x2 is None else kw2)
    out = []
    for leaf, (rows_leaf, spec) in enumerate(zip(rows, specs)):
        lead = rows_leaf[0].shape[: len(spec.kinds)]  # (E2, *S)
        flat = tuple(r.reshape(-1, *t.shape) for r, t in zip(rows_leaf, tensors))
        cols = vmap(lambda *v: ntk_vp(problem, tensors, x1, kw1, v)[leaf])(*flat)  # (R, E1, *S)
        n = len(spec.kinds)
        cols = cols.reshape(*lead, *cols.shape[1:])
        full = cols.permute(*range(n, 2 * n), *range(n))  # (E1, *S, E2, *S)
        out.append(reduce_full(spec, full))
    return out
