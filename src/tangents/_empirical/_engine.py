"""The driver shared by the three NTK implementations and the NNGP: shapes, blocks, layout.

An implementation is a function
``impl(problem, tensors, x1, kw1, x2_or_None, kw2, specs) -> [canonical kernel per leaf]``
working on batch-first inputs. The driver validates the inputs, builds one
:class:`~._axes.OutputSpec` per output leaf, tiles the examples into blocks of at most
``chunk_size`` (only when ``vmap_axes`` declares them independent), assembles the blocks
and converts to neural-tangents' layout.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections import namedtuple
from collections.abc import Callable
from typing import Any

import torch

from .. import blocks
from .._torch_private import tree_flatten, tree_unflatten
from ._axes import DIAG, PAIR, TRACE, OutputSpec
from ._function import Problem, check_finite, split_kwargs
from ._memory import MemoryPlanner, Profile, _gib, available_memory, prime_allocator, profile

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
    progress: bool | None = None,
) -> list[torch.Tensor]:
    """Canonical kernels, computed block by block over the example axes when chunking.

    Blocks of examples go through the block engine of the analytic kernels
    (`tangents.blocks.tiled`: a preallocated result, a progress bar once it takes more than
    two seconds), which is handed the examples' indices: each tile slices the inputs itself.
    For ``x2=None`` a tile below the diagonal is the mirror image of one above it, kept
    from when that was computed (tiles run row by row).
    """
    if not problem.independent or chunk_size is None or (n1 <= chunk_size and n2 <= chunk_size):
        return impl(problem, tensors, x1b, kw1, x2b, kw2, specs)
    same = x2b is None
    batch_kind = specs[0].kinds[0]

    def block(a: int, b: int, c: int | None, d: int | None) -> list[torch.Tensor]:
        xa, ka = problem.slice(x1b, kw1, a, b)
        if c is None:
            return impl(problem, tensors, xa, ka, None, ka, specs)
        src, ksrc = (x1b, kw1) if same else (x2b, kw2)
        xc, kc = problem.slice(src, ksrc, c, d)
        return impl(problem, tensors, xa, ka, xc, kc, specs)

    if batch_kind != PAIR:  # diagonal or traced batch axis: only the blocks of examples with themselves
        parts = [block(i, min(i + chunk_size, n1), None, None) for i in range(0, n1, chunk_size)]
        if batch_kind == DIAG:
            return [torch.cat([b[leaf] for b in parts], 0) for leaf in range(len(specs))]
        return [sum(b[leaf] for b in parts) for leaf in range(len(specs))]
    return _tiled(block, n1, n2, same, specs, chunk_size, progress)


def _tiled(block: Callable[[int, int, int | None, int | None], list[torch.Tensor]], n1: int, n2: int, same: bool,
           specs: list[OutputSpec], chunk_size: int, progress: bool | None) -> list[torch.Tensor]:
    """The one use of `tangents.blocks` by the empirical kernels (see :func:`run_blocks`)."""
    Tile = namedtuple("Tile", [f"leaf{i}" for i in range(len(specs))])  # noqa: PYI024
    waiting: dict[tuple[int, int], list[torch.Tensor]] = {}  # tiles above the diagonal, for their mirrors

    def tile(i1: torch.Tensor, i2: torch.Tensor | None, get: Any = None) -> Any:
        a, b = int(i1[0]), int(i1[-1]) + 1
        if i2 is None:
            return Tile(*block(a, b, None, None))
        c, d = int(i2[0]), int(i2[-1]) + 1
        if not same:
            return Tile(*block(a, b, c, d))
        if (c, a) in waiting:  # below the diagonal: the mirror image of tile (c, a)
            return Tile(*(_swap_pairs(k, s) for k, s in zip(waiting.pop((c, a)), specs)))
        kernels = block(a, b, c, d)
        waiting[(a, c)] = kernels
        return Tile(*kernels)

    device = torch.device("cpu")
    idx1 = torch.arange(n1, device=device)
    idx2 = None if same else torch.arange(n2, device=device)
    out = blocks.tiled(tile, idx1, idx2, None, chunk_size, True, progress, {}, False, parallel=False)
    return list(out)


@contextlib.contextmanager
def computing() -> Any:
    """What every empirical computation runs under: torch's fused attention fast path off
    (``torch.backends.mha``: a fused op without forward-mode and batching rules, invisible to
    the layer probes), and functorch's note that an op runs its ``vmap`` by a slow loop
    silenced (the CPU flash attention)."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*have not yet implemented the batching rule.*")
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _forward_error(err: Exception, problem: Problem, name: str, x: Any, xb: Any, tensors: tuple[torch.Tensor, ...],
                   caller: str) -> ValueError:
    """The error of ``f`` on the first example of ``x`` (or on ``x``), said about the call."""
    shapes = [tuple(t.shape) for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]
    shape = shapes[0] if len(shapes) == 1 else shapes
    if problem.independent:
        per = [tuple(t.shape[1:]) for t in tree_flatten(xb)[0] if isinstance(t, torch.Tensor)]
        where = (f"one example of {name} (vmap_axes={problem.in_axes!r}: {name} of shape {shape} holds examples of "
                 f"shape {per[0] if len(per) == 1 else per}, given to f as a batch of one)")
        check = (f"that vmap_axes names the example axis of {name} and of f's output, and that the other axes "
                 "have the sizes f expects")
    else:
        where = f"{name} of shape {shape}"
        check = f"that {name} has the shape f expects"
    hints = []
    dtypes = {t.dtype for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()}
    if tensors and dtypes and tensors[0].dtype not in dtypes:
        hints.append(f"{name} is {', '.join(sorted(str(d) for d in dtypes))} but the parameters are {tensors[0].dtype}: "
                     "cast one to the other")
    devices = {t.device for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)}
    if tensors and devices and tensors[0].device not in devices:
        hints.append(f"{name} is on {', '.join(sorted(str(d) for d in devices))} but the parameters on "
                     f"{tensors[0].device}: move one to the other")
    hint = "; ".join(hints) if hints else f"check {check}"
    return ValueError(f"{caller}: f failed on {where}: {type(err).__name__}: {err} ({hint}).")


def empirical_kernel(
    impl: Impl,
    problem: Problem,
    x1: Any, x2: Any | None, kwargs: dict[str, Any],
    trace_axes: Any, diagonal_axes: Any,
    chunk_size: int | None,
    planner: MemoryPlanner | None = None,
    progress: bool | None = None,
    caller: str = "empirical_ntk_fn",
    memory_limit: int | None = None,
) -> Any:
    """The full driver: validate, spec, (estimate memory), compute by blocks, finalize, unflatten."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0):
        raise ValueError(f"{caller}: chunk_size should be None or a positive int, got {chunk_size!r}.")
    if chunk_size is not None and not problem.independent:
        raise ValueError(
            f"{caller}: chunk_size={chunk_size} needs vmap_axes: blocks of examples can only be computed "
            "separately when f treats them independently; pass vmap_axes=0 (or your batch axis)."
        )
    kw1, kw2 = split_kwargs(kwargs, x2 is not None)
    tensors = problem.tensors
    x1b, kw1b, n1 = problem.to_batch_first(x1, kw1, "x1", caller)
    if x2 is not None:
        x2b, kw2b, n2 = problem.to_batch_first(x2, kw2, "x2", caller)
    else:
        x2b, kw2b, n2 = None, kw1b, n1
    with computing():
        try:
            first = planner.profile(problem, tensors, x1b, kw1b) if planner is not None else None
            if first is None:
                problem.first_outputs(tensors, x1b, kw1b)
        except (RuntimeError, ValueError, IndexError, TypeError) as err:
            raise _forward_error(err, problem, "x1", x1, x1b, tensors, caller) from err
        try:
            specs, shapes1, shapes2 = output_specs(problem, tensors, x1b, kw1b, n1, x2b, kw2b, n2, trace_axes,
                                                   diagonal_axes, first)
        except (RuntimeError, IndexError, TypeError) as err:
            raise _forward_error(err, problem, "x2", x2, x2b, tensors, caller) from err
        out_spec = problem.out_spec
        if planner is not None:
            chunk_size = planner.plan(problem, tensors, n1, n2, x2 is None, specs, shapes1, shapes2, chunk_size, first)
        else:
            check_result_fits(specs, shapes1, shapes2, problem, n1, n2, tensors[0], memory_limit, caller)
        if tensors:
            prime_allocator(tensors[0].device)
        kernels = run_blocks(impl, problem, tensors, x1b, kw1b, n1, x2b, kw2b, n2, specs, chunk_size, progress)
    kernels = [s.finalize(k) for s, k in zip(specs, kernels)]
    if out_spec is None or out_spec.is_leaf():
        return kernels[0]
    return tree_unflatten(kernels, out_spec)


def check_result_fits(specs: list[OutputSpec], shapes1: list[tuple[int, ...]], shapes2: list[tuple[int, ...]],
                      problem: Problem, n1: int, n2: int, like: torch.Tensor, memory_limit: int | None, caller: str
                      ) -> None:
    """``MemoryError`` before computing a kernel whose result (twice: the kernel and the
    outputs it comes from, at most) would not fit in ``memory_limit``."""
    limit = memory_limit if memory_limit is not None else int(0.8 * available_memory(like.device))
    itemsize = like.element_size()
    need = sum(math.prod(sp.shape(a, b)) for sp, a, b in zip(specs, shapes1, shapes2)) * itemsize
    outputs = sum(math.prod(a) + math.prod(b) for a, b in zip(shapes1, shapes2)) * itemsize
    if need + outputs > limit:
        kernel = "NNGP" if "nngp" in caller else "NTK"
        what = MemoryPlanner._what(problem, n1, n2, specs, shapes1, shapes2, like.dtype, kernel)
        raise MemoryError(
            f"{caller}: {what} needs {_gib(need + outputs)} for the result and the outputs, more than the "
            f"{_gib(limit)} available; compute it in pieces (rows x1[i:j] against x2), average over more output "
            "axes (trace_axes), or use float32."
        )


def check_ntk_vp_memory(problem: Problem, tensors: tuple[torch.Tensor, ...], first: tuple[Any, dict[str, Any]],
                        second: tuple[Any, dict[str, Any]] | None, memory_limit: int | None, caller: str) -> None:
    """``MemoryError`` before an NTK-vector product that would not fit: a reverse-mode pass
    through ``f(x2)`` (its activations, kept, and the parameter-sized cotangents) and a
    forward-mode pass through ``f(x1)`` (activations and their tangents), from one forward
    pass of each batch (the whole batch: nothing is assumed about it)."""
    limit = memory_limit if memory_limit is not None else int(0.8 * available_memory(tensors[0].device))
    itemsize = tensors[0].element_size()
    params = sum(t.numel() for t in tensors)
    need = 0.0
    for name, (x, kw) in (("x1", first), ("x2", second or first)):
        check_finite(x, name, caller)
        try:
            prof = profile(problem, tensors, x, kw)
        except (RuntimeError, ValueError, IndexError, TypeError) as err:
            raise _forward_error(err, problem, name, x, x, tensors, caller) from err
        need += 2 * prof.activations * itemsize
    need += 2 * params * itemsize
    if need > limit:
        raise MemoryError(
            f"{caller}: an NTK-vector product is estimated to need {_gib(need)} (the activations of f on x1 and "
            f"x2, and two parameter-sized vectors), more than the {_gib(limit)} available (memory_limit); use "
            "smaller batches, or differentiate fewer parameters (parameters=...)."
        )


def nngp_impl(problem, tensors, x1, kw1, x2, kw2, specs) -> list[torch.Tensor]:  # noqa: ANN001
    """Canonical NNGP kernels ``f(x1) f(x2)ᵀ`` (unscaled) for a block of examples."""
    o1 = problem.per_batch(tensors, x1, kw1)
    o2 = o1 if x2 is None else problem.per_batch(tensors, x2, kw2)
    return [s.contract(a, b) for a, b, s in zip(o1, o2, specs)]


def leaves_of(tree: Any) -> list[Any]:
    return tree_flatten(tree)[0]
