"""Train-train kernels seen through matrix products: in memory, stored on disk, or recomputed.

The iterative solvers (conjugate gradients, Lanczos) need only ``K @ V``, a few rows of
``K`` and its diagonal. `KernelOperator` provides them for the flattened ``(n, n)`` kernel
(``n = N · prod(other non-trace axes)``, see `_common.Layout`) from three sources:

* `TensorKernel`: a kernel in memory (a torch tensor or writable numpy array, also
  ``np.memmap``);
* `StoredKernel`: anything with a 2-D (or interleaved) ``.shape`` whose ``[rows]`` and
  ``[rows, cols]`` slices return numpy arrays or torch tensors — a kernel store's arrays
  (``store["ntk"]``), zarr arrays, h5py datasets, read-only numpy arrays (``np.load(...,
  mmap_mode="r")``);
* `FunctionKernel`: blocks ``kernel_fn(x_train[rows], x_train, g)`` recomputed whenever they
  are needed, the first ones kept while they fit in the memory budget.

All of them work on blocks of examples (rows ``i:j`` of the leading axis), so at most one
block of ``(j − i) · per × n`` entries is converted to the working precision at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from ..blocks import available_memory
from ._common import to_2d

__all__ = [
    "BLOCK_BYTES",
    "FunctionKernel",
    "KernelOperator",
    "StoredKernel",
    "TensorKernel",
    "is_stored",
    "memory_budget",
    "rows_matmul",
    "slice_inputs",
    "slice_pairs",
]

#: Size of one block of kernel rows in the working precision (the unit of every pass).
BLOCK_BYTES = 64 * 2**20


def memory_budget(device: torch.device, fraction: float = 0.5) -> int:
    """Bytes the solvers may hold on ``device``: a fraction of what is free now."""
    return int(available_memory(device) * fraction)


def is_stored(k: Any) -> bool:
    """Whether ``k`` is an array-like read by slices (not a torch tensor or writable numpy
    array). A read-only numpy array (``np.load(..., mmap_mode="r")``) is read by slices too:
    torch cannot view it without copying."""
    if isinstance(k, np.ndarray):
        return not k.flags.writeable and k.ndim >= 2
    if isinstance(k, torch.Tensor):
        return False
    shape = getattr(k, "shape", None)
    return shape is not None and hasattr(k, "__getitem__") and hasattr(k, "dtype") and len(tuple(shape)) >= 2


def _torch_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    return torch.from_numpy(np.zeros(0, dtype=np.dtype(dtype))).dtype


def as_block(a: Any, device: torch.device) -> torch.Tensor:
    """A slice read from a store (numpy, torch or array-like) as a torch tensor on ``device``."""
    if isinstance(a, torch.Tensor):
        return a.to(device)
    a = np.ascontiguousarray(np.asarray(a))
    if not a.flags.writeable:  # a read-only slice (np.load(mmap_mode="r")): torch needs a copy
        a = a.copy()
    return torch.as_tensor(a, device=device)


def slice_inputs(x: Any, rows: Any) -> Any:
    """Rows of an input that may be a (nested) list of tensors (``rows``: slice or indices)."""
    if isinstance(x, (list, tuple)):
        return type(x)(slice_inputs(xi, rows) for xi in x)
    return x[rows]


def _is_pair(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and all(v is None or hasattr(v, "shape") for v in value)


def slice_pairs(kwargs: dict[str, Any], rows: Any, second: int) -> dict[str, Any]:
    """Per-example keyword arguments (pairs ``(for_x1, for_x2)``, e.g. ``pattern``) for the
    kernel of ``x1[rows]`` against all of ``x2``: ``(v[0][rows], v[second])``; ``second=0``
    when ``x2`` is ``x1`` (``x2=None``)."""
    out = {}
    for key, value in kwargs.items():
        if _is_pair(value) and value[0] is not None:
            out[key] = (value[0][rows], value[second] if value[second] is not None else value[0])
        else:
            out[key] = value
    return out


def _block_rows(n_cols: int, per: int, itemsize: int = 8, block_bytes: int | None = None) -> int:
    """Examples per block so that one block of rows holds about ``BLOCK_BYTES``."""
    budget = BLOCK_BYTES if block_bytes is None else block_bytes
    return max(1, budget // max(1, n_cols * per * itemsize))


class KernelOperator:
    """A symmetric train-train kernel, flattened to ``(n, n)``, seen through its row blocks.

    Subclasses implement `block` (rows of examples ``i:j`` of the flattened kernel, in the
    kernel's dtype) and may override the rest with something faster.

    Attributes:
        n_examples: ``N``, the leading axis of the kernel.
        per: flattened rows per example (``prod`` of the other non-trace axes; 1 usually).
        n: ``N · per``.
        dtype: dtype of the kernel entries; device: where blocks are computed.
        block_examples: examples per block.
    """

    n_examples: int
    per: int
    dtype: torch.dtype
    device: torch.device
    block_examples: int
    what: str = "the kernel"

    @property
    def n(self) -> int:
        return self.n_examples * self.per

    @property
    def nbytes(self) -> int:
        """Bytes of the whole kernel in its own dtype."""
        return self.n * self.n * _itemsize(self.dtype)

    def block(self, i: int, j: int) -> torch.Tensor:
        """Rows ``i·per : j·per`` of the flattened kernel, ``((j − i)·per, n)``."""
        raise NotImplementedError

    def starts(self) -> list[tuple[int, int]]:
        b = self.block_examples
        return [(i, min(i + b, self.n_examples)) for i in range(0, self.n_examples, b)]

    def blocks(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        for i, j in self.starts():
            yield i, j, self.block(i, j)

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        """``K @ v`` for ``v`` of shape ``(n, c)``, in ``v``'s dtype (blocks converted to it)."""
        out = v.new_empty((self.n, v.shape[1]))
        for i, j, blk in self.blocks():
            torch.matmul(blk.to(v.dtype), v, out=out[i * self.per : j * self.per])
        return out

    def diagonal(self) -> torch.Tensor:
        """``diag K``, shape ``(n,)``, in the kernel's dtype."""
        parts = []
        for i, j, blk in self.blocks():
            parts.append(torch.diagonal(blk[:, i * self.per : j * self.per]).clone())
        return torch.cat(parts)

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Flattened rows ``K[index, :]``, shape ``(len(index), n)``, in ``index`` order."""
        index = index.to(torch.long).cpu()
        examples = index // self.per
        out = torch.empty((len(index), self.n), dtype=self.dtype, device=self.device)
        for i, j in self.starts():
            inside = ((examples >= i) & (examples < j)).nonzero().flatten()
            if len(inside):
                blk = self.block(i, j)
                out[inside.to(self.device)] = blk[(index[inside] - i * self.per).to(self.device)]
        return out


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class TensorKernel(KernelOperator):
    """A kernel held in memory (a torch tensor, also a numpy array or ``np.memmap`` viewed
    without copying), interleaved ``(N, N, d, d, ...)`` or already ``(n, n)``."""

    def __init__(self, k: torch.Tensor, what: str = "the kernel", block_bytes: int | None = None) -> None:
        self.k = k
        self.what = what
        self.n_examples = int(k.shape[0])
        self.per = math.prod(k.shape[2::2]) if k.ndim > 2 else 1
        self.dtype = k.dtype
        self.device = k.device
        self.block_examples = _block_rows(self.n, self.per, block_bytes=block_bytes)
        self._flat = k if k.ndim == 2 else None

    def flat(self) -> torch.Tensor:
        """The ``(n, n)`` kernel in its own dtype (a view for 2-D kernels, else one copy)."""
        if self._flat is None:
            self._flat = to_2d(self.k)
        return self._flat

    def block(self, i: int, j: int) -> torch.Tensor:
        if self.k.ndim == 2:
            return self.k[i:j]
        return to_2d(self.k[i:j])

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        if self.k.ndim == 2 and self.k.dtype == v.dtype:
            return self.k @ v  # one GEMM, no conversion
        return super().matmul(v)

    def diagonal(self) -> torch.Tensor:
        if self.k.ndim == 2:
            return torch.diagonal(self.k).clone()
        return super().diagonal()

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        if self.k.ndim == 2:
            return self.k[index.to(self.k.device)]
        return super().rows(index)


class StoredKernel(KernelOperator):
    """A kernel read block by block from an array-like (a kernel store's array, zarr, ...).

    Args:
        array: ``.shape`` ``(N, N)`` or interleaved, ``.dtype``, and slicing ``array[i:j]`` /
            ``array[i:j, a:b]`` returning numpy arrays or torch tensors.
        device: where blocks are sent.
    """

    def __init__(self, array: Any, device: torch.device, what: str = "the stored kernel",
                 block_bytes: int | None = None) -> None:
        self.array = array
        self.what = what
        shape = tuple(int(s) for s in array.shape)
        self.ndim = len(shape)
        self.n_examples = shape[0]
        self.per = math.prod(shape[2::2]) if len(shape) > 2 else 1
        self.dtype = _torch_dtype(array.dtype)
        self.device = device
        chunks = getattr(array, "chunks", None)
        rows = _block_rows(self.n, self.per, block_bytes=block_bytes)
        if isinstance(chunks, tuple) and chunks and isinstance(chunks[0], int) and 0 < chunks[0] <= rows:
            rows = (rows // chunks[0]) * chunks[0]  # whole chunks per block: each chunk read once
        self.block_examples = rows

    def block(self, i: int, j: int) -> torch.Tensor:
        blk = as_block(self.array[i:j], self.device)
        return blk if blk.ndim == 2 else to_2d(blk)

    def diagonal(self) -> torch.Tensor:
        parts = []
        for i, j in self.starts():
            blk = as_block(self.array[i:j, i:j], self.device)
            parts.append(torch.diagonal(blk if blk.ndim == 2 else to_2d(blk)).clone())
        return torch.cat(parts)


class FunctionKernel(KernelOperator):
    """Blocks ``kernel_fn(x[i:j], x, g, **kwargs)`` recomputed on demand.

    The first blocks are kept in memory while they fit in ``budget`` bytes, so a kernel that
    almost fits is mostly read from memory and the rest recomputed each pass.

    Args:
        block_fn: ``(rows, diagonal) -> the kernel of the examples ``rows`` (a slice or an
            index tensor) against all examples, or with ``diagonal=True`` of ``rows`` with
            themselves (``kernel_fn(x[rows], None)``)``, in its interleaved shape.
        n_examples, per: sizes (see `KernelOperator`).
        dtype, device: of the kernel's entries.
        budget: bytes of blocks to keep.
    """

    def __init__(
        self,
        block_fn: Callable[[Any, bool], torch.Tensor],
        n_examples: int,
        per: int,
        dtype: torch.dtype,
        device: torch.device,
        budget: int,
        what: str = "the kernel",
        block_bytes: int | None = None,
    ) -> None:
        self.block_fn = block_fn
        self.what = what
        self.n_examples = n_examples
        self.per = per
        self.dtype = dtype
        self.device = device
        self.block_examples = _block_rows(self.n, per, _itemsize(dtype), block_bytes)
        self.budget = budget
        self.cache: dict[tuple[int, int], torch.Tensor] = {}
        self.cached_bytes = 0
        self.computed = 0  # blocks computed (not read from the cache): tests count them

    def block(self, i: int, j: int) -> torch.Tensor:
        hit = self.cache.get((i, j))
        if hit is not None:
            return hit
        k = self.block_fn(slice(i, j), False)
        self.computed += 1
        blk = k if k.ndim == 2 else to_2d(k)
        size = blk.numel() * blk.element_size()
        if self.cached_bytes + size <= self.budget:
            self.cache[(i, j)] = blk
            self.cached_bytes += size
        return blk

    def diagonal(self) -> torch.Tensor:
        parts = []
        b = max(1, min(self.block_examples, 256))
        for i in range(0, self.n_examples, b):
            j = min(i + b, self.n_examples)
            k = self.block_fn(slice(i, j), True)
            parts.append(torch.diagonal(k if k.ndim == 2 else to_2d(k)).clone())
        return torch.cat(parts)

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Rows of the examples in ``index`` computed directly (one call per 256 examples)."""
        index = index.to(torch.long).cpu()
        examples, inverse = torch.unique(index // self.per, return_inverse=True)
        out = []
        for s in range(0, len(examples), 256):
            ex = examples[s : s + 256]
            k = self.block_fn(ex, False)
            out.append(k if k.ndim == 2 else to_2d(k))
        rows = torch.cat(out)  # (len(examples) * per, n)
        flat = inverse * self.per + index % self.per
        return rows[flat.to(rows.device)]


def rows_matmul(
    k: Any, v: torch.Tensor, block_bytes: int | None = None
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``K_td @ v`` for a test-train kernel in memory or stored, one block of test rows at a
    time (each converted to ``v``'s dtype); also returns the kernel's test shape (its even
    axes). ``v`` has shape ``(n, c)`` with ``n`` the flattened train size."""
    shape = tuple(int(s) for s in k.shape)
    rows_shape = shape[0::2]
    per = math.prod(shape[2::2]) if len(shape) > 2 else 1
    n_cols = math.prod(shape[1::2])
    b = _block_rows(n_cols, per, block_bytes=block_bytes)
    out = v.new_empty((shape[0] * per, v.shape[1]))
    for i in range(0, shape[0], b):
        j = min(i + b, shape[0])
        blk = k[i:j] if isinstance(k, torch.Tensor) else as_block(k[i:j], v.device)
        blk = blk.to(device=v.device, dtype=v.dtype)
        torch.matmul(blk if blk.ndim == 2 else to_2d(blk), v, out=out[i * per : j * per])
    return out, rows_shape
