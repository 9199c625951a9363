"""A kernel store on disk: a zarr group, one chunk per block, one manifest entry per block.

Layout of ``STORE/``::

    zarr.json                  the zarr group; attribute "tangents_kernel_store": `StoreMeta`
    nngp/, ntk/                zarr arrays (N1, N2, *S) in chunks (B, B, *S), one per block;
                               codecs: raw little-endian bytes + a CRC-32C checksum
    manifest/<i>.<j>.json      block (i, j) is done: its chunks' sizes and CRC-32C checksums
    .lock                      held (flock) by the process computing into the store

A block is written in this order, so that a process killed at any moment leaves either a
done block or a missing one, never a wrong one:

1. each chunk, in zarr's encoding (raw little-endian bytes, then their CRC-32C), to a
   temporary file, flushed to disk (``fsync``) and renamed into place: a chunk is whole or
   absent. (Written directly: zarr's own write path costs several times the CPU of the
   write itself, which made a fully-connected kernel's store 20-30% slower to fill. The
   bytes are checked once per process against what zarr writes for the same array —
   `direct_writes_match_zarr` — and zarr's API is used if they ever differ. Reads go through
   zarr, which checks every chunk's checksum);
2. checked: the chunk file's size and its checksum are those of the computed numbers;
3. the manifest entry, written to a temporary file, flushed, and renamed into place.

A block is done only when its manifest entry exists, names this store's fingerprint digest,
and its chunk files have the recorded sizes (and, when verified, checksums). Chunks damaged
afterwards (truncated, garbled) fail that check, or zarr's checksum when read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, one process per store
    fcntl = None  # type: ignore[assignment]

from ..blocks import Block, BlockPlan, plan_blocks

__all__ = [
    "ATTRIBUTE",
    "BlockWriter",
    "StoreBusyError",
    "StoreMeta",
    "check_block",
    "chunk_key",
    "create_store",
    "direct_writes_match_zarr",
    "locked",
    "read_manifest",
    "read_meta",
    "remove_leftovers",
]

#: Version of this layout.
FORMAT = 1
#: The zarr group attribute holding `StoreMeta`.
ATTRIBUTE = "tangents_kernel_store"
MANIFEST = "manifest"
LOCK = ".lock"


class StoreBusyError(RuntimeError):
    """Another process is computing into the store."""


@dataclasses.dataclass(frozen=True)
class StoreMeta:
    """What a store holds and how it is cut into blocks.

    Attributes:
        fingerprint: what it is a kernel of (`tangents._store._fingerprint`).
        digest: SHA-256 of the fingerprint.
        names: the kernels stored (``get``), one zarr array each.
        shape: ``(N1, N2, *S)``, the shape of each kernel.
        dtype: numpy dtype name (``"float32"``, ``"float64"``).
        block_size: examples per block side (the chunk's leading shape).
        self_pairs: ``x2=None``.
        symmetric: only blocks on and above the diagonal are stored.
        diagonal_spatial: the layout of ``*S`` (pairs ``(H, H', W, W')`` when ``False``),
            which reading a mirrored block needs; ``None`` for fully-connected kernels.
        created: when the store was created (ISO 8601, UTC).
    """

    fingerprint: dict[str, Any]
    digest: str
    names: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    block_size: int
    self_pairs: bool
    symmetric: bool
    diagonal_spatial: bool | None
    created: str

    def plan(self) -> BlockPlan:
        """The blocks of this store."""
        return plan_blocks(self.shape[0], None if self.self_pairs else self.shape[1], self.block_size,
                           symmetric=self.symmetric)

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        return (self.block_size, self.block_size, *self.shape[2:])

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["format"] = FORMAT
        out["names"], out["shape"] = list(self.names), list(self.shape)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoreMeta:
        if data.get("format") != FORMAT:
            raise ValueError(
                f"KernelStore: the store has layout version {data.get('format')!r}; this tangents reads version "
                f"{FORMAT}. Open it with the tangents version that wrote it ({data.get('fingerprint', {}).get('tangents')})."
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["names"], values["shape"] = tuple(values["names"]), tuple(values["shape"])
        return cls(**values)


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_meta(path: Path) -> StoreMeta | None:
    """The store's metadata; ``None`` if ``path`` has no zarr group.

    Raises:
        ValueError: ``path`` holds a zarr group that is not a tangents kernel store.
    """
    group_file = path / "zarr.json"
    if not group_file.exists():
        return None
    try:
        data = json.loads(group_file.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"KernelStore: {group_file} cannot be read as zarr metadata ({e}).") from None
    attrs = data.get("attributes", {}) if isinstance(data, dict) else {}
    if data.get("node_type") != "group" or ATTRIBUTE not in attrs:
        raise ValueError(
            f"KernelStore: {path} is a zarr {data.get('node_type', 'node')} but not a tangents kernel store "
            f"(no {ATTRIBUTE!r} attribute); give compute_kernel a new or empty directory."
        )
    return StoreMeta.from_json(attrs[ATTRIBUTE])


def create_store(path: Path, meta: StoreMeta) -> None:
    """Creates the zarr group and one empty array per kernel (chunks are written by blocks)."""
    import zarr
    from zarr.codecs import Crc32cCodec

    group = zarr.open_group(str(path), mode="a")  # the caller checked that it holds no store
    for name in meta.names:
        group.create_array(
            name,
            shape=meta.shape,
            chunks=meta.chunk_shape,
            dtype=meta.dtype,
            fill_value=np.nan,
            compressors=[Crc32cCodec()],
            config={"write_empty_chunks": True},
        )
    (path / MANIFEST).mkdir(exist_ok=True)
    group.attrs[ATTRIBUTE] = meta.to_json()  # last: a store without it is not one yet


def chunk_key(meta: StoreMeta, name: str, index: tuple[int, int]) -> str:
    """The chunk file of block ``index`` of array ``name``, relative to the store (zarr's
    default v3 key encoding: ``nngp/c/<i>/<j>/0/...``)."""
    coords = (*index, *([0] * (len(meta.shape) - 2)))
    return f"{name}/c/" + "/".join(str(c) for c in coords)


def manifest_file(path: Path, index: tuple[int, int]) -> Path:
    return path / MANIFEST / f"{index[0]}.{index[1]}.json"


def read_manifest(path: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """The manifest entries on disk, by block index (unreadable entries are left out: their
    blocks count as missing)."""
    out: dict[tuple[int, int], dict[str, Any]] = {}
    directory = path / MANIFEST
    if not directory.is_dir():
        return out
    for entry in os.scandir(directory):
        name = entry.name
        if not name.endswith(".json"):
            continue
        try:
            i, j = (int(v) for v in name[: -len(".json")].split("."))
            out[(i, j)] = json.loads(Path(entry.path).read_text())
        except (ValueError, OSError):
            continue
    return out


def _chunk_data(meta: StoreMeta, array: np.ndarray) -> np.ndarray:
    """The bytes of a block's chunk before the checksum: the block padded to the chunk's shape
    with NaN (blocks of the last row and column), little-endian, C order (zarr's ``bytes``
    codec)."""
    if array.shape != meta.chunk_shape:
        padded = np.full(meta.chunk_shape, np.nan, dtype=array.dtype)
        padded[: array.shape[0], : array.shape[1]] = array
        array = padded
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).reshape(-1).view(np.uint8)


def _crc32c(data: np.ndarray) -> int:
    return int(google_crc32c.value(data))


_ENCODING_CHECKED: dict[str, bool] = {}


def direct_writes_match_zarr(dtype: str) -> bool:
    """Whether chunks written directly (`_chunk_data` + CRC-32C, 4 bytes little-endian) are
    byte for byte what zarr writes for arrays of ``dtype`` with this store's codecs: checked
    once per process on a scratch array, a full chunk and an edge chunk. If not (another
    zarr), blocks are written through zarr's own API, which is several times slower."""
    if dtype not in _ENCODING_CHECKED:
        import tempfile

        import zarr
        from zarr.codecs import Crc32cCodec

        with tempfile.TemporaryDirectory(prefix="tangents-zarr-check-") as scratch:
            array = zarr.create_array(scratch, shape=(2, 3), chunks=(2, 2), dtype=dtype, fill_value=np.nan,
                                      compressors=[Crc32cCodec()], config={"write_empty_chunks": True})
            data = np.arange(6, dtype=dtype).reshape(2, 3) + 0.5
            array[:, :] = data
            meta = StoreMeta({}, "", ("x",), (2, 3), dtype, 2, False, False, None, "")
            same = True
            for j, cols in ((0, slice(0, 2)), (1, slice(2, 3))):
                expected = _chunk_data(meta, data[:, cols])
                encoded = expected.tobytes() + _crc32c(expected).to_bytes(4, "little")
                same = same and (Path(scratch) / "c" / "0" / str(j)).read_bytes() == encoded
        _ENCODING_CHECKED[dtype] = same
    return _ENCODING_CHECKED[dtype]


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_block(path: Path, meta: StoreMeta, block: Block, entry: dict[str, Any] | None, full: bool) -> str | None:
    """Why block ``block`` is not done (``None`` if it is).

    ``full``: also read every chunk and compare its checksum with the manifest's (otherwise
    only the sizes of the chunk files are checked).
    """
    if entry is None:
        return "not computed"
    if entry.get("digest") != meta.digest:
        return "its manifest entry belongs to another computation (fingerprint digest differs)"
    if entry.get("rows") != [block.rows.start, block.rows.stop] or entry.get("cols") != [block.cols.start, block.cols.stop]:
        return "its manifest entry describes other rows or columns"
    chunks = entry.get("chunks", {})
    for name in meta.names:
        record = chunks.get(name)
        if record is None:
            return f"its manifest entry lists no {name} chunk"
        file = path / record["key"]
        try:
            size = file.stat().st_size
        except OSError:
            return f"its {name} chunk file is missing"
        if size != record["bytes"]:
            return f"its {name} chunk file has {size} bytes, {record['bytes']} were written (truncated or replaced)"
        if full:
            data = file.read_bytes()
            stored = int.from_bytes(data[-4:], "little")
            if int(google_crc32c.value(np.frombuffer(data, dtype=np.uint8)[:-4])) != record["crc32c"] or stored != record["crc32c"]:
                return f"its {name} chunk does not match its checksum (damaged)"
    return None


class BlockWriter:
    """Writes computed blocks into a store: chunks, then the block's manifest entry.

    Picklable (it holds the path, not open files), so Dask workers write blocks themselves.

    Args:
        path: the store.
        meta: its metadata (the digest guards against writing into another computation).
        durable: flush every chunk and manifest entry to disk (``fsync``) before a block
            counts as done, so a power cut loses no block marked done. ``False`` is faster
            and still safe against a killed process.
    """

    def __init__(self, path: Path, meta: StoreMeta, durable: bool = True) -> None:
        self.path, self.meta, self.durable = Path(path), meta, durable
        self._arrays: dict[str, Any] | None = None
        self._checked = False

    def _write_chunk(self, file: Path, data: np.ndarray, crc: int) -> None:
        """Writes a chunk file as zarr does: to a temporary file, renamed into place."""
        file.parent.mkdir(parents=True, exist_ok=True)
        temporary = file.with_name(f"{file.name}.{uuid.uuid4().hex}.partial")
        try:
            with open(temporary, "wb") as f:
                f.write(data)
                f.write(crc.to_bytes(4, "little"))
                if self.durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(temporary, file)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "meta": self.meta, "durable": self.durable}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["meta"], state["durable"])  # type: ignore[misc]

    def _open(self) -> dict[str, Any]:
        if self._arrays is None:
            import zarr

            on_disk = read_meta(self.path)
            if on_disk is None or on_disk.digest != self.meta.digest:
                raise RuntimeError(
                    f"BlockWriter: the store at {self.path} is no longer the one this computation started "
                    f"(it was removed or replaced); stop and start the computation again."
                )
            self._arrays = {name: zarr.open_array(str(self.path / name), mode="r+") for name in self.meta.names}
            self._checked = True
        return self._arrays

    def __call__(self, block: Block, arrays: dict[str, np.ndarray], seconds: float = 0.0) -> dict[str, Any]:
        """Writes one block and returns its manifest entry."""
        direct = direct_writes_match_zarr(self.meta.dtype)
        if not direct:
            zarr_arrays = self._open()
        elif not self._checked:
            self._open()  # the store is still this computation's
        chunks = {}
        for name in self.meta.names:
            key = chunk_key(self.meta, name, block.index)
            file = self.path / key
            data = _chunk_data(self.meta, arrays[name])
            crc = _crc32c(data)
            if direct:  # the chunk as zarr would write it, in a few copies fewer
                self._write_chunk(file, data, crc)
            else:
                zarr_arrays[name][block.rows, block.cols] = arrays[name]
            size = file.stat().st_size
            with open(file, "rb") as f:
                f.seek(-4, os.SEEK_END)
                stored = int.from_bytes(f.read(4), "little")
                if self.durable and not direct:
                    os.fsync(f.fileno())
            if size != data.nbytes + 4 or stored != crc:
                raise RuntimeError(
                    f"BlockWriter: the {name} chunk written for {block!r} at {file} does not hold the computed "
                    f"numbers (size {size}, checksum {stored:#x} != {crc:#x}); is another process writing "
                    f"into this store?"
                )
            if self.durable:
                _fsync(file.parent, directory=True)
            chunks[name] = {"key": key, "bytes": size, "crc32c": crc}
        entry = {
            "format": FORMAT,
            "digest": self.meta.digest,
            "block": list(block.index),
            "rows": [block.rows.start, block.rows.stop],
            "cols": [block.cols.start, block.cols.stop],
            "chunks": chunks,
            "seconds": round(seconds, 6),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "written": now_iso(),
        }
        target = manifest_file(self.path, block.index)
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        with open(temporary, "w") as f:
            json.dump(entry, f)
            f.flush()
            if self.durable:
                os.fsync(f.fileno())
        os.replace(temporary, target)
        if self.durable:
            _fsync(target.parent, directory=True)
        return entry


def remove_leftovers(path: Path, meta: StoreMeta) -> int:
    """Deletes temporary files of writes cut short (zarr's ``*.partial`` chunks, manifest
    ``*.tmp`` entries); only call with the store's lock held. Returns how many."""
    removed = 0
    for top in [*(path / name for name in meta.names), path / MANIFEST]:
        for root, _, files in os.walk(top):
            for name in files:
                if name.endswith(".partial") or name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(root, name))
                        removed += 1
    return removed


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Holds the store's lock (an exclusive ``flock`` of ``STORE/.lock``, released when the
    process ends, however it ends; where there is no ``flock`` (Windows), nothing guards
    against two processes computing into one store).

    Raises:
        StoreBusyError: another process holds it.
    """
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    lock_file = path / LOCK
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise StoreBusyError(
                f"compute_kernel: the store {path} is being computed by {holder}; wait for it to finish (or "
                f"stop it), then run again to resume."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {now_iso()}\n".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

