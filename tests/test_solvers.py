"""Iterative solvers of `tangents.predict` (issue #14) against the dense factorizations.

The references are independent of the code under test: ``solver="cholesky"`` (Cholesky at
t = ∞, ``torch.linalg.eigh`` at finite t; itself checked against neural-tangents in
``test_predict.py``) and closed forms written here with ``torch.linalg.solve``. Tolerances
are 1e-6 relative, as the issue asks, with ``tol=1e-12`` in the solvers; the measured
errors are 1e-13–1e-11.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_cases import relative_error

from tangents import predict, stax
from tangents._predict import _ensemble, _mse, _operators, _solvers


# Tiny products on a shared 2-core machine are many times slower with two spin-waiting
# OpenMP threads than with one; these tests only do tiny products.
@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _fc() -> stax.Layer:
    return stax.serial(
        stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(),
        stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(),
        stax.Dense(1, W_std=1.5, b_std=0.05),
    )


def _cnn() -> stax.Layer:
    return stax.serial(
        stax.Conv(8, (3, 3), padding="SAME", W_std=1.5, b_std=0.05), stax.Relu(),
        stax.Conv(8, (3, 3), padding="SAME", W_std=1.5, b_std=0.05), stax.Relu(),
        stax.GlobalAvgPool(), stax.Dense(1, W_std=1.5, b_std=0.05),
    )


NETS = {"fc": (_fc, (5,), 48), "cnn": (_cnn, (2, 5, 5), 16)}


def _data(name: str, n_test: int = 5, outputs: int = 2):
    build, shape, n = NETS[name]
    g = torch.Generator().manual_seed(1)
    x = torch.randn((n,) + shape, generator=g)
    y = torch.randn((n, outputs), generator=g)
    xt = torch.randn((n_test,) + shape, generator=g)
    return build().kernel_fn, x, y, xt


DIAG_REG = 1e-3


# ---------------------------------------------------------------------- CG = Cholesky


@pytest.mark.parametrize("net", ["fc", "cnn"])
def test_cg_equals_cholesky_at_infinite_time(net):
    kernel_fn, x, y, xt = _data(net)
    exact = predict.gradient_descent_mse_ensemble(kernel_fn, x, y, diag_reg=DIAG_REG, solver="cholesky")
    cg = predict.gradient_descent_mse_ensemble(kernel_fn, x, y, diag_reg=DIAG_REG, solver="cg", tol=1e-12)
    a, b = exact(x_test=xt, compute_cov=True), cg(x_test=xt, compute_cov=True)
    for g in ("nngp", "ntk"):
        # measured: means 1e-13, covariances 1e-14
        assert relative_error(getattr(b, g).mean, getattr(a, g).mean.numpy()) <= 1e-6
        assert relative_error(getattr(b, g).covariance, getattr(a, g).covariance.numpy()) <= 1e-6


@pytest.mark.parametrize("net", ["fc", "cnn"])
def test_nystrom_with_all_centres_equals_cholesky(net):
    kernel_fn, x, y, xt = _data(net)
    n = x.shape[0]
    exact = predict.gradient_descent_mse_ensemble(kernel_fn, x, y, diag_reg=DIAG_REG, solver="cholesky")(x_test=xt)
    ny = predict.nystrom(kernel_fn, x, y, n_centers=n, diag_reg=DIAG_REG, seed=0, tol=1e-12)
    out = ny(x_test=xt)
    for g in ("nngp", "ntk"):
        # measured 1e-12 (FC), 4e-12 (CNN); Falkon's preconditioner is exact at M = N: 2 iterations
        assert relative_error(getattr(out, g), getattr(exact, g).numpy()) <= 1e-6
    assert ny.info["iterations"]["ntk"] <= 3
    # fitted values on the training inputs: K (K + λI)⁻¹ y, λ = diag_reg · mean(diag K)
    k = kernel_fn(x, None, "ntk")
    closed = k @ torch.linalg.solve(k + DIAG_REG * k.diagonal().mean() * torch.eye(n), y)
    assert relative_error(ny(get="ntk"), closed.numpy()) <= 1e-6  # measured 8e-13


@pytest.mark.parametrize("centers", ["uniform", "leverage"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_nystrom_with_fewer_centres_equals_its_closed_form(centers, dtype):
    """M < N: the Nyström estimator K_tC α, (K_nCᵀ K_nC + λ K_CC) α = K_nCᵀ y, written here
    with torch.linalg.solve in float64 on the centres the call chose; float32 inputs give
    float32 kernels solved in float64."""
    kernel_fn, x, y, xt = _data("fc", outputs=3)
    x, xt = x.to(dtype), xt.to(dtype)
    ny = predict.nystrom(kernel_fn, x, y, n_centers=20, diag_reg=DIAG_REG, centers=centers, seed=0, tol=1e-12)
    out = ny(x_test=xt, get="ntk")
    assert out.dtype == dtype and out.shape == (len(xt), 3)
    c = ny.info["centers"]
    assert len(c) == 20 and len(set(c.tolist())) == 20  # M distinct training points
    k_nc, k_tc = kernel_fn(x, x[c], "ntk").double(), kernel_fn(xt, x[c], "ntk").double()
    k_cc = kernel_fn(x[c], None, "ntk").double()
    # the rows of the centres themselves as kernel_fn(x_C, None) computes them (as tangents.batch
    # does): kernel_fn(x, x2) at coincident points differs by 5e-5 relative (arccos of a
    # correlation rounded below 1), which the normal equations (condition 4e4) amplify to 4e-6
    k_nc[c] = k_cc
    lam = DIAG_REG * kernel_fn(x, None, "ntk").double().diagonal().mean()
    alpha = torch.linalg.solve(k_nc.T @ k_nc + lam * k_cc, k_nc.T @ y)
    # measured 4e-13 (float64), 3e-8 (float32: the output's rounding; the reference solves the
    # same float32 kernel entries in float64)
    assert relative_error(out, (k_tc @ alpha).numpy()) <= 1e-6


@pytest.mark.parametrize("kept_blocks", [0, 2])
def test_nystrom_blocks_on_disk_give_the_numbers_of_blocks_in_memory(tmp_path, kept_blocks):
    """cache_dir: the blocks of K(X, C) beyond cache_bytes (none, or all but two kept in
    memory) are written once and read at every CG iteration. The numbers are those of the
    in-memory fit; nothing is recomputed after the first pass, and the files are gone after
    the fit."""
    from tangents._predict import _nystrom_blocks

    kernel_fn, x, y, xt = _data("fc", outputs=3)
    x = x.to(torch.float32)
    kept = predict.nystrom(kernel_fn, x, y, n_centers=20, diag_reg=DIAG_REG, seed=0, tol=1e-10)(x_test=xt, get="ntk")
    computed = []
    original = _nystrom_blocks.LocalBlocks.block

    def counting(self, b):
        before = self.computed
        out = original(self, b)
        computed.append(self.computed - before)
        return out

    import tangents._predict._nystrom as nystrom_module

    rows = nystrom_module.BLOCK_BYTES
    try:
        nystrom_module.BLOCK_BYTES = 20 * 8 * 8  # blocks of 8 rows: several blocks, all spilled
        _nystrom_blocks.LocalBlocks.block = counting
        ny = predict.nystrom(kernel_fn, x, y, n_centers=20, diag_reg=DIAG_REG, seed=0, tol=1e-10,
                             cache_bytes=kept_blocks * 8 * 20 * 4, cache_dir=tmp_path)
        spilled = ny(x_test=xt, get="ntk")
    finally:
        _nystrom_blocks.LocalBlocks.block = original
        nystrom_module.BLOCK_BYTES = rows
    n_blocks = -(-len(x) // 8)
    assert ny.info["iterations"]["ntk"] >= 2
    # the first pass computes every block; the CG passes read them all; the predictions compute
    assert sum(computed[:n_blocks]) == n_blocks and sum(computed[n_blocks:-1]) == 0
    assert list(tmp_path.iterdir()) == []
    # measured 0: blocks of 8 rows against one block sum the float64 products in another order
    # (1e-15), below the float32 output's rounding; 1e-6 would still catch a wrong block
    assert relative_error(spilled, kept) <= 1e-6


def test_nystrom_cache_dir_is_checked(tmp_path):
    kernel_fn, x, y, xt = _data("fc")
    with pytest.raises(ValueError, match=r"cache_dir=.*missing.* is not an existing directory; create it first"):
        predict.nystrom(kernel_fn, x, y, n_centers=8, diag_reg=DIAG_REG, cache_dir=tmp_path / "missing")
    with pytest.raises(TypeError, match="cache_dir must be a directory path or None, got int"):
        predict.nystrom(kernel_fn, x, y, n_centers=8, diag_reg=DIAG_REG, cache_dir=3)
    with pytest.raises(ValueError, match="with a client they stay in the workers' memory"):
        predict.nystrom(kernel_fn, x, y, n_centers=8, diag_reg=DIAG_REG, cache_dir=tmp_path, client=object())
    # a disk too small for the blocks beyond cache_bytes: refused before any work, naming cache_dir
    from tangents._predict import _nystrom

    full = _nystrom.shutil.disk_usage
    try:
        _nystrom.shutil.disk_usage = lambda path: full(path)._replace(free=10)
        with pytest.raises(OSError, match=r"need .* GiB in cache_dir=.* but 0.0 GiB are free; choose a larger disk, raise cache_bytes"):
            predict.nystrom(kernel_fn, x, y, n_centers=8, diag_reg=DIAG_REG, cache_bytes=0, cache_dir=tmp_path)(
                x_test=xt, get="ntk")
    finally:
        _nystrom.shutil.disk_usage = full


def test_falkon_factors_share_one_matrix():
    """Both Cholesky factors of the preconditioner in one M x M matrix (Falkon's layout), built
    in place: T by the blocked Cholesky on the upper triangle (the lower one untouched), TTᵀ by
    blocks into the lower triangle, then A's factorization there through the transposed view
    (sizes below, at and across the block size); against torch's full products and
    factorizations."""
    from tangents._predict._nystrom import _cholesky_upper_in_place, _FalkonPreconditioner, _gram_of_upper_into_lower

    g = torch.Generator().manual_seed(0)
    for m in (1, 7, 16, 17, 40):
        a = torch.randn(m, m, dtype=torch.float64, generator=g)
        k = a @ a.T + m * torch.eye(m, dtype=torch.float64)
        f = k.clone()
        assert _cholesky_upper_in_place(f, block=16)
        t_ref = torch.linalg.cholesky(k, upper=True)
        assert float((f.triu() - t_ref).abs().max()) <= 1e-14 * float(t_ref.abs().max())  # measured 2e-16
        assert torch.equal(f.tril(-1), k.tril(-1))  # below: untouched
        diagonal = _gram_of_upper_into_lower(f, 0.5, block=16)
        gram = 0.5 * t_ref @ t_ref.T
        got = f.tril(-1) + f.tril(-1).T + torch.diag(diagonal)
        assert float((got - gram).abs().max()) <= 1e-14 * float(gram.abs().max())  # measured 3.8e-16
        assert float((f.triu() - t_ref).abs().max()) <= 1e-14 * float(t_ref.abs().max())  # above: untouched
        f.diagonal().copy_(diagonal + 1.0)
        assert _cholesky_upper_in_place(f.mT, block=16)
        a_ref = torch.linalg.cholesky(gram + torch.eye(m, dtype=torch.float64), upper=True)
        assert float((f.tril() - a_ref.T).abs().max()) <= 1e-14 * float(a_ref.abs().max())  # measured 2.6e-16
        assert float((f.triu(1) - t_ref.triu(1)).abs().max()) <= 1e-14 * float(t_ref.abs().max())
    h = torch.eye(40, dtype=torch.float64)
    h[30, 30] = -1.0  # not positive definite, in the third block
    assert not _cholesky_upper_in_place(h, block=16)
    # the preconditioner keeps one M x M matrix and two diagonals; B = T⁻¹A⁻¹ and Bᵀ against
    # solves with the factors computed by torch
    k = a @ a.T + torch.eye(40, dtype=torch.float64)
    pre = _FalkonPreconditioner({"ntk": k.clone()}, "ntk", 1e-3, 1e-4, torch.float64, torch.float64)
    held = [v for v in vars(pre).values() if isinstance(v, torch.Tensor)]
    assert sum(t.numel() for t in held) == 40 * 40 + 2 * 40
    t_factor = torch.linalg.cholesky(k + pre.jitter * torch.eye(40, dtype=torch.float64), upper=True)
    a_factor = torch.linalg.cholesky(t_factor @ t_factor.T / 40 + 1e-4 * torch.eye(40, dtype=torch.float64), upper=True)
    v = torch.randn(40, 2, dtype=torch.float64, generator=g)
    b_ref = torch.linalg.solve(a_factor @ t_factor, v)
    # measured 2.1e-15 (the condition of A T is ~1e3)
    assert float((pre.b(v) - b_ref).abs().max()) <= 1e-12 * float(b_ref.abs().max())
    bt_ref = torch.linalg.solve((a_factor @ t_factor).T, v)
    assert float((pre.bt(v) - bt_ref).abs().max()) <= 1e-12 * float(bt_ref.abs().max())  # measured 1.2e-15


def test_leverage_centres_find_the_isolated_points():
    """40 copies (up to 1e-6) of one input and 8 distinct ones: ridge leverage scores are about
    1/40 on the copies and about 1 on the others, so centers='leverage' picks the distinct
    points that a uniform sample of 8 mostly misses."""
    kernel_fn, x, y, xt = _data("fc")
    g = torch.Generator().manual_seed(5)
    x = torch.cat([x[:1] + 1e-6 * torch.randn(40, 5, generator=g), x[1:9]])
    ny = predict.nystrom(kernel_fn, x, y, n_centers=8, diag_reg=1e-2, centers="leverage", seed=0)
    ny(x_test=xt, get="ntk")
    isolated = int((ny.info["centers"] >= 40).sum())
    # measured 6 of 8 (seeds 0-4: 6, 6, 7, 8, 6); a uniform sample of 8 holds 1.3 on average and
    # 5 or more with probability 1.5e-3 (hypergeometric)
    assert isolated >= 5


def test_cg_float32_kernel_float64_solve():
    """A float32 kernel is solved in float64 (blocks converted one at a time): the answer is
    the float64 solve of the float32-rounded kernel, to CG's tolerance."""
    kernel_fn, x, y, xt = _data("fc")
    k32, ktd32 = kernel_fn(x.float(), None, "ntk"), kernel_fn(xt.float(), x.float(), "ntk")
    lam = DIAG_REG * k32.double().diagonal().mean()
    exact = ktd32.double() @ torch.linalg.solve(k32.double() + lam * torch.eye(len(x)), y)
    out = predict.gp_inference(k32, y.float(), diag_reg=DIAG_REG, solver="cg", tol=1e-12)("ntk", ktd32)
    assert out.dtype == torch.float32
    assert relative_error(out, exact.numpy()) <= 1e-6  # measured 6e-8 (float32 output rounding)


def test_interleaved_kernel_trace_axes_empty():
    """trace_axes=() with K ⊗ I (N, N, C, C): CG over blocks of the interleaved kernel."""
    kernel_fn, x, y, xt = _data("fc")
    eye = torch.eye(2)
    k4 = torch.einsum("ab,cd->abcd", kernel_fn(x, None, "ntk"), eye)
    ktd4 = torch.einsum("ab,cd->abcd", kernel_fn(xt, x, "ntk"), eye)
    for t in (None, 3.0):
        a = predict.gradient_descent_mse(k4, y, diag_reg=DIAG_REG, trace_axes=(), solver="cholesky")(t, 0.0, 0.0, ktd4)
        b = predict.gradient_descent_mse(k4, y, diag_reg=DIAG_REG, trace_axes=(), solver="cg", tol=1e-12)(t, 0.0, 0.0, ktd4)
        for u, v in zip(a, b):
            assert relative_error(v, u.numpy()) <= 1e-6  # measured 1e-14


# ---------------------------------------------------------------------- Krylov finite t


@pytest.mark.parametrize("two_pass", [False, True], ids=["stored-basis", "two-pass"])
def test_lanczos_finite_time_equals_eigendecomposition(monkeypatch, two_pass):
    kernel_fn, x, y, xt = _data("fc")
    if two_pass:  # no memory for the basis: it is regenerated by a second pass
        monkeypatch.setattr(_mse, "memory_budget", lambda device, fraction=0.5: 0)
    t = [0.5, 5.0, 50.0, 500.0]
    exact = predict.gradient_descent_mse_ensemble(kernel_fn, x, y, 2.0, diag_reg=DIAG_REG, solver="cholesky")
    krylov = predict.gradient_descent_mse_ensemble(kernel_fn, x, y, 2.0, diag_reg=DIAG_REG, solver="cg", tol=1e-12)
    a, b = exact(t=t, x_test=xt, compute_cov=True), krylov(t=t, x_test=xt, compute_cov=True)
    for g in ("nngp", "ntk"):
        # measured: means 2e-14, covariances 3e-15 (both modes)
        assert relative_error(getattr(b, g).mean, getattr(a, g).mean.numpy()) <= 1e-6
        assert relative_error(getattr(b, g).covariance, getattr(a, g).covariance.numpy()) <= 1e-6
    train_a, train_b = exact(t=t, get="ntk"), krylov(t=t, get="ntk")  # training inputs
    assert relative_error(train_b, train_a.numpy()) <= 1e-6
    # gradient_descent_mse from a non-zero start, train and test together (one Lanczos run)
    k, ktd = kernel_fn(x, None, "ntk"), kernel_fn(xt, x, "ntk")
    f0, g0 = 0.3 * torch.randn(y.shape), 0.3 * torch.randn(len(xt), 2)
    a = predict.gradient_descent_mse(k, y, 0.7, DIAG_REG, solver="cholesky")(t, f0, g0, ktd)
    b = predict.gradient_descent_mse(k, y, 0.7, DIAG_REG, solver="cg", tol=1e-12)(t, f0, g0, ktd)
    for u, v in zip(a, b):
        assert relative_error(v, u.numpy()) <= 1e-6  # measured 1e-14


# ---------------------------------------------------------------------- stored kernels


class _Reads:
    """A stored array that records the rows of every read (the protocol of a kernel store)."""

    def __init__(self, array):
        self.array, self.rows = array, []

    shape = property(lambda self: self.array.shape)
    dtype = property(lambda self: self.array.dtype)

    def __getitem__(self, key):
        rows = key[0] if isinstance(key, tuple) else key
        self.rows.append(len(range(*rows.indices(self.array.shape[0]))))
        return self.array[key]


@pytest.mark.parametrize("kind", ["zarr", "memmap"])
def test_cg_on_stored_kernel(tmp_path, kind, monkeypatch):
    zarr = pytest.importorskip("zarr")
    kernel_fn, x, y, xt = _data("fc")
    n = len(x)
    k_dd, k_td = kernel_fn(x, None, ("nngp", "ntk")), kernel_fn(xt, x, ("nngp", "ntk"))
    if kind == "zarr":  # chunks of 10 rows: blocks do not divide N = 48
        group = zarr.open_group(str(tmp_path / "k.zarr"), mode="w")
        for g in ("nngp", "ntk"):
            group.create_array(g, shape=(n, n), chunks=(10, 10), dtype="f8")[:] = getattr(k_dd, g).numpy()
        store = {g: _Reads(group[g]) for g in ("nngp", "ntk")}
    else:
        store = {}
        for g in ("nngp", "ntk"):
            mm = np.memmap(tmp_path / f"{g}.f8", dtype="f8", mode="w+", shape=(n, n))
            mm[:] = getattr(k_dd, g).numpy()
            store[g] = _Reads(mm)
    monkeypatch.setattr(_operators, "BLOCK_BYTES", 12 * n * 8)  # blocks of 12 rows (10 for zarr's chunks)
    exact = predict.gp_inference(k_dd, y, diag_reg=DIAG_REG, solver="cholesky")
    stored = predict.gp_inference(store, y, diag_reg=DIAG_REG, solver="cg", tol=1e-12)
    for g in ("nngp", "ntk"):
        # measured 1e-13
        assert relative_error(stored(g, k_td), exact(g, k_td).numpy()) <= 1e-6
    assert 0 < max(store["ntk"].rows) <= 12  # read by blocks of rows, never whole
    # the ensemble with stored train-train kernels; finite t by Lanczos over the store
    ens = predict.gradient_descent_mse_ensemble(kernel_fn, x, y, diag_reg=DIAG_REG, solver="cg", tol=1e-12,
                                                k_train_train=store)
    ref = predict.gradient_descent_mse_ensemble(kernel_fn, x, y, diag_reg=DIAG_REG, solver="cholesky")
    for t in (None, 4.0):
        assert relative_error(ens(t=t, x_test=xt, get="ntk"), ref(t=t, x_test=xt, get="ntk").numpy()) <= 1e-6
    # "auto" with a stored kernel that fits: loaded and factorized
    auto = predict.gradient_descent_mse(store["ntk"], y, diag_reg=DIAG_REG)(None, 0.0, 0.0, k_td.ntk)[1]
    assert relative_error(auto, exact("ntk", k_td).numpy()) <= 1e-12  # the same Cholesky: 1e-15


@pytest.mark.parametrize("solver", ["cholesky", "cg", "auto"])
def test_stored_train_and_test_kernels_from_npy_files(tmp_path, solver):
    """Predictions from kernels on disk without loading them by hand (#13 item 5): train-train
    and test-train kernels as read-only ``np.load(mmap_mode="r")`` arrays (torch cannot view
    them without copying), against the closed form ``K_td (K + λI)⁻¹ y`` written here."""
    kernel_fn, x, y, xt = _data("fc")
    k, ktd = kernel_fn(x, None, "ntk"), kernel_fn(xt, x, "ntk")
    np.save(tmp_path / "k.npy", k.numpy())
    np.save(tmp_path / "ktd.npy", ktd.numpy())
    k_mm, ktd_mm = np.load(tmp_path / "k.npy", mmap_mode="r"), np.load(tmp_path / "ktd.npy", mmap_mode="r")
    lam = DIAG_REG * k.diagonal().mean()
    closed = (ktd @ torch.linalg.solve(k + lam * torch.eye(len(x)), y)).numpy()
    gp = predict.gp_inference(k_mm, y, diag_reg=DIAG_REG, solver=solver, tol=1e-12)("ntk", ktd_mm)
    assert relative_error(gp, closed) <= 1e-6  # measured 1e-12 (CG), 4e-15 (Cholesky, also "auto")
    mse = predict.gradient_descent_mse(k_mm, y, diag_reg=DIAG_REG, solver=solver, tol=1e-12)(None, 0.0, 0.0, ktd_mm)[1]
    assert relative_error(mse, closed) <= 1e-6  # measured as above
    np.testing.assert_array_equal(np.load(tmp_path / "k.npy"), k.numpy())  # the files are untouched


# ---------------------------------------------------------------------- recomputed blocks, auto


def test_blocks_recomputed_from_kernel_fn(monkeypatch):
    """A train-train kernel that does not fit: blocks kernel_fn(x[rows], x) for every product,
    test-train kernels by blocks of test points; the same numbers as the dense solve."""
    kernel_fn, x, y, xt = _data("fc", n_test=9)
    exact = predict.gradient_descent_mse_ensemble(kernel_fn, x, y, diag_reg=DIAG_REG, solver="cholesky")
    monkeypatch.setattr(_ensemble, "memory_budget", lambda device, fraction=0.5: 0)
    monkeypatch.setattr(_operators, "BLOCK_BYTES", 10 * len(x) * 8)
    monkeypatch.setattr(_ensemble, "BLOCK_BYTES", 4 * len(x) * 8)
    calls = []

    def counted(x1, x2=None, get=None, **kwargs):
        calls.append((len(x1), None if x2 is None else len(x2)))
        return kernel_fn(x1, x2, get, **kwargs)

    blocked = predict.gradient_descent_mse_ensemble(counted, x, y, diag_reg=DIAG_REG, solver="cg", tol=1e-12)
    for t in (None, 2.0):
        a, b = exact(t=t, x_test=xt), blocked(t=t, x_test=xt)
        for g in ("nngp", "ntk"):
            assert relative_error(getattr(b, g), getattr(a, g).numpy()) <= 1e-6  # measured 1e-14
    assert (len(x), None) not in calls  # never the whole train-train kernel
    assert max(n1 for n1, n2 in calls if n2 == len(x)) <= 10  # train blocks of 10 rows
    assert (len(xt), len(x)) not in calls  # test-train kernels by blocks of 4 test points


def test_auto_picks_by_size_and_memory(monkeypatch):
    kernel_fn, x, y, xt = _data("fc")
    opts = _solvers.SolverOptions()
    assert _solvers.choose(opts, 100, 10**6, torch.device("cpu"), False) == "cholesky"
    assert _solvers.choose(opts, _solvers.AUTO_CHOLESKY_MAX + 1, 10**6, torch.device("cpu"), False) == "cg"
    assert _solvers.choose(opts, _solvers.AUTO_EIGH_MAX + 1, 10**6, torch.device("cpu"), True) == "cg"
    monkeypatch.setattr(_solvers, "memory_budget", lambda device, fraction=0.5: 10**5)
    assert _solvers.choose(opts, 100, 10**6, torch.device("cpu"), False) == "cg"  # does not fit
    # end to end: with no free memory "auto" solves by CG, to its default tol=1e-6
    exact = predict.gradient_descent_mse_ensemble(kernel_fn, x, y, diag_reg=DIAG_REG, solver="cholesky")(x_test=xt, get="ntk")
    auto = predict.gradient_descent_mse_ensemble(kernel_fn, x, y, diag_reg=DIAG_REG)
    assert relative_error(auto(x_test=xt, get="ntk"), exact.numpy()) <= 1e-5  # measured 2e-7


# ---------------------------------------------------------------------- failures


def test_non_convergence_reports_the_residual():
    kernel_fn, x, y, xt = _data("fc")
    ens = predict.gradient_descent_mse_ensemble(kernel_fn, x, y, diag_reg=1e-6, solver="cg", max_iter=2,
                                                preconditioner="none")
    with pytest.raises(predict.ConvergenceError, match=r"did not converge: after 2 iterations the relative residual .* is \d\.\d\de[-+]\d\d .*above tol=1e-06.*Raise max_iter") as info:
        ens(x_test=xt, get="ntk")
    assert info.value.iterations == 2 and info.value.residual > 1e-6 and info.value.solution.shape == (len(x), 2)
    with pytest.raises(predict.ConvergenceError, match=r"Lanczos iteration .* did not converge: after 2 steps .* changed by"):
        ens(t=100.0, x_test=xt, get="ntk")
    ny = predict.nystrom(kernel_fn, x, y, n_centers=20, diag_reg=1e-6, seed=0, max_iter=1)
    with pytest.raises(predict.ConvergenceError, match="preconditioned Nyström system did not converge: after 1 iterations"):
        ny(x_test=xt, get="ntk")


@pytest.mark.parametrize("preconditioner", ["pivoted_cholesky", "nystrom"])
def test_duplicated_points_without_diag_reg_say_raise_diag_reg(preconditioner):
    kernel_fn, x, y, xt = _data("fc")
    x = torch.cat([x[:24], x[:24]])  # every training point twice: a singular kernel
    ens = predict.gradient_descent_mse_ensemble(kernel_fn, x, y, solver="cg", preconditioner=preconditioner)
    with pytest.raises(ValueError, match="singular or nearly so.*Duplicated.*Raise diag_reg"):
        ens(x_test=xt, get="ntk")
    with pytest.raises(ValueError, match="singular or nearly so.*Duplicated.*Raise diag_reg"):
        predict.nystrom(kernel_fn, x, y, n_centers=48, seed=0)(x_test=xt, get="ntk")
    # a preconditioner too small to see it: CG's failure says the same
    weak = predict.gradient_descent_mse_ensemble(kernel_fn, x, y, solver="cg", preconditioner_rank=4, max_iter=30)
    with pytest.raises(predict.ConvergenceError, match="diag_reg is 0: a kernel with duplicated training points is singular.*raise diag_reg"):
        weak(x_test=xt, get="ntk")
    # with diag_reg it works
    assert torch.isfinite(predict.gradient_descent_mse_ensemble(kernel_fn, x, y, diag_reg=1e-4, solver="cg")(x_test=xt, get="ntk")).all()


def test_nan_kernel_in_cg():
    k = torch.eye(6) + 0.1
    k[2, 3] = k[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        predict.gradient_descent_mse(k, torch.randn(6, 1), solver="cg")(None, 0.0, 0.0, torch.ones(2, 6))


def test_progress_bar_shows_iterations_and_residual(capsys, monkeypatch):
    import functools

    monkeypatch.setattr(_solvers, "tqdm", functools.partial(_solvers.tqdm, mininterval=0))  # redraw every step
    kernel_fn, x, y, xt = _data("fc")
    predict.gradient_descent_mse_ensemble(kernel_fn, x, y, diag_reg=DIAG_REG, solver="cg", progress=True)(x_test=xt, get="ntk")
    err = capsys.readouterr().err
    assert "cg (the train-train 'ntk' kernel)" in err and "residual" in err and "/100" in err


# ---------------------------------------------------------------------- Dask


def test_nystrom_on_a_dask_cluster():
    distributed = pytest.importorskip("distributed")
    kernel_fn, x, y, xt = _data("fc")
    local = predict.nystrom(kernel_fn, x, y, n_centers=20, diag_reg=DIAG_REG, seed=0, tol=1e-12)(x_test=xt)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
            from tangents._predict import _nystrom

            # several blocks (tasks) of 8 rows
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(_nystrom, "BLOCK_BYTES", 8 * 20 * 8 * 2)
                remote = predict.nystrom(kernel_fn, x, y, n_centers=20, diag_reg=DIAG_REG, seed=0, tol=1e-12,
                                         client=client)(x_test=xt)
    for g in ("nngp", "ntk"):
        # the same centres and blocks: only the summation order of CG's products differs (1e-12)
        assert relative_error(getattr(remote, g), getattr(local, g).numpy()) <= 1e-8
