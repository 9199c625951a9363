"""The infinite ensemble of infinitely wide networks trained by gradient flow on MSE."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import numpy as np
import torch

from ._common import (
    ArrayLike,
    Axes,
    Eigen,
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
    expm1_factor,
    get_attr,
    inv_expm1_factor,
    named_output,
    output_dtype,
    regularize,
    symmetrize,
    times,
    to_2d,
    work,
    zip_pairs,
)
from ._gp import GPSolver
from ._mse import finite_time
from ._operators import (
    BLOCK_BYTES,
    FunctionKernel,
    StoredKernel,
    _is_pair,
    is_stored,
    memory_budget,
    slice_inputs,
    slice_pairs,
)
from ._solvers import solver_options

_WHERE = "gradient_descent_mse_ensemble"


def _dependency(names: tuple[str, ...], compute_cov: bool) -> tuple[str, ...]:
    """The kernels needed: the NNGP for NNGP predictions and for NTK covariances."""
    deps: tuple[str, ...] = ()
    if "nngp" in names or ("ntk" in names and compute_cov):
        deps += ("nngp",)
    if "ntk" in names:
        deps += ("ntk",)
    return deps


def _is_array_like(v: Any) -> bool:
    if isinstance(v, (torch.Tensor, np.ndarray)):
        return True
    return isinstance(v, (tuple, list)) and len(v) > 0 and all(_is_array_like(i) for i in v)


def _test_kwargs(train_kwargs: dict[str, Any], test_kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword arguments of ``kernel_fn`` for the test-train and test-test calls (as NT).

    Pairs ``(a1, a2)`` of arrays (e.g. ``pattern``) combine as ``(test[0], train[0])`` for
    the test-train kernel; other values must agree between train and test.
    """
    kwargs_td, kwargs_tt = dict(train_kwargs), dict(train_kwargs)
    for key, v_tt in test_kwargs.items():
        v_dd = train_kwargs.get(key)
        if _is_array_like(v_dd) and _is_array_like(v_tt):
            if isinstance(v_dd, tuple) and len(v_dd) == 2 and isinstance(v_tt, tuple) and len(v_tt) == 2:
                v_td = (v_tt[0], v_dd[0])
            else:
                v_td = v_tt
        elif key in train_kwargs and v_dd is not v_tt and v_dd != v_tt:
            raise ValueError(
                f"{_WHERE}: keyword argument {key!r} of kernel_fn is {v_dd!r} for the train-train "
                f"kernel but {v_tt!r} for the test kernels; the test-train kernel needs one value."
            )
        else:
            v_td = v_tt
        kwargs_td[key] = v_td
        kwargs_tt[key] = v_tt
    return kwargs_td, kwargs_tt


def gradient_descent_mse_ensemble(
    kernel_fn: Callable[..., Any],
    x_train: ArrayLike,
    y_train: ArrayLike,
    learning_rate: float = 1.0,
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
    k_train_train: Any = None,
    **kernel_fn_train_train_kwargs: Any,
) -> Callable[..., Any]:
    r"""Mean and covariance of an infinite ensemble of infinitely wide networks trained on MSE.

    Networks start from the NNGP prior :math:`f_0 \sim \mathcal{GP}(0, \mathcal K)` and follow
    gradient flow on :math:`\frac{1}{2n}\lVert f(X) - Y\rVert^2` with the NTK :math:`\Theta`
    (``"ntk"``), or the NNGP itself in place of the NTK (``"nngp"``, Bayesian posterior at
    :math:`t = \infty`). With :math:`\tau = \eta t / n`, :math:`n` = ``y_train.size``, the
    test mean is :math:`\Theta_{td}\Theta^{-1}(I - e^{-\tau\Theta})Y` and the covariance

    .. math::
        \mathcal K_{tt} + \Theta_{td}M_t\mathcal K_{dd}M_t\Theta_{dt}
        - \Theta_{td}M_t\mathcal K_{dt} - \mathcal K_{td}M_t\Theta_{dt},
        \quad M_t = \Theta^{-1}(I - e^{-\tau\Theta}).

    With ``solver="cholesky"``, ``t=None`` (infinite time) uses Cholesky factors and finite
    ``t`` one eigendecomposition per kernel; both, and the train-train kernels, are computed
    once and reused. With ``solver="cg"`` only matrix products with the train-train kernels
    are made: preconditioned conjugate gradients at ``t=None`` (the solution is reused) and
    the Lanczos method at finite ``t`` (one run per call for all the times of an array
    ``t``). A train-train kernel that does not fit in memory is then recomputed from
    ``kernel_fn`` block by block for every product (the blocks that fit are kept), and
    test-train kernels are computed one block of test points at a time; or pass stored
    kernels as ``k_train_train``.

    Args:
        kernel_fn: ``kernel_fn(x1, x2, get, **kwargs)`` returning a tensor for a string
            ``get`` and a named tuple for a tuple ``get``, e.g. ``stax.serial(...).kernel_fn``.
        x_train: training inputs ``(N, ...)``.
        y_train: targets ``(N, C)``.
        learning_rate: step size :math:`\eta > 0`.
        diag_reg: diagonal regularizer ``>= 0``, ``K + diag_reg · mean(diag K) · I``.
        diag_reg_absolute_scale: ``True`` for ``K + diag_reg · I``.
        trace_axes: axes of ``y_train`` along which kernels are :math:`K \otimes I`.
        solve_dtype: precision of the factorizations and solves (keyword only, not in
            neural-tangents): ``torch.float64`` (default) or ``torch.float32`` (about twice
            as fast, for well-conditioned kernels).
        solver: ``"cholesky"``, ``"cg"`` or ``"auto"`` (default: the factorizations up to
            10,000 training outputs at ``t=None`` and 5,000 at finite ``t``, when they fit in
            free memory; matrix products beyond).
        tol: CG stops at the relative residual ``|(K + λI)x − y| / |y| <= tol``; Lanczos
            when the prediction changes by less than ``tol`` (relative).
        max_iter: iterations before a `ConvergenceError` (default ``min(max(N, 100), 1000)``).
        preconditioner: CG's preconditioner: ``"pivoted_cholesky"``, ``"nystrom"``,
            ``"none"`` or ``"auto"`` (Nyström for stored kernels).
        preconditioner_rank: its rank (default 500).
        progress: tqdm bars of iterations and residuals: ``True``, ``False`` or ``None``
            (shown when a solve takes over two seconds).
        k_train_train: the train-train kernels, already computed: a `tangents.Kernel`, a
            named tuple, or a kernel store (``k_train_train["ntk"]`` read by slices, never
            loaded whole unless a factorization needs it); ``None`` computes them with
            ``kernel_fn``.
        **kernel_fn_train_train_kwargs: passed to ``kernel_fn`` for every kernel (may be
            overridden for the test kernels in ``predict_fn``).

    Returns:
        ``predict_fn(t=None, x_test=None, get=None, compute_cov=False, **kwargs)``: the mean
        ``(N_test, C)``, or ``Gaussian(mean, covariance (N_test, N_test))`` if
        ``compute_cov``, with a leading axis of shape ``t.shape`` for an array ``t``; one
        value for a string ``get``, else a named tuple ``Gaussians`` (``get=None`` is
        ``("nngp", "ntk")``). ``x_test=None`` predicts on the training inputs (the
        eigenbasis includes ``diag_reg``; the ``t = None`` train outputs are ``N(y, 0)``).

    Raises:
        ConvergenceError: an iterative solve did not reach ``tol`` in ``max_iter``.

    Example:
        >>> net = stax.serial(stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(),
        ...                   stax.Dense(1, W_std=1.5, b_std=0.05))
        >>> predict_fn = predict.gradient_descent_mse_ensemble(net.kernel_fn, x_train, y_train,
        ...                                                    diag_reg=1e-4)
        >>> out = predict_fn(x_test=x_test, get=("nngp", "ntk"), compute_cov=True)
        >>> out.ntk.mean.shape, out.ntk.covariance.shape
    """
    if not callable(kernel_fn):
        raise TypeError(f"{_WHERE}: kernel_fn must be callable as kernel_fn(x1, x2, get), got {type(kernel_fn).__name__}.")
    options = solver_options(_WHERE, solver, tol, max_iter, preconditioner, preconditioner_rank, progress)
    learning_rate = check_number(learning_rate, "learning_rate", _WHERE, positive=True)
    diag_reg = check_number(diag_reg, "diag_reg", _WHERE)
    diag_reg_absolute_scale = check_bool(diag_reg_absolute_scale, "diag_reg_absolute_scale", _WHERE)
    sd = check_solve_dtype(solve_dtype, _WHERE)
    y = as_tensor(y_train, "y_train")
    check_targets(y, _WHERE)
    layout = Layout(tuple(y.shape), trace_axes)
    x_first = _first_input(x_train, "x_train")
    n_examples = int(x_first.shape[0]) if x_first.ndim else -1
    if 0 not in layout.trace and n_examples != y.shape[0]:
        raise ValueError(
            f"{_WHERE}: x_train has {n_examples} examples (shape {tuple(x_first.shape)}) but y_train "
            f"has {y.shape[0]} (shape {tuple(y.shape)}); pass one target row per training input."
        )
    n_total = y.numel()
    train: dict[str, Any] = {}
    eigen_cache: dict[str, tuple[Eigen, torch.Tensor]] = {}
    state: dict[str, Any] = {}

    def kernel_dtype() -> torch.dtype:
        return x_first.dtype if x_first.is_floating_point() else torch.get_default_dtype()

    def function_kernel(g: str, device: torch.device, budget: int) -> FunctionKernel:
        """The train-train kernel ``g`` recomputed block by block from ``kernel_fn``."""
        kw = kernel_fn_train_train_kwargs

        def block(rows: Any, diagonal: bool) -> torch.Tensor:
            xs = slice_inputs(x_train, rows)
            here = f"{_WHERE}: kernel_fn(x_train[rows], x_train, {g!r})"
            self_kw = {key: (v[0][rows], v[0][rows]) if _is_pair(v) else v for key, v in kw.items()}
            if diagonal:
                return as_tensor(get_attr(kernel_fn(xs, None, g, **self_kw), g, here), "k_train_train", device)
            k = as_tensor(get_attr(kernel_fn(xs, x_train, g, **slice_pairs(kw, rows, 0)), g, here), "k_train_train", device)
            layout.check_kernel(k, here)
            if isinstance(rows, slice):
                # the block with itself as kernel_fn(x, None) computes it (as tangents.batch):
                # the same numbers as the whole kernel, symmetric, also for coincident points
                k[:, rows] = as_tensor(get_attr(kernel_fn(xs, None, g, **self_kw), g, here), "k_train_train", device)
            return k

        return FunctionKernel(block, n_examples, layout.n // max(n_examples, 1), kernel_dtype(), device, budget,
                              f"the train-train {g!r} kernel")

    def k_train_train_(names: tuple[str, ...]) -> None:
        missing = tuple(g for g in names if g not in train)
        if not missing:
            return
        device = x_first.device
        if k_train_train is not None:
            for g in missing:
                k = get_attr(k_train_train, g, f"{_WHERE}: k_train_train")
                if not is_stored(k):
                    k = as_tensor(k, "k_train_train", y.device if isinstance(y_train, torch.Tensor) else None)
                layout.check_kernel(k, f"{_WHERE}: k_train_train[{g!r}]", layout.non_trace_shape)
                train[g] = k
            k0 = train[missing[0]]
            device = k0.device if isinstance(k0, torch.Tensor) else y.device
            dtype = k0.dtype if isinstance(k0, torch.Tensor) else StoredKernel(k0, device).dtype
        else:
            dense = layout.n**2 * kernel_dtype().itemsize * len(missing)
            if options.solver == "cholesky" or dense <= memory_budget(device, 0.5):
                out = kernel_fn(x_train, None, missing, **kernel_fn_train_train_kwargs)
                for g in missing:
                    k = as_tensor(get_attr(out, g, f"{_WHERE}: kernel_fn(x_train, None, {missing})"), "k_train_train")
                    layout.check_kernel(k, f"{_WHERE}: kernel_fn(x_train, None, {g!r})", layout.non_trace_shape)
                    train[g] = k
                device, dtype = k.device, k.dtype
            else:
                budget = memory_budget(device, 0.4) // len(missing)
                for g in missing:
                    train[g] = function_kernel(g, device, budget)
                dtype = kernel_dtype()
        if "y_flat" not in state:
            state["device"] = device
            state["dtype"] = output_dtype(torch.empty(0, dtype=dtype))
            state["y_flat"] = work(layout.flatten(y.to(device)), sd)
            state["solver"] = GPSolver(
                train.__getitem__, state["y_flat"], diag_reg, diag_reg_absolute_scale, _WHERE, options
            )

    def eigen(g: str) -> tuple[Eigen, torch.Tensor]:
        """The eigendecomposition of the regularized kernel ``g`` and ``Vᵀ y``."""
        if g not in eigen_cache:
            solver_: GPSolver = state["solver"]
            k_reg = regularize(solver_.k2(g), diag_reg, diag_reg_absolute_scale)
            e = Eigen(k_reg, f"{_WHERE}: the train-train {g!r} kernel (+ diag_reg)", solver_.operator(g).dtype)
            eigen_cache[g] = (e, e.evecs.T @ state["y_flat"])
        return eigen_cache[g]

    def predict_fn(
        t: Optional[ArrayLike] = None,
        x_test: Optional[ArrayLike] = None,
        get: Get = None,
        compute_cov: bool = False,
        **kernel_fn_test_test_kwargs: Any,
    ) -> Any:
        """Mean [and covariance] of the ensemble's outputs on ``x_test`` at time[s] ``t``.

        Args:
            t: a scalar ``>= 0`` or an array of any shape (adds leading axes), ``None`` for
                ``t = ∞``.
            x_test: test inputs ``(N_test, ...)``; ``None`` for the training inputs.
            get: ``"nngp"``, ``"ntk"``, a tuple of them, or ``None`` for both.
            compute_cov: whether to return ``Gaussian(mean, covariance)``.
            **kernel_fn_test_test_kwargs: ``kernel_fn`` keyword arguments for test kernels.
        """
        where = f"{_WHERE} predict_fn"
        is_str, names = canonical_get(get, ("nngp", "ntk"), where)
        compute_cov = check_bool(compute_cov, "compute_cov", where)
        if t is not None:
            tt, t_shape = times(t, learning_rate, torch.device("cpu"), sd)  # checked before any work
        deps = _dependency(names, compute_cov)
        k_train_train_(deps)
        solver_: GPSolver = state["solver"]
        device, dtype = state["device"], state["dtype"]
        finite = t is not None
        method = {g: solver_.method(g, finite) for g in deps}
        if finite and compute_cov and x_test is None and any(method[g] == "cg" for g in names):
            raise ValueError(
                f"{where}: the covariance on the training inputs at finite t (x_test=None, "
                f"compute_cov=True) needs the eigendecomposition of the train-train kernel, "
                f"which solver={options.solver!r} does not make at this size; pass "
                f"solver='cholesky', or x_test."
            )

        ktd: dict[str, torch.Tensor] = {}
        ktt: Optional[torch.Tensor] = None
        rows = layout.non_trace_shape
        td_product: Optional[Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]] = None
        if x_test is not None:
            kwargs_td, kwargs_tt = _test_kwargs(kernel_fn_train_train_kwargs, kernel_fn_test_test_kwargs)
            x_test_first = _first_input(x_test, "x_test")
            n_test = int(x_test_first.shape[0]) if x_test_first.ndim else 0
            whole = n_test * layout.n * 8 * len(deps)
            if compute_cov or all(m == "cholesky" for m in method.values()) or whole <= memory_budget(device, 0.125):
                out_td = kernel_fn(x_test, x_train, deps, **kwargs_td)
                for g in deps:
                    k = as_tensor(get_attr(out_td, g, f"{_WHERE}: kernel_fn(x_test, x_train)"), "k_test_train", device)
                    layout.check_kernel(k, f"{_WHERE}: kernel_fn(x_test, x_train, {g!r})")
                    rows = layout.rows_shape(k)
                    ktd[g] = work(to_2d(k), sd)
                    check_finite(ktd[g], f"kernel_fn(x_test, x_train, {g!r})")
            else:
                td_product, rows = _blocked_test_train(kernel_fn, x_test, x_train, deps, kwargs_td, layout, device, sd, n_test)
            if compute_cov:
                ktt = work(to_2d(as_tensor(kernel_fn(x_test, None, "nngp", **kwargs_tt), "k_test_test", device)), sd)
                check_finite(ktt, "kernel_fn(x_test, None, 'nngp')")

        def times_test(g: str, w: torch.Tensor) -> torch.Tensor:
            """``K_td[g] @ w`` for ``w`` of shape ``(*lead, n, m)``."""
            if td_product is None:
                return torch.matmul(ktd[g], w)
            lead, (n, m) = w.shape[:-2], w.shape[-2:]
            flat = w.reshape((-1, n, m)).permute(1, 0, 2).reshape(n, -1)
            res = td_product({g: flat})[g]
            return res.reshape(res.shape[0], -1, m).permute(1, 0, 2).reshape(lead + (res.shape[0], m))

        out: dict[str, Any] = {}
        if t is None:
            for g in names:
                if x_test is None:
                    mean = y.to(device=device, dtype=dtype)
                    cov = torch.zeros((layout.n, layout.n), dtype=dtype, device=device) if compute_cov else None
                    if cov is not None:
                        cov = zip_pairs(cov, layout.non_trace_shape, 0)
                else:
                    mean = layout.unflatten(times_test(g, solver_.alpha(g)), rows).to(dtype)
                    cov = None
                    if compute_cov:
                        cov = zip_pairs(solver_.cov(g, ktd.__getitem__, ktt), rows, 0).to(dtype)
                out[g] = mean if cov is None else Gaussian(mean, cov)
            return named_output(is_str, names, out)

        tt = tt.to(device)
        for g in names:
            if method[g] == "cholesky":
                e, z = eigen(g)
                v, lam = e.evecs, e.evals
                if x_test is None:
                    mean = torch.einsum("ji,ti,im->tjm", v, -expm1_factor(lam, tt, n_total), z)
                else:
                    w = torch.einsum("ji,ti,im->tjm", v, -inv_expm1_factor(lam, tt, n_total), z)
                    mean = torch.matmul(ktd[g], w)
            else:
                system = solver_.system(g)
                d_train, w = finite_time(system, state["y_flat"], tt, n_total, options, x_test is None, x_test is not None)
                mean = -d_train if x_test is None else times_test(g, -w)
            mean = layout.unflatten(mean, rows, t_shape).to(dtype)
            if not compute_cov:
                out[g] = mean
                continue
            if method[g] == "cholesky" and x_test is None:
                cov = _train_cov(g, v, lam, tt, n_total, solver_)
            elif method[g] == "cholesky":
                cov = _test_cov(g, v, lam, tt, n_total, solver_, ktd, ktt)
            else:
                cov = _test_cov_lanczos(g, solver_, tt, n_total, options, ktd, ktt)
            cov = zip_pairs(cov.reshape(t_shape + cov.shape[-2:]), rows, len(t_shape)).to(dtype)
            out[g] = Gaussian(mean, cov)
        return named_output(is_str, names, out)

    return predict_fn


def _first_input(x: Any, name: str) -> torch.Tensor:
    """The first tensor of an input (a tensor, array, or a list of them), as a tensor."""
    while isinstance(x, (list, tuple)) and x:
        x = x[0]
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.as_tensor(x)
    raise TypeError(f"{_WHERE}: {name} must be a torch.Tensor, a numpy array or a list of them, got {type(x).__name__}.")


def _blocked_test_train(
    kernel_fn: Callable[..., Any],
    x_test: Any,
    x_train: Any,
    deps: tuple[str, ...],
    kwargs_td: dict[str, Any],
    layout: Layout,
    device: torch.device,
    sd: torch.dtype,
    n_test: int,
) -> tuple[Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]], tuple[int, ...]]:
    """Products ``K_td[g] @ v[g]`` with the test-train kernels computed one block of test
    points at a time (never ``N_test × N`` at once); also the test shape."""
    per = layout.n // max(layout.non_trace_shape[0], 1) if layout.non_trace_shape else 1
    b = max(1, BLOCK_BYTES // max(1, layout.n * per * 8))

    def product(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        names = tuple(v)
        res = {g: v[g].new_empty((n_test * per, v[g].shape[1])) for g in names}
        for i in range(0, n_test, b):
            r = slice(i, min(i + b, n_test))
            k = kernel_fn(slice_inputs(x_test, r), x_train, names, **slice_pairs(kwargs_td, r, 1))
            for g in names:
                blk = as_tensor(get_attr(k, g, f"{_WHERE}: kernel_fn(x_test, x_train)"), "k_test_train", device)
                layout.check_kernel(blk, f"{_WHERE}: kernel_fn(x_test, x_train, {g!r})")
                blk2 = work(to_2d(blk), sd)
                check_finite(blk2, f"kernel_fn(x_test, x_train, {g!r})")
                res[g][i * per : r.stop * per] = blk2 @ v[g]
        return res

    rows = (n_test,) + tuple(layout.non_trace_shape[1:])
    return product, rows


def _test_cov_lanczos(
    g: str,
    solver_: GPSolver,
    tt: torch.Tensor,
    n: int,
    options: Any,
    ktd: dict[str, torch.Tensor],
    ktt: torch.Tensor,
) -> torch.Tensor:
    """`_test_cov` by Lanczos runs started from the columns of the test-train kernel."""
    if g == "nngp":
        _, f2 = finite_time(solver_.system("nngp"), ktd["nngp"].T.contiguous(), 2 * tt, n, options, False, True)
        return symmetrize(ktt - torch.matmul(ktd["nngp"], -f2))
    _, f = finite_time(solver_.system("ntk"), ktd["ntk"].T.contiguous(), tt, n, options, False, True)
    term_1 = -f  # Θ⁻¹(I − e^{−τΘ}) Θ_dt, (T, N, N_test)
    n_t, n_train, n_test = term_1.shape
    k_term = solver_.matmul("nngp", term_1.permute(1, 0, 2).reshape(n_train, -1))
    k_term = k_term.reshape(n_train, n_t, n_test).permute(1, 0, 2)
    term_2 = term_1.transpose(-1, -2) @ ktd["nngp"].T
    cov = term_1.transpose(-1, -2) @ k_term - term_2 - term_2.transpose(-1, -2) + ktt
    return symmetrize(cov)


def _train_cov(g: str, v: torch.Tensor, lam: torch.Tensor, tt: torch.Tensor, n: int, solver: GPSolver) -> torch.Tensor:
    """Covariance ``(T, N, N)`` on the training inputs (the eigenbasis includes diag_reg)."""
    lam_pos = lam.clamp_min(0)
    if g == "nngp":
        d = lam_pos * torch.exp(-2 * lam_pos * tt / n)
        return symmetrize(torch.einsum("ji,ti,ki->tjk", v, d, v))
    decay = torch.exp(-lam_pos * tt / n)
    # E_t K E_t with E_t = V diag(decay) Vᵀ, via P = Vᵀ K V computed once.
    p = v.T @ solver.k2("nngp") @ v
    covs = [v @ ((dt[:, None] * p * dt[None, :]) @ v.T) for dt in decay]
    return symmetrize(torch.stack(covs))


def _test_cov(
    g: str,
    v: torch.Tensor,
    lam: torch.Tensor,
    tt: torch.Tensor,
    n: int,
    solver: GPSolver,
    ktd: dict[str, torch.Tensor],
    ktt: torch.Tensor,
) -> torch.Tensor:
    """Covariance ``(T, N_test, N_test)`` on the test inputs."""
    c = ktd[g] @ v  # (N_test, N)
    if g == "nngp":
        f2 = -inv_expm1_factor(lam, 2 * tt, n)  # (T, N)
        return symmetrize(ktt - torch.einsum("ai,ti,bi->tab", c, f2, c))
    f = -inv_expm1_factor(lam, tt, n)
    r = v.T @ ktd["nngp"].T  # (N, N_test)
    k_nngp = solver.k2("nngp")
    covs = []
    for ft in f:
        term_1 = v @ (ft[:, None] * c.T)  # Θ⁻¹(I − e^{−τΘ}) Θ_dt, (N, N_test)
        term_2 = (c * ft) @ r
        covs.append(term_1.T @ (k_nngp @ term_1) - term_2 - term_2.T + ktt)
    return symmetrize(torch.stack(covs))
