"""Cost and memory model: AUTO's choice of implementation, chunk sizes, and the early error.

One forward pass on one example (the whole batch without ``vmap_axes``) under a counting
``TorchFunctionMode`` measures, per example: ``A`` the floats of all intermediate tensors,
``F`` the forward FLOPs of linear / matmul / convolution calls, and for every linear-ish
parameter use its tokens ``T``, fan-in and fan-out. With ``P`` parameters, ``|S|`` outputs
per example and ``σ`` the output-pair factor left after tracing (``|S|²`` untraced,
``|S|`` traced), a block of ``n1 × n2`` examples costs about

    JACOBIAN_CONTRACTION    FLOPs 3F|S|(n1+n2) + n1 n2 σ P       memory (n1+n2)|S|P + n|S|A
    NTK_VECTOR_PRODUCTS     FLOPs 3F|S| n2 + 3F|S| n1 n2          memory e|S|P + r m A
    STRUCTURED_DERIVATIVES  FLOPs 3F|S|(n1+n2) + n1 n2 σ Σ_uses min(T²(out+in), out·in)
                            memory (n1+n2)|S|A + n1 n2 σ max T²

plus the ``n1 n2 σ`` kernel itself (floats; times the dtype size for bytes), where the
forward-mode products take the rows of ``e`` examples of ``x2`` at a time, ``r`` of them
through ``m`` examples of ``x1`` per pass (:func:`forward_passes`; ``A`` plus
``FORWARD_LIVE_TENSORS`` times the largest intermediate for a pass of independent examples;
without ``vmap_axes``, ``e = n2`` and ``m = n1``). These are
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
from ._axes import SELF_CONTRACT_BLOCK, STRUCTURED_PANEL_BYTES, TRACE, OutputSpec
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

#: When even one example's rows over all of ``x1`` outgrow the chunk budget, they go through
#: panels of ``x1`` whose largest tangent is within ``PANEL_TENSOR_BYTES``: glibc's largest
#: mmap threshold (``mallopt(3)``; see :func:`prime_allocator`), so that the blocks of one
#: pass are reused from the heap by the next instead of mapped and page-faulted afresh. Not
#: smaller: every pass also reads the rows, parameter-sized vectors, and repeats the primal
#: pass; measured (2 threads, 16 examples, float32), panels of 4, 8 and 16 examples took 10.0,
#: 7.7 and 6.5 s on ResNet-18 and 21.0, 18.3 and 16.9 s on the transformer of the benchmarks.
PANEL_TENSOR_BYTES = 32 << 20
#: For ``x2=None`` the panel that ends at the diagonal is rounded up to a multiple of
#: ``1 / PANEL_GRANULES`` of a panel (`_ntk_vp._columns_by_example_chunks`), so that passes
#: come in a few sizes whose blocks the allocator reuses.
PANEL_GRANULES = 4
#: Transient tangents the size of a pass's largest that a forward-mode pass holds on top of
#: its intermediates (the products of both arguments of a linear map and their sum, ``vmap``'s
#: moved copies), counted by the memory model. Measured peaks (2 threads, float32, after the
#: rows): ResNet-18 at 128 examples in panels of 51, 230 MB against 624 MB counted; the
#: transformer at 16 in panels of 12, 800 MB against 956 MB (its intermediates alone, 708 MB,
#: were too few).
FORWARD_LIVE_TENSORS = 8

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


def cached_profile(problem: Problem, tensors: tuple[torch.Tensor, ...], xb: Any, kw: dict[str, Any],
                   cache: dict | None) -> Profile:
    """:func:`profile`, reused through ``cache`` for calls of the same
    :meth:`~._function.Problem.signature` when the examples are independent (``vmap`` rules
    out outputs whose shapes depend on input values)."""
    key = ("profile", problem.signature(tensors, xb, kw)) if problem.independent and cache is not None else None
    prof = cache.get(key) if key is not None else None
    if prof is None:
        prof = profile(problem, tensors, xb, kw)
        if key is not None:
            cache[key] = prof
    problem.out_spec, problem.out_batch_axes = prof.out_spec, prof.out_batch_axes  # as its forward pass set them
    return prof


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


#: Machine balance of the time model: multiply-add FLOPs per second of matrix products, per
#: thread (float32; half that in float64), and bytes per second of memory written or read
#: through (fresh pages included). Only their ratio, about 10 FLOPs per byte as on a
#: desktop CPU core, decides AUTO's ranking; the predicted seconds are indicative.
FLOP_RATE = 40e9
BYTE_RATE = 4e9


@dataclass(frozen=True)
class Estimate:
    """The predicted cost of one implementation on one call: ``flops`` (matrix products),
    ``traffic`` (bytes written and read through memory), ``memory`` (peak bytes, results
    included) and ``seconds`` (``flops / FLOP_RATE + traffic / BYTE_RATE``); ``chunk_size``
    is the block size it needs (None: one block)."""

    implementation: int
    flops: float
    traffic: float
    memory: float
    seconds: float
    chunk_size: int | None = None

    @property
    def name(self) -> str:
        return {1: "JACOBIAN_CONTRACTION", 2: "NTK_VECTOR_PRODUCTS", 3: "STRUCTURED_DERIVATIVES"}[self.implementation]


@dataclass(frozen=True)
class Block:
    """The sizes one block of ``n1 × n2`` examples is costed with."""

    n1: int
    n2: int
    same: bool  # the block of x1 with itself (x2=None): derivatives once, a symmetric kernel


def block_costs(impl: int, prof: Profile, sizes: list[int], specs: list[OutputSpec], block: Block,
                independent: bool, itemsize: int) -> tuple[float, float, float]:
    """``(FLOPs, bytes of traffic, peak floats)`` of implementation ``impl`` on one block.

    Per example (see the module docstring for ``F``, ``A``, ``S``, ``σ``, ``P``): the probes'
    features cost a forward pass and one input-gradient pass per output, ``F (1 + S)``, and
    hold ``S A + A`` floats; a Jacobian built from them costs ``S F`` and holds ``S P``.
    """
    s = _outputs(specs)
    sigma = _sigma(specs)
    a, f_, p = prof.activations, prof.flops, sum(sizes)
    p_max = max(sizes, default=0)
    n1, n2, same = block.n1, block.n2, block.same
    n = n1 if same else n1 + n2  # examples whose derivatives are computed
    pairs = n1 * n2 * (0.56 if same and n1 >= 2 * SELF_CONTRACT_BLOCK else 1.0)
    kernel = n1 * n2 * sigma
    probes = independent or a <= p  # `_jacobian.JacobianSource`: else jacrev, chunked over outputs
    if probes:
        feat_flops, feat_mem, feat_traffic = f_ * (1 + s), s * a + a, 2 * s * a
    else:  # jacrev of the whole batch: weight gradients included, seeds in chunks
        feat_flops, feat_mem, feat_traffic = f_ * (1 + 2 * s), min(s, MIN_CHUNK_ROWS) * a, 2 * s * p
    if impl == 1:
        flops = n * (feat_flops + (s * f_ if probes else 0)) + 2 * pairs * sigma * p
        traffic = n * (feat_traffic + 2 * s * p)
        held = (n if same else n1 + n2) * s * (p_max if probes else p)
        mem = n * feat_mem + held + kernel
    elif impl == 2:
        src = n1 if same else n2
        if independent:
            passes = forward_passes(prof, n1, s, itemsize)
            per = min(passes.examples, src)
            rows_held, rows = per * s, min(passes.rows, per * s)
            live = rows * min(passes.panel, n1) * (a + FORWARD_LIVE_TENSORS * prof.largest)  # one pass's tangents
            primal_passes = math.ceil(rows_held / rows)  # per chunk and panel
            rounding = passes.granule / 2  # x2=None: the diagonal panel in whole granules
        else:  # all rows, chunked in the vmap, through the whole batch
            c = rows_per_chunk(prof, n1, itemsize)
            per, rows_held = src, src * s
            chunk_rows = min(rows_held, c) if rows_held > MIN_CHUNK_ROWS else rows_held
            live = n1 * chunk_rows * a
            primal_passes = math.ceil(rows_held / chunk_rows)
            rounding = 0
        chunks = math.ceil(src / per)
        n1_eff = min(n1, (n1 + per) / 2 + rounding) if same else n1  # x2=None: each chunk up to its own
        flops = src * (feat_flops + s * f_) + f_ * n1_eff * (chunks * primal_passes + 2 * src * s)
        traffic = src * (feat_traffic + 4 * s * p) + 2 * n1_eff * src * s * a
        mem = rows_held * p + per * feat_mem + live + n1 * n2 * s * s
    else:
        flops = n * feat_flops
        traffic = n * feat_traffic
        biggest = 0.0
        # `_rules.structured`: the token-pair products of a panel of rows of x1 (within
        # STRUCTURED_PANEL_BYTES, at least one row), held twice while contracted; a batch
        # with itself with every output axis traced forms its (E, E, T, T) Grams whole.
        traced_self = same and all(k == TRACE for sp in specs for k in sp.kinds[1:])
        panel = STRUCTURED_PANEL_BYTES / itemsize
        kept = max(1, sum(sp.kept_factor for sp in specs))  # traced output axes are summed in the products
        for t, i, o in prof.uses:
            structured = pairs * t * t * 2 * (sigma * o + i + sigma)
            jacobian = n * 2 * s * t * i * o + 2 * pairs * sigma * i * o
            if structured <= jacobian:
                flops += structured
                if traced_self:
                    biggest = max(biggest, pairs * sigma * t * t)
                else:
                    biggest = max(biggest, 2 * min(pairs * kept * t * t, max(panel, n2 * kept * t * t)))
            else:
                flops += jacobian
                traffic += 2 * n * s * i * o
                biggest = max(biggest, n * s * i * o)
        other = max(p - sum(i * o for _, i, o in prof.uses), 0)
        flops += n * s * other + 2 * pairs * sigma * other
        traffic += 2 * n * s * other
        from ._structured import SelfGrams

        kept = SelfGrams.KEPT * (kernel + n1 * n2) if same else 0  # Grams remembered for sharing
        mem = n * feat_mem + biggest + n * s * min(other, p_max) + kernel + kept
    return float(flops), float(traffic * itemsize), float(mem * itemsize)


def rows_per_chunk(prof: Profile, n1: int, itemsize: int) -> int:
    """Rows ``J2ᵀ e`` per ``vmap``-ed forward-mode pass over all ``n1`` examples of ``x1``
    (`_ntk_vp.row_chunk`): their intermediates within ``CHUNK_BYTES`` (but at least
    ``MIN_CHUNK_ROWS`` rows), the largest within ``CHUNK_TENSOR_BYTES``."""
    scale = max(1, n1) * itemsize
    by_total = CHUNK_BYTES // max(1, prof.activations * scale)
    by_largest = CHUNK_TENSOR_BYTES // max(1, prof.largest * scale)
    return max(1, min(by_largest, max(by_total, MIN_CHUNK_ROWS)))


@dataclass(frozen=True)
class ForwardPasses:
    """How NTK_VECTOR_PRODUCTS pushes the rows of independent examples forward
    (`_ntk_vp._columns_by_example_chunks`): ``examples`` examples of ``x2`` at a time (their
    ``examples × |S|`` rows computed just before), those rows ``rows`` at a time (one
    ``vmap``-ed ``jvp``) through ``panel`` examples of ``x1`` at a time.

    A pass holds tangents of ``rows × panel`` times one example's intermediates; fixed-size
    panels keep them within the chunk budget and let the allocator reuse the same blocks
    from pass to pass, however large ``x1``.
    """

    examples: int
    rows: int
    panel: int

    @property
    def granule(self) -> int:
        """For ``x2=None``, the panel ending at the diagonal is rounded up to a multiple of this."""
        return max(1, -(-self.panel // PANEL_GRANULES))


def forward_passes(prof: Profile, n1: int, s: int, itemsize: int) -> ForwardPasses:
    """The :class:`ForwardPasses` for ``n1`` examples of ``x1`` and ``s`` rows per example of
    ``x2``: whole examples' rows through all of ``x1`` when :func:`rows_per_chunk` allows
    ``s`` rows or more (the primal pass, repeated per pass, is then amortized over the most
    rows); otherwise one example's ``s`` rows through panels of ``x1``, the largest tangent
    of a pass within ``PANEL_TENSOR_BYTES``; and if even one example of ``x1`` is too much
    for ``s`` rows, fewer rows through one example."""
    s = max(1, s)
    c = rows_per_chunk(prof, n1, itemsize)
    if c >= s:
        per = c // s
        return ForwardPasses(per, per * s, max(1, n1))
    largest = max(1, prof.largest * itemsize)
    panel = min(max(1, n1), PANEL_TENSOR_BYTES // (s * largest))
    if panel >= 1:
        return ForwardPasses(1, s, panel)
    return ForwardPasses(1, max(1, min(s, PANEL_TENSOR_BYTES // largest)), 1)


def estimate(impl: int, prof: Profile, sizes: list[int], specs: list[OutputSpec], n1: int, n2: int, same: bool,
             independent: bool, itemsize: int, chunk: int | None, result_bytes: float) -> Estimate:
    """The whole call in blocks of ``chunk`` examples (None: one block): every block's cost
    (for ``x2=None`` the blocks above the diagonal only, the others being their mirror
    images), and the peak memory of one block plus the result (and, when tiled, the mirror
    images waiting to be written: up to a quarter of the result)."""
    if chunk is None or (chunk >= n1 and chunk >= n2) or not independent:
        flops, traffic, mem = block_costs(impl, prof, sizes, specs, Block(n1, n2, same), independent, itemsize)
        chunk = None
        extra = 0.0
    else:
        b1, b2 = math.ceil(n1 / chunk), math.ceil(n2 / chunk)
        c1, c2 = min(chunk, n1), min(chunk, n2)
        off = block_costs(impl, prof, sizes, specs, Block(c1, c2, False), independent, itemsize)
        if same:
            diag = block_costs(impl, prof, sizes, specs, Block(c1, c1, True), independent, itemsize)
            n_off = b1 * (b1 - 1) / 2
            flops, traffic = b1 * diag[0] + n_off * off[0], b1 * diag[1] + n_off * off[1]
            mem = max(diag[2], off[2])
            extra = result_bytes * (1.25 if b1 > 2 else 1.0)
        else:
            flops, traffic, mem = b1 * b2 * off[0], b1 * b2 * off[1], off[2]
            extra = result_bytes
    rate = FLOP_RATE * (4 / max(itemsize, 4))
    return Estimate(impl, flops, traffic, mem + extra, flops / rate + traffic / BYTE_RATE, chunk)


def _outputs(specs: list[OutputSpec]) -> int:
    return max(1, sum(sp.per_example_size for sp in specs))


def _sigma(specs: list[OutputSpec]) -> int:
    return max(1, sum(sp.pair_factor for sp in specs))


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


class MemoryPlanner:
    """Resolves AUTO and the chunk size for one call, and refuses what cannot fit.

    After :meth:`plan`, ``chosen`` is the implementation to run and ``estimates`` the
    :class:`Estimate` of every candidate (AUTO: all three), so that the prediction can be
    compared with the measurement.
    """

    def __init__(self, implementation: Any, memory_limit: int | None, cache: dict | None = None,
                 caller: str = "empirical_ntk_fn") -> None:
        self.implementation = int(implementation)
        self.cache = cache
        self.memory_limit = memory_limit
        self.caller = caller
        self.chosen: int | None = None
        self.estimates: dict[int, Estimate] = {}

    @property
    def estimate(self) -> Estimate | None:
        """The :class:`Estimate` of the chosen implementation."""
        return self.estimates.get(self.chosen) if self.chosen is not None else None

    def profile(self, problem: Problem, tensors: tuple[torch.Tensor, ...], xb: Any, kw: dict[str, Any]) -> Profile:
        """:func:`cached_profile` with this planner's cache."""
        return cached_profile(problem, tensors, xb, kw, self.cache)

    def plan(self, problem: Problem, tensors: tuple[torch.Tensor, ...], n1: int, n2: int, same: bool,
             specs: list[OutputSpec], shapes1: list[tuple[int, ...]], shapes2: list[tuple[int, ...]],
             chunk_size: int | None, prof: Profile) -> int | None:
        """Chooses the implementation (``chosen``) and returns the chunk size to run with.

        Raises:
            MemoryError: the result alone, or the computation even in the smallest blocks
                allowed, is estimated not to fit in ``memory_limit`` (default: 80 % of the
                memory available now).
        """
        itemsize = tensors[0].element_size()
        limit = self.memory_limit
        if limit is None:
            limit = int(0.8 * available_memory(tensors[0].device))
        sizes = [t.numel() for t in tensors]
        result_bytes = float(sum(math.prod(sp.shape(a, b)) for sp, a, b in zip(specs, shapes1, shapes2)) * itemsize)
        what = self._what(problem, n1, n2, specs, shapes1, shapes2, tensors[0].dtype)
        if result_bytes > limit:
            raise MemoryError(
                f"{self.caller}: {what} needs {_gib(result_bytes)} for the result alone, more than the "
                f"{_gib(limit)} available (memory_limit). Compute it in pieces (rows x1[i:j] against x2, "
                "each written to disk), average over more output axes (trace_axes), or use float32."
            )
        candidates = [self.implementation] if self.implementation else [1, 2, 3]

        def cost(impl: int, chunk: int | None) -> Estimate:
            return estimate(impl, prof, sizes, specs, n1, n2, same, problem.independent, itemsize, chunk, result_bytes)

        if not problem.independent or chunk_size is not None:
            results = {i: cost(i, chunk_size if problem.independent else None) for i in candidates}
        else:
            results = {}
            for impl in candidates:
                c = max(n1, n2)
                est = cost(impl, None)
                while est.memory > limit and c > 1:
                    c = max(1, c // 2)
                    est = cost(impl, c)
                results[impl] = est
        self.estimates = results
        fitting = {i: e for i, e in results.items() if e.memory <= limit}
        if not fitting:
            i, need = min(results.items(), key=lambda kv: kv[1].memory)
            if not problem.independent:
                fix = ("pass vmap_axes=0 (if f treats the examples independently, they are then computed in "
                       "blocks), or use fewer examples per call")
            elif chunk_size is not None and chunk_size > 1:
                fix = "pass a smaller chunk_size (or none: one is chosen), or use fewer examples per call"
            else:
                fix = ("even one example per block does not fit: average over more output axes (trace_axes), "
                       "differentiate fewer parameters (parameters=...), or raise memory_limit")
            raise MemoryError(
                f"{self.caller}: {what} is estimated to need {_gib(need.memory)} "
                f"({need.name}{'' if need.chunk_size is None else f' in blocks of {need.chunk_size} examples'}), "
                f"more than the {_gib(limit)} available (memory_limit); {fix}."
            )
        self.chosen = min(fitting, key=lambda i: fitting[i].seconds)
        return fitting[self.chosen].chunk_size if problem.independent else None

    @staticmethod
    def _what(problem: Problem, n1: int, n2: int, specs: list[OutputSpec], shapes1: list[tuple[int, ...]],
              shapes2: list[tuple[int, ...]], dtype: torch.dtype, kernel: str = "NTK") -> str:
        shape = " + ".join(str(sp.shape(a, b)) for sp, a, b in zip(specs, shapes1, shapes2))
        name = str(dtype).replace("torch.", "")
        if problem.independent:
            return f"the {kernel} of {n1} x {n2} examples (kernel {shape}, {name})"
        out1 = ", ".join(str(s) for s in shapes1)
        out2 = ", ".join(str(s) for s in shapes2)
        note = "; without vmap_axes the whole batch is one example" if kernel == "NTK" else ""
        return f"the {kernel} of f(x1) of shape {out1} and f(x2) of shape {out2} (kernel {shape}, {name}{note})"


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
