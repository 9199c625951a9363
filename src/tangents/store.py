r"""Kernels larger than memory: blocked, crash-safe kernel stores on disk (zarr).

`compute_kernel` computes ``kernel_fn(x1, x2, get)`` block by block into a zarr group — one
array per kernel named as in ``get`` (``nngp``, ``ntk``), shaped as ``kernel_fn`` returns
it, ``(N1, N2, *S)``, one chunk per block of ``block_size × block_size`` examples — and
returns a `KernelStore` to read it::

    store = tangents.store.compute_kernel(kernel_fn, x_train, None, ("nngp", "ntk"),
                                          path="train.zarr", block_size=4096)
    store["ntk"][:1000]            # numpy rows (1000, N)
    store["ntk"].to_torch(index=slice(0, 1000))   # the same rows as a tensor
    store["ntk"].to_dask()         # the whole kernel, lazily
    store["ntk"].to_torch()        # in memory, when it fits

* **What it is a kernel of.** The store records a fingerprint: the architecture (every layer
  and argument, `Layer.spec`), ``kernel_fn``'s keyword arguments, the inputs (SHA-256 of
  their bytes), the dtype, ``get``, the block size and the tangents version. Calling
  `compute_kernel` again on the same path with anything different is refused
  (`StoreMismatchError`, saying what differs); a kernel mixed from two computations is
  impossible.
* **Resume, and nothing lost.** Calling it again with the same arguments computes only the
  blocks not done. A block is done when its chunks are on disk, checked, and its manifest
  entry (sizes and CRC-32C checksums) has been written after them; a process killed at any
  moment (SIGKILL, Ctrl-C, a power cut with ``durable=True``) loses at most the blocks in
  flight. Blocks damaged later (truncated, garbled chunks) fail their checksum on resume and
  are recomputed, and fail zarr's own checksum when read.
* **Symmetry.** For ``x2=None`` only blocks on and above the diagonal are computed and
  stored; reads return the symmetric matrix.
* **Clusters.** With ``client=`` (a ``dask.distributed.Client``) each block is a task that
  writes itself into the store (`tangents.distributed`), reading the inputs once per
  worker process from a file in the store (so a run survives every worker being
  replaced); without, blocks run in this
  process, as many at a time as torch has threads, each with one intra-op thread (as on a
  Dask worker), while the blocks computed are written. Either way the store is
  bit-identical.
* **Memory.** Peak memory is a few blocks, whatever N: the driver never holds the kernel.

Reads (`KernelArray`) refuse a store with missing blocks (`IncompleteStoreError`, naming them
and how to resume).
"""

from __future__ import annotations

from ._store._compute import StoreMismatchError as StoreMismatchError
from ._store._compute import compute_kernel as compute_kernel
from ._store._format import StoreBusyError as StoreBusyError
from ._store._read import IncompleteStoreError as IncompleteStoreError
from ._store._read import KernelArray as KernelArray
from ._store._read import KernelStore as KernelStore

__all__ = [
    "IncompleteStoreError",
    "KernelArray",
    "KernelStore",
    "StoreBusyError",
    "StoreMismatchError",
    "compute_kernel",
]
