"""Closed-form gradient flow on the MSE loss in function space, and the maximal learning rate."""

from __future__ import annotations

from typing import Any, Optional, Protocol, Union

import numpy as np
import torch

from ._common import (
    ArrayLike,
    Axes,
    Eigen,
    Layout,
    as_tensor,
    broadcast_outputs,
    check_bool,
    check_finite,
    check_number,
    check_solve_dtype,
    check_targets,
    expm1_factor,
    inv_expm1_factor,
    output_dtype,
    regularize,
    times,
    to_2d,
    work,
)
from ._gp import GPSolver
from ._krylov import lanczos_function
from ._operators import StoredKernel, is_stored, memory_budget, rows_matmul
from ._solvers import IterativeSystem, SolverOptions, solver_options


class PredictFn(Protocol):
    """``predict_fn(t=None, fx_train_0=0., fx_test_0=None, k_test_train=None)``."""

    def __call__(
        self,
        t: Optional[ArrayLike] = None,
        fx_train_0: Optional[ArrayLike] = 0.0,
        fx_test_0: Optional[ArrayLike] = None,
        k_test_train: Optional[ArrayLike] = None,
    ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]: ...


def check_inputs(fx_train_0: Any, fx_test_0: Any, k_test_train: Any, where: str) -> None:
    if fx_train_0 is None and fx_test_0 is None:
        raise ValueError(
            f"{where}: both fx_train_0 and fx_test_0 are None, so nothing would be predicted; "
            f"pass fx_train_0 (e.g. 0.) and/or fx_test_0."
        )
    if fx_test_0 is not None and k_test_train is None:
        raise ValueError(
            f"{where}: test-set predictions (fx_test_0 is not None) need k_test_train, the "
            f"test-train kernel; pass k_test_train=..."
        )


def gradient_descent_mse(
    k_train_train: ArrayLike,
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
) -> PredictFn:
    r"""Predicts the outcome of gradient flow on the MSE loss in function space, in closed form.

    For the loss :math:`\mathcal L = \frac{1}{2n}\lVert f(X) - Y\rVert^2` with
    :math:`n` = ``y_train.size`` and a fixed kernel :math:`K` (``k_train_train`` plus
    ``diag_reg``), continuous-time gradient descent with learning rate :math:`\eta` gives,
    with :math:`\tau = \eta t / n`,

    .. math::
        f_t(X) = Y + e^{-\tau K}(f_0(X) - Y), \qquad
        f_t(x) = f_0(x) - K_{xX} K^{-1}(I - e^{-\tau K})(f_0(X) - Y).

    ``t=None`` is infinite time (:math:`f_\infty(X) = Y`, a solve for the test set).
    With ``solver="cholesky"`` the eigendecomposition (finite ``t``) and the Cholesky factor
    (``t=None``) of ``k_train_train`` are computed on first use and reused by every later
    call; with ``solver="cg"`` only matrix products with it are made: preconditioned
    conjugate gradients at ``t=None`` and the Lanczos method at finite ``t`` (one run for
    all the times of an array ``t``), over blocks of rows of a kernel that may be stored
    on disk.

    Args:
        k_train_train: kernel on the training data, shape ``(N, N)`` for ``y_train`` of shape
            ``(N, C)`` and ``trace_axes=(-1,)``; in general the interleaved pairs of the
            non-trace axes of ``y_train``, e.g. ``(N, N, C, C)`` for ``trace_axes=()``. A
            tensor, a numpy array, or a stored array read by slices (``store["ntk"]``).
        y_train: targets, e.g. ``(N, C)``.
        learning_rate: step size :math:`\eta > 0`; only ``learning_rate * t`` matters.
        diag_reg: diagonal regularizer ``>= 0``, ``K + diag_reg · mean(diag K) · I``.
        diag_reg_absolute_scale: if ``True``, ``K + diag_reg · I`` instead.
        trace_axes: axes of ``y_train`` along which the kernel is :math:`\Theta \otimes I`.
        solve_dtype: precision of the factorizations and solves (keyword only, not in
            neural-tangents): ``torch.float64`` (default) or ``torch.float32`` (faster).
        solver, tol, max_iter, preconditioner, preconditioner_rank, progress: how
            :math:`K` is solved, as in `gp_inference` (``tol`` and ``max_iter`` also bound
            the Lanczos iteration of finite times, which stops when the prediction changes
            by less than ``tol``; ``"auto"`` eigendecomposes up to 5,000 outputs).

    Returns:
        ``predict_fn(t=None, fx_train_0=0., fx_test_0=None, k_test_train=None)`` returning
        ``fx_train_t``, ``fx_test_t`` (when ``fx_train_0 is None``) or both, with a leading
        axis of shape ``t.shape`` when ``t`` is an array. ``k_test_train`` has shape
        ``(N_test, N)`` (interleaved like ``k_train_train`` in general; may be stored).

    Example:
        >>> from tangents import predict, stax
        >>> _, _, kernel_fn = stax.serial(stax.Dense(512), stax.Relu(), stax.Dense(1))
        >>> x_train, y_train, x_test = torch.randn(20, 3), torch.randn(20, 1), torch.randn(5, 3)
        >>> predict_fn = predict.gradient_descent_mse(kernel_fn(x_train, None, "ntk"), y_train)
        >>> fx_train_t, fx_test_t = predict_fn(t=10., fx_train_0=0., fx_test_0=0.,
        ...                                    k_test_train=kernel_fn(x_test, x_train, "ntk"))
    """
    where = "gradient_descent_mse"
    options = solver_options(where, solver, tol, max_iter, preconditioner, preconditioner_rank, progress)
    learning_rate = check_number(learning_rate, "learning_rate", where, positive=True)
    diag_reg = check_number(diag_reg, "diag_reg", where)
    diag_reg_absolute_scale = check_bool(diag_reg_absolute_scale, "diag_reg_absolute_scale", where)
    stored = is_stored(k_train_train)
    if stored:
        k: Any = k_train_train
        device = y_train.device if isinstance(y_train, torch.Tensor) else torch.device("cpu")
        dtype = output_dtype(torch.empty(0, dtype=StoredKernel(k, device).dtype))
    else:
        k = as_tensor(k_train_train, "k_train_train")
        device, dtype = k.device, output_dtype(k)
    y = as_tensor(y_train, "y_train", device)
    check_targets(y, where)
    layout = Layout(tuple(y.shape), trace_axes)
    layout.check_kernel(k, f"{where}: k_train_train", layout.non_trace_shape)
    sd = check_solve_dtype(solve_dtype, where)
    y_flat = work(layout.flatten(y), sd)
    n_total = y.numel()
    pwhere = f"{where} predict_fn"
    solver_ = GPSolver(lambda g: k, y_flat, diag_reg, diag_reg_absolute_scale, where, options)
    if not stored and solver_.method("ntk", finite_t=False) == "cholesky":
        check_finite(solver_.k2("ntk"), "k_train_train")  # early, as before
    cache: dict[str, Any] = {}

    def eigen() -> Eigen:
        if "eigen" not in cache:
            k_reg = regularize(solver_.k2("ntk"), diag_reg, diag_reg_absolute_scale)
            cache["eigen"] = Eigen(k_reg, f"{where}: k_train_train (+ diag_reg)", solver_.operator("ntk").dtype)
        return cache["eigen"]

    def solve(r: torch.Tensor) -> torch.Tensor:
        """``(K + λI)⁻¹ r``, the last right-hand side's solution reused."""
        last = cache.get("solve")
        if last is not None and last[0].shape == r.shape and torch.equal(last[0], r):
            return last[1]
        x = solver_.solve("ntk", r)
        cache["solve"] = (r, x)
        return x

    def test_kernel(k_test_train: Any) -> tuple[Any, tuple[int, ...]]:
        ktd = k_test_train if is_stored(k_test_train) else as_tensor(k_test_train, "k_test_train", device)
        layout.check_kernel(ktd, f"{where}: k_test_train")
        return ktd, layout.rows_shape(ktd)

    def test_product(ktd: Any, v: torch.Tensor) -> torch.Tensor:
        """``K_td @ v`` for ``v`` of shape ``(*lead, n, m)`` → ``(*lead, n_test, m)``."""
        lead, (n, m) = v.shape[:-2], v.shape[-2:]
        flat = v.reshape((-1, n, m)).permute(1, 0, 2).reshape(n, -1)
        out, _ = rows_matmul(ktd, flat)
        check_finite(out, "k_test_train")
        return out.reshape(out.shape[0], -1, m).permute(1, 0, 2).reshape(lead + (out.shape[0], m))

    def predict_fn(
        t: Optional[ArrayLike] = None,
        fx_train_0: Optional[ArrayLike] = 0.0,
        fx_test_0: Optional[ArrayLike] = None,
        k_test_train: Optional[ArrayLike] = None,
    ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Train [and test] predictions at time[s] ``t`` (``None``: infinite time).

        Args:
            t: a scalar ``>= 0`` or an array of any shape (a leading axis of that shape is
                added), or ``None`` for ``t = ∞``.
            fx_train_0: outputs on the training set at ``t = 0`` (``(N, C)`` or a scalar);
                ``None`` to skip train predictions.
            fx_test_0: outputs on the test set at ``t = 0``; ``None`` to skip them.
            k_test_train: test-train kernel ``(N_test, N)``, needed for test predictions.

        Returns:
            ``fx_train_t``, ``fx_test_t`` or ``(fx_train_t, fx_test_t)``.
        """
        check_inputs(fx_train_0, fx_test_0, k_test_train, pwhere)
        f0 = None if fx_train_0 is None else work(as_tensor(fx_train_0, "fx_train_0", device), sd)
        g0 = None if fx_test_0 is None else work(as_tensor(fx_test_0, "fx_test_0", device), sd)
        # residual at t = 0, flattened to (N, m)
        r0 = -y_flat if f0 is None else layout.flatten(broadcast_outputs(f0, tuple(y.shape), "fx_train_0", pwhere) - y.to(f0))
        if k_test_train is not None and g0 is not None:
            ktd, rows = test_kernel(k_test_train)
            if not bool(torch.isfinite(g0).all()):
                raise ValueError(f"{pwhere}: fx_test_0 contains NaN or infinite entries.")

        if t is None:
            fx_train = y.to(dtype)
            if g0 is None:
                return fx_train
            dfx_test = test_product(ktd, solve(-r0))
            fx_test = (g0 + layout.unflatten(dfx_test, rows)).to(dtype)
            return fx_test if f0 is None else (fx_train, fx_test)

        tt, t_shape = times(t, learning_rate, device, sd)
        lead = (1,) * len(t_shape)
        out = []
        if solver_.method("ntk", finite_t=True) == "cholesky":
            e = eigen()
            z = e.evecs.T @ r0  # (N, m)
            d_train = torch.einsum("ji,ti,im->tjm", e.evecs, expm1_factor(e.evals, tt, n_total), z)
            w = torch.einsum("ji,ti,im->tjm", e.evecs, inv_expm1_factor(e.evals, tt, n_total), z)
        else:
            d_train, w = finite_time(solver_.system("ntk"), r0, tt, n_total, options, f0 is not None, g0 is not None)
        if f0 is not None:
            out.append((f0.reshape(lead + tuple(f0.shape)) + layout.unflatten(d_train, layout.non_trace_shape, t_shape)).to(dtype))
        if g0 is not None:
            d = test_product(ktd, w)
            out.append((g0.reshape(lead + tuple(g0.shape)) + layout.unflatten(d, rows, t_shape)).to(dtype))
        return out[0] if len(out) == 1 else (out[0], out[1])

    return predict_fn


def finite_time(
    system: IterativeSystem,
    b: torch.Tensor,
    tt: torch.Tensor,
    n_total: int,
    options: SolverOptions,
    train: bool,
    test: bool,
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    r"""By Lanczos on :math:`A = K + \lambda I`: ``(expm1(−τA) b, A⁻¹ expm1(−τA) b)``, each
    ``(T, n, m)`` (``None`` when not asked for); one run for both and for every time."""
    parts = []
    if train:
        parts.append(lambda th: expm1_factor(th.reshape(-1), tt, n_total))
    if test:
        parts.append(lambda th: inv_expm1_factor(th.reshape(-1), tt, n_total))

    def fn(theta: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(theta).reshape(len(tt), *theta.shape) for p in parts])

    system.working_copy()
    out = lanczos_function(
        system.matvec, b, fn, tol=options.tol, max_iter=options.iterations(system.n),
        budget=memory_budget(b.device, 0.25), progress=options.progress, where=system.where, what=system.what,
    )
    split = list(out.split(len(tt)))
    return (split.pop(0) if train else None), (split.pop(0) if test else None)


def max_learning_rate(
    ntk_train_train: ArrayLike,
    y_train_size: Optional[int] = None,
    momentum: float = 0.0,
    eps: float = 1e-12,
) -> float:
    r"""The largest learning rate for which full-batch gradient descent on MSE converges.

    For the loss :math:`\frac{1}{2n}\lVert f - y\rVert^2` (``n = y_train_size``), one step
    maps the residual by :math:`I - \frac{\eta}{n}\Theta`, a contraction iff
    :math:`\eta < 2n / \lambda_{\max}(\Theta)`; with momentum :math:`\mu` the bound is
    :math:`2(1 + \mu) n / \lambda_{\max}`.

    Args:
        ntk_train_train: analytic or empirical NTK on the training data, ``(N, N)`` (or
            interleaved ``(N, N, C, C)``).
        y_train_size: ``y_train.size``; ``None`` infers it as the flattened kernel size
            (i.e. assumes ``trace_axes=()``).
        momentum: the momentum of the optimizer.
        eps: added to :math:`\lambda_{\max}` to avoid division by zero.

    Returns:
        The maximal feasible learning rate, a Python float.

    Example:
        >>> lr = predict.max_learning_rate(kernel_fn(x_train, None, "ntk"), y_train.numel())
    """
    where = "max_learning_rate"
    if y_train_size is not None:
        if isinstance(y_train_size, bool) or not isinstance(y_train_size, (int, np.integer)):
            raise TypeError(
                f"{where}: y_train_size must be an int (y_train.numel()) or None, got "
                f"{type(y_train_size).__name__} {y_train_size!r}."
            )
        if y_train_size < 1:
            raise ValueError(f"{where}: y_train_size must be >= 1 (y_train.numel()), got {y_train_size!r}.")
    if check_number(momentum, "momentum", where) > 1:
        raise ValueError(f"{where}: momentum must be in [0, 1], got {momentum!r}; pass e.g. momentum=0.9.")
    eps = check_number(eps, "eps", where)
    k = as_tensor(ntk_train_train, "ntk_train_train")
    if k.ndim % 2 or k.ndim == 0:
        raise ValueError(f"max_learning_rate: ntk_train_train must be (N, N) or interleaved pairs, got shape {tuple(k.shape)}.")
    k2 = work(to_2d(k))
    if k2.shape[0] != k2.shape[1]:
        raise ValueError(f"max_learning_rate: ntk_train_train must be square, got shape {tuple(k.shape)}.")
    check_finite(k2, "ntk_train_train")
    factor = k2.shape[0] if y_train_size is None else int(y_train_size)
    max_eval = float(torch.linalg.eigvalsh(0.5 * (k2 + k2.T))[-1])
    if max_eval + eps <= 0:
        raise ValueError(
            f"{where}: the largest eigenvalue of ntk_train_train is {max_eval:.3e} <= 0, so no learning rate "
            f"is bounded by it; an NTK is positive semi-definite: pass kernel_fn(x_train, None, 'ntk')."
        )
    return 2 * (1 + float(momentum)) * factor / (max_eval + eps)
