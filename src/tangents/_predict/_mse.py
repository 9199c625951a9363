"""Closed-form gradient flow on the MSE loss in function space, and the maximal learning rate."""

from __future__ import annotations

from typing import Any, Optional, Protocol, Union

import torch

from ._common import (
    ArrayLike,
    Axes,
    Cholesky,
    Eigen,
    Layout,
    as_tensor,
    check_finite,
    check_solve_dtype,
    expm1_factor,
    inv_expm1_factor,
    output_dtype,
    regularize,
    times,
    to_2d,
    work,
)


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
) -> PredictFn:
    r"""Predicts the outcome of gradient flow on the MSE loss in function space, in closed form.

    For the loss :math:`\mathcal L = \frac{1}{2n}\lVert f(X) - Y\rVert^2` with
    :math:`n` = ``y_train.size`` and a fixed kernel :math:`K` (``k_train_train`` plus
    ``diag_reg``), continuous-time gradient descent with learning rate :math:`\eta` gives,
    with :math:`\tau = \eta t / n`,

    .. math::
        f_t(X) = Y + e^{-\tau K}(f_0(X) - Y), \qquad
        f_t(x) = f_0(x) - K_{xX} K^{-1}(I - e^{-\tau K})(f_0(X) - Y).

    ``t=None`` is infinite time (:math:`f_\infty(X) = Y`, a Cholesky solve for the test set).
    The eigendecomposition (finite ``t``) and the Cholesky factor (``t=None``) of
    ``k_train_train`` are computed on first use and reused by every later call.

    Args:
        k_train_train: kernel on the training data, shape ``(N, N)`` for ``y_train`` of shape
            ``(N, C)`` and ``trace_axes=(-1,)``; in general the interleaved pairs of the
            non-trace axes of ``y_train``, e.g. ``(N, N, C, C)`` for ``trace_axes=()``.
        y_train: targets, e.g. ``(N, C)``.
        learning_rate: step size :math:`\eta`; only ``learning_rate * t`` matters.
        diag_reg: diagonal regularizer, ``K + diag_reg · mean(diag K) · I``.
        diag_reg_absolute_scale: if ``True``, ``K + diag_reg · I`` instead.
        trace_axes: axes of ``y_train`` along which the kernel is :math:`\Theta \otimes I`.
        solve_dtype: precision of the eigendecomposition and solves (keyword only, not in
            neural-tangents): ``torch.float64`` (default) or ``torch.float32`` (faster).

    Returns:
        ``predict_fn(t=None, fx_train_0=0., fx_test_0=None, k_test_train=None)`` returning
        ``fx_train_t``, ``fx_test_t`` (when ``fx_train_0 is None``) or both, with a leading
        axis of shape ``t.shape`` when ``t`` is an array. ``k_test_train`` has shape
        ``(N_test, N)`` (interleaved like ``k_train_train`` in general).

    Example:
        >>> from tangents import predict, stax
        >>> _, _, kernel_fn = stax.serial(stax.Dense(512), stax.Relu(), stax.Dense(1))
        >>> x_train, y_train, x_test = torch.randn(20, 3), torch.randn(20, 1), torch.randn(5, 3)
        >>> predict_fn = predict.gradient_descent_mse(kernel_fn(x_train, None, "ntk"), y_train)
        >>> fx_train_t, fx_test_t = predict_fn(t=10., fx_train_0=0., fx_test_0=0.,
        ...                                    k_test_train=kernel_fn(x_test, x_train, "ntk"))
    """
    k = as_tensor(k_train_train, "k_train_train")
    device = k.device
    y = as_tensor(y_train, "y_train", device)
    layout = Layout(tuple(y.shape), trace_axes)
    layout.check_kernel(k, "gradient_descent_mse: k_train_train", layout.non_trace_shape)
    dtype = output_dtype(k)
    sd = check_solve_dtype(solve_dtype, "gradient_descent_mse")
    k2 = work(to_2d(k), sd)
    check_finite(k2, "k_train_train")
    y_flat = work(layout.flatten(y), sd)
    n_total = y.numel()
    where = "gradient_descent_mse predict_fn"
    cache: dict[str, Any] = {}

    def k_reg() -> torch.Tensor:
        return regularize(k2, diag_reg, diag_reg_absolute_scale)

    def eigen() -> Eigen:
        if "eigen" not in cache:
            cache["eigen"] = Eigen(k_reg(), "gradient_descent_mse: k_train_train (+ diag_reg)", k.dtype)
        return cache["eigen"]

    def cholesky() -> Cholesky:
        if "chol" not in cache:
            cache["chol"] = Cholesky(k_reg(), "gradient_descent_mse: k_train_train (+ diag_reg)")
        return cache["chol"]

    def test_kernel(k_test_train: Any) -> tuple[torch.Tensor, tuple[int, ...]]:
        ktd = as_tensor(k_test_train, "k_test_train", device)
        layout.check_kernel(ktd, "gradient_descent_mse: k_test_train")
        ktd2 = work(to_2d(ktd), sd)
        check_finite(ktd2, "k_test_train")
        return ktd2, layout.rows_shape(ktd)

    def predict_fn(
        t: Optional[ArrayLike] = None,
        fx_train_0: Optional[ArrayLike] = 0.0,
        fx_test_0: Optional[ArrayLike] = None,
        k_test_train: Optional[ArrayLike] = None,
    ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Train [and test] predictions at time[s] ``t`` (``None``: infinite time).

        Args:
            t: a scalar or an array of any shape (a leading axis of that shape is added),
                or ``None`` for ``t = ∞``.
            fx_train_0: outputs on the training set at ``t = 0`` (``(N, C)`` or a scalar);
                ``None`` to skip train predictions.
            fx_test_0: outputs on the test set at ``t = 0``; ``None`` to skip them.
            k_test_train: test-train kernel ``(N_test, N)``, needed for test predictions.

        Returns:
            ``fx_train_t``, ``fx_test_t`` or ``(fx_train_t, fx_test_t)``.
        """
        check_inputs(fx_train_0, fx_test_0, k_test_train, where)
        f0 = None if fx_train_0 is None else work(as_tensor(fx_train_0, "fx_train_0", device), sd)
        g0 = None if fx_test_0 is None else work(as_tensor(fx_test_0, "fx_test_0", device), sd)
        # residual at t = 0, flattened to (N, m)
        r0 = -y_flat if f0 is None else layout.flatten(torch.broadcast_to(f0, y.shape) - y.to(f0))
        if k_test_train is not None and g0 is not None:
            ktd, rows = test_kernel(k_test_train)

        if t is None:
            fx_train = y.to(dtype)
            if g0 is None:
                return fx_train
            dfx_test = ktd @ cholesky().solve(-r0)
            fx_test = (g0 + layout.unflatten(dfx_test, rows)).to(dtype)
            return fx_test if f0 is None else (fx_train, fx_test)

        tt, t_shape = times(t, learning_rate, device, sd)
        e = eigen()
        z = e.evecs.T @ r0  # (N, m)
        lead = (1,) * len(t_shape)
        out = []
        if f0 is not None:
            d = torch.einsum("ji,ti,im->tjm", e.evecs, expm1_factor(e.evals, tt, n_total), z)
            out.append((f0.reshape(lead + tuple(f0.shape)) + layout.unflatten(d, layout.non_trace_shape, t_shape)).to(dtype))
        if g0 is not None:
            w = torch.einsum("ji,ti,im->tjm", e.evecs, inv_expm1_factor(e.evals, tt, n_total), z)
            d = torch.matmul(ktd, w)
            out.append((g0.reshape(lead + tuple(g0.shape)) + layout.unflatten(d, rows, t_shape)).to(dtype))
        return out[0] if len(out) == 1 else (out[0], out[1])

    return predict_fn


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
    k = as_tensor(ntk_train_train, "ntk_train_train")
    if k.ndim % 2 or k.ndim == 0:
        raise ValueError(f"max_learning_rate: ntk_train_train must be (N, N) or interleaved pairs, got shape {tuple(k.shape)}.")
    k2 = work(to_2d(k))
    if k2.shape[0] != k2.shape[1]:
        raise ValueError(f"max_learning_rate: ntk_train_train must be square, got shape {tuple(k.shape)}.")
    check_finite(k2, "ntk_train_train")
    factor = k2.shape[0] if y_train_size is None else int(y_train_size)
    max_eval = float(torch.linalg.eigvalsh(0.5 * (k2 + k2.T))[-1])
    return 2 * (1 + float(momentum)) * factor / (max_eval + eps)
