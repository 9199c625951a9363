"""NTK_VECTOR_PRODUCTS: the NTK column by column, as NTK-vector products Θ v = J1 (J2ᵀ v).

For every basis cotangent ``e`` on the outputs of ``x2``, a reverse-mode product gives the
parameter-space vector ``J2ᵀ e`` (these are the rows of the per-example Jacobian, computed
one example at a time when ``vmap_axes`` is given) and a forward-mode product
(``torch.func.jvp``) through the whole batch ``x1`` gives ``J1 (J2ᵀ e)``: a column of Θ.
No Jacobian is ever contracted; the price is ``|x2 outputs|`` forward passes over ``x1``.

The forward-mode products are ``vmap``-ed over the rows in chunks (:func:`row_chunk`): all
rows at once would make every intermediate tangent ``rows × |x1|`` times the size of an
activation, far out of cache, and (past 32 MiB) mapped and page-faulted afresh by the C
allocator on every use; a chunk of a few rows keeps them small and reused, while still
amortizing the primal pass that each chunk repeats. For ``x2=None`` (independent examples)
each chunk is pushed through only the examples up to its own (`_columns_by_halves`): Θ is
symmetric, so the other half is mirrored, as in the other implementations.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.func import jvp, vjp, vmap
from torch.utils._pytree import tree_map

from ._axes import PAIR, OutputSpec, reduce_full
from ._function import Problem
from ._jacobian import jacobians
from ._memory import CHUNK_BYTES, CHUNK_TENSOR_BYTES, MIN_CHUNK_ROWS, profile


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


def row_chunk(problem: Problem, tensors: tuple[torch.Tensor, ...], x1: Any, kw1: dict[str, Any]) -> int:
    """Rows per ``vmap`` chunk of forward-mode products through ``x1``.

    One forward pass on one example of ``x1`` (the whole batch without ``vmap_axes``)
    measures the floats of its intermediates; a chunk of ``c`` rows holds about ``c |x1|``
    times as many. ``c`` keeps them within ``CHUNK_BYTES`` (but at least
    ``MIN_CHUNK_ROWS``) and the largest within ``CHUNK_TENSOR_BYTES``.
    """
    sizes = profile(problem, tensors, x1, kw1)
    scale = problem.batch_size(x1, kw1) * tensors[0].element_size()
    by_total = CHUNK_BYTES // max(1, sizes.activations * scale)
    by_largest = CHUNK_TENSOR_BYTES // max(1, sizes.largest * scale)
    return max(1, min(by_largest, max(by_total, MIN_CHUNK_ROWS)))


_ALLOCATOR_PRIMED = False


def _prime_allocator(device: torch.device) -> None:
    """Once per process: lets glibc reuse, rather than map and page-fault anew, the
    same-sized blocks that successive chunks allocate.

    glibc serves blocks above its mmap threshold by fresh mappings (every page faulted on
    first touch, which costs more than the arithmetic of a small convolution) and returns
    heap memory above a trim threshold to the system; both thresholds rise when a mapped
    block is freed, up to 32 MiB (documented in ``mallopt(3)``). Freeing one block just
    under that cap, as any program handling a tensor of that size does, sets them once.
    """
    global _ALLOCATOR_PRIMED
    if _ALLOCATOR_PRIMED or device.type != "cpu" or not sys.platform.startswith("linux"):
        return
    _ALLOCATOR_PRIMED = True
    torch.empty(((32 << 20) - (64 << 10)) // 4, dtype=torch.float32, device=device)  # freed at once


def _columns_by_halves(
    problem: Problem,
    tensors: tuple[torch.Tensor, ...],
    x1: Any,
    kw1: dict[str, Any],
    flat: tuple[torch.Tensor, ...],
    leaf: int,
    lead: torch.Size,
    rows_per_chunk: int,
) -> torch.Tensor:
    """The ``(R, E, *S)`` columns of Θ(x1, x1), about half of them computed.

    The rows of the examples ``a:b`` (a chunk) are pushed forward through the examples
    ``0:b`` only, which gives Θ[0:b, a:b]; Θ[a:b, 0:a] is its mirror image (Θ is symmetric,
    ``Θ[e1, s1, e2, s2] = Θ[e2, s2, e1, s1]``), so the forward passes cover about half of
    the ``E × E`` example pairs.
    """
    e, s = lead[0], math.prod(lead[1:])
    per = max(1, rows_per_chunk // s)  # examples per chunk
    cols: torch.Tensor | None = None
    for a in range(0, e, per):
        b = min(a + per, e)
        xb, kb = problem.slice(x1, kw1, 0, b)
        part = vmap(lambda *v: ntk_vp(problem, tensors, xb, kb, v)[leaf])(*(f[a * s : b * s] for f in flat))
        if cols is None:  # part: (rows of a:b, examples 0:b, *S)
            cols = part.new_empty((e * s, e) + tuple(part.shape[2:]))
        cols[a * s : b * s, :b] = part
        if a > 0:  # Θ[(e2 < a, s2), (e1 in a:b, s1)] = Θ[(e1, s1), (e2, s2)]
            mirrored = part[:, :a].reshape(b - a, s, a, s).permute(2, 3, 0, 1)
            cols[: a * s, a:b] = mirrored.reshape(a * s, b - a, *part.shape[2:])
    return cols


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
    chunk = None
    if max(r[0].shape[: len(s.kinds)].numel() for r, s in zip(rows, specs)) > MIN_CHUNK_ROWS:
        chunk = row_chunk(problem, tensors, x1, kw1)
    for leaf, (rows_leaf, spec) in enumerate(zip(rows, specs)):
        lead = rows_leaf[0].shape[: len(spec.kinds)]  # (E2, *S)
        flat = tuple(r.reshape(-1, *t.shape) for r, t in zip(rows_leaf, tensors))
        c = chunk if chunk is not None and chunk < flat[0].shape[0] else None
        if c is not None:
            _prime_allocator(tensors[0].device)
        if c is not None and x2 is None and problem.independent and spec.kinds[0] == PAIR:
            cols = _columns_by_halves(problem, tensors, x1, kw1, flat, leaf, lead, c)
        else:
            cols = vmap(lambda *v: ntk_vp(problem, tensors, x1, kw1, v)[leaf], chunk_size=c)(*flat)  # (R, E1, *S)
        n = len(spec.kinds)
        cols = cols.reshape(*lead, *cols.shape[1:])
        full = cols.permute(*range(n, 2 * n), *range(n))  # (E1, *S, E2, *S)
        out.append(reduce_full(spec, full))
    return out
