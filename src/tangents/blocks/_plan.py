"""The one plan of blocks: which ``(rows, cols)`` blocks of a kernel are computed, and how.

A kernel ``K(x1, x2)`` of shape ``(N1, N2, *S)`` is cut into a grid of blocks of ``b``
examples per side (the last row and column of blocks are shorter when ``b`` does not divide
``N1`` or ``N2``). Block ``(i, j)`` holds ``K[i b : (i + 1) b, j b : (j + 1) b]`` and is one
call of the kernel function on a slice of ``x1`` and a slice of ``x2``: `block_call`.

For ``x2=None`` a *symmetric* plan keeps only the blocks on and above the diagonal
(``i <= j``: ``g (g + 1) / 2`` of the ``g²``), since ``K[cols, rows] = K[rows, cols]ᵀ``;
blocks on the diagonal are computed as ``kernel_fn(x1[rows], None)``, so layers that treat
``x2 = x1`` specially (``Dropout``) give the numbers of the unblocked call.

Every way of running a kernel in blocks uses this plan and this call: tiles assembled in
memory (`tangents.blocks.tiled`), blocks written to a zarr store (`tangents.store`) and
blocks computed as Dask tasks (`tangents.distributed`). Only where the results go (the
sink) and who computes them (the executor) differ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["Block", "BlockPlan", "block_arguments", "block_call", "leading_size", "plan_blocks", "slice_inputs"]


@dataclasses.dataclass(frozen=True)
class Block:
    """One block of a kernel: ``K[rows, cols]``.

    Attributes:
        index: ``(i, j)``, the block's row and column in the grid of blocks.
        rows: the examples of ``x1`` it covers.
        cols: the examples of ``x2`` (of ``x1`` when ``x2=None``) it covers.
        on_diagonal: ``x2=None`` and ``i == j``: computed as ``kernel_fn(x1[rows], None)``.
    """

    index: tuple[int, int]
    rows: slice
    cols: slice
    on_diagonal: bool

    @property
    def pairs(self) -> int:
        """Number of ``(x1, x2)`` pairs in the block."""
        return (self.rows.stop - self.rows.start) * (self.cols.stop - self.cols.start)

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)``: the block's leading shape."""
        return (self.rows.stop - self.rows.start, self.cols.stop - self.cols.start)

    def __hash__(self) -> int:  # (slices are unhashable before Python 3.12)
        return hash((self.index, self.rows.start, self.rows.stop, self.cols.start, self.cols.stop, self.on_diagonal))

    def __repr__(self) -> str:
        return f"Block({self.index[0]}, {self.index[1]}: rows {self.rows.start}:{self.rows.stop}, cols {self.cols.start}:{self.cols.stop})"


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """The blocks of an ``(n1, n2)`` kernel in blocks of ``block_size`` examples per side.

    Attributes:
        n1: examples in ``x1``.
        n2: examples in ``x2`` (``n1`` when ``x2=None``).
        block_size: examples per block side.
        self_pairs: ``x2=None`` (blocks on the diagonal are computed with ``x2=None``).
        symmetric: only the blocks on and above the diagonal are computed (``x2=None`` and a
            kernel known to be symmetric, ``K(x, x')ᵀ = K(x', x)``).
        blocks: the blocks to compute, row by row (``(0, 0), (0, 1), ...``).
    """

    n1: int
    n2: int
    block_size: int
    self_pairs: bool
    symmetric: bool
    blocks: tuple[Block, ...]

    @property
    def grid(self) -> tuple[int, int]:
        """``(g1, g2)``: blocks per column and per row of the full grid."""
        return (-(-self.n1 // self.block_size), -(-self.n2 // self.block_size))

    @property
    def pairs(self) -> int:
        """Pairs computed (for a symmetric plan: those of the blocks on and above the diagonal)."""
        return sum(block.pairs for block in self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self) -> Iterator[Block]:
        return iter(self.blocks)

    def block(self, i: int, j: int) -> Block:
        """Block ``(i, j)`` of the grid (also one below the diagonal of a symmetric plan)."""
        g1, g2 = self.grid
        if not (0 <= i < g1 and 0 <= j < g2):
            raise IndexError(f"BlockPlan.block: ({i}, {j}) is outside the {g1} x {g2} grid of blocks.")
        b = self.block_size
        return Block(
            (i, j), slice(i * b, min((i + 1) * b, self.n1)), slice(j * b, min((j + 1) * b, self.n2)),
            self.self_pairs and i == j,
        )


def plan_blocks(n1: int, n2: int | None, block_size: int, *, symmetric: bool) -> BlockPlan:
    """The blocks of an ``(n1, n2)`` kernel.

    Args:
        n1: examples in ``x1``.
        n2: examples in ``x2``; ``None`` for ``x2=None`` (then ``n2 = n1``).
        block_size: examples per block side (``>= 1``; need not divide ``n1`` or ``n2``).
        symmetric: for ``x2=None``, keep only the blocks on and above the diagonal.

    Returns:
        The `BlockPlan`, blocks row by row.

    Example:
        >>> plan = plan_blocks(5, None, 2, symmetric=True)
        >>> [b.index for b in plan]
        [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"plan_blocks: block_size must be a positive integer, got {block_size!r}.")
    self_pairs = n2 is None
    symmetric = symmetric and self_pairs
    n2_ = n1 if n2 is None else n2
    plan = BlockPlan(n1, n2_, block_size, self_pairs, symmetric, ())
    g1, g2 = plan.grid
    blocks = tuple(plan.block(i, j) for i in range(g1) for j in range(g2) if not (symmetric and j < i))
    return dataclasses.replace(plan, blocks=blocks)


# ---------------------------------------------------------------------- the per-block call


def leading_size(x: Any) -> int:
    """Examples in an input: its leading size (of its first tensor for a list of inputs)."""
    if isinstance(x, (list, tuple)):
        return leading_size(x[0])
    return int(x.shape[0])


def slice_inputs(x: Any, rows: slice) -> Any:
    """``x[rows]``, also for a (nested) list of inputs."""
    if isinstance(x, (list, tuple)):
        return type(x)(slice_inputs(xi, rows) for xi in x)
    return x[rows]


def is_pair(value: Any) -> bool:
    """Whether a keyword argument is a per-example pair ``(for_x1, for_x2)`` (e.g. graph
    ``pattern=(pattern1, pattern2)``), sliced with the examples of each block."""
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, torch.Tensor) or v is None or hasattr(v, "shape") for v in value)
    )


def _pair_for(value: tuple[Any, Any], rows: slice, cols: slice | None, self_pairs: bool) -> tuple[Any, Any]:
    first = None if value[0] is None else value[0][rows]
    if cols is None:  # a block of x1 with itself, called with x2=None
        second_source, second_rows = value[0], rows
    elif self_pairs:  # x2=None: both halves of the pair describe x1
        second_source, second_rows = value[0], cols
    else:
        second_source, second_rows = value[1], cols
    return first, None if second_source is None else second_source[second_rows]


def split_kwargs(kwargs: dict[str, Any], rows: slice, cols: slice | None, self_pairs: bool) -> dict[str, Any]:
    """The keyword arguments of one block: per-example pairs sliced, the rest unchanged.

    ``cols=None``: a block of ``x1`` with itself (called with ``x2=None``).
    """
    return {key: _pair_for(value, rows, cols, self_pairs) if is_pair(value) else value for key, value in kwargs.items()}


def block_arguments(x1: Any, x2: Any, kwargs: dict[str, Any], block: Block) -> tuple[Any, Any, dict[str, Any]]:
    """``(x1[rows], x2[cols] or None, kwargs of the block)``: what `block_call` passes.

    Blocks on the diagonal of an ``x2=None`` kernel get ``None`` for their second input.
    """
    xa = slice_inputs(x1, block.rows)
    if block.on_diagonal:
        return xa, None, split_kwargs(kwargs, block.rows, None, True)
    self_pairs = x2 is None
    xb = slice_inputs(x1 if self_pairs else x2, block.cols)
    return xa, xb, split_kwargs(kwargs, block.rows, block.cols, self_pairs)


def block_call(
    kernel_fn: Callable[..., Any], x1: Any, x2: Any, get: Any, block: Block, kwargs: dict[str, Any], **options: Any
) -> Any:
    """The kernel of one block: ``kernel_fn(x1[rows], x2[cols] or None, get, **kwargs, **options)``.

    The one per-block call of every executor, so a block has the same numbers however the
    blocks are run (in memory, into a store, on Dask).

    Args:
        kernel_fn: ``kernel_fn(x1, x2=None, get=None, **kwargs)``.
        x1: inputs ``(N1, ...)`` (or a list of them).
        x2: inputs ``(N2, ...)``, or ``None`` for ``x2 = x1``.
        get: passed to ``kernel_fn``.
        block: the block.
        kwargs: ``kernel_fn``'s keyword arguments; per-example pairs are sliced.
        **options: extra keyword arguments for this call only (e.g. ``mirror=``).

    Returns:
        What ``kernel_fn`` returns for the block: leading axes ``(rows, cols)``.
    """
    xa, xb, block_kwargs = block_arguments(x1, x2, kwargs, block)
    return kernel_fn(xa, xb, get, **block_kwargs, **options)
