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
amortizing the primal pass that each chunk repeats. With independent examples the chunks
are chunks of examples of ``x2`` whose rows are computed just before they are used (all rows
at once would be ``|x2| × |S|`` parameter-sized vectors, written to memory and read back),
and for ``x2=None`` each chunk is pushed through only the examples up to its own
(`_columns_by_example_chunks`): Θ is symmetric, so the other half is mirrored, as in the
other implementations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.func import jvp, vjp, vmap
from .._torch_private import tree_map

from ._axes import OutputSpec, reduce_full
from ._function import Problem
from ._jacobian import JacobianSource
from ._memory import CHUNK_BYTES, CHUNK_TENSOR_BYTES, MIN_CHUNK_ROWS, cached_profile


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


def row_chunk(problem: Problem, tensors: tuple[torch.Tensor, ...], x1: Any, kw1: dict[str, Any],
              cache: dict | None = None) -> int:
    """Rows per ``vmap`` chunk of forward-mode products through ``x1``.

    One forward pass on one example of ``x1`` (the whole batch without ``vmap_axes``)
    measures the floats of its intermediates; a chunk of ``c`` rows holds about ``c |x1|``
    times as many. ``c`` keeps them within ``CHUNK_BYTES`` (but at least
    ``MIN_CHUNK_ROWS``) and the largest within ``CHUNK_TENSOR_BYTES``.
    """
    sizes = cached_profile(problem, tensors, x1, kw1, cache)
    scale = problem.batch_size(x1, kw1) * tensors[0].element_size()
    by_total = CHUNK_BYTES // max(1, sizes.activations * scale)
    by_largest = CHUNK_TENSOR_BYTES // max(1, sizes.largest * scale)
    return max(1, min(by_largest, max(by_total, MIN_CHUNK_ROWS)))


def _flat_rows(problem: Problem, tensors: tuple[torch.Tensor, ...], xb: Any, kw: dict[str, Any],
               n_leads: list[int], cache: dict | None) -> list[tuple[torch.Tensor, ...]]:
    """Per output leaf, the rows ``J2ᵀ e`` of the examples ``xb``: ``(E·|S|, *p)`` per parameter,
    each a tensor of its own (forward mode copies a tangent that is a slice of a larger one
    into a fresh buffer before using it). They are the per-example Jacobians
    (`_jacobian.JacobianSource`)."""
    source = JacobianSource(problem, tensors, xb, kw, n_leads, cache)
    return [tuple(r.reshape(-1, *t.shape) for r, t in zip(source.all(leaf), tensors)) for leaf in range(len(n_leads))]


def _row_leads(problem: Problem, tensors: tuple[torch.Tensor, ...], xb: Any, kw: dict[str, Any]) -> list[torch.Size]:
    """``(E, *S)`` of every output leaf of ``xb``: which rows ``J2ᵀ e`` there are."""
    e = problem.batch_size(xb, kw)
    return [torch.Size((e, *leaf.shape[1:])) for leaf in problem.first_outputs(tensors, xb, kw)]


def _columns_by_example_chunks(
    problem: Problem,
    tensors: tuple[torch.Tensor, ...],
    x1: Any,
    kw1: dict[str, Any],
    x2: Any | None,
    kw2: dict[str, Any],
    leads: list[torch.Size],
    rows_per_chunk: int,
    cache: dict | None = None,
) -> list[torch.Tensor]:
    """Per output leaf, the ``(R, E1, *S)`` columns of Θ(x1, x2), a chunk of examples of
    ``x2`` (``x1`` when ``x2`` is None) at a time: the chunk's rows ``J2ᵀ e`` are computed
    just before they are pushed forward, so they stay in cache and only one chunk of them
    is ever held.

    For ``x2=None`` the rows of the examples ``a:b`` are pushed forward through the examples
    ``0:b`` only, which gives Θ[0:b, a:b]; Θ[a:b, 0:a] is its mirror image (Θ is symmetric,
    ``Θ[e1, s1, e2, s2] = Θ[e2, s2, e1, s1]``), so the forward passes cover about half of
    the ``E × E`` example pairs.
    """
    src, ksrc = (x1, kw1) if x2 is None else (x2, kw2)
    e1, e2 = problem.batch_size(x1, kw1), problem.batch_size(src, ksrc)
    s_max = max(math.prod(lead[1:]) for lead in leads)
    per = max(1, rows_per_chunk // s_max)  # examples per chunk
    cols: list[torch.Tensor | None] = [None] * len(leads)
    for a in range(0, e2, per):
        b = min(a + per, e2)
        rows = _flat_rows(problem, tensors, *problem.slice(src, ksrc, a, b), [len(lead) for lead in leads], cache)
        xb, kb = problem.slice(x1, kw1, 0, b) if x2 is None else (x1, kw1)
        for leaf, lead in enumerate(leads):
            s = math.prod(lead[1:])
            part = vmap(lambda *v: ntk_vp(problem, tensors, xb, kb, v)[leaf])(*rows[leaf])  # (rows of a:b, E, *S)
            if cols[leaf] is None:
                cols[leaf] = part.new_empty((e2 * s, e1) + tuple(part.shape[2:]))
            out = cols[leaf]
            out[a * s : b * s, : part.shape[1]] = part
            if x2 is None and a > 0:  # Θ[(e2 < a, s2), (e1 in a:b, s1)] = Θ[(e1, s1), (e2, s2)]
                mirrored = part[:, :a].reshape(b - a, s, a, s).permute(2, 3, 0, 1)
                out[: a * s, a:b] = mirrored.reshape(a * s, b - a, *part.shape[2:])
    return cols


def ntk_vector_products(
    problem: Problem,
    tensors: tuple[torch.Tensor, ...],
    x1: Any,
    kw1: dict[str, Any],
    x2: Any | None,
    kw2: dict[str, Any],
    specs: list[OutputSpec],
    cache: dict | None = None,
) -> list[torch.Tensor]:
    """Canonical kernels (one per output leaf) for a block of examples."""
    src, ksrc = (x1, kw1) if x2 is None else (x2, kw2)
    leads = _row_leads(problem, tensors, src, ksrc)
    n_rows = max(lead.numel() for lead in leads)
    chunk = row_chunk(problem, tensors, x1, kw1, cache) if n_rows > MIN_CHUNK_ROWS else None
    if chunk is not None and chunk >= n_rows:
        chunk = None
    if problem.independent and chunk is not None:
        columns = _columns_by_example_chunks(problem, tensors, x1, kw1, x2, kw2, leads, chunk, cache)
    else:  # one example (no vmap_axes) or few rows: all rows at once, chunked in the vmap
        rows = _flat_rows(problem, tensors, src, ksrc, [len(s.kinds) for s in specs], cache)
        columns = [vmap(lambda *v, leaf=leaf: ntk_vp(problem, tensors, x1, kw1, v)[leaf], chunk_size=chunk)(*rows[leaf])
                   for leaf in range(len(specs))]  # (R, E1, *S)
    out = []
    for cols, lead, spec in zip(columns, leads, specs):
        n = len(spec.kinds)
        cols = cols.reshape(*lead, *cols.shape[1:])
        full = cols.permute(*range(n, 2 * n), *range(n))  # (E1, *S, E2, *S)
        out.append(reduce_full(spec, full))
    return out
