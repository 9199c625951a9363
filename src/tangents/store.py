r"""Kernels larger than memory: blocked, crash-safe kernel stores on disk (zarr).

`compute_kernel` computes ``kernel_fn(x1, x2, get)`` block by block into a zarr group — one
array per kernel named as in ``get`` (``nngp``, ``ntk``), shaped as ``kernel_fn`` returns
it, ``(N1, N2, *S)``, one chunk per block of ``block_size × block_size`` examples — and
returns a `KernelStore` to read it::

    store = tangents.store.compute_kernel(kernel_fn, x_train, None, ("nngp", "ntk"),
                                          path="train.zarr", block_size=4096)
    store["ntk"][:1000]            # numpy rows (1000, N)
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
  writes itself into the store (`tangents.distributed`); without, blocks run in this
  process, as many at a time as torch has threads, each with one intra-op thread (as on a
  Dask worker), while the blocks computed are written. Either way the store is
  bit-identical.
* **Memory.** Peak memory is a few blocks, whatever N: the driver never holds the kernel.

Reads (`KernelArray`) refuse a store with missing blocks (`IncompleteStoreError`, naming them
and how to resume).
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from ._kernel import Kernel, check_get
from ._store._fingerprint import differences, digest, fingerprint, layer_of
from ._store._format import (
    MANIFEST,
    BlockWriter,
    StoreBusyError,
    StoreMeta,
    check_block,
    create_store,
    locked,
    manifest_file,
    now_iso,
    read_manifest,
    read_meta,
    remove_leftovers,
)
from .blocks import (
    Block,
    BlockProgress,
    available_memory,
    block_call,
    first_tensor,
    is_analytic,
    leading_size,
    one_intra_op_thread,
    run_in_process,
)

if TYPE_CHECKING:
    import dask.array

__all__ = [
    "IncompleteStoreError",
    "KernelArray",
    "KernelStore",
    "StoreBusyError",
    "StoreMismatchError",
    "compute_kernel",
]

#: Kernels a store can hold: those with leading axes (N1, N2).
STORABLE = ("nngp", "ntk")
#: Default block: at most this many bytes of results (all kernels) ...
_BLOCK_BYTES = 128 * 2**20
#: ... and about this many seconds of work, so progress is saved often.
_BLOCK_SECONDS = 120.0
#: A disk's write speed, for planning blocks (bytes per second).
_DISK_BYTES_PER_SECOND = 250e6


class StoreMismatchError(ValueError):
    """The store at the path is a kernel of something else (other inputs, architecture, ...)."""


class IncompleteStoreError(ValueError):
    """A read of a store whose blocks are not all done (or some are damaged)."""


class _Payload(NamedTuple):
    """What every block needs: the inputs and ``kernel_fn``'s keyword arguments."""

    x1: Any
    x2: Any
    kwargs: dict[str, Any]


class _BlockJob:
    """One block: computed by the one per-block call, then written into the store.

    Picklable: it is the Dask task (``job(block, payload)``).
    """

    def __init__(self, kernel_fn: Any, names: tuple[str, ...], meta: StoreMeta, writer: BlockWriter, device: str) -> None:
        self.kernel_fn, self.names, self.meta, self.writer, self.device = kernel_fn, names, meta, writer, device

    def compute(self, block: Block, payload: _Payload) -> tuple[dict[str, np.ndarray], float]:
        start = time.perf_counter()
        out = block_call(self.kernel_fn, payload.x1, payload.x2, self.names, block, payload.kwargs)
        arrays = _results(out, self.names, block, self.meta)
        return arrays, time.perf_counter() - start

    def write(self, block: Block, computed: tuple[dict[str, np.ndarray], float]) -> dict[str, Any]:
        return self.writer(block, computed[0], computed[1])

    def __call__(self, block: Block, payload: _Payload) -> dict[str, Any]:
        return self.write(block, self.compute(block, _on_device(payload, self.device)))


_DEVICE_CACHE: dict[tuple[int, str], _Payload] = {}


def _on_device(payload: _Payload, device: str) -> _Payload:
    """The payload on ``device`` (moved once per worker process and device)."""
    if first_tensor(payload.x1).device.type == device:
        return payload
    key = (id(payload), device)
    if key not in _DEVICE_CACHE:
        _DEVICE_CACHE.clear()
        _DEVICE_CACHE[key] = _Payload(*_tree_to((payload.x1, payload.x2, payload.kwargs), device))
    return _DEVICE_CACHE[key]


def _tree_to(x: Any, device: str) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (list, tuple)):
        return type(x)(_tree_to(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _tree_to(v, device) for k, v in x.items()}
    return x


def _results(out: Any, names: tuple[str, ...], block: Block, meta: StoreMeta) -> dict[str, np.ndarray]:
    """The block's kernels as numpy arrays, checked against the store's shape and dtype."""
    if isinstance(out, Kernel):
        values = {name: getattr(out, name) for name in names}
    elif isinstance(out, tuple) and hasattr(out, "_fields"):
        values = {name: getattr(out, name, None) for name in names}
    elif isinstance(out, dict):
        values = {name: out.get(name) for name in names}
    elif isinstance(out, torch.Tensor) and len(names) == 1:
        values = {names[0]: out}
    elif isinstance(out, (tuple, list)) and len(out) == len(names):
        values = dict(zip(names, out))
    else:
        raise TypeError(
            f"compute_kernel: kernel_fn returned a {type(out).__name__} for get={names}; expected a named tuple "
            f"with fields {names} (as stax and empirical kernel functions return)."
        )
    expected = (*block.shape, *meta.shape[2:])
    arrays = {}
    for name, t in values.items():
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != expected:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(
                f"compute_kernel: kernel_fn returned {name} of shape {got} for {block!r}; the store expects "
                f"{expected} (leading axes rows x cols)."
            )
        array = t.detach().to("cpu").contiguous().numpy()
        if array.dtype != np.dtype(meta.dtype):
            raise ValueError(
                f"compute_kernel: kernel_fn returned {name} in {array.dtype} for {block!r}; the store holds {meta.dtype}."
            )
        arrays[name] = array
    return arrays


# ---------------------------------------------------------------------- compute_kernel


def compute_kernel(
    kernel_fn: Any,
    x1: Any,
    x2: Any = None,
    get: str | Sequence[str] = ("nngp", "ntk"),
    *,
    path: str | os.PathLike[str],
    block_size: int | None = None,
    client: Any = None,
    progress: bool | None = None,
    overwrite: bool = False,
    verify: bool = True,
    durable: bool = True,
    architecture: Any = None,
    timeout: float | None = None,
    **kernel_fn_kwargs: Any,
) -> KernelStore:
    r"""Computes ``kernel_fn(x1, x2, get)`` block by block into a store at ``path`` (or resumes it).

    Args:
        kernel_fn: a `tangents.stax` layer or its ``kernel_fn`` (also through
            ``functools.partial`` or `tangents.batch`); any other kernel function
            ``kernel_fn(x1, x2, get, **kwargs)`` (e.g. an empirical one) with ``architecture=``.
        x1: inputs ``(N1, ...)``: a tensor or numpy array (or a list of them).
        x2: inputs ``(N2, ...)``, or ``None`` for ``x2 = x1`` (then only blocks on and above the
            diagonal are computed, for stax kernels).
        get: the kernels to store, ``"nngp"`` and/or ``"ntk"``: arrays of shape
            ``(N1, N2, *S)`` as ``kernel_fn`` returns them.
        path: the store, a directory (created if needed) on a filesystem every worker sees.
        block_size: examples per block side (need not divide N1 or N2). ``None``: the store's,
            when resuming; for a new store, blocks of at most 128 MiB of results and about two
            minutes of work (timed on a few examples), at least 4 per side for N >= 1024 or
            when writing costs more than a twentieth of computing, at least four blocks per
            Dask worker.
        client: a ``dask.distributed.Client``: blocks run as tasks on its cluster, each
            writing itself into the store. ``None``: in this process.
        progress: a progress bar (blocks done/total, pairs per second, ETA, blocks skipped on
            resume): ``True`` always, ``False`` never, ``None`` after two seconds.
        overwrite: replace an existing store at ``path`` (a tangents kernel store only)
            instead of resuming it.
        verify: on resume, read every block done and check its checksum (``False``: check
            only that its chunk files have their sizes).
        durable: flush every block to disk (``fsync``) before it counts as done.
        architecture: JSON data describing ``kernel_fn`` for the fingerprint, for kernel
            functions that are not stax layers (e.g. a model name and a hash of its
            weights). Required for them; for stax layers ``Layer.spec()`` is used.
        timeout: with ``client``, seconds to wait for the blocks before giving up
            (`TimeoutError`; the blocks done stay done).
        **kernel_fn_kwargs: passed to ``kernel_fn`` (e.g. ``diagonal_spatial``, ``pattern=``),
            and fingerprinted.

    Returns:
        The complete `KernelStore`; ``store.last_run`` counts the blocks computed, skipped
        and found damaged by this call.

    Raises:
        StoreMismatchError: ``path`` holds a store of another computation (what differs is
            listed); pass ``overwrite=True`` or another path.
        StoreBusyError: another process is computing into ``path``.
        MemoryError: a block cannot fit in memory (a smaller ``block_size`` can).
        OSError: the disk cannot hold the store.
        KeyboardInterrupt: interrupted; the store keeps every block done, call again to resume.

    Example:
        >>> net = stax.serial(stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(), stax.Dense(1))
        >>> store = compute_kernel(net, x, path="k.zarr", block_size=1000)
        >>> store["ntk"][:10, :10].shape
        (10, 10)
    """
    started = time.perf_counter()
    names = _check_names(get)
    path = _check_path(path)
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"compute_kernel: block_size must be a positive integer (examples per block side) or None, got {block_size!r}.")
    for flag, value in (("overwrite", overwrite), ("verify", verify), ("durable", durable)):
        if not isinstance(value, bool):
            raise TypeError(f"compute_kernel: {flag} must be True or False, got {value!r}.")
    layer, bound = layer_of(kernel_fn)
    if architecture is None and layer is None:
        raise ValueError(
            "compute_kernel: kernel_fn is not a tangents.stax layer's kernel_fn, so the store cannot fingerprint "
            "what it computes; pass architecture=<JSON data that changes whenever kernel_fn does> (e.g. "
            "{'model': 'resnet18', 'weights_sha256': ...}), or pass the stax layer."
        )
    if isinstance(kernel_fn, torch.nn.Module) or not (layer is kernel_fn or callable(kernel_fn)):
        raise TypeError(f"compute_kernel: kernel_fn must be a kernel function or a stax layer, got {type(kernel_fn).__name__}.")
    call = kernel_fn.kernel_fn if layer is kernel_fn else kernel_fn
    analytic = is_analytic(call) or layer is kernel_fn
    x1, x2 = _check_inputs(x1, x2, finite="mask_constant" not in kernel_fn_kwargs)
    payload = _Payload(x1, x2, dict(kernel_fn_kwargs))
    n1 = leading_size(x1)
    n2 = n1 if x2 is None else leading_size(x2)
    symmetric = x2 is None and analytic
    device = first_tensor(x1).device

    path.mkdir(parents=True, exist_ok=True)
    with locked(path):
        meta = _existing(path, overwrite)
        if meta is not None and analytic:  # resuming: a stax kernel has its inputs' dtype
            shape, dtype, diagonal_spatial = meta.shape[2:], first_tensor(x1).dtype, meta.diagonal_spatial
        else:
            with one_intra_op_thread():
                shape, dtype, diagonal_spatial = _probe(call, payload, names, analytic)
        if block_size is None:
            if meta is not None:
                block_size = meta.block_size
            else:
                with one_intra_op_thread():  # as blocks are computed
                    block_size = _default_block_size(call, payload, names, shape, dtype, n1, n2, client)
        fp = fingerprint(layer if architecture is None else architecture, {**bound, **kernel_fn_kwargs},
                         x1, x2, dtype, names, block_size)
        if meta is None:
            meta = StoreMeta(fp, digest(fp), names, (n1, n2, *shape), str(dtype).replace("torch.", ""),
                             block_size, x2 is None, symmetric, diagonal_spatial, now_iso())
            _create(path, meta)
        elif meta.digest != digest(fp):
            lines = differences(meta.fingerprint, fp) or ["(the fingerprints differ)"]
            raise StoreMismatchError(
                f"compute_kernel: the store {path} is a kernel of something else:\n  "
                + "\n  ".join(lines)
                + f"\nResume it with the arguments it was made with, use another path, or pass overwrite=True "
                f"(tangents kernel --overwrite) to replace it."
            )
        remove_leftovers(path, meta)
        plan = meta.plan()
        manifest = read_manifest(path)
        missing, damaged = [], 0
        for block in plan:
            entry = manifest.get(block.index)
            if check_block(path, meta, block, entry, full=verify) is not None:
                missing.append(block)
                if entry is not None:  # damaged: forget it before it is recomputed
                    damaged += 1
                    with contextlib.suppress(OSError):
                        manifest_file(path, block.index).unlink()
        workers = torch.get_num_threads() if device.type == "cpu" else 1
        if client is None:
            _check_memory(meta, device, 2 * workers + 2)
        _check_disk(path, meta, len(missing))
        job = _BlockJob(call, names, meta, BlockWriter(path, meta, durable), device.type)
        done = len(plan) - len(missing)
        bar = BlockProgress(len(plan), plan.pairs, done, plan.pairs - sum(b.pairs for b in missing), show=progress)
        run_started = time.perf_counter()
        try:
            def count(block: Block, entry: Any) -> None:
                bar.update(block.pairs)

            if client is None:
                run_in_process(missing, lambda block: job.compute(block, payload), job.write, count, workers=workers)
            else:
                from .distributed import run_on_dask

                cpu = _Payload(*_tree_to((x1, x2, payload.kwargs), "cpu"))
                run_on_dask(client, missing, job, cpu, count, timeout=timeout)
        finally:
            bar.close()
    store = KernelStore.open(path)
    store.last_run = {
        "computed": bar.computed_blocks,
        "skipped": done,
        "damaged": damaged,
        "blocks": len(plan),
        "seconds": time.perf_counter() - started,
        "pairs_per_second": bar.computed_pairs / max(time.perf_counter() - run_started, 1e-9),
    }
    return store


def _check_names(get: Any) -> tuple[str, ...]:
    names = check_get(get)
    if names is None or any(n not in STORABLE for n in names) or len(set(names)) != len(names):
        raise ValueError(
            f"compute_kernel: get must name kernels of pairs, 'nngp' and/or 'ntk' (each once), got {get!r}; "
            f"cov1/cov2 are per-example and small: compute them with kernel_fn directly."
        )
    return names


def _check_path(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"compute_kernel: path must be a directory path (str or pathlib.Path), got {type(path).__name__}.")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"compute_kernel: path {path} is a file; a store is a directory (e.g. kernel.zarr).")
    return path


def _check_inputs(x1: Any, x2: Any, finite: bool) -> tuple[Any, Any]:
    def convert(x: Any, name: str) -> Any:
        if isinstance(x, (list, tuple)):
            return type(x)(convert(xi, f"{name}[{i}]") for i, xi in enumerate(x))
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"compute_kernel: {name} must be a torch.Tensor or a numpy array, got {type(x).__name__}.")
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"compute_kernel: {name} must have a batch axis and a feature axis, got shape {tuple(x.shape)}.")
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"compute_kernel: {name} must be float32 or float64, got {x.dtype}; convert it, e.g. {name}.float().")
        if finite and not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"compute_kernel: {name} contains {bad} NaN or infinite value(s); kernels of such inputs are undefined.")
        return x.detach()

    return convert(x1, "x1"), None if x2 is None else convert(x2, "x2")


def _existing(path: Path, overwrite: bool) -> StoreMeta | None:
    """The store at ``path`` (``None`` for an empty directory or a store whose creation was
    cut short); with ``overwrite``, removes it first."""
    creating = path / ".creating"
    if creating.exists():  # a creation cut short: nothing computed yet
        _clear(path)
    try:
        meta = read_meta(path)
    except ValueError:
        if overwrite and (path / MANIFEST).is_dir():
            _clear(path)
            return None
        raise
    if meta is not None and overwrite:
        _clear(path)
        return None
    if meta is None and any(p.name != ".lock" for p in path.iterdir()):
        raise ValueError(
            f"compute_kernel: {path} is not empty and is not a tangents kernel store; choose a new or empty "
            f"directory (nothing there is overwritten)."
        )
    return meta


def _clear(path: Path) -> None:
    """Empties a store's directory (keeps the lock file we hold)."""
    for entry in path.iterdir():
        if entry.name == ".lock":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _create(path: Path, meta: StoreMeta) -> None:
    creating = path / ".creating"
    creating.touch()
    create_store(path, meta)
    creating.unlink()


def _probe(kernel_fn: Any, payload: _Payload, names: tuple[str, ...], analytic: bool) -> tuple[tuple[int, ...], torch.dtype, bool | None]:
    """``(*S, dtype, diagonal_spatial)`` of the kernel, from its first pair of examples."""
    block = Block((0, 0), slice(0, 1), slice(0, 1), payload.x2 is None)
    out = block_call(kernel_fn, payload.x1, payload.x2, None if analytic else names, block, payload.kwargs)
    diagonal_spatial = None
    if isinstance(out, Kernel):
        diagonal_spatial = out.diagonal_spatial if out.nngp.ndim > 2 else None
        out = {name: getattr(out, name) for name in names}
    elif isinstance(out, tuple) and hasattr(out, "_fields"):
        out = {name: getattr(out, name, None) for name in names}
    elif isinstance(out, torch.Tensor) and len(names) == 1:
        out = {names[0]: out}
    else:
        raise TypeError(
            f"compute_kernel: kernel_fn returned a {type(out).__name__} for get={names}; expected a Kernel or a "
            f"named tuple with fields {names}."
        )
    first = out[names[0]]
    for name in names:
        t = out[name]
        if not isinstance(t, torch.Tensor) or t.ndim < 2 or tuple(t.shape[:2]) != (1, 1):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else t
            raise ValueError(
                f"compute_kernel: kernel_fn's {name} for one pair of examples has shape {got}; a store needs "
                f"kernels with leading axes (N1, N2) (was {name} computed? e.g. the NTK of a network "
                f"without trainable layers is None)."
            )
    return tuple(first.shape[2:]), first.dtype, diagonal_spatial


def _default_block_size(
    kernel_fn: Any, payload: _Payload, names: tuple[str, ...], shape: tuple[int, ...], dtype: torch.dtype,
    n1: int, n2: int, client: Any,
) -> int:
    """Blocks of at most `_BLOCK_BYTES` of results and about `_BLOCK_SECONDS` of work (timed
    on a few examples), at least 4 per side for large kernels or when writing is not
    negligible next to computing, and at least four per Dask worker; multiples of 256 (cache
    tiles) from 512 on."""
    per_pair = len(names) * math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    by_memory = int(math.sqrt(min(_BLOCK_BYTES, available_memory(first_tensor(payload.x1).device) / 16) / per_pair))
    seconds, k = 0.0, 2
    while True:  # a few examples, more until a call takes a measurable time
        k1, k2 = min(k, n1), min(k, n2)
        block = Block((0, 0), slice(0, k1), slice(0, k2), False)  # a block off the diagonal
        block_call(kernel_fn, payload.x1, payload.x2, names, block, payload.kwargs)  # first calls cost more
        start = time.perf_counter()
        block_call(kernel_fn, payload.x1, payload.x2, names, block, payload.kwargs)
        elapsed = time.perf_counter() - start
        seconds = elapsed / (k1 * k2)
        if elapsed > 0.25 or k >= 256 or (k1 == n1 and k2 == n2):
            break
        k *= 4
    by_time = int(math.sqrt(_BLOCK_SECONDS / max(seconds, 1e-12)))
    size = max(1, min(by_memory, by_time, max(n1, n2)))
    if max(n1, n2) >= 1024 or per_pair / _DISK_BYTES_PER_SECOND > 0.05 * seconds:
        # Large kernels, or writing costs more than a twentieth of computing (fully-connected
        # kernels): at least 4 blocks per side, so that blocks are computed in parallel while
        # others are written, and a crash loses little.
        size = min(size, math.ceil(max(n1, n2) / 4))
    if client is not None:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        grid = math.ceil(math.sqrt(8 * workers)) if payload.x2 is None else math.ceil(math.sqrt(4 * workers))
        size = max(1, min(size, math.ceil(max(n1, n2) / grid)))
    return size - size % 256 if size >= 512 else size


def _check_memory(meta: StoreMeta, device: torch.device, blocks: int) -> None:
    """Refuses blocks whose results (``blocks`` alive at once, twice that with temporaries)
    cannot fit in the free memory."""
    per_pair = len(meta.names) * math.prod(meta.shape[2:]) * np.dtype(meta.dtype).itemsize
    needed = 2 * blocks * meta.block_size**2 * per_pair
    free = available_memory(device)
    if needed > free:
        fits = int(math.sqrt(free / (2 * blocks * per_pair)))
        raise MemoryError(
            f"compute_kernel: blocks of {meta.block_size} x {meta.block_size} examples need about "
            f"{needed / 2**30:.1f} GB in flight ({blocks} blocks at once) but {free / 2**30:.1f} GB are free on {device}; "
            f"use block_size <= {max(1, fits)} (a new store, or overwrite=True)."
        )


def _check_disk(path: Path, meta: StoreMeta, blocks: int) -> None:
    needed = blocks * len(meta.names) * (math.prod(meta.chunk_shape) * np.dtype(meta.dtype).itemsize + 4)
    free = shutil.disk_usage(path).free
    if needed > free:
        raise OSError(
            errno.ENOSPC,
            f"compute_kernel: the {blocks} blocks left need {needed / 2**30:.1f} GB on disk but {free / 2**30:.1f} GB "
            f"are free at {path}; free some space or choose a path on a larger disk.",
        )


# ---------------------------------------------------------------------- reading


class KernelStore:
    """A kernel store on disk: what it is a kernel of, which blocks are done, and its kernels.

    Open one with `KernelStore.open` (or take the one `compute_kernel` returns).

    Attributes:
        path: the store's directory.
        get: the kernels it holds, e.g. ``("nngp", "ntk")``; ``store[name]`` reads one.
        shape: ``(N1, N2, *S)``, the shape of each kernel.
        dtype: their numpy dtype.
        block_size: examples per block side.
        symmetric: ``x2=None``: only blocks on and above the diagonal are stored; reads
            return the symmetric kernel.
        last_run: what the `compute_kernel` call that returned it did (``computed``,
            ``skipped``, ``damaged`` blocks, ``seconds``, ``pairs_per_second``); else ``None``.

    Example:
        >>> store = KernelStore.open("train.zarr")
        >>> store.complete, store.shape
        (True, (60000, 60000))
        >>> k = store["ntk"][:1000, :1000]    # numpy (1000, 1000)
    """

    def __init__(self, path: Path, meta: StoreMeta) -> None:
        self.path, self._meta = Path(path), meta
        self._complete = False
        self.last_run: dict[str, Any] | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> KernelStore:
        """Opens the store at ``path``.

        Raises:
            ValueError: ``path`` is not a tangents kernel store.
        """
        path = Path(path)
        meta = read_meta(path) if path.is_dir() else None
        if meta is None:
            raise ValueError(
                f"KernelStore.open: {path} is not a tangents kernel store (no zarr group there); create one with "
                f"tangents.store.compute_kernel or `tangents kernel`."
            )
        return cls(path, meta)

    @property
    def get(self) -> tuple[str, ...]:
        """The kernels the store holds, e.g. ``("nngp", "ntk")``."""
        return self._meta.names

    @property
    def shape(self) -> tuple[int, ...]:
        """``(N1, N2, *S)``, the shape of each kernel."""
        return self._meta.shape

    @property
    def dtype(self) -> np.dtype:
        """The kernels' numpy dtype."""
        return np.dtype(self._meta.dtype)

    @property
    def block_size(self) -> int:
        """Examples per block side."""
        return self._meta.block_size

    @property
    def symmetric(self) -> bool:
        """``x2=None``: only blocks on and above the diagonal are stored (reads mirror them)."""
        return self._meta.symmetric

    @property
    def digest(self) -> str:
        """SHA-256 of the fingerprint (also in every block's manifest entry)."""
        return self._meta.digest

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What the store is a kernel of: ``tangents`` (version), ``architecture``,
        ``kernel_fn_kwargs``, ``inputs`` (``x1``/``x2``: shape, dtype, sha256), ``dtype``,
        ``get``, ``block_size``."""
        import copy

        return copy.deepcopy(self._meta.fingerprint)

    @property
    def plan(self) -> Any:
        """The store's `tangents.blocks.BlockPlan`."""
        return self._meta.plan()

    def missing_blocks(self) -> list[Block]:
        """The blocks not done yet (each a `tangents.blocks.Block`: ``index``, ``rows``,
        ``cols``), checked by their manifest entries and the sizes of their chunk files."""
        manifest = read_manifest(self.path)
        return [b for b in self.plan if check_block(self.path, self._meta, b, manifest.get(b.index), full=False) is not None]

    @property
    def complete(self) -> bool:
        """Whether every block is done."""
        if not self._complete:
            self._complete = not self.missing_blocks()
        return self._complete

    def verify(self) -> dict[Block, str]:
        """Reads every block done and checks its checksums; returns the damaged ones (with
        why). A call of `compute_kernel` with the same arguments recomputes them."""
        manifest = read_manifest(self.path)
        out = {}
        for block in self.plan:
            entry = manifest.get(block.index)
            if entry is not None:
                reason = check_block(self.path, self._meta, block, entry, full=True)
                if reason is not None:
                    out[block] = reason
        return out

    def require_complete(self) -> None:
        """Raises `IncompleteStoreError` unless every block is done."""
        if self._complete:
            return
        missing = self.missing_blocks()
        if not missing:
            self._complete = True
            return
        shown = ", ".join(f"({b.index[0]}, {b.index[1]}) rows {b.rows.start}:{b.rows.stop} x cols {b.cols.start}:{b.cols.stop}" for b in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise IncompleteStoreError(
            f"KernelStore: {self.path} is incomplete: {len(missing)} of {len(self.plan)} blocks are missing "
            f"(blocks {shown}{more}). Run compute_kernel with the same arguments (or the same `tangents kernel` "
            f"command) to compute them; `tangents kernel --status {self.path}` says what it is a kernel of."
        )

    def __getitem__(self, name: str) -> KernelArray:
        if name not in self._meta.names:
            close = difflib.get_close_matches(str(name), list(self._meta.names), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise KeyError(f"KernelStore: no kernel {name!r} in {self.path}{hint}; it holds {', '.join(self._meta.names)}.")
        return KernelArray(self, name)

    def __contains__(self, name: object) -> bool:
        return name in self._meta.names

    def __iter__(self) -> Iterator[str]:
        return iter(self._meta.names)

    def __repr__(self) -> str:
        return (
            f"KernelStore({str(self.path)!r}, get={self.get}, shape={self.shape}, dtype={self.dtype}, "
            f"block_size={self.block_size}, complete={self.complete})"
        )

    def describe(self) -> str:
        """A text report: what the store is a kernel of and which blocks are done."""
        fp = self._meta.fingerprint
        plan = self.plan
        missing = self.missing_blocks()
        done_pairs = plan.pairs - sum(b.pairs for b in missing)
        size = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        inputs = fp["inputs"]

        def input_text(d: Any) -> str:
            if d is None:
                return "None (x2 = x1: symmetric, blocks on and above the diagonal)"
            if isinstance(d, list):
                return "; ".join(input_text(x) for x in d)
            return f"shape {tuple(d['shape'])} {d['dtype']}, sha256 {d['sha256'][:16]}"

        lines = [
            f"store      {self.path}",
            f"status     {'complete' if not missing else 'INCOMPLETE'}: {len(plan) - len(missing)}/{len(plan)} blocks "
            f"done ({done_pairs / max(plan.pairs, 1):.1%} of the pairs), {size / 2**20:.1f} MB on disk",
            f"kernels    {', '.join(self.get)}: shape {self.shape}, {self.dtype}",
            f"blocks     {self.block_size} x {self.block_size} examples, grid {plan.grid[0]} x {plan.grid[1]}"
            + (" (upper triangle)" if self.symmetric else ""),
            f"x1         {input_text(inputs['x1'])}",
            f"x2         {input_text(inputs['x2'])}",
            f"network    {_architecture_text(fp['architecture'])}",
        ]
        if fp["kernel_fn_kwargs"]:
            lines.append(f"kwargs     {fp['kernel_fn_kwargs']}")
        lines.append(f"tangents   {fp['tangents']} (fingerprint {self.digest[:16]}, created {self._meta.created})")
        if missing:
            shown = ", ".join(f"({b.index[0]}, {b.index[1]})" for b in missing[:8])
            lines.append(f"missing    {shown}{' ...' if len(missing) > 8 else ''}: rerun the same command to resume")
        return "\n".join(lines)


def _architecture_text(spec: Any, limit: int = 400) -> str:
    """A compact one-line description of an architecture spec."""

    def text(s: Any) -> str:
        if not isinstance(s, dict) or "type" not in s:
            return str(s)
        kind = s["type"]
        if kind in ("serial", "parallel"):
            return f"{kind}(" + ", ".join(text(c) for c in s.get("layers", [])) + ")"
        if kind == "repeat":
            return f"repeat({text(s.get('layer'))}, {s.get('n')})"
        args = ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("type", "batch_axis", "channel_axis"))
        return f"{kind}({args})"

    out = text(spec)
    return out if len(out) <= limit else out[: limit - 3] + "..."


class KernelArray:
    """One kernel of a store, read-only: ``store["ntk"]``.

    Index it like a numpy array of shape ``(N1, N2, *S)`` — ints and slices on the first
    two axes, anything numpy takes on the others — to get numpy arrays; only the blocks
    needed are read. For ``x2=None`` stores the lower triangle is read from the mirrored
    blocks: reads return the symmetric kernel.

    Attributes:
        name: ``"nngp"`` or ``"ntk"``.
        shape: ``(N1, N2, *S)``.
        dtype: numpy dtype.

    Example:
        >>> ntk = store["ntk"]
        >>> rows = ntk[1000:2000]          # (1000, N2) numpy
        >>> k = ntk.to_torch()             # the whole kernel, if it fits in memory
        >>> lazy = ntk.to_dask()           # a dask.array, chunked as the blocks
    """

    def __init__(self, store: KernelStore, name: str) -> None:
        self._store, self.name = store, name
        self._zarr: Any = None

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (_open_array, (str(self._store.path), self.name))

    @property
    def meta(self) -> StoreMeta:
        return self._store._meta

    @property
    def shape(self) -> tuple[int, ...]:
        """``(N1, N2, *S)``."""
        return self._store.shape

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype."""
        return self._store.dtype

    @property
    def ndim(self) -> int:
        return len(self._store.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole kernel (as the symmetric matrix, in memory)."""
        return math.prod(self._store.shape) * self._store.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"KernelArray({self.name!r}, shape={self.shape}, dtype={self.dtype}, store={str(self._store.path)!r})"

    def _array(self) -> Any:
        if self._zarr is None:
            import zarr

            self._zarr = zarr.open_array(str(self._store.path / self.name), mode="r")
        return self._zarr

    def __getitem__(self, key: Any) -> np.ndarray:
        self._store.require_complete()
        key = _expand_key(key, self.ndim)
        rows, squeeze_rows = _axis_index(key[0], self.shape[0], "rows")
        cols, squeeze_cols = _axis_index(key[1], self.shape[1], "columns")
        r = range(*rows.indices(self.shape[0]))
        c = range(*cols.indices(self.shape[1]))
        if len(r) == 0 or len(c) == 0:
            data = np.empty((len(r), len(c), *self.shape[2:]), dtype=self.dtype)
        else:
            lo_r, hi_r = min(r), max(r) + 1
            lo_c, hi_c = min(c), max(c) + 1
            data = self._read(slice(lo_r, hi_r), slice(lo_c, hi_c))
            if r.step != 1:
                data = data[np.asarray(r) - lo_r]
            if c.step != 1:
                data = data[:, np.asarray(c) - lo_c]
        data = data[(slice(None), slice(None), *key[2:])]
        if squeeze_cols:
            data = data[:, 0]
        if squeeze_rows:
            data = data[0]
        return data

    def _read(self, rows: slice, cols: slice) -> np.ndarray:
        """``K[rows, cols]`` for contiguous ranges, from the blocks stored."""
        array = self._array()
        if not self._store.symmetric:
            return self._zarr_read(array, rows, cols)
        b = self._store.block_size
        out = np.empty((rows.stop - rows.start, cols.stop - cols.start, *self.shape[2:]), dtype=self.dtype)
        for bi in range(rows.start // b, -(-rows.stop // b)):
            r = slice(max(rows.start, bi * b), min(rows.stop, (bi + 1) * b))
            local_r = slice(r.start - rows.start, r.stop - rows.start)
            upper = slice(max(cols.start, bi * b), cols.stop)  # blocks (bi, bj >= bi): stored
            if upper.start < upper.stop:
                out[local_r, upper.start - cols.start : upper.stop - cols.start] = self._zarr_read(array, r, upper)
            lower = slice(cols.start, min(cols.stop, bi * b))  # blocks (bi, bj < bi): mirrored
            if lower.start < lower.stop:
                mirrored = self._zarr_read(array, lower, r)
                out[local_r, lower.start - cols.start : lower.stop - cols.start] = _swap_pairs(
                    mirrored, self._store._meta.diagonal_spatial
                )
        return out

    def _zarr_read(self, array: Any, rows: slice, cols: slice) -> np.ndarray:
        try:
            return array[rows, cols]
        except Exception as e:  # zarr's checksum or decoding failed: a damaged chunk
            raise IncompleteStoreError(
                f"KernelStore: a {self.name} chunk of {self._store.path} covering rows {rows.start}:{rows.stop}, "
                f"cols {cols.start}:{cols.stop} is damaged ({type(e).__name__}: {e}); run compute_kernel with the "
                f"same arguments to recompute it (store.verify() lists the damaged blocks)."
            ) from e

    def to_torch(self, device: str | torch.device | None = None) -> torch.Tensor:
        """The whole kernel as a tensor on ``device`` (default CPU).

        Raises:
            MemoryError: it does not fit in the free memory (read slices, or use `to_dask`).
        """
        self._store.require_complete()
        device = torch.device("cpu" if device is None else device)
        for where in {torch.device("cpu"), device}:
            free = available_memory(where)
            if self.nbytes > free:
                raise MemoryError(
                    f"KernelArray.to_torch: {self.name} {self.shape} needs {self.nbytes / 2**30:.2f} GB but "
                    f"{free / 2**30:.2f} GB are free on {where}; read it in slices (store[{self.name!r}][a:b]) or "
                    f"lazily with .to_dask()."
                )
        return torch.from_numpy(self[...]).to(device)

    def to_dask(self) -> dask.array.Array:
        """The whole kernel as a lazy ``dask.array``, one chunk per block (the mirrored
        blocks of a symmetric store are read transposed)."""
        self._store.require_complete()
        try:
            import dask.array as da
        except ImportError as e:
            raise ImportError("KernelArray.to_dask needs dask: pip install 'tangents[distributed]'.") from e
        return da.from_array(
            self,
            chunks=self.meta.chunk_shape,
            asarray=False,
            fancy=False,
            lock=False,
            name=f"tangents-store-{self._store.digest[:16]}-{self.name}",
            meta=np.empty((0,) * self.ndim, dtype=self.dtype),
        )

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        self._store.require_complete()
        free = available_memory(torch.device("cpu"))
        if self.nbytes > free:
            raise MemoryError(
                f"KernelArray: {self.name} {self.shape} needs {self.nbytes / 2**30:.2f} GB but {free / 2**30:.2f} GB "
                f"are free; read it in slices or with .to_dask()."
            )
        data = self[...]
        return data if dtype is None else data.astype(dtype, copy=False)


def _open_array(path: str, name: str) -> KernelArray:
    return KernelStore.open(path)[name]


def _expand_key(key: Any, ndim: int) -> tuple[Any, ...]:
    key = key if isinstance(key, tuple) else (key,)
    if sum(k is Ellipsis for k in key) > 1:
        raise IndexError("KernelArray: an index can only have a single ellipsis ('...').")
    if Ellipsis in key:
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1 :]
    if len(key) > ndim:
        raise IndexError(f"KernelArray: too many indices ({len(key)}) for a kernel of {ndim} axes.")
    return key + (slice(None),) * (ndim - len(key))


def _axis_index(k: Any, n: int, what: str) -> tuple[slice, bool]:
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
        i = int(k)
        if not -n <= i < n:
            raise IndexError(f"KernelArray: index {i} is out of range for {n} {what}.")
        i %= n
        return slice(i, i + 1), True
    if isinstance(k, slice):
        return k, False
    raise TypeError(
        f"KernelArray: index the {what} with an int or a slice, got {type(k).__name__}; for other selections read a "
        f"slice (store['ntk'][a:b]) and index the numpy array."
    )


def _swap_pairs(a: np.ndarray, diagonal_spatial: bool | None) -> np.ndarray:
    """The ``(N2, N1, ...)`` transpose of an ``(N1, N2, ...)`` kernel block: swap the batch
    axes and, for location-location layouts, each interleaved pair ``(S, S')``."""
    axes = [1, 0, *range(2, a.ndim)]
    if diagonal_spatial is False:
        for i in range(2, a.ndim - 1, 2):
            axes[i], axes[i + 1] = axes[i + 1], axes[i]
    return a.transpose(axes)
