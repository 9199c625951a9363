"""Cost and memory model: AUTO's choice of implementation, chunk sizes, and the early error.

One forward pass on one example (the whole batch without ``vmap_axes``) under a counting
``TorchFunctionMode`` measures, per example: ``A`` the floats of all intermediate tensors,
``F`` the forward FLOPs of linear / matmul / convolution calls, and for every linear-ish
parameter use its tokens ``T``, fan-in and fan-out. With ``P`` parameters, ``|S|`` outputs
per example and ``σ`` the output-pair factor left after tracing (``|S|²`` untraced,
``|S|`` traced), a block of ``n1 × n2`` examples costs about

    JACOBIAN_CONTRACTION    FLOPs 3F|S|(n1+n2) + n1 n2 σ P       memory (n1+n2)|S|P + n|S|A
    NTK_VECTOR_PRODUCTS     FLOPs 3F|S| n2 + 3F|S| n1 n2          memory n2|S|P + n1 c A
    STRUCTURED_DERIVATIVES  FLOPs 3F|S|(n1+n2) + n1 n2 σ Σ_uses min(T²(out+in), out·in)
                            memory (n1+n2)|S|A + n1 n2 σ max T²

plus the ``n1 n2 σ`` kernel itself (floats; times the dtype size for bytes), where ``c`` is
the rows per forward-mode chunk (`_ntk_vp.row_chunk`: ``n2|S|`` rows in chunks of at least
``MIN_CHUNK_ROWS`` and otherwise within ``CHUNK_BYTES``). These are
estimates (within a small factor), used to rank implementations and to refuse or tile a
computation before it starts.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from .._torch_private import tree_flatten

from .. import blocks
from .._torch_private import C_LINEAR, TensorBase
from ._axes import OutputSpec
from ._function import Problem

#: NTK_VECTOR_PRODUCTS runs its forward-mode products over ``x1`` in chunks of rows
#: (`_ntk_vp.row_chunk`): all intermediates of a chunk within ``CHUNK_BYTES``, its largest
#: within ``CHUNK_TENSOR_BYTES``, and at least ``MIN_CHUNK_ROWS`` rows (each chunk repeats
#: the primal pass). Measured on a 2-core CPU, one thread: the time is lowest with the
#: largest tangent of a chunk about 8 MiB (MLP of width 512 on 256 examples: 16-24 rows,
#: 0.69 s against 0.82 s with 6; on 1024 examples: 4 rows; a small CNN on 64 images: 8).
CHUNK_BYTES = 128 << 20
CHUNK_TENSOR_BYTES = 8 << 20
MIN_CHUNK_ROWS = 4

_LINEAR = {F.linear, C_LINEAR}
_MATMUL = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, TensorBase.matmul, torch.mm, torch.bmm}
_CONV = {F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d}


@dataclass
class Profile:
    """Per-example sizes measured by one forward pass (see module docstring)."""

    activations: int = 0
    largest: int = 0  # floats of the largest intermediate
    flops: int = 0
    uses: list[tuple[int, int, int]] = field(default_factory=list)  # (T, fan_in, fan_out)
    outputs: list[tuple[int, ...]] = field(default_factory=list)  # output leaves, example axis first
    out_spec: Any = None  # the output tree and the leaves' example axes (`Problem.per_batch`)
    out_batch_axes: list[int | None] | None = None


class _Counter(TorchFunctionMode):
    def __init__(self, ids: set[int]) -> None:
        super().__init__()
        self.ids = ids
        self.profile = Profile()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        prof = self.profile
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                prof.activations += t.numel()
                prof.largest = max(prof.largest, t.numel())
        if not (isinstance(out, torch.Tensor) and out.is_floating_point()):
            return out
        w = args[1] if len(args) > 1 else kwargs.get("weight", kwargs.get("other"))
        if isinstance(w, torch.Tensor) and w.ndim >= 1:
            if func in _LINEAR or func in _MATMUL:
                fan_in = w.shape[-1] if func in _LINEAR else w.shape[-2] if w.ndim >= 2 else w.shape[0]
                fan_out = out.shape[-1] if out.ndim else 1
                prof.flops += 2 * out.numel() * fan_in
                if id(w) in self.ids:
                    prof.uses.append((max(out.numel() // max(fan_out, 1), 1), fan_in, fan_out))
            elif func in _CONV:
                fan_in = math.prod(w.shape[1:])
                prof.flops += 2 * out.numel() * fan_in
                if id(w) in self.ids:
                    prof.uses.append((max(out.numel() // w.shape[0], 1), fan_in, w.shape[0]))
        return out


def profile(problem: Problem, tensors: tuple[torch.Tensor, ...], xb: Any, kw: dict[str, Any]) -> Profile:
    """Per-example activation floats, forward FLOPs and linear-ish uses (one forward pass)."""
    counter = _Counter({id(t) for t in tensors})
    with counter:
        leaves = problem.first_outputs(tensors, xb, kw)
    counter.profile.outputs = [tuple(leaf.shape) for leaf in leaves]
    counter.profile.out_spec, counter.profile.out_batch_axes = problem.out_spec, problem.out_batch_axes
    return counter.profile


_AVAILABLE: dict[str, tuple[float, int]] = {}


def available_memory(device: torch.device) -> int:
    """Bytes available on ``device`` (CUDA: free memory; CPU: ``MemAvailable``), re-read at
    most once a second."""
    now = time.monotonic()
    cached = _AVAILABLE.get(str(device))
    if cached is not None and now - cached[0] < 1.0:
        return cached[1]
    value = _read_available(device)
    _AVAILABLE[str(device)] = (now, value)
    return value


def _read_available(device: torch.device) -> int:
    return blocks.available_memory(device)


def costs(impl: int, prof: Profile, n_params: int, specs: list[OutputSpec], n1: int, n2: int, independent: bool = True
          ) -> tuple[float, float]:
    """``(FLOPs, floats of memory)`` of implementation ``impl`` on an ``n1 × n2`` block."""
    s = _outputs(specs)
    sigma = _sigma(specs)
    a, f_, p = prof.activations, prof.flops, n_params
    kernel = n1 * n2 * sigma
    if impl == 1:
        flops = 3 * f_ * s * (n1 + n2) + n1 * n2 * sigma * p
        mem = (n1 + n2) * s * p + max(n1, n2) * s * a + kernel
    elif impl == 2:
        flops = 3 * f_ * s * n2 + 3 * f_ * s * n1 * n2
        rows = n2 * s
        if rows > MIN_CHUNK_ROWS:  # chunked (`ntk_vector_products`); floats counted as 4 bytes
            rows = min(rows, max(MIN_CHUNK_ROWS, CHUNK_BYTES // 4 // max(1, n1 * a)))
        held = rows if independent else n2 * s  # rows J2ᵀ e: a chunk's worth, or all of them
        mem = held * p + n1 * rows * a + n1 * n2 * s * s
    else:
        lin = sum(min(t * t * (o + i), o * i) for t, i, o in prof.uses)
        other = max(p - sum(i * o for _, i, o in prof.uses), 0)
        flops = 3 * f_ * s * (n1 + n2) + n1 * n2 * sigma * (lin + other)
        # each use is contracted in turn, structured (pairs of tokens) or via its Jacobian
        per_use = max((min(n1 * n2 * sigma * t * t, (n1 + n2) * s * o * i) for t, i, o in prof.uses), default=0)
        from ._structured import SelfGrams

        kept = SelfGrams.KEPT * (kernel + n1 * n2)  # Grams of derivatives and inputs remembered for sharing
        mem = (n1 + n2) * s * a + per_use + (n1 + n2) * s * other + kernel + kept
    return float(flops), float(mem)


def _outputs(specs: list[OutputSpec]) -> int:
    return max(1, sum(sp.per_example_size for sp in specs))


def _sigma(specs: list[OutputSpec]) -> int:
    return max(1, sum(sp.pair_factor for sp in specs))


class MemoryPlanner:
    """Resolves AUTO and the chunk size for one call, and refuses what cannot fit."""

    def __init__(self, implementation: Any, memory_limit: int | None, cache: dict | None = None) -> None:
        self.implementation = int(implementation)
        self.cache = cache
        self.memory_limit = memory_limit
        self.chosen: int | None = None
        self.estimate: tuple[float, float] | None = None

    def profile(self, problem: Problem, tensors: tuple[torch.Tensor, ...], xb: Any, kw: dict[str, Any]) -> Profile:
        """:func:`profile`, reused for calls of the same :meth:`~._function.Problem.signature`
        when the examples are independent (``vmap`` rules out outputs whose shapes depend
        on input values)."""
        key = ("profile", problem.signature(tensors, xb, kw)) if problem.independent and self.cache is not None else None
        prof = self.cache.get(key) if key is not None else None
        if prof is None:
            prof = profile(problem, tensors, xb, kw)
            if key is not None:
                self.cache[key] = prof
        problem.out_spec, problem.out_batch_axes = prof.out_spec, prof.out_batch_axes  # as its forward pass set them
        return prof

    def plan(self, problem: Problem, tensors: tuple[torch.Tensor, ...], x1b: Any, kw1: dict[str, Any],
             n1: int, n2: int, specs: list[OutputSpec], chunk_size: int | None, prof: Profile | None = None
             ) -> int | None:
        itemsize = tensors[0].element_size()
        limit = self.memory_limit
        if limit is None:
            limit = int(0.8 * available_memory(tensors[0].device))
        prof = prof or profile(problem, tensors, x1b, kw1)
        n_params = sum(t.numel() for t in tensors)
        candidates = [self.implementation] if self.implementation else [1, 2, 3]

        def fits(impl: int, c1: int, c2: int) -> tuple[bool, float, float]:
            flops, mem = costs(impl, prof, n_params, specs, c1, c2, problem.independent)
            return mem * itemsize <= limit, flops, mem * itemsize

        if not problem.independent or chunk_size is not None:
            c1 = n1 if not problem.independent or chunk_size is None else min(chunk_size, n1)
            c2 = n2 if not problem.independent or chunk_size is None else min(chunk_size, n2)
            results = {i: fits(i, c1, c2) for i in candidates}
            ok = {i: r for i, r in results.items() if r[0]}
            if not ok:
                i, (_, _, need) = min(results.items(), key=lambda kv: kv[1][2])
                fix = ("pass a smaller chunk_size" if chunk_size is not None else
                       "pass vmap_axes=0 (if f treats examples independently) and a chunk_size")
                raise MemoryError(
                    f"empirical_ntk_fn: the NTK of {n1} x {n2} examples is estimated to need "
                    f"{need / 2**30:.2f} GiB (implementation {i}), more than the {limit / 2**30:.2f} GiB "
                    f"available (memory_limit); {fix}, or use fewer examples per call."
                )
            self.chosen = min(ok, key=lambda i: ok[i][1])
            self.estimate = (ok[self.chosen][1], ok[self.chosen][2])
            return chunk_size
        best = None  # (flops, impl, chunk)
        for impl in candidates:
            c = max(n1, n2)
            while c >= 1:
                good, flops, mem = fits(impl, min(c, n1), min(c, n2))
                if good:
                    total = flops * math.ceil(n1 / c) * math.ceil(n2 / c)
                    if best is None or total < best[0]:
                        best = (total, impl, c, mem)
                    break
                c //= 2
        if best is None:
            raise MemoryError(
                f"empirical_ntk_fn: even one example per block is estimated not to fit in "
                f"{limit / 2**30:.2f} GiB (memory_limit); trace more output axes (trace_axes), "
                "differentiate fewer parameters, or raise memory_limit."
            )
        _, self.chosen, c, mem = best
        self.estimate = (best[0], mem)
        return None if c >= max(n1, n2) else c


_ALLOCATOR_PRIMED = False


def prime_allocator(device: torch.device) -> None:
    """Once per process: lets glibc reuse, rather than map and page-fault anew, the
    same-sized blocks that successive chunks, blocks and calls allocate.

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
