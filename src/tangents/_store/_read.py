"""Reading a kernel store: `KernelStore` (what it is, which blocks are done) and `KernelArray`
(one kernel, read-only: slices as numpy, ``to_torch``, ``to_dask``), see `tangents.store`."""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..blocks import Block, BlockPlan, available_memory
from ._format import StoreMeta, check_block, chunk_key, read_manifest, read_meta

if TYPE_CHECKING:
    import dask.array

__all__ = ["IncompleteStoreError", "KernelArray", "KernelStore"]


#: Bytes of a read below which the free memory is not asked about (64 MiB).
_READS_ALWAYS_FIT = 2**26


class IncompleteStoreError(ValueError):
    """A read of a store whose blocks are not all done (or some are damaged)."""


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
        path = Path(path).expanduser().absolute()  # also where a Dask worker unpickles a view
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
    def plan(self) -> BlockPlan:
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
            self._check_fits(hi_r - lo_r, hi_c - lo_c, key[:2])
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

    def _check_fits(self, rows: int, cols: int, key: tuple[Any, ...]) -> None:
        """A read of ``rows x cols`` examples (every location pair: they are read whole) must fit
        in the free memory, or a MemoryError names the read and the fix."""
        needed = rows * cols * math.prod(self.shape[2:]) * self.dtype.itemsize
        if needed > _READS_ALWAYS_FIT:
            free = available_memory(torch.device("cpu"))
            if needed > free:
                raise MemoryError(
                    f"KernelArray: reading {self.name}[{_key_text(key)}] needs {needed / 2**30:.2f} GB "
                    f"({rows} x {cols} examples) but {free / 2**30:.2f} GB are free; read fewer rows at a time "
                    f"(store[{self.name!r}][a:b]) or lazily with .to_dask()."
                )

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
        meta, b = self._store._meta, self._store.block_size
        for i in range(rows.start // b, -(-rows.stop // b)):  # zarr reads a missing chunk as NaN
            for j in range(cols.start // b, -(-cols.stop // b)):
                if not (self._store.path / chunk_key(meta, self.name, (i, j))).is_file():
                    raise IncompleteStoreError(
                        f"KernelStore: the {self.name} chunk of block ({i}, {j}) of {self._store.path} is missing "
                        f"(deleted?); run compute_kernel with the same arguments to recompute it."
                    )
        try:
            return array[rows, cols]
        except Exception as e:  # zarr's checksum or decoding failed: a damaged chunk
            raise IncompleteStoreError(
                f"KernelStore: a {self.name} chunk of {self._store.path} covering rows {rows.start}:{rows.stop}, "
                f"cols {cols.start}:{cols.stop} is damaged ({type(e).__name__}: {e}); run compute_kernel with the "
                f"same arguments to recompute it (store.verify() lists the damaged blocks)."
            ) from e

    def to_torch(self, device: str | torch.device | None = None, index: Any = None) -> torch.Tensor:
        """The whole kernel, or ``self[index]``, as a tensor on ``device`` (default CPU).

        Args:
            device: the torch device of the result.
            index: ``None`` for the whole kernel ``(N1, N2, *S)``; else any index
                ``__getitem__`` takes, e.g. ``(slice(0, 1000), slice(None))`` for rows 0-999.

        Raises:
            MemoryError: it does not fit in the free memory (read slices, or use `to_dask`).
        """
        self._store.require_complete()
        device = torch.device("cpu" if device is None else device)
        if index is not None:
            return torch.from_numpy(np.ascontiguousarray(self[index])).to(device)
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


def _key_text(key: tuple[Any, ...]) -> str:
    def text(k: Any) -> str:
        if isinstance(k, slice):
            return ":".join("" if v is None else str(v) for v in (k.start, k.stop)) + (
                "" if k.step is None else f":{k.step}")
        return "..." if k is Ellipsis else str(k)

    return ", ".join(text(k) for k in key)


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
