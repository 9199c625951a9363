"""The driver shared by the three NTK implementations and the NNGP: shapes, blocks, layout.

An implementation is a function
``impl(problem, tensors, x1, kw1, x2_or_None, kw2, specs) -> [canonical kernel per leaf]``
working on batch-first inputs. The driver validates the inputs, builds one
:class:`~._axes.OutputSpec` per output leaf, tiles the examples into blocks of at most
``chunk_size`` (only when ``vmap_axes`` declares them independent), assembles the blocks
and converts to neural-tangents' layout.
"""

from __future__ import annotations

from collections.abc import Callable
import warnings
from typing import Any

import torch
from .._torch_private import tree_flatten, tree_unflatten

from ._axes import DIAG, PAIR, TRACE, OutputSpec
from ._function import Problem, split_kwargs
from ._memory import MemoryPlanner, Profile, prime_allocator

Impl = Callable[..., list[torch.Tensor]]


def output_specs(
    problem: Problem,
    tensors: tuple[torch.Tensor, ...],
    x1b: Any, kw1: dict[str, Any], n1: int,
    x2b: Any | None, kw2: dict[str, Any], n2: int,
    trace_axes: Any, diagonal_axes: Any,
    first: Profile | None = None,
) -> tuple[list[OutputSpec], list[tuple[int, ...]], list[tuple[int, ...]]]:
    """One spec per output leaf, and the true output shapes for x1 and x2.

    Shapes come from a forward pass on one example (or the whole batch without vmap_axes);
    ``first``, a :func:`~._memory.profile` of x1 made by the caller, saves that of x1.
    """

    def shapes(xb: Any, kw: dict[str, Any], n: int, known: list[tuple[int, ...]] | None = None) -> list[tuple[int, ...]]:
        if known is None:
            known = [tuple(leaf.shape) for leaf in problem.first_outputs(tensors, xb, kw)]
        out = []
        for shape, ax in zip(known, problem.out_batch_axes):
            s = list(shape[1:])
            if ax is not None:
                s.insert(ax, n)
            out.append(tuple(s))
        return out

    shapes2 = shapes(x2b, kw2, n2) if x2b is not None else None
    shapes1 = shapes(x1b, kw1, n1, first.outputs if first is not None else None)
    if shapes2 is None:
        shapes2 = shapes1
    if len(shapes1) != len(shapes2):
        raise ValueError(f"f(x1) has {len(shapes1)} output leaves but f(x2) has {len(shapes2)}.")
    specs = []
    for s1, s2, ax in zip(shapes1, shapes2, problem.out_batch_axes):
        spec = OutputSpec.make(s1, trace_axes, diagonal_axes, ax)
        if len(s1) != len(s2):
            raise ValueError(f"f(x1) has shape {s1} but f(x2) has shape {s2}: they must have the same rank.")
        for i, (kind, a, b) in enumerate(zip(spec.true_kinds, s1, s2)):
            if kind != PAIR and a != b:
                raise ValueError(
                    f"f(x1) of shape {s1} and f(x2) of shape {s2} differ on axis {i}, which is in "
                    f"{'trace_axes' if kind == TRACE else 'diagonal_axes'}: traced and diagonal axes "
                    "must have the same size for x1 and x2."
                )
        specs.append(spec)
    return specs, shapes1, shapes2


def _swap_pairs(k: torch.Tensor, spec: OutputSpec) -> torch.Tensor:
    """The canonical kernel of (x2, x1) from that of (x1, x2): swap each zipped pair."""
    perm, i = [], 0
    for kind in spec.kinds:
        if kind == PAIR:
            perm += [i + 1, i]
            i += 2
        elif kind == DIAG:
            perm.append(i)
            i += 1
    return k.permute(perm)


def run_blocks(
    impl: Impl,
    problem: Problem,
    tensors: tuple[torch.Tensor, ...],
    x1b: Any, kw1: dict[str, Any], n1: int,
    x2b: Any | None, kw2: dict[str, Any], n2: int,
    specs: list[OutputSpec],
    chunk_size: int | None,
) -> list[torch.Tensor]:
    """Canonical kernels, computed block by block over the example axes when chunking."""
    if not problem.independent or chunk_size is None or (n1 <= chunk_size and n2 <= chunk_size):
        return impl(problem, tensors, x1b, kw1, x2b, kw2, specs)
    batch_kind = specs[0].kinds[0]
    starts1 = list(range(0, n1, chunk_size))
    starts2 = list(range(0, n2, chunk_size))
    same = x2b is None

    def block(i: int, j: int) -> list[torch.Tensor]:
        xa, ka = problem.slice(x1b, kw1, i, min(i + chunk_size, n1))
        if same and i == j:
            return impl(problem, tensors, xa, ka, None, ka, specs)
        src, ksrc, n = (x1b, kw1, n1) if same else (x2b, kw2, n2)
        xb_, kb = problem.slice(src, ksrc, j, min(j + chunk_size, n))
        return impl(problem, tensors, xa, ka, xb_, kb, specs)

    if batch_kind != PAIR:  # diagonal or traced batch axis: only diagonal blocks matter
        blocks = [block(i, i) for i in starts1]
        if batch_kind == DIAG:
            return [torch.cat([b[l] for b in blocks], 0) for l in range(len(specs))]
        return [sum(b[l] for b in blocks) for l in range(len(specs))]
    rows = []
    cache: dict[tuple[int, int], list[torch.Tensor]] = {}
    for i in starts1:
        row = []
        for j in starts2:
            if same and j < i:
                row.append([_swap_pairs(k, s) for k, s in zip(cache[(j, i)], specs)])
            else:
                cache[(i, j)] = block(i, j)
                row.append(cache[(i, j)])
        rows.append([torch.cat([b[l] for b in row], 1) for l in range(len(specs))])
    return [torch.cat([r[l] for r in rows], 0) for l in range(len(specs))]


def empirical_kernel(
    impl: Impl,
    problem: Problem,
    x1: Any, x2: Any | None, kwargs: dict[str, Any],
    trace_axes: Any, diagonal_axes: Any,
    chunk_size: int | None,
    planner: MemoryPlanner | None = None,
) -> Any:
    """The full driver: validate, spec, (estimate memory), compute by blocks, finalize, unflatten."""
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size <= 0):
        raise ValueError(f"chunk_size should be None or a positive int, got {chunk_size!r}.")
    if chunk_size is not None and not problem.independent:
        raise ValueError(
            f"chunk_size={chunk_size} needs vmap_axes: blocks of examples can only be computed "
            "separately when f treats them independently; pass vmap_axes=0 (or your batch axis)."
        )
    kw1, kw2 = split_kwargs(kwargs, x2 is not None)
    tensors = problem.tensors
    x1b, kw1b, n1 = problem.to_batch_first(x1, kw1)
    if x2 is not None:
        x2b, kw2b, n2 = problem.to_batch_first(x2, kw2)
    else:
        x2b, kw2b, n2 = None, kw1b, n1
    first = planner.profile(problem, tensors, x1b, kw1b) if planner is not None else None  # sizes and shapes
    specs, _, _ = output_specs(problem, tensors, x1b, kw1b, n1, x2b, kw2b, n2, trace_axes, diagonal_axes, first)
    out_spec = problem.out_spec
    if planner is not None:
        chunk_size = planner.plan(problem, tensors, x1b, kw1b, n1, n2, specs, chunk_size, first)
    if tensors:
        prime_allocator(tensors[0].device)
    with warnings.catch_warnings():
        # functorch's note that an op (e.g. CPU flash attention) runs its vmap by a slow loop.
        warnings.filterwarnings("ignore", message=r".*have not yet implemented the batching rule.*")
        kernels = run_blocks(impl, problem, tensors, x1b, kw1b, n1, x2b, kw2b, n2, specs, chunk_size)
    kernels = [s.finalize(k) for s, k in zip(specs, kernels)]
    if out_spec is None or out_spec.is_leaf():
        return kernels[0]
    return tree_unflatten(kernels, out_spec)


def nngp_impl(problem, tensors, x1, kw1, x2, kw2, specs) -> list[torch.Tensor]:  # noqa: ANN001
    """Canonical NNGP kernels ``f(x1) f(x2)ᵀ`` (unscaled) for a block of examples."""
    o1 = problem.per_batch(tensors, x1, kw1)
    o2 = o1 if x2 is None else problem.per_batch(tensors, x2, kw2)
    return [s.contract(a, b) for a, b, s in zip(o1, o2, specs)]


def leaves_of(tree: Any) -> list[Any]:
    return tree_flatten(tree)[0]
