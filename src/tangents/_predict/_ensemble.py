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
    check_finite,
    check_solve_dtype,
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

    ``t=None`` (infinite time) uses Cholesky factors, finite ``t`` one eigendecomposition
    per kernel; both, and the train-train kernels, are computed once and reused.

    Args:
        kernel_fn: ``kernel_fn(x1, x2, get, **kwargs)`` returning a tensor for a string
            ``get`` and a named tuple for a tuple ``get``, e.g. ``stax.serial(...).kernel_fn``.
        x_train: training inputs ``(N, ...)``.
        y_train: targets ``(N, C)``.
        learning_rate: step size :math:`\eta`.
        diag_reg: diagonal regularizer, ``K + diag_reg · mean(diag K) · I``.
        diag_reg_absolute_scale: ``True`` for ``K + diag_reg · I``.
        trace_axes: axes of ``y_train`` along which kernels are :math:`K \otimes I`.
        solve_dtype: precision of the Cholesky factors, eigendecompositions and solves
            (keyword only, not in neural-tangents): ``torch.float64`` (default) or
            ``torch.float32`` (about twice as fast, for well-conditioned kernels).
        **kernel_fn_train_train_kwargs: passed to ``kernel_fn`` for every kernel (may be
            overridden for the test kernels in ``predict_fn``).

    Returns:
        ``predict_fn(t=None, x_test=None, get=None, compute_cov=False, **kwargs)``: the mean
        ``(N_test, C)``, or ``Gaussian(mean, covariance (N_test, N_test))`` if
        ``compute_cov``, with a leading axis of shape ``t.shape`` for an array ``t``; one
        value for a string ``get``, else a named tuple ``Gaussians`` (``get=None`` is
        ``("nngp", "ntk")``). ``x_test=None`` predicts on the training inputs (the
        eigenbasis includes ``diag_reg``; the ``t = None`` train outputs are ``N(y, 0)``).

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
    sd = check_solve_dtype(solve_dtype, _WHERE)
    y = as_tensor(y_train, "y_train")
    layout = Layout(tuple(y.shape), trace_axes)
    n_total = y.numel()
    k_dd_cache: dict[str, torch.Tensor] = {}
    eigen_cache: dict[str, tuple[Eigen, torch.Tensor]] = {}
    state: dict[str, Any] = {}

    def k_train_train(names: tuple[str, ...]) -> None:
        missing = tuple(g for g in names if g not in k_dd_cache)
        if not missing:
            return
        out = kernel_fn(x_train, None, missing, **kernel_fn_train_train_kwargs)
        for g in missing:
            k = as_tensor(get_attr(out, g, f"{_WHERE}: kernel_fn(x_train, None, {missing})"), "k_train_train")
            layout.check_kernel(k, f"{_WHERE}: kernel_fn(x_train, None, {g!r})", layout.non_trace_shape)
            k_dd_cache[g] = k
        if "y_flat" not in state:
            state["device"] = k.device
            state["dtype"] = output_dtype(k)
            state["y_flat"] = work(layout.flatten(y.to(k.device)), sd)
            state["solver"] = GPSolver(
                lambda g: k_dd_cache[g], state["y_flat"], diag_reg, diag_reg_absolute_scale, _WHERE
            )

    def eigen(g: str) -> tuple[Eigen, torch.Tensor]:
        """The eigendecomposition of the regularized kernel ``g`` and ``Vᵀ y``."""
        if g not in eigen_cache:
            solver: GPSolver = state["solver"]
            k_reg = regularize(solver.k2(g), diag_reg, diag_reg_absolute_scale)
            e = Eigen(k_reg, f"{_WHERE}: the train-train {g!r} kernel (+ diag_reg)", k_dd_cache[g].dtype)
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
            t: a scalar or an array of any shape (adds leading axes), ``None`` for ``t = ∞``.
            x_test: test inputs ``(N_test, ...)``; ``None`` for the training inputs.
            get: ``"nngp"``, ``"ntk"``, a tuple of them, or ``None`` for both.
            compute_cov: whether to return ``Gaussian(mean, covariance)``.
            **kernel_fn_test_test_kwargs: ``kernel_fn`` keyword arguments for test kernels.
        """
        is_str, names = canonical_get(get, ("nngp", "ntk"), f"{_WHERE} predict_fn")
        deps = _dependency(names, compute_cov)
        k_train_train(deps)
        solver: GPSolver = state["solver"]
        device, dtype = state["device"], state["dtype"]

        ktd: dict[str, torch.Tensor] = {}
        ktt: Optional[torch.Tensor] = None
        rows = layout.non_trace_shape
        if x_test is not None:
            kwargs_td, kwargs_tt = _test_kwargs(kernel_fn_train_train_kwargs, kernel_fn_test_test_kwargs)
            out_td = kernel_fn(x_test, x_train, deps, **kwargs_td)
            for g in deps:
                k = as_tensor(get_attr(out_td, g, f"{_WHERE}: kernel_fn(x_test, x_train)"), "k_test_train", device)
                layout.check_kernel(k, f"{_WHERE}: kernel_fn(x_test, x_train, {g!r})")
                rows = layout.rows_shape(k)
                ktd[g] = work(to_2d(k), sd)
                check_finite(ktd[g], f"kernel_fn(x_test, x_train, {g!r})")
            if compute_cov:
                ktt = work(to_2d(as_tensor(kernel_fn(x_test, None, "nngp", **kwargs_tt), "k_test_test", device)), sd)

        out: dict[str, Any] = {}
        if t is None:
            for g in names:
                if x_test is None:
                    mean = y.to(device=device, dtype=dtype)
                    cov = torch.zeros_like(k_dd_cache[g], dtype=dtype) if compute_cov else None
                else:
                    mean = layout.unflatten(solver.mean(g, ktd[g]), rows).to(dtype)
                    cov = None
                    if compute_cov:
                        cov = zip_pairs(solver.cov(g, ktd.__getitem__, ktt), rows, 0).to(dtype)
                out[g] = mean if cov is None else Gaussian(mean, cov)
            return named_output(is_str, names, out)

        tt, t_shape = times(t, learning_rate, device, sd)
        for g in names:
            e, z = eigen(g)
            v, lam = e.evecs, e.evals
            if x_test is None:
                mean = torch.einsum("ji,ti,im->tjm", v, -expm1_factor(lam, tt, n_total), z)
            else:
                w = torch.einsum("ji,ti,im->tjm", v, -inv_expm1_factor(lam, tt, n_total), z)
                mean = torch.matmul(ktd[g], w)
            mean = layout.unflatten(mean, rows, t_shape).to(dtype)
            if not compute_cov:
                out[g] = mean
                continue
            if x_test is None:
                cov = _train_cov(g, v, lam, tt, n_total, solver)
            else:
                cov = _test_cov(g, v, lam, tt, n_total, solver, ktd, ktt)
            cov = zip_pairs(cov.reshape(t_shape + cov.shape[-2:]), rows, len(t_shape)).to(dtype)
            out[g] = Gaussian(mean, cov)
        return named_output(is_str, names, out)

    return predict_fn


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
