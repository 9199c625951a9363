"""`compute_kernel`: a kernel computed block by block into a store (see `tangents.store`).

The one plan of blocks and per-block call come from `tangents.blocks`; this module adds what
a store needs around them: the fingerprint, creating or resuming the store under its lock,
checking the blocks done, and running the missing ones in this process
(`tangents.blocks.run_in_process`) or on Dask (`tangents.distributed.run_on_dask`), each
written by a `BlockWriter`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import pickle
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import torch

from .._kernel import Kernel, check_get
from ..blocks import (
    Block,
    BlockProgress,
    available_memory,
    block_call,
    first_tensor,
    inner_bars_hidden,
    is_analytic,
    leading_size,
    one_intra_op_thread,
    run_in_process,
)
from ._fingerprint import differences, digest, fingerprint, layer_of
from ._format import (
    MANIFEST,
    BlockWriter,
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
from ._read import KernelStore

__all__ = ["STORABLE", "StoreMismatchError", "compute_kernel"]

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
        with inner_bars_hidden():  # no progress bar of the block's own tiles
            out = block_call(self.kernel_fn, payload.x1, payload.x2, self.names, block, payload.kwargs)
        arrays = _results(out, self.names, block, self.meta)
        return arrays, time.perf_counter() - start

    def write(self, block: Block, computed: tuple[dict[str, np.ndarray], float]) -> dict[str, Any]:
        return self.writer(block, computed[0], computed[1])

    def __call__(self, block: Block, payload: _Payload | _StoredPayload) -> dict[str, Any]:
        if isinstance(payload, _StoredPayload):
            payload = payload.load()
        return self.write(block, self.compute(block, _on_device(payload, self.device)))


class _StoredPayload(NamedTuple):
    """The payload of a Dask run, as a file in the store that workers read once per process.

    Scattered data lives only in the workers' memory: a cluster whose every worker is
    replaced in the course of a long run (jobs reaching their walltime, pre-emption,
    adaptive scaling) would lose it, and every task after with it. The store's directory
    outlives them all, and every worker sees it already (it writes its blocks there).
    """

    file: str
    sha256: str

    @classmethod
    def write(cls, path: Path, payload: _Payload) -> _StoredPayload:
        """Writes ``payload`` (pickled: inputs are tensors, kwargs anything picklable) into
        the store at ``path`` (temporary file, renamed), and returns its reference."""
        import cloudpickle  # a dependency of dask.distributed

        temporary = path / f".{_PAYLOAD_PREFIX}{uuid.uuid4().hex}.tmp"
        try:
            with open(temporary, "wb") as f:  # streamed: no second copy of the inputs in memory
                cloudpickle.dump(payload, f, protocol=5)
                f.flush()
                os.fsync(f.fileno())
            sha = _sha256_of_file(temporary)
            file = path / f"{_PAYLOAD_PREFIX}{sha[:16]}.pickle"
            os.replace(temporary, file)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        return cls(str(file), sha)

    def load(self) -> _Payload:
        """The payload (read and checked once per process)."""
        if _LOADED and _LOADED[0][0] == self:
            return _LOADED[0][1]
        try:
            with open(self.file, "rb") as f:  # hashed, then unpickled, streamed: one copy in memory
                if _sha256_of_file(f) != self.sha256:
                    raise RuntimeError(
                        f"compute_kernel: the inputs at {self.file} are not those the driver wrote (sha256 "
                        f"differs); is another computation running into this store? Stop it and run again."
                    )
                f.seek(0)
                payload = pickle.load(f)  # noqa: S301 - bytes checked against the driver's hash
        except OSError as e:
            raise OSError(
                f"compute_kernel: this Dask worker cannot read the inputs at {self.file} ({e}); every worker must "
                f"see the store's directory (a filesystem shared by all machines)."
            ) from None
        _LOADED[:] = [(self, payload)]
        return payload


def _sha256_of_file(file: Path | BinaryIO) -> str:
    """SHA-256 of a file's bytes (a path, or an open binary file from its current position),
    read in chunks of 16 MiB."""
    sha = hashlib.sha256()
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(open(file, "rb")) if isinstance(file, Path) else file
        while chunk := f.read(2**24):
            sha.update(chunk)
    return sha.hexdigest()


#: Prefix of the payload file of a Dask run in the store's directory (removed after the run).
_PAYLOAD_PREFIX = ".inputs-"
#: ``(reference, payload)`` last loaded in this process.
_LOADED: list[tuple[_StoredPayload, _Payload]] = []


#: ``(payload, device, payload on device)`` of the last move (holding the payload, so that the
#: identity test below cannot match a new payload at a recycled address).
_ON_DEVICE: list[tuple[_Payload, str, _Payload]] = []


def _on_device(payload: _Payload, device: str) -> _Payload:
    """The payload on ``device`` (moved once per worker process, payload and device)."""
    if first_tensor(payload.x1).device.type == device:
        return payload
    if not (_ON_DEVICE and _ON_DEVICE[0][0] is payload and _ON_DEVICE[0][1] == device):
        _ON_DEVICE[:] = [(payload, device, _Payload(*_tree_to((payload.x1, payload.x2, payload.kwargs), device)))]
    return _ON_DEVICE[0][2]


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
        for leftover in path.glob(f"{_PAYLOAD_PREFIX}*"):  # of a Dask run whose driver was killed
            with contextlib.suppress(OSError):
                leftover.unlink()
        for leftover in path.glob(f".{_PAYLOAD_PREFIX}*"):
            with contextlib.suppress(OSError):
                leftover.unlink()
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
        # Blocks in threads only for stax kernel functions: other kernel functions (empirical
        # ones of an nn.Module) swap the module's parameters for each call and are not
        # thread-safe; their blocks run in turn, each with all threads.
        workers = torch.get_num_threads() if device.type == "cpu" and analytic else 1
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
                from ..distributed import run_on_dask

                cpu = _Payload(*_tree_to((x1, x2, payload.kwargs), "cpu"))
                stored = _StoredPayload.write(path, cpu) if missing else None
                try:
                    run_on_dask(client, missing, job, stored, count, timeout=timeout, scatter=False)
                finally:
                    if stored is not None:
                        with contextlib.suppress(OSError):
                            os.unlink(stored.file)
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
    path = Path(path).expanduser().absolute()  # Dask workers run elsewhere, in other directories
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
