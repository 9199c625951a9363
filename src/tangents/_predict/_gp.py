"""Exact GP posteriors of the NNGP, the NTK ensemble at t = ∞, and the NTKGP."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Optional

import torch

from ._common import (
    ArrayLike,
    Axes,
    Cholesky,
    Gaussian,
    Get,
    Layout,
    as_tensor,
    canonical_get,
    check_bool,
    check_finite,
    check_number,
    check_solve_dtype,
    check_targets,
    first_kernel,
    get_attr,
    named_output,
    output_dtype,
    regularize,
    symmetrize,
    to_2d,
    work,
    zip_pairs,
)
from ._operators import (
    KernelOperator,
    StoredKernel,
    TensorKernel,
    as_block,
    is_stored,
    memory_budget,
    rows_matmul,
)
from ._solvers import IterativeSystem, SolverOptions, choose, solver_options


class GPSolver:
    """The (regularized) train-train kernels and their solves, each computed once per kernel.

    ``method="cholesky"`` factorizes the dense kernel; ``"cg"`` solves by preconditioned
    conjugate gradients on matrix products (`_solvers.IterativeSystem`); ``"auto"`` (the
    `SolverOptions` default) picks one per kernel by size and free memory.

    Args:
        train_kernel: ``name -> k_train_train[name]``: a tensor or array in its original
            (interleaved) shape, a stored array (read by slices), or a `KernelOperator`.
        y_flat: flattened targets ``(N, m)`` in the working precision (its dtype).
        options: the solver arguments (`SolverOptions`); default: ``"auto"``.
    """

    def __init__(
        self,
        train_kernel: Callable[[str], Any],
        y_flat: torch.Tensor,
        diag_reg: float,
        diag_reg_absolute_scale: bool,
        where: str = "gp_inference",
        options: Optional[SolverOptions] = None,
    ) -> None:
        self.where = where
        self.dtype = y_flat.dtype
        self.device = y_flat.device
        self.train_kernel = train_kernel
        self.y_flat = y_flat
        self.diag_reg = diag_reg
        self.diag_reg_absolute_scale = diag_reg_absolute_scale
        self.options = options if options is not None else SolverOptions()
        self._op: dict[str, KernelOperator] = {}
        self._k2: dict[str, torch.Tensor] = {}
        self._chol: dict[str, Cholesky] = {}
        self._system: dict[str, IterativeSystem] = {}
        self._alpha: dict[tuple[str, str], torch.Tensor] = {}

    def what(self, g: str) -> str:
        return f"the train-train {g!r} kernel"

    def operator(self, g: str) -> KernelOperator:
        """The kernel ``g`` as a `KernelOperator` (in memory, stored or recomputed)."""
        if g not in self._op:
            k = self.train_kernel(g)
            if isinstance(k, KernelOperator):
                self._op[g] = k
            elif is_stored(k):
                self._op[g] = StoredKernel(k, self.device, self.what(g))
            else:
                self._op[g] = TensorKernel(as_tensor(k, "k_train_train", self.device), self.what(g))
        return self._op[g]

    def method(self, g: str, finite_t: bool = False) -> str:
        """``"cholesky"`` (dense factorizations) or ``"cg"`` (matrix products) for kernel ``g``."""
        op = self.operator(g)
        n = op.n
        held = isinstance(op, TensorKernel)
        # the working copy, the regularized copy factorized in place, LAPACK's column-major
        # copy of it, and the kernel itself when it is not already held in memory
        dense = n * n * (3 * self.dtype.itemsize + (0 if held else op.dtype.itemsize))
        return choose(self.options, n, dense, self.device, finite_t)

    def k2(self, g: str) -> torch.Tensor:
        """The unregularized train-train kernel ``g`` as a dense matrix ``(n, n)`` in the working
        precision (read block by block from a store, after checking it fits in memory)."""
        if g not in self._k2:
            op = self.operator(g)
            if isinstance(op, TensorKernel):
                self._k2[g] = work(to_2d(op.k), self.dtype)
            else:
                need = op.n * op.n * self.dtype.itemsize * 3
                free = memory_budget(self.device, 1.0)
                if need > free:
                    raise MemoryError(
                        f"{self.where}: solver='cholesky' needs {need / 2**30:.1f} GiB for {self.what(g)} "
                        f"({op.n} x {op.n}) and its factor, but {free / 2**30:.1f} GiB is free. Use "
                        f"solver='cg' (matrix products over blocks of the kernel) or 'auto'."
                    )
                dense = torch.empty((op.n, op.n), dtype=self.dtype, device=self.device)
                for i, j, blk in op.blocks():
                    dense[i * op.per : j * op.per] = blk.to(device=self.device, dtype=self.dtype)
                self._k2[g] = dense
        return self._k2[g]

    def chol(self, g: str) -> Cholesky:
        if g not in self._chol:
            k2 = self.k2(g)
            k = regularize(k2, self.diag_reg, self.diag_reg_absolute_scale)
            k = k.clone() if k is k2 else k  # a scratch copy, factorized in place
            self._chol[g] = Cholesky(k, f"{self.where}: the train-train {g!r} kernel (+ diag_reg)", overwrite=True)
        return self._chol[g]

    def system(self, g: str) -> IterativeSystem:
        if g not in self._system:
            self._system[g] = IterativeSystem(
                self.operator(g), self.diag_reg, self.diag_reg_absolute_scale, self.options, self.dtype,
                self.where, self.what(g),
            )
        return self._system[g]

    def solve(self, g: str, b: torch.Tensor) -> torch.Tensor:
        """``(K_g + λI)⁻¹ b`` for ``b`` of shape ``(n, c)``."""
        if self.method(g) == "cholesky":
            return self.chol(g).solve(b)
        return self.system(g).solve(b)

    def matmul(self, g: str, v: torch.Tensor) -> torch.Tensor:
        """``K_g @ v`` (unregularized)."""
        if g in self._k2:
            return self._k2[g] @ v
        return self.operator(g).matmul(v)

    def alpha(self, g: str) -> torch.Tensor:
        """``K_g⁻¹ y``, shape ``(N, m)``."""
        key = (g, self.method(g))
        if key not in self._alpha:
            self._alpha[key] = self.solve(g, self.y_flat)
        return self._alpha[key]

    def mean(self, g: str, ktd: torch.Tensor) -> torch.Tensor:
        """``K_td K⁻¹ y``: ``(N_test, m)`` from ``ktd`` ``(N_test, N)``."""
        return ktd @ self.alpha(g)

    def cov(self, g: str, ktd: Callable[[str], torch.Tensor], ktt: torch.Tensor) -> torch.Tensor:
        r"""Posterior covariance ``(N_test, N_test)`` on the test set.

        * ``nngp``/``ntkgp`` (kernel ``K``): :math:`K_{tt} - K_{td}K^{-1}K_{dt}`;
        * ``ntk`` (gradient flow to ``t = ∞`` from the NNGP prior, :math:`\Theta` the NTK,
          :math:`\mathcal K` the NNGP): :math:`\mathcal K_{tt} + A^\top \mathcal K_{dd} A
          - A^\top \mathcal K_{dt} - \mathcal K_{td} A` with :math:`A = \Theta^{-1}\Theta_{dt}`.
        """
        if g in ("nngp", "ntkgp"):
            k = "ntk" if g == "ntkgp" else "nngp"
            if self.method(k) == "cg":
                return symmetrize(ktt - ktd(k) @ self.system(k).solve(ktd(k).T))
            b = self.chol(k).half_solve(ktd(k).T)
            return symmetrize(ktt - b.T @ b)
        if self.method("ntk") == "cg":
            a = self.system("ntk").solve(ktd("ntk").T)  # Θ⁻¹ Θ_dt, (N, N_test)
        else:
            chol = self.chol("ntk")
            # two triangular solves on the transposed view (faster than cholesky_solve here)
            a = chol.half_solve(ktd("ntk").T)
            a = torch.linalg.solve_triangular(chol.L.T, a, upper=True)
        term_2 = a.T @ ktd("nngp").T
        cov = a.T @ self.matmul("nngp", a) - term_2 - term_2.T + ktt
        return symmetrize(cov)


def gp_inference(
    k_train_train: Any,
    y_train: ArrayLike,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
    trace_axes: Axes = (-1,),
    *,
    solve_dtype: torch.dtype = torch.float64,
    solver: str = "auto",
    tol: float = 1e-6,
    max_iter: Optional[int] = None,
    preconditioner: str = "auto",
    preconditioner_rank: Optional[int] = None,
    progress: Optional[bool] = None,
) -> Callable[..., Any]:
    r"""The posterior of the NNGP, of the infinite NTK ensemble at t = ∞, and of the NTKGP.

    With :math:`K` the train-train kernel (+ ``diag_reg``), the mean on test points is
    :math:`K_{td} K^{-1} Y` for each of ``"nngp"``, ``"ntk"`` and ``"ntkgp"`` (the latter two
    with the NTK); the covariances are given in :meth:`GPSolver.cov`. Factorizations and
    solves are computed on first use and reused.

    Kernels may be tensors, numpy arrays (also ``np.memmap``) or stored arrays read by
    slices (a kernel store's ``store["ntk"]``, a zarr array): a stored kernel is read one
    block of rows at a time, loaded whole only when ``solver`` factorizes it.

    Args:
        k_train_train: ``(N, N)`` tensor, array or stored array (used for every ``get``), or
            a `tangents.Kernel` / named tuple with ``nngp`` and/or ``ntk`` fields, or a kernel
            store (``k_train_train["ntk"]``). The ``ntk`` covariance needs both.
        y_train: targets ``(N, C)``.
        diag_reg: diagonal regularizer, ``K + diag_reg · mean(diag K) · I``.
        diag_reg_absolute_scale: ``True`` for ``K + diag_reg · I``.
        trace_axes: axes of ``y_train`` along which kernels are :math:`K \otimes I`.
        solve_dtype: precision of the solves (keyword only, not in neural-tangents):
            ``torch.float64`` (default) or ``torch.float32`` (faster).
        solver: ``"cholesky"`` (dense factorization), ``"cg"`` (preconditioned conjugate
            gradients on matrix products over blocks of the kernel) or ``"auto"`` (default:
            Cholesky up to 10,000 training outputs if it fits in free memory, else CG).
        tol: CG stops when ``|(K + λI)x − y| / |y| <= tol`` for every output column.
        max_iter: CG iterations before a `ConvergenceError` (default ``min(max(N, 100), 1000)``).
        preconditioner: ``"pivoted_cholesky"``, ``"nystrom"`` (random columns: one pass
            over a stored kernel), ``"none"`` or ``"auto"`` (Nyström for stored kernels).
        preconditioner_rank: rank of the preconditioner (default 500, at most what fits in an eighth of the free memory).
        progress: a tqdm bar of CG iterations and residuals: ``True``, ``False``, or ``None``
            (shown when the solve takes over two seconds).

    Returns:
        ``predict_fn(get=None, k_test_train=None, k_test_test=None)``: for each name in
        ``get`` (``None`` means ``("nngp", "ntk")``) the mean ``(N_test, C)``, or
        ``Gaussian(mean, covariance (N_test, N_test))`` when ``k_test_test`` is given
        (the NNGP test-test kernel for ``"nngp"``/``"ntk"``, the NTK one for ``"ntkgp"``).
        ``k_test_train=None`` returns train-set values ``N(y_train, 0)``. A string ``get``
        returns one value, a tuple a named tuple ``Gaussians``.

    Example:
        >>> k_dd = kernel_fn(x_train, None, ("nngp", "ntk"))
        >>> k_td = kernel_fn(x_test, x_train, ("nngp", "ntk"))
        >>> k_tt = kernel_fn(x_test, None, "nngp")
        >>> out = predict.gp_inference(k_dd, y_train, diag_reg=1e-4)("ntk", k_td, k_tt)
        >>> out.mean.shape, out.covariance.shape
    """
    where = "gp_inference"
    options = solver_options(where, solver, tol, max_iter, preconditioner, preconditioner_rank, progress)
    diag_reg = check_number(diag_reg, "diag_reg", where)
    diag_reg_absolute_scale = check_bool(diag_reg_absolute_scale, "diag_reg_absolute_scale", where)
    first = first_kernel(k_train_train)
    if is_stored(first):
        device = y_train.device if isinstance(y_train, torch.Tensor) else torch.device("cpu")
        dtype = output_dtype(torch.empty(0, dtype=StoredKernel(first, device).dtype))
    else:
        first = as_tensor(first, "k_train_train")
        device, dtype = first.device, output_dtype(first)
    y = as_tensor(y_train, "y_train", device)
    check_targets(y, where)
    layout = Layout(tuple(y.shape), trace_axes)
    layout.check_kernel(first, f"{where}: k_train_train", layout.non_trace_shape)  # before any work

    def train_kernel(g: str) -> Any:
        k = get_attr(k_train_train, g, f"{where}: k_train_train")
        if not is_stored(k):
            k = as_tensor(k, "k_train_train", device)
        layout.check_kernel(k, f"{where}: k_train_train", layout.non_trace_shape)
        return k

    sd = check_solve_dtype(solve_dtype, where)
    solver_ = GPSolver(train_kernel, work(layout.flatten(y), sd), diag_reg, diag_reg_absolute_scale, where, options)

    def predict_fn(get: Get = None, k_test_train: Any = None, k_test_test: Any = None) -> Any:
        """Posterior mean (or `Gaussian`) on the test set for each name in ``get``.

        Args:
            get: ``"nngp"``, ``"ntk"``, ``"ntkgp"``, a tuple of them, or ``None`` for
                ``("nngp", "ntk")``.
            k_test_train: test-train kernel ``(N_test, N)`` (tensor, array, stored array or
                Kernel-like / store), or ``None`` for train-set outputs.
            k_test_test: test-test kernel ``(N_test, N_test)`` to get covariances (the NNGP
                one for ``"nngp"``/``"ntk"``, the NTK one for ``"ntkgp"``); ``None`` for
                means only. With ``k_test_train=None`` pass any non-``None`` value to get
                the zero train-set covariance.
        """
        is_str, names = canonical_get(get, ("nngp", "ntk", "ntkgp"), f"{where} predict_fn")
        out: dict[str, Any] = {}
        for g in names:
            k = "ntk" if g == "ntkgp" else g
            if k_test_train is None:
                mean = y.to(dtype)
                if k_test_test is not None:
                    n = layout.n
                    out[g] = Gaussian(mean, zip_pairs(torch.zeros((n, n), dtype=dtype, device=device), layout.non_trace_shape, 0))
                else:
                    out[g] = mean
                continue

            def ktd_raw(name: str, _where: str = where) -> Any:
                t = get_attr(k_test_train, name, f"{_where}: k_test_train")
                if not is_stored(t):
                    t = as_tensor(t, "k_test_train", device)
                layout.check_kernel(t, f"{_where}: k_test_train")
                return t

            def ktd(name: str) -> torch.Tensor:
                t = ktd_raw(name)
                t2 = work(to_2d(t if isinstance(t, torch.Tensor) else as_block(t[:], device)), sd)
                check_finite(t2, f"{where}: k_test_train")
                return t2

            raw = ktd_raw(k)
            rows = layout.rows_shape(raw)
            if k_test_test is None and (is_stored(raw) or solver_.method(k) == "cg"):
                flat, _ = rows_matmul(raw, solver_.alpha(k))  # blocks of test rows
                check_finite(flat, f"{where}: k_test_train")
                mean = layout.unflatten(flat, rows).to(dtype)
            else:
                mean = layout.unflatten(solver_.mean(k, ktd(k)), rows).to(dtype)
            if k_test_test is None:
                out[g] = mean
                continue
            if g == "ntk" and (get_attr_or_none(k_train_train, "nngp") is None or get_attr_or_none(k_test_train, "nngp") is None):
                raise ValueError(
                    f"{where}: the 'ntk' posterior covariance needs both the NTK and the NNGP of "
                    f"the train-train and test-train kernels; pass Kernel-like objects with 'nngp' "
                    f"and 'ntk' fields, e.g. kernel_fn(x_test, x_train, ('nngp', 'ntk'))."
                )
            g_init = "ntk" if g == "ntkgp" else "nngp"
            ktt_raw = get_attr(k_test_test, g_init, f"{where}: k_test_test")
            ktt_raw = as_block(ktt_raw[:], device) if is_stored(ktt_raw) else as_tensor(ktt_raw, "k_test_test", device)
            ktt = work(to_2d(ktt_raw), sd)
            check_finite(ktt, f"{where}: k_test_test")
            expected = (math.prod(rows),) * 2
            if tuple(ktt.shape) != expected:
                raise ValueError(
                    f"{where}: k_test_test has shape {tuple(ktt.shape)} once flattened, expected "
                    f"{expected} to match k_test_train; pass kernel_fn(x_test, None, ...)."
                )
            cov = solver_.cov(g, ktd, ktt)
            out[g] = Gaussian(mean, zip_pairs(cov, rows, 0).to(dtype))
        return named_output(is_str, names, out)

    return predict_fn


def get_attr_or_none(k: Any, g: str) -> Any:
    """``k``'s kernel ``g`` (a field or a store entry), or ``None`` if it has none; an array
    stands for every kernel only when it is the whole argument, so it counts as none."""
    if isinstance(k, (torch.Tensor,)) or is_stored(k) or hasattr(k, "__array__") and hasattr(k, "shape"):
        return None
    try:
        return get_attr(k, g, "")
    except ValueError:
        return None
