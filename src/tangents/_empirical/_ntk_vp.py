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
pushed through fixed-size panels of ``x1`` (:class:`~._memory.ForwardPasses`: when even one
example's rows over all of ``x1`` would outgrow the chunk budget, as on a ResNet-18, the
panel bounds the tangents instead, and their sizes repeat from pass to pass), and for
``x2=None`` each chunk is pushed through only the examples up to its own
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
from ._memory import MIN_CHUNK_ROWS, ForwardPasses, cached_profile, forward_passes, rows_per_chunk


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
    """Rows per ``vmap`` chunk of forward-mode products through the whole of ``x1``
    (:func:`~._memory.rows_per_chunk` of one forward pass on one example of ``x1``, the
    whole batch without ``vmap_axes``)."""
    sizes = cached_profile(problem, tensors, x1, kw1, cache)
    return rows_per_chunk(sizes, problem.batch_size(x1, kw1), tensors[0].element_size())


def forward_passes_for(problem: Problem, tensors: tuple[torch.Tensor, ...], x1: Any, kw1: dict[str, Any],
                       rows_per_example: int, cache: dict | None = None) -> ForwardPasses:
    """:func:`~._memory.forward_passes` for independent examples of ``x1`` and
    ``rows_per_example`` rows ``J2ᵀ e`` per example of ``x2``."""
    sizes = cached_profile(problem, tensors, x1, kw1, cache)
    return forward_passes(sizes, problem.batch_size(x1, kw1), rows_per_example, tensors[0].element_size())


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
    passes: ForwardPasses,
    cache: dict | None = None,
) -> list[torch.Tensor]:
    """Per output leaf, the ``(R, E1, *S)`` columns of Θ(x1, x2), ``passes.examples``
    examples of ``x2`` (``x1`` when ``x2`` is None) at a time: the chunk's rows ``J2ᵀ e`` are
    computed just before they are pushed forward, so only one chunk of them is ever held;
    they go ``passes.rows`` at a time through ``passes.panel`` examples of ``x1`` at a time,
    so the tangents of a pass have the same bounded sizes whatever ``|x1|``.

    For ``x2=None`` the rows of the examples ``a:b`` are pushed forward through the examples
    ``0:b`` only, which gives Θ[0:b, a:b]; Θ[a:b, 0:a] is its mirror image (Θ is symmetric,
    ``Θ[e1, s1, e2, s2] = Θ[e2, s2, e1, s1]``), so the forward passes cover about half of
    the ``E × E`` example pairs. The last panel, ending at ``b``, is rounded up to whole
    ``1 / PANEL_GRANULES`` of a panel (a few entries of Θ computed twice): passes of every
    size up to the panel's would leave the allocator's heap fragmented, its peak growing
    with ``|x1|`` (measured on ResNet-18 before the rounding: 1.9 GB at 128 examples in
    panels of 51, against 0.64 GB in panels of 16).
    """
    src, ksrc = (x1, kw1) if x2 is None else (x2, kw2)
    e1, e2 = problem.batch_size(x1, kw1), problem.batch_size(src, ksrc)
    cols: list[torch.Tensor | None] = [None] * len(leads)
    for a in range(0, e2, passes.examples):
        b = min(a + passes.examples, e2)
        rows = _flat_rows(problem, tensors, *problem.slice(src, ksrc, a, b), [len(lead) for lead in leads], cache)
        end = b if x2 is None else e1  # the examples of x1 these rows go through
        for leaf, lead in enumerate(leads):
            s = math.prod(lead[1:])
            n_rows = rows[leaf][0].shape[0]
            chunk = passes.rows if passes.rows < n_rows else None
            for p in range(0, end, passes.panel):
                q = min(p + passes.panel, end)
                if x2 is None and q < min(p + passes.panel, e1):  # the diagonal panel: whole granules
                    q = min(p + -(-(q - p) // passes.granule) * passes.granule, e1)
                xp, kp = problem.slice(x1, kw1, p, q)
                part = vmap(lambda *v: ntk_vp(problem, tensors, xp, kp, v)[leaf], chunk_size=chunk)(*rows[leaf])
                if cols[leaf] is None:  # (rows of a:b, examples p:q, *S)
                    cols[leaf] = part.new_empty((e2 * s, e1) + tuple(part.shape[2:]))
                cols[leaf][a * s : b * s, p:q] = part
                del part
            if x2 is None and a > 0:  # Θ[(e2 < a, s2), (e1 in a:b, s1)] = Θ[(e1, s1), (e2, s2)]
                out = cols[leaf]
                mirrored = out[a * s : b * s, :a].reshape(b - a, s, a, s).permute(2, 3, 0, 1)
                out[: a * s, a:b] = mirrored.reshape(a * s, b - a, *out.shape[2:])
        del rows
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
        s_max = max(math.prod(lead[1:]) for lead in leads)
        passes = forward_passes_for(problem, tensors, x1, kw1, s_max, cache)
        columns = _columns_by_example_chunks(problem, tensors, x1, kw1, x2, kw2, leads, passes, cache)
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
