"""Kernel stores (`tangents.store`): the numbers, resume, refusal, damage, reads.

Oracles: neural-tangents' kernels for manifest architectures (float64, 1e-8: NT's own
rounding), and the in-memory ``kernel_fn`` of the same network (1e-12 relative in float64,
as the issue asks: a store block is one ``kernel_fn`` call on slices, so only the rounding
of differently shaped matrix products separates them). Different ways of filling a store
must agree bit for bit. Crash tests (SIGKILL) are in ``test_store_crash.py``, Dask in
``test_distributed.py``.
"""

from __future__ import annotations

import functools
import json
import pickle
from collections import namedtuple

import numpy as np
import pytest
import torch

import tangents
import tangents._store._fingerprint as fingerprint_module
import tangents._store._read
from reference_cases import CASES, load, relative_error
from tangents import stax
from tangents.store import IncompleteStoreError, KernelStore, StoreBusyError, StoreMismatchError, compute_kernel

dask_array = pytest.importorskip("dask.array")


def fc(W_std: float = 1.5) -> stax.Layer:
    return stax.serial(stax.Dense(64, W_std=W_std, b_std=0.05), stax.Relu(), stax.Dense(64, W_std=1.5, b_std=0.05),
                       stax.Erf(), stax.Dense(1, W_std=1.5, b_std=0.05))


def cnn_pooled() -> stax.Layer:
    return stax.serial(stax.Conv(8, (3, 3), padding="SAME", W_std=1.5, b_std=0.05), stax.Relu(),
                       stax.Conv(8, (3, 3), padding="SAME", W_std=1.5, b_std=0.05), stax.Relu(),
                       stax.GlobalAvgPool(), stax.Dense(1, W_std=1.5, b_std=0.05))


def cnn_spatial() -> stax.Layer:
    """Output kernel (N1, N2, 4, 4, 3, 3): location pairs of a non-square map, so a mirrored
    block read with the wrong axes shows."""
    return stax.serial(stax.Conv(8, (3, 3), padding="SAME", W_std=1.5, b_std=0.05), stax.Relu(),
                       stax.Conv(8, (2, 2), padding="VALID", W_std=1.3, b_std=0.1))


NETS = {"fc": (fc, (5,)), "cnn": (cnn_pooled, (3, 5, 5)), "cnn_spatial": (cnn_spatial, (2, 5, 4))}


def inputs(name: str, n: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *NETS[name][1], generator=torch.Generator().manual_seed(seed), dtype=dtype)


def read_all(store: KernelStore) -> dict[str, np.ndarray]:
    return {name: store[name][...] for name in store.get}


def assert_bit_identical(a: KernelStore, b: KernelStore) -> None:
    for name in a.get:
        x, y = a[name][...], b[name][...]
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name


def interrupting(kernel_fn, after: int):
    """``kernel_fn`` that raises KeyboardInterrupt (as Ctrl-C would) on its ``after + 1``-th call
    (`compute_kernel` first calls it once on one pair, to learn the kernel's shape)."""
    calls = []

    @functools.wraps(kernel_fn)
    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            raise KeyboardInterrupt
        return kernel_fn(*args, **kwargs)

    return wrapped


# ---------------------------------------------------------------------- the numbers


@pytest.mark.parametrize("case_id,block", [("fc_relu_ntk_d2_b005", 4), ("cnn_valid_s2_gap", 3)])
def test_store_reproduces_neural_tangents(tmp_path, case_id, block):
    """NT's kernels of the manifest networks, blocks that do not divide N (6 or 4 examples).
    Measured: 4e-16 (CNN); the bound is NT's own float64 rounding, 1e-8."""
    data = load(case_id)
    net = stax.from_spec(CASES[case_id]["arch"], nt_layout=True)
    x1, x2 = torch.from_numpy(data["x1"]), torch.from_numpy(data["x2"])
    given = compute_kernel(net, x1, x2, path=tmp_path / "x2", block_size=block, durable=False, progress=False)
    own = compute_kernel(net, x1, None, path=tmp_path / "self", block_size=block, durable=False, progress=False)
    for name in ("nngp", "ntk"):
        assert relative_error(given[name][...], data[name]) <= 1e-8
        assert relative_error(own[name][...], data[f"{name}_self"]) <= 1e-8


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("net", ["fc", "cnn", "cnn_spatial"])
def test_store_equals_kernel_fn_and_resume_is_bit_identical(tmp_path, net, dtype):
    """In-process, x2=None and x2 given, a block size that divides neither N: equals the in-memory
    kernel to rounding; interrupted in its fourth block and resumed, bit-identical, and the
    resume computes exactly the blocks left."""
    layer = NETS[net][0]()
    n1, n2, block = (23, 9, 5) if net == "fc" else (7, 4, 3)
    x1, x2 = inputs(net, n1, dtype, seed=1), inputs(net, n2, dtype, seed=2)
    # float64: the 1e-12 (measured <= 3.4e-16). float32: measured <= 1.9e-7 (matrix
    # products of other shapes round differently, ~2 ulp), so 1e-6.
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for x2_ in (None, x2):
        tag = "self" if x2_ is None else "x2"
        ref = layer.kernel_fn(x1, x2_, ("nngp", "ntk"))
        store = compute_kernel(layer, x1, x2_, path=tmp_path / tag, block_size=block, durable=False, progress=False)
        assert store.shape == tuple(ref.ntk.shape) and store.dtype == np.dtype(str(dtype).split(".")[1])
        for name in ("nngp", "ntk"):
            assert relative_error(store[name][...], getattr(ref, name).numpy()) <= tol, name
        total = len(store.plan)
        assert store.last_run["computed"] == total
        if x2_ is None:  # upper triangle only: g (g + 1) / 2 blocks
            g = -(-n1 // block)
            assert total == g * (g + 1) // 2
        with pytest.raises(KeyboardInterrupt):
            compute_kernel(interrupting(layer.kernel_fn, 1 + 3), x1, x2_, path=tmp_path / f"{tag}_resumed",
                           block_size=block, durable=False, progress=False)
        # Blocks run two at a time: of the 3 computed before the interruption, those written
        # before it reached the writing thread are done (at least the first, at most all 3).
        done = total - len(KernelStore.open(tmp_path / f"{tag}_resumed").missing_blocks())
        assert 1 <= done <= 3
        resumed = compute_kernel(layer, x1, x2_, path=tmp_path / f"{tag}_resumed", durable=False, progress=False)
        assert resumed.last_run["computed"] == total - done and resumed.last_run["skipped"] == done
        assert_bit_identical(store, resumed)


def test_durable_default_and_rerun_of_a_complete_store_computes_nothing(tmp_path):
    x = inputs("fc", 10)
    store = compute_kernel(fc().kernel_fn, x, get="ntk", path=tmp_path / "k", block_size=4, progress=False)
    again = compute_kernel(fc().kernel_fn, x, get="ntk", path=tmp_path / "k", progress=False)  # block size adopted
    assert again.last_run["computed"] == 0 and again.last_run["skipped"] == 6 and again.block_size == 4
    assert store.get == ("ntk",) and "nngp" not in store
    assert store.complete and store.missing_blocks() == [] and store.verify() == {}


def test_non_analytic_kernel_function_needs_architecture_and_computes_every_block(tmp_path):
    """A hand-written kernel function: no symmetry assumed (all g² blocks for x2=None)."""
    Kernels = namedtuple("Kernels", ["nngp"])
    calls = []

    def rbf(x1, x2=None, get=None):
        calls.append(1)
        x2 = x1 if x2 is None else x2
        return Kernels(torch.exp(-torch.cdist(x1, x2) ** 2 / 2))

    x = inputs("fc", 7)
    with pytest.raises(ValueError, match=r"compute_kernel: kernel_fn is not a tangents.stax layer's kernel_fn.*pass architecture="):
        compute_kernel(rbf, x, get="nngp", path=tmp_path / "k")
    store = compute_kernel(rbf, x, get="nngp", path=tmp_path / "k", block_size=3, architecture={"kernel": "rbf", "scale": 1},
                           durable=False, progress=False)
    assert len(store.plan) == 9 and not store.symmetric
    expected = torch.exp(-torch.cdist(x, x) ** 2 / 2).numpy()
    assert np.abs(store["nngp"][...] - expected).max() <= 1e-15  # the same formula on slices
    with pytest.raises(StoreMismatchError, match=r"architecture: scale is 1 in the store, 2 now"):
        compute_kernel(rbf, x, get="nngp", path=tmp_path / "k", architecture={"kernel": "rbf", "scale": 2})


def test_empirical_kernels_can_be_stored(tmp_path):
    """An empirical kernel function (of a finite network) through the same store."""
    net = fc()
    kernel_fn = tangents.empirical_kernel_fn(net.to_module((-1, 5), seed=0), vmap_axes=0)
    x = inputs("fc", 9)
    store = compute_kernel(kernel_fn, x, get=("nngp", "ntk"), path=tmp_path / "e", block_size=4, durable=False,
                           architecture={"model": "fc(width 64)", "seed": 0}, progress=False)
    reference = kernel_fn(x, None, ("nngp", "ntk"))
    for name in ("nngp", "ntk"):  # measured 6e-17 (one block's Jacobians against all of them)
        assert relative_error(store[name][...], getattr(reference, name).numpy()) <= 1e-12


# ---------------------------------------------------------------------- refusal


def test_other_computations_are_refused_with_what_differs(tmp_path, monkeypatch):
    x = inputs("fc", 9)
    path = tmp_path / "k"
    compute_kernel(fc(), x, path=path, block_size=4, durable=False, progress=False)
    cases = [
        (dict(x1=x + 1e-9), r"inputs: x1 is sha256 [0-9a-f]{12} \(shape \(9, 5\), float64\) in the store, sha256 [0-9a-f]{12} \(shape \(9, 5\), float64\) now"),
        (dict(x2=x), r"inputs: x2 is None \(x2 = x1\) in the store, sha256"),
        (dict(layer=fc(W_std=2.0)), r"architecture: layers\[0\]\.W_std is 1\.5 in the store, 2\.0 now"),
        (dict(x1=x.float()), r"dtype is 'float64' in the store, 'float32' now"),
        (dict(block_size=3), r"block_size is 4 in the store, 3 now"),
        (dict(get="ntk"), r'get is \["nngp", "ntk"\] in the store, \["ntk"\] now'),
        (dict(diagonal_spatial=True), r"kernel_fn keyword arguments: diagonal_spatial is absent in the store, true now"),
    ]
    for change, message in cases:
        args = dict(layer=fc(), x1=x, x2=None, get=("nngp", "ntk"), block_size=None)
        args.update(change)
        layer, x1, x2, get, block = args.pop("layer"), args.pop("x1"), args.pop("x2"), args.pop("get"), args.pop("block_size")
        with pytest.raises(StoreMismatchError, match=r"compute_kernel: the store .* is a kernel of something else:\n(  .*\n)*  " + message):
            compute_kernel(layer, x1, x2, get, path=path, block_size=block, progress=False, **args)
    monkeypatch.setattr(fingerprint_module, "__version__", "9.9.9")
    with pytest.raises(StoreMismatchError, match=r"tangents version is '0\.1\.0' in the store, '9\.9\.9' now\nResume it with"):
        compute_kernel(fc(), x, path=path, progress=False)
    monkeypatch.undo()
    # overwrite=True replaces the store (a tangents store only)
    store = compute_kernel(fc(W_std=2.0), x, path=path, block_size=3, overwrite=True, durable=False, progress=False)
    assert store.block_size == 3 and store.fingerprint["architecture"]["layers"][0]["W_std"] == 2.0


def test_bad_arguments(tmp_path):
    x = inputs("fc", 4)
    (tmp_path / "file").write_text("")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    calls = [
        (ValueError, r"compute_kernel: get must name kernels of pairs, 'nngp' and/or 'ntk' \(each once\), got 'cov1'",
         dict(get="cov1")),
        (ValueError, r"compute_kernel: block_size must be a positive integer .* got 0", dict(block_size=0)),
        (ValueError, r"compute_kernel: path .*file is a file; a store is a directory", dict(path=tmp_path / "file")),
        (ValueError, r"compute_kernel: .*other is not empty and is not a tangents kernel store; choose a new or empty",
         dict(path=tmp_path / "other")),
        (ValueError, r"compute_kernel: x1 contains 1 NaN or infinite value\(s\)", dict(x1=torch.where(x == x[0, 0], np.nan, x))),
        (TypeError, r"compute_kernel: x1 must be float32 or float64, got torch.int64", dict(x1=x.long())),
        (TypeError, r"compute_kernel: kernel_fn must be a kernel function or a stax layer, got Linear",
         dict(kernel_fn=torch.nn.Linear(5, 1), architecture="linear")),
        (TypeError, r"compute_kernel: overwrite must be True or False, got 1", dict(overwrite=1)),
    ]
    for error, message, change in calls:
        args = dict(kernel_fn=fc(), x1=x, path=tmp_path / "k", progress=False)
        args.update(change)
        with pytest.raises(error, match=message):
            compute_kernel(args.pop("kernel_fn"), args.pop("x1"), **args)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_a_store_being_computed_is_not_computed_twice(tmp_path):
    from tangents._store._format import locked

    x = inputs("fc", 4)
    (tmp_path / "k").mkdir()
    with locked(tmp_path / "k"):
        with pytest.raises(StoreBusyError, match=r"compute_kernel: the store .* is being computed by pid \d+ on .*; wait"):
            compute_kernel(fc(), x, path=tmp_path / "k", progress=False)


# ---------------------------------------------------------------------- damage and incomplete stores


def _chunk(store: KernelStore, name: str, index: tuple[int, int]):
    entry = json.loads((store.path / "manifest" / f"{index[0]}.{index[1]}.json").read_text())
    return store.path / entry["chunks"][name]["key"]


def test_damaged_chunks_are_found_and_recomputed(tmp_path):
    x = inputs("fc", 11)
    store = compute_kernel(fc(), x, path=tmp_path / "k", block_size=4, durable=False, progress=False)
    reference = read_all(store)
    # A truncated chunk (a write cut short on a filesystem without atomic renames): its size
    # differs from the manifest's, found even by the quick check.
    truncated = _chunk(store, "ntk", (0, 1))
    truncated.write_bytes(truncated.read_bytes()[:100])
    # A garbled chunk, same size: only its checksum tells.
    garbled = _chunk(store, "nngp", (1, 2))
    data = bytearray(garbled.read_bytes())
    data[40] ^= 0xFF
    garbled.write_bytes(bytes(data))
    reopened = KernelStore.open(tmp_path / "k")
    assert [b.index for b in reopened.missing_blocks()] == [(0, 1)]
    assert {b.index: r for b, r in reopened.verify().items()} == {
        (0, 1): "its ntk chunk file has 100 bytes, 132 were written (truncated or replaced)",
        (1, 2): "its nngp chunk does not match its checksum (damaged)",
    }
    with pytest.raises(IncompleteStoreError, match=r"incomplete: 1 of 6 blocks are missing \(blocks \(0, 1\) rows 0:4 x cols 4:8\)\. Run compute_kernel"):
        reopened["ntk"][0]
    quick = compute_kernel(fc(), x, path=tmp_path / "k", verify=False, durable=False, progress=False)
    assert quick.last_run["computed"] == 1 and quick.last_run["damaged"] == 1  # the truncated one only
    with pytest.raises(IncompleteStoreError, match=r"a nngp chunk of .* covering rows 4:8, cols 8:11 is damaged \(ValueError: Stored and computed checksum do not match"):
        quick["nngp"][4:8, 8:11]
    _chunk(quick, "ntk", (2, 2)).unlink()  # zarr alone would read a missing chunk as NaN
    with pytest.raises(IncompleteStoreError, match=r"the ntk chunk of block \(2, 2\) of .* is missing \(deleted\?\)"):
        quick["ntk"][8:]
    full = compute_kernel(fc(), x, path=tmp_path / "k", durable=False, progress=False)
    assert full.last_run["computed"] == 2 and full.last_run["damaged"] == 2  # the garbled one, the deleted one
    for name, values in read_all(full).items():
        assert values.tobytes() == reference[name].tobytes()


def test_manifest_entries_of_another_computation_do_not_count(tmp_path):
    """Blocks copied from a store of other inputs (same shapes) are not taken as done."""
    x, y = inputs("fc", 8, seed=1), inputs("fc", 8, seed=2)
    a = compute_kernel(fc(), x, path=tmp_path / "a", block_size=4, durable=False, progress=False)
    b = compute_kernel(fc(), y, path=tmp_path / "b", block_size=4, durable=False, progress=False)
    for name in ("manifest/0.1.json", "ntk/c/0/1", "nngp/c/0/1"):
        (a.path / name).write_bytes((b.path / name).read_bytes())
    assert {blk.index: r for blk, r in KernelStore.open(a.path).verify().items()} == {
        (0, 1): "its manifest entry belongs to another computation (fingerprint digest differs)"}
    assert compute_kernel(fc(), x, path=a.path, durable=False, progress=False).last_run["computed"] == 1


# ---------------------------------------------------------------------- reading


def test_reads_slices_of_the_symmetric_kernel(tmp_path, monkeypatch):
    layer = cnn_spatial()
    x = inputs("cnn_spatial", 7)
    store = compute_kernel(layer, x, path=tmp_path / "k", block_size=3, durable=False, progress=False)
    ntk = layer.kernel_fn(x, None, "ntk").numpy()  # (7, 7, 4, 4, 3, 3)
    view = store["ntk"]
    assert (view.shape, view.dtype, view.ndim, len(view)) == (ntk.shape, np.float64, 6, 7)
    for key in [(5,), (slice(2, 6), 1), (slice(None, None, -2), slice(1, 7, 3)), (Ellipsis, 0, 2),
                (slice(4, 1, -1), -1, 1, Ellipsis, slice(0, 2)), (slice(3, 3),)]:
        np.testing.assert_allclose(view[key], ntk[key], rtol=1e-12, atol=0, err_msg=str(key))
    np.testing.assert_allclose(np.asarray(view), ntk, rtol=1e-12, atol=0)
    assert torch.equal(view.to_torch(), torch.from_numpy(view[...]))
    lazy = view.to_dask()
    assert lazy.chunks[0] == (3, 3, 1) and lazy[1:6, 2:5].compute().tobytes() == view[1:6, 2:5].tobytes()
    assert pickle.loads(pickle.dumps(view))[2:4].tobytes() == view[2:4].tobytes()
    with pytest.raises(TypeError, match=r"KernelArray: index the rows with an int or a slice, got list"):
        view[[0, 2]]
    with pytest.raises(IndexError, match=r"KernelArray: too many indices \(7\) for a kernel of 6 axes"):
        view[0, 0, 0, 0, 0, 0, 0]
    with pytest.raises(IndexError, match=r"index 7 is out of range for 7 rows"):
        view[7]
    with pytest.raises(KeyError, match=r"no kernel 'ntkk' .* \(did you mean 'ntk'\?\); it holds nngp, ntk"):
        store["ntkk"]
    rows = view.to_torch(index=(slice(1, 6), slice(2, 5)))  # torch slices, as numpy ones
    assert isinstance(rows, torch.Tensor) and rows.numpy().tobytes() == view[1:6, 2:5].tobytes()
    monkeypatch.setattr(tangents._store._read, "available_memory", lambda device: 1000)
    monkeypatch.setattr(tangents._store._read, "_READS_ALWAYS_FIT", 0)
    # 3 x 7 examples x 144 location pairs x 8 bytes = 24192 bytes > 1000 free
    with pytest.raises(MemoryError, match=r"KernelArray: reading ntk\[2:5, :\] needs 0\.00 GB \(3 x 7 examples\) but 0\.00 GB are free; read fewer rows"):
        view[2:5]
    with pytest.raises(MemoryError, match=r"KernelArray.to_torch: ntk \(7, 7, 4, 4, 3, 3\) needs 0\.00 GB but 0\.00 GB are free on cpu; read it in slices"):
        view.to_torch()


def test_relative_paths_are_made_absolute_for_workers_elsewhere(tmp_path, monkeypatch):
    """A Dask worker (or a dask.array chunk read there) runs in another directory: stores
    remember absolute paths, also in pickled views."""
    monkeypatch.chdir(tmp_path)
    store = compute_kernel(fc(), inputs("fc", 5), path="relative.zarr", block_size=2, durable=False, progress=False)
    assert store.path == tmp_path / "relative.zarr" and KernelStore.open("relative.zarr").path.is_absolute()
    view = pickle.dumps(store["ntk"])
    monkeypatch.chdir(tmp_path.parent)
    assert pickle.loads(view)[...].tobytes() == store["ntk"][...].tobytes()


def test_tangents_table_of_contents_and_open_errors(tmp_path):
    assert tangents.compute_kernel is compute_kernel and tangents.KernelStore is KernelStore
    with pytest.raises(ValueError, match=r"KernelStore.open: .*nothing is not a tangents kernel store \(no zarr group there\)"):
        KernelStore.open(tmp_path / "nothing")


def test_chunks_written_directly_are_what_zarr_writes(tmp_path, monkeypatch):
    """Blocks are written in zarr's chunk encoding without zarr's (slower) write path; the
    encoding is checked against zarr's once per process, and zarr's path is the fallback."""
    import tangents._store._format as store_format

    assert store_format.direct_writes_match_zarr("float32") and store_format.direct_writes_match_zarr("float64")
    x = inputs("fc", 11)
    direct = compute_kernel(fc(), x, path=tmp_path / "direct", block_size=4, progress=False)
    monkeypatch.setattr(store_format, "_ENCODING_CHECKED", {"float64": False})
    through_zarr = compute_kernel(fc(), x, path=tmp_path / "zarr", block_size=4, progress=False)
    for name in ("nngp", "ntk"):
        for file in sorted((direct.path / name / "c").rglob("*")):
            if file.is_file():
                assert file.read_bytes() == (through_zarr.path / file.relative_to(direct.path)).read_bytes(), file


def test_readme_store_example_runs(tmp_path, monkeypatch):
    """The README's store example runs as printed (in a temporary directory)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Kernels larger than memory: stores and clusters", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md (stores)", "exec"), namespace)  # noqa: S102
    assert namespace["rows"].shape == (1000, 2000) and namespace["k"].shape == (2000, 2000)
    assert namespace["rows_t"].numpy().tobytes() == namespace["rows"].tobytes()
    assert namespace["store"].complete and len(namespace["store"].plan) == 10  # 4 x 4 blocks, upper triangle
    assert namespace["lazy"].shape == (2000, 2000) and namespace["k"].dtype == torch.float64  # (tests run in float64)
