"""Blocks of ``K(X, centres)`` for Nyström regression: computed here or as Dask tasks.

`nystrom` needs a few passes over the rows of the ``N × M`` kernel between the training
inputs and the centres, each reducing a block to something small (``M × c``). A block
source splits ``X`` into blocks of rows and applies a reduction to every block:

* `LocalBlocks` computes blocks in this process and keeps the first ones in memory while
  they fit in ``cache_bytes``; the rest are written once to files under ``spill_dir`` and
  read back at every pass, or, without a ``spill_dir``, recomputed at every pass;
* `DaskBlocks` (`dask_blocks`) scatters the inputs to a ``dask.distributed`` cluster once
  and runs one task per block; with ``persist=True`` the blocks stay in the workers'
  memory between passes (the driver never holds them), and each pass sends only the small
  right-hand sides.

A reduction is a top-level function ``fn(block, *args)`` where ``block`` is a `KernelBlock`
(picklable, so Dask workers can run it).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ._operators import slice_inputs

__all__ = ["DaskBlocks", "KernelBlock", "LocalBlocks", "compute_block", "dask_blocks"]

#: Examples per call of ``kernel_fn(x_b, None)`` when the diagonal of a block is computed.
DIAGONAL_ROWS = 256


@dataclasses.dataclass
class KernelBlock:
    """Rows ``start:stop`` of ``K(X, centres)`` for each kernel, and what goes with them.

    Attributes:
        k: ``name -> (stop − start, M)`` kernel block, in the kernel's dtype.
        diag: ``name -> (stop − start,)`` diagonal ``K(x_i, x_i)``, or empty.
        y: the targets of these rows ``(stop − start, m)``, or ``None``.
        start, stop: the rows.
    """

    k: dict[str, torch.Tensor]
    diag: dict[str, torch.Tensor]
    y: Optional[torch.Tensor]
    start: int
    stop: int


def compute_block(
    kernel_fn: Callable[..., Any],
    xb: Any,
    centres: Any,
    names: tuple[str, ...],
    kwargs: dict[str, Any],
    y: Optional[torch.Tensor],
    start: int,
    stop: int,
    with_diagonal: bool,
    coincide: Optional[tuple[torch.Tensor, torch.Tensor]],
) -> KernelBlock:
    """``kernel_fn(xb, centres, names)``; with ``with_diagonal`` also ``diag K(xb, xb)`` (by
    ``kernel_fn(xb[s], None)`` in small pieces); entries ``(rows, cols)`` of ``coincide``
    (a row that is itself a centre) are set to that diagonal, the numbers ``kernel_fn(x,
    None)`` gives for a point with itself."""
    out = kernel_fn(xb, centres, names, **kwargs)
    k = {g: _field(out, g, names) for g in names}
    diag: dict[str, torch.Tensor] = {}
    if with_diagonal:
        n = stop - start
        parts: dict[str, list[torch.Tensor]] = {g: [] for g in names}
        for s in range(0, n, DIAGONAL_ROWS):
            d = kernel_fn(slice_inputs(xb, slice(s, min(s + DIAGONAL_ROWS, n))), None, names, **kwargs)
            for g in names:
                parts[g].append(torch.diagonal(_field(d, g, names)).clone())
        diag = {g: torch.cat(parts[g]) for g in names}
        if coincide is not None and len(coincide[0]):
            for g in names:
                k[g][coincide[0], coincide[1]] = diag[g][coincide[0]].to(k[g].dtype)
    return KernelBlock(k, diag, y, start, stop)


def _field(out: Any, g: str, names: Sequence[str]) -> torch.Tensor:
    v = out if isinstance(out, torch.Tensor) and len(names) == 1 else getattr(out, g)
    return torch.as_tensor(v)


def _apply(block: KernelBlock, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    return fn(block, *args)


def _compute_and_apply(spec: tuple[Any, ...], fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    return fn(compute_block(*spec), *args)


class LocalBlocks:
    """Blocks of ``K(X, centres)`` computed in this process (see module doc).

    Args:
        kernel_fn, x, centres, names, kwargs: the kernel ``kernel_fn(x[rows], centres, names,
            **kwargs)``.
        y: targets ``(N, m)`` handed to reductions with their rows, or ``None``.
        block_rows: examples per block.
        cache_bytes: bytes of blocks kept in memory between passes.
        spill_dir: a directory for the blocks beyond ``cache_bytes``: each is written once
            (raw bytes, in a temporary subdirectory deleted by `close`) and read at every
            later pass instead of being recomputed; ``None`` recomputes them.
        with_diagonal: compute ``diag K(x_i, x_i)`` with each block.
        centre_index: for each centre, its row in ``x`` (or ``-1``); those entries are
            set from the diagonal (see `compute_block`).
        progress: a tqdm bar per pass (see `_solvers.progress_bar`).
    """

    def __init__(
        self,
        kernel_fn: Callable[..., Any],
        x: Any,
        centres: Any,
        names: tuple[str, ...],
        kwargs: dict[str, Any],
        y: Optional[torch.Tensor],
        n: int,
        block_rows: int,
        cache_bytes: int,
        with_diagonal: bool,
        centre_index: Optional[torch.Tensor],
        progress: Optional[bool],
        spill_dir: Optional[Path] = None,
    ) -> None:
        self.kernel_fn, self.x, self.centres, self.names, self.kwargs = kernel_fn, x, centres, names, kwargs
        self.y = y
        self.ranges = [(i, min(i + block_rows, n)) for i in range(0, n, block_rows)]
        self.cache_bytes = cache_bytes
        self.with_diagonal = with_diagonal
        self.centre_index = centre_index
        self.progress = progress
        self.cache: dict[int, KernelBlock] = {}
        self.slab: Optional[dict[str, torch.Tensor]] = None  # the memory of the kept blocks
        self.cached = 0
        self.computed = 0
        self.spill_root = spill_dir
        self.spill: Optional[Path] = None  # the temporary subdirectory, made on first spill
        self.spilled: dict[int, dict[str, tuple[torch.dtype, tuple[int, ...]]]] = {}

    def spec(self, b: int) -> tuple[Any, ...]:
        i, j = self.ranges[b]
        coincide = _coincide(self.centre_index, i, j) if self.with_diagonal else None
        y = None if self.y is None else self.y[i:j]
        return (self.kernel_fn, slice_inputs(self.x, slice(i, j)), self.centres, self.names, self.kwargs, y, i, j,
                self.with_diagonal, coincide)

    def block(self, b: int) -> KernelBlock:
        hit = self.cache.get(b)
        if hit is not None:
            return hit
        if b in self.spilled:
            return self._read(b)
        blk = compute_block(*self.spec(b))
        self.computed += 1
        kept = self._keep(b, blk)
        if kept is not None:
            return kept
        if self.spill_root is not None:
            self._write(b, blk)
        return blk

    def _keep(self, b: int, blk: KernelBlock) -> Optional[KernelBlock]:
        """Copies block ``b`` into the memory kept between passes, if it still fits; returns
        the kept block (views of that memory), or ``None``.

        The kept blocks live in one preallocated buffer per kernel (``cache_bytes`` at most),
        not in tensors of their own: blocks of a few tens of MB come from the C heap, and
        every block computed leaves there a freed twin (its other kernel, its temporaries)
        that the heap cannot give back between two kept blocks, which doubled the resident
        memory of a fully cached run (N = 10⁶, M = 1,000: 8.0 GiB for 3.7 GiB of blocks).
        """
        row_bytes = sum(t[0].numel() * t.element_size() for t in blk.k.values() if len(t))
        rows = blk.stop - blk.start
        if self.slab is None:
            capacity = min(self.ranges[-1][1], self.cache_bytes // max(1, row_bytes))
            if capacity < rows:
                return None
            self.slab = {g: t.new_empty((capacity, *t.shape[1:])) for g, t in blk.k.items()}
        used = self.cached // max(1, row_bytes)
        if used + rows > next(iter(self.slab.values())).shape[0]:
            return None
        k = {}
        for g, t in blk.k.items():
            k[g] = self.slab[g][used : used + rows]
            k[g].copy_(t)
        kept = KernelBlock(k, blk.diag, blk.y, blk.start, blk.stop)
        self.cache[b] = kept
        self.cached += rows * row_bytes
        return kept

    def _file(self, b: int, g: str) -> Path:
        assert self.spill is not None
        return self.spill / f"{b}.{g}.bin"

    def _write(self, b: int, blk: KernelBlock) -> None:
        """Writes block ``b``'s kernels (raw bytes; the diagonal is only used by the first pass)."""
        if self.spill is None:
            self.spill = Path(tempfile.mkdtemp(prefix="tangents-nystrom-", dir=self.spill_root))
        layout = {}
        for g, t in blk.k.items():
            t = t.detach().to("cpu").contiguous()
            t.numpy().tofile(self._file(b, g))
            layout[g] = (t.dtype, tuple(t.shape))
        self.spilled[b] = layout

    def _read(self, b: int) -> KernelBlock:
        i, j = self.ranges[b]
        k = {}
        for g, (dtype, shape) in self.spilled[b].items():
            np_dtype = torch.empty((), dtype=dtype).numpy().dtype
            k[g] = torch.from_numpy(np.fromfile(self._file(b, g), dtype=np_dtype).reshape(shape))
        y = None if self.y is None else self.y[i:j]
        return KernelBlock(k, {}, y, i, j)

    def reduce(self, fn: Callable[..., Any], *args: Any, desc: str = "nystrom blocks") -> list[Any]:
        """``[fn(block, *args) for every block]``, in order."""
        from ._solvers import progress_bar

        out = []
        bar = progress_bar(len(self.ranges), desc, self.progress)
        try:
            for b in range(len(self.ranges)):
                out.append(fn(self.block(b), *args))
                bar.update()
        finally:
            bar.close()
        return out

    def close(self) -> None:
        self.cache.clear()
        self.slab = None
        self.spilled.clear()
        if self.spill is not None:
            shutil.rmtree(self.spill, ignore_errors=True)
            self.spill = None


def _coincide(centre_index: Optional[torch.Tensor], i: int, j: int) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """``(rows in block i:j, centre columns)`` of the centres that are rows of this block."""
    if centre_index is None:
        return None
    cols = ((centre_index >= i) & (centre_index < j)).nonzero().flatten()
    return centre_index[cols] - i, cols


class DaskBlocks(LocalBlocks):
    """`LocalBlocks` whose blocks are Dask tasks on ``client`` (see `dask_blocks`)."""

    def __init__(self, client: Any, persist: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.client = client
        self.persist = persist
        # the inputs reach the workers once: one scattered piece per block, centres broadcast
        # (hash=False: keys of their own, not shared with another block source's, so releasing
        # one never takes data from the other)
        self.remote_centres = client.scatter([self.centres], broadcast=True, hash=False)[0]
        self.remote_fn = client.scatter([self.kernel_fn], broadcast=True, hash=False)[0]
        self.remote_x = client.scatter([slice_inputs(self.x, slice(i, j)) for i, j in self.ranges], hash=False)
        self.remote_y = None if self.y is None else client.scatter([self.y[i:j] for i, j in self.ranges], hash=False)
        self.futures: Optional[list[Any]] = None

    def remote_spec(self, b: int) -> tuple[Any, ...]:
        i, j = self.ranges[b]
        coincide = _coincide(self.centre_index, i, j) if self.with_diagonal else None
        y = None if self.remote_y is None else self.remote_y[b]
        return (self.remote_fn, self.remote_x[b], self.remote_centres, self.names, self.kwargs, y, i, j,
                self.with_diagonal, coincide)

    def reduce(self, fn: Callable[..., Any], *args: Any, desc: str = "nystrom blocks") -> list[Any]:
        # (a list of one: a dict would be scattered value by value, under its keys)
        remote_args = tuple(
            self.client.scatter([a], broadcast=True, hash=False)[0] if isinstance(a, (torch.Tensor, dict)) else a
            for a in args
        )
        if self.persist:
            if self.futures is None:
                self.futures = [
                    self.client.submit(compute_block, *self.remote_spec(b), pure=False) for b in range(len(self.ranges))
                ]
            tasks = [self.client.submit(_apply, f, fn, remote_args, pure=False) for f in self.futures]
        else:
            tasks = [
                self.client.submit(_compute_and_apply, self.remote_spec(b), fn, remote_args, pure=False)
                for b in range(len(self.ranges))
            ]
        return self.client.gather(tasks)

    def close(self) -> None:
        """Releases the blocks kept on the workers (the futures are dropped, not cancelled)."""
        self.futures = None
        self.remote_x, self.remote_y = [], None


def dask_blocks(client: Any, persist: bool, **kwargs: Any) -> DaskBlocks:
    """The Dask block source (the one place `nystrom` touches ``dask.distributed``)."""
    try:
        import distributed  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "nystrom(client=...) needs dask.distributed: pip install 'tangents[distributed]'."
        ) from e
    return DaskBlocks(client, persist, **kwargs)
