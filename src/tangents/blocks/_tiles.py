"""`batch`: compute a kernel tile by tile, with bounded memory and the unbatched numbers.

The ``(N1, N2)`` pairs are split into ``(b, b)`` tiles (the block plan of `_plan`); each
tile is one call of the kernel function on a slice of ``x1`` and a slice of ``x2``
(`block_call`), written into a preallocated result. For ``x2=None`` only the tiles on and above the diagonal are computed (the others
are their transposes), and diagonal tiles are computed as ``kernel_fn(x1_i, None)``, so
layers that treat ``x2 = x1`` specially (``Dropout``) give the same numbers as unbatched.

Peak memory is the result plus one tile's intermediates.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch

from .._kernel import Kernel, check_get, select
from ._plan import Block, block_call, is_pair, leading_size, plan_blocks, slice_inputs, split_kwargs
from ._progress import BlockProgress
from ._estimate import WorkEstimate
from ._run import run_threaded

KernelFn = Callable[..., Any]


def batch(
    kernel_fn: KernelFn,
    batch_size: int = 0,
    device_count: int = -1,
    store_on_device: bool = True,
    *,
    progress: bool | None = None,
) -> KernelFn:
    """Returns ``kernel_fn`` computed in ``(batch_size, batch_size)`` tiles (NT's ``nt.batch``).

    Works for analytic kernel functions (``stax`` layers' ``kernel_fn``) and empirical ones
    (``tangents.empirical_kernel_fn``): any ``kernel_fn(x1, x2=None, get=None, **kwargs)``
    whose outputs have leading axes ``(N1, N2)`` (and ``cov1``/``cov2`` with a leading
    ``N1``/``N2`` for a `Kernel`). Unlike neural-tangents, ``batch_size`` need not divide
    the batch sizes, and ``x2=None`` computes only the upper triangle of tiles.

    Args:
        kernel_fn: the kernel function to tile.
        batch_size: tile size; ``0`` means no tiling.
        device_count: accepted for neural-tangents compatibility; tiles run on the inputs'
            device (one device). Values other than -1, 0 and 1 raise.
        store_on_device: ``False`` moves each finished tile to CPU memory, so kernels
            larger than the accelerator's memory can be assembled.
        progress: ``True`` shows a tqdm progress bar over tiles, ``False`` never; the
            default shows one once the computation has run for two seconds.

    Returns:
        A function with ``kernel_fn``'s signature and results.

    Example:
        >>> _, _, kernel_fn = stax.serial(stax.Dense(512), stax.Relu(), stax.Dense(1))
        >>> batched = tangents.batch(kernel_fn, batch_size=100)
        >>> batched(x_train, None, "ntk")  # (N, N), same numbers as kernel_fn(x_train)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"batch: batch_size must be a non-negative integer (0 for no tiling), got {batch_size!r}.")
    if device_count not in (-1, 0, 1):
        raise ValueError(
            f"batch: device_count={device_count} is not supported; tangents computes tiles on "
            "the inputs' device. Use device_count=-1 (default)."
        )
    if batch_size == 0:
        return kernel_fn

    @functools.wraps(kernel_fn)
    def batched_kernel_fn(x1: Any, x2: Any = None, get: Any = None, **kwargs: Any) -> Any:
        return tiled(
            kernel_fn, x1, x2, get, batch_size, store_on_device, progress, kwargs, is_analytic(kernel_fn)
        )

    return batched_kernel_fn


def is_analytic(kernel_fn: KernelFn) -> bool:
    """Whether ``kernel_fn`` is a ``stax`` layer's ``kernel_fn`` (it returns `Kernel` records for
    ``get=None``, so ``x2=None`` can use symmetry), also behind ``functools.partial`` (keyword
    arguments only) and ``functools.wraps`` wrappers such as `batch`'s own."""
    for _ in range(100):  # a chain of wrappers; the bound avoids a cycle of __wrapped__
        if isinstance(kernel_fn, functools.partial):
            if kernel_fn.args or "get" in kernel_fn.keywords:
                return False  # positional or get= bound: not called the way tiles call it
            kernel_fn = kernel_fn.func
            continue
        if getattr(getattr(kernel_fn, "__self__", None), "returns_kernel_records", False):
            return True
        kernel_fn = getattr(kernel_fn, "__wrapped__", None)
        if kernel_fn is None:
            return False
    return False


def swap_pairs(t: torch.Tensor, diagonal_spatial: bool) -> torch.Tensor:
    """The (N2, N1, ...) transpose of an (N1, N2, ...) covariance: swap the batch axes and,
    for full spatial layouts, each interleaved pair (S, S')."""
    t = t.transpose(0, 1)
    if not diagonal_spatial:
        for i in range(2, t.ndim - 1, 2):
            t = t.transpose(i, i + 1)
    return t


def tiled(
    kernel_fn: KernelFn,
    x1: Any,
    x2: Any,
    get: Any,
    b: int,
    store_on_device: bool,
    progress: bool | None,
    kwargs: dict[str, Any],
    analytic: bool,
    *,
    parallel: bool = True,
    mirrors: bool = False,
    tape: Any = None,
) -> Any:
    """Computes ``kernel_fn(x1, x2, get, **kwargs)`` in ``(b, b)`` tiles (see module doc).

    ``analytic``: ``kernel_fn`` returns `Kernel`s for ``get=None`` (then ``x2=None`` uses
    symmetry); otherwise it is called with ``get`` and returns tensors or named tuples.
    ``parallel``: analytic CPU tiles may run in parallel threads (one intra-op thread each);
    ``False`` runs them in turn with all threads (compiled tiles).
    ``mirrors``: ``kernel_fn`` also takes ``mirror=`` and returns ``(tile, mirrored)``, where
    ``mirrored`` maps ``"nngp"``/``"ntk"`` to the transposed tile it computed for the other
    triangle of a symmetric kernel (compiled tiles write it in the same fused loop).
    ``tape``: an object with context managers ``recording()`` (yields a tape) and
    ``replaying(rows_tape, cols_tape)``; the self-covariances of each block of examples are
    then recorded once (by the tiles of a block with itself) and replayed by the other
    tiles of its row and column (see `tangents.stax._tape`).
    """
    symmetric = x2 is None and analytic
    n1 = leading_size(x1)
    plan = plan_blocks(n1, None if x2 is None else leading_size(x2), b, symmetric=symmetric)
    n2 = plan.n2
    tiles = list(plan.blocks)
    inner_get = None if analytic else get
    tapes: dict[tuple[int, int], Any] = {}  # (which input, block index) -> tape
    if tape is not None and not _tape_pays(symmetric, n1, n2, b):
        tape = None

    def compute(tile: Block) -> None:
        i, j = tile.index
        mirrored: dict[str, torch.Tensor] = {}
        if tape is None:
            context = contextlib.nullcontext()
        elif tile.on_diagonal:
            context = tape.recording()
        else:
            context = tape.replaying(tapes[(1, i)], tapes[(1 if symmetric else 2, j)])
        with context as recorded:
            if mirrors:
                mirror = symmetric and not tile.on_diagonal
                result, mirrored = block_call(kernel_fn, x1, x2, inner_get, tile, kwargs, mirror=mirror)
            else:
                result = block_call(kernel_fn, x1, x2, inner_get, tile, kwargs)
        if tape is not None and tile.on_diagonal:
            tapes[(1, i)] = recorded
        _write(out, result_holder, result, tile.rows, tile.cols, n1, n2, symmetric, tile.on_diagonal,
               store_on_device, mirrored)

    def record(block: tuple[int, int]) -> None:
        """Records the self-covariances of a block of ``x1`` (1) or ``x2`` (2) alone."""
        which, i = block
        x = x1 if which == 1 else x2
        rows = slice(i * b, min((i + 1) * b, n1 if which == 1 else n2))
        if which == 2:  # x2's per-example arguments, as for a block of x2 with itself
            block_kwargs = {k: (v[1], v[1]) if is_pair(v) else v for k, v in kwargs.items()}
        else:
            block_kwargs = kwargs
        with tape.recording() as recorded:
            kernel_fn(slice_inputs(x, rows), None, inner_get, **split_kwargs(block_kwargs, rows, None, True))
        tapes[block] = recorded

    out: dict[str, Any] = {}
    result_holder: list[Any] = []
    # progress=None: a bar appears only if the work takes longer than two seconds.
    bar = BlockProgress(len(tiles), plan.pairs, show=progress, desc="kernel tiles", leave=False)
    workers = torch.get_num_threads()
    in_threads = analytic and parallel and workers > 1 and len(tiles) > 2 and first_tensor(x1).device.type == "cpu"
    threads = workers if in_threads else 1
    compute = WorkEstimate(len(tiles), threads, b, analytic).timed(compute)  # warns once on runaway work

    def count(tile: Block) -> None:
        bar.update(tile.pairs)

    g1, g2 = plan.grid
    if tape is not None and not symmetric:  # x2 given: each block's covariances first
        blocks = [(1, i) for i in range(g1)] + [(2, j) for j in range(g2)]
        record(blocks[0])
        if _tape_fits(tapes[blocks[0]], len(blocks), first_tensor(x1).device):
            run_threaded(threads, record, blocks[1:])
        else:
            tape, tapes = None, {}
    if tape is not None and symmetric:  # blocks with themselves first: they record
        tiles.sort(key=lambda t: not t.on_diagonal)
    # The first tile allocates the results; with one intra-op thread, as the tiles after it:
    # a tile's small ops on several threads stall on thread barriers when cores are shared,
    # which cost blocks of a store (a kernel_fn call each) up to 5x on a loaded machine.
    run_threaded(threads, compute, tiles[:1])
    count(tiles[0])
    if tape is not None and symmetric and not _tape_fits(tapes[(1, 0)], g1, first_tensor(x1).device):
        tape = None
    if tape is not None and symmetric:
        run_threaded(threads, compute, tiles[1:g1], count)
        run_threaded(threads, compute, tiles[g1:], count)
    else:
        run_threaded(threads, compute, tiles[1:], count)
    bar.close()
    return _finish(out, result_holder[0], get, analytic, x2 is None, n1, n2)


def _tape_pays(symmetric: bool, n1: int, n2: int, b: int) -> bool:
    """Whether recording self-covariances saves work. For ``x2=None`` the diagonal tiles
    record for free; for ``x2`` given each block's kernel with itself is computed first
    (``b`` pairs per example), against ``(1/b + 1/b)`` self-covariances saved per pair."""
    if symmetric:
        return n1 > b
    return 2 * n1 * n2 / b > (2 * b + 1) * (n1 + n2)


def _tape_fits(first: Any, blocks: int, device: torch.device) -> bool:
    """Whether all blocks' tapes (each about the size of the first) fit in an eighth of the
    free memory."""
    return first.nbytes() * blocks <= available_memory(device) // 8


def first_tensor(x: Any) -> torch.Tensor:
    """The first tensor of an input that may be a (nested) list of tensors."""
    return first_tensor(x[0]) if isinstance(x, (list, tuple)) else x


def _fields(tile: Any) -> dict[str, torch.Tensor | None]:
    if isinstance(tile, Kernel):
        return {"nngp": tile.nngp, "ntk": tile.ntk, "cov1": tile.cov1, "cov2": tile.cov2}
    if isinstance(tile, torch.Tensor):
        return {"": tile}
    if isinstance(tile, tuple) and hasattr(tile, "_fields"):
        return dict(zip(tile._fields, tile))
    raise TypeError(f"batch: cannot tile a kernel function returning {type(tile).__name__}.")


def _write(
    out: dict[str, Any],
    holder: list[Any],
    tile: Any,
    r1: slice,
    r2: slice,
    n1: int,
    n2: int,
    symmetric: bool,
    on_diagonal: bool,
    store_on_device: bool,
    mirrored: dict[str, torch.Tensor] | None = None,
) -> None:
    """Copies one tile into the preallocated results (and its mirror image if symmetric:
    ``mirrored``'s precomputed transpose, or the tile transposed here)."""
    if not holder:
        holder.append(tile)
        _check_fits(tile, r1, r2, n1, n2, store_on_device)
    diagonal_spatial = tile.diagonal_spatial if isinstance(tile, Kernel) else True
    if isinstance(tile, Kernel) and not tile.diagonal_batch:
        raise ValueError("batch: tiling kernels with diagonal_batch=False is not supported; use batch_size=0.")
    for name, t in _fields(tile).items():
        if t is None or (name == "cov2" and symmetric):
            continue
        if not store_on_device:
            t = t.cpu()
        if name in ("cov1", "cov2"):
            rows, n = (r1, n1) if name == "cov1" else (r2, n2)
            if name not in out:
                out[name] = t.new_empty((n,) + tuple(t.shape[1:]))
            out[name][rows] = t
        elif t.ndim == 0:
            out[name] = t
        else:
            if name not in out:
                out[name] = t.new_empty((n1, n2) + tuple(t.shape[2:]))
            out[name][r1, r2] = t
            if symmetric and not on_diagonal:
                mirror = (mirrored or {}).get(name)
                if mirror is None:
                    mirror = swap_pairs(t, diagonal_spatial)
                out[name][r2, r1] = mirror if store_on_device else mirror.cpu()
    if isinstance(tile, Kernel):
        _write_masks(out, tile, r1, r2, n1, n2, symmetric)


def _write_masks(out: dict[str, Any], tile: Kernel, r1: slice, r2: slice, n1: int, n2: int, symmetric: bool) -> None:
    """Copies a tile's output masks (``mask_constant``; finite layout, batch on ``batch_axis``)
    into masks of all ``n1`` / ``n2`` examples (``mask2`` is ``None`` when ``x2=None``)."""
    for name, rows, n in (("mask1", r1, n1), ("mask2", r2, n2)):
        m = getattr(tile, name)
        if m is None or (name == "mask2" and symmetric) or isinstance(m, (list, tuple)):
            continue
        axis = tile.batch_axis % m.ndim
        if name not in out:
            shape = list(m.shape)
            shape[axis] = n
            out[name] = m.new_empty(shape)
        out[name].narrow(axis, rows.start, rows.stop - rows.start).copy_(m)


def available_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on ``device`` (free memory, not counting caches)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _check_fits(tile: Any, r1: slice, r2: slice, n1: int, n2: int, store_on_device: bool) -> None:
    """Raises before allocating results that cannot fit in memory."""
    pairs = (r1.stop - r1.start) * (r2.stop - r2.start)
    needed = 0
    device = None
    for name, t in _fields(tile).items():
        if t is None or t.ndim == 0:
            continue
        device = t.device if store_on_device else torch.device("cpu")
        per = t.numel() * t.element_size()
        needed += per * (n1 * n2 / pairs if name not in ("cov1", "cov2") else max(n1, n2) / (r1.stop - r1.start))
    if device is None:
        return
    free = available_memory(device)
    if needed > free:
        raise MemoryError(
            f"kernel_fn: the result needs {_format_bytes(needed)} ({n1} x {n2} pairs) but only "
            f"{_format_bytes(free)} is free on {device}. Compute it in pieces (slices of x1 and "
            f"x2), in float32, or with store_on_device=False in tangents.batch when the "
            f"accelerator is the limit."
        )


def _finish(out: dict[str, Any], first: Any, get: Any, analytic: bool, x2_none: bool, n1: int, n2: int) -> Any:
    if isinstance(first, Kernel):
        shape1, shape2 = list(first.shape1), list(first.shape2)
        shape1[first.batch_axis] = n1
        shape2[first.batch_axis] = n1 if x2_none else n2
        k = first.replace(
            nngp=out["nngp"],
            ntk=out.get("ntk"),
            cov1=out["cov1"],
            cov2=None if x2_none else out.get("cov2"),
            mask1=out.get("mask1", first.mask1),
            mask2=None if x2_none else out.get("mask2", first.mask2),
            shape1=tuple(shape1),
            shape2=tuple(shape2),
        )
        if get is None:
            return k
        check_get(get)
        return select(k, get)
    if isinstance(first, torch.Tensor):
        return out[""]
    return type(first)(*(out.get(name) for name in first._fields))
