"""Exact GP posteriors of the NNGP, the NTK ensemble at t = ∞, and the NTKGP."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

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
    check_solve_dtype,
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


class GPSolver:
    """Cholesky factors of the (regularized) train-train kernels, computed once per kernel.

    Args:
        train_kernel: ``name -> k_train_train[name]`` in its original (interleaved) shape.
        y_flat: flattened targets ``(N, m)`` in the working precision (its dtype).
    """

    def __init__(
        self,
        train_kernel: Callable[[str], torch.Tensor],
        y_flat: torch.Tensor,
        diag_reg: float,
        diag_reg_absolute_scale: bool,
        where: str = "gp_inference",
    ) -> None:
        self.where = where
        self.dtype = y_flat.dtype
        self.train_kernel = train_kernel
        self.y_flat = y_flat
        self.diag_reg = diag_reg
        self.diag_reg_absolute_scale = diag_reg_absolute_scale
        self._k2: dict[str, torch.Tensor] = {}
        self._chol: dict[str, Cholesky] = {}
        self._alpha: dict[str, torch.Tensor] = {}

    def k2(self, g: str) -> torch.Tensor:
        """The unregularized train-train kernel ``g`` as a float64 matrix ``(N, N)``."""
        if g not in self._k2:
            self._k2[g] = work(to_2d(self.train_kernel(g)), self.dtype)
        return self._k2[g]

    def chol(self, g: str) -> Cholesky:
        if g not in self._chol:
            k = regularize(self.k2(g), self.diag_reg, self.diag_reg_absolute_scale)
            self._chol[g] = Cholesky(k, f"{self.where}: the train-train {g!r} kernel (+ diag_reg)")
        return self._chol[g]

    def alpha(self, g: str) -> torch.Tensor:
        """``K_g⁻¹ y``, shape ``(N, m)``."""
        if g not in self._alpha:
            self._alpha[g] = self.chol(g).solve(self.y_flat)
        return self._alpha[g]

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
            b = self.chol(k).half_solve(ktd(k).T)
            return symmetrize(ktt - b.T @ b)
        chol = self.chol("ntk")
        # two triangular solves on the transposed view (faster than cholesky_solve here)
        a = chol.half_solve(ktd("ntk").T)
        a = torch.linalg.solve_triangular(chol.L.T, a, upper=True)  # Θ⁻¹ Θ_dt, (N, N_test)
        term_2 = a.T @ ktd("nngp").T
        cov = a.T @ (self.k2("nngp") @ a) - term_2 - term_2.T + ktt
        return symmetrize(cov)


def gp_inference(
    k_train_train: Any,
    y_train: ArrayLike,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
    trace_axes: Axes = (-1,),
    *,
    solve_dtype: torch.dtype = torch.float64,
) -> Callable[..., Any]:
    r"""The posterior of the NNGP, of the infinite NTK ensemble at t = ∞, and of the NTKGP.

    With :math:`K` the train-train kernel (+ ``diag_reg``), the mean on test points is
    :math:`K_{td} K^{-1} Y` for each of ``"nngp"``, ``"ntk"`` and ``"ntkgp"`` (the latter two
    with the NTK); the covariances are given in :meth:`GPSolver.cov`. Cholesky factors are
    computed on first use and reused.

    Args:
        k_train_train: ``(N, N)`` tensor or array (used for every ``get``), or a
            `tangents.Kernel` / named tuple with ``nngp`` and/or ``ntk`` fields.
            The ``ntk`` covariance needs both.
        y_train: targets ``(N, C)``.
        diag_reg: diagonal regularizer, ``K + diag_reg · mean(diag K) · I``.
        diag_reg_absolute_scale: ``True`` for ``K + diag_reg · I``.
        trace_axes: axes of ``y_train`` along which kernels are :math:`K \otimes I`.
        solve_dtype: precision of the Cholesky solves (keyword only, not in
            neural-tangents): ``torch.float64`` (default) or ``torch.float32`` (faster).

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
    first = as_tensor(first_kernel(k_train_train), "k_train_train")
    device = first.device
    dtype = output_dtype(first)
    y = as_tensor(y_train, "y_train", device)
    layout = Layout(tuple(y.shape), trace_axes)
    where = "gp_inference"

    def train_kernel(g: str) -> torch.Tensor:
        k = as_tensor(get_attr(k_train_train, g, f"{where}: k_train_train"), "k_train_train", device)
        layout.check_kernel(k, f"{where}: k_train_train", layout.non_trace_shape)
        return k

    sd = check_solve_dtype(solve_dtype, where)
    solver = GPSolver(train_kernel, work(layout.flatten(y), sd), diag_reg, diag_reg_absolute_scale)

    def predict_fn(get: Get = None, k_test_train: Any = None, k_test_test: Any = None) -> Any:
        """Posterior mean (or `Gaussian`) on the test set for each name in ``get``.

        Args:
            get: ``"nngp"``, ``"ntk"``, ``"ntkgp"``, a tuple of them, or ``None`` for
                ``("nngp", "ntk")``.
            k_test_train: test-train kernel ``(N_test, N)`` (tensor or Kernel-like), or
                ``None`` for train-set outputs.
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
                    out[g] = Gaussian(mean, torch.zeros_like(train_kernel(k), dtype=dtype))
                else:
                    out[g] = mean
                continue

            def ktd(name: str, _where: str = where) -> torch.Tensor:
                t = as_tensor(get_attr(k_test_train, name, f"{_where}: k_test_train"), "k_test_train", device)
                layout.check_kernel(t, f"{_where}: k_test_train")
                return t

            rows = layout.rows_shape(ktd(k))
            mean = layout.unflatten(solver.mean(k, work(to_2d(ktd(k)), sd)), rows).to(dtype)
            if k_test_test is None:
                out[g] = mean
                continue
            if g == "ntk" and not (hasattr(k_train_train, "nngp") and hasattr(k_test_train, "nngp")):
                raise ValueError(
                    f"{where}: the 'ntk' posterior covariance needs both the NTK and the NNGP of "
                    f"the train-train and test-train kernels; pass Kernel-like objects with 'nngp' "
                    f"and 'ntk' fields, e.g. kernel_fn(x_test, x_train, ('nngp', 'ntk'))."
                )
            g_init = "ntk" if g == "ntkgp" else "nngp"
            ktt = work(to_2d(as_tensor(get_attr(k_test_test, g_init, f"{where}: k_test_test"), "k_test_test", device)), sd)
            expected = (math.prod(rows),) * 2
            if tuple(ktt.shape) != expected:
                raise ValueError(
                    f"{where}: k_test_test has shape {tuple(ktt.shape)} once flattened, expected "
                    f"{expected} to match k_test_train; pass kernel_fn(x_test, None, ...)."
                )
            cov = solver.cov(g, lambda name: work(to_2d(ktd(name)), sd), ktt)
            out[g] = Gaussian(mean, zip_pairs(cov, rows, 0).to(dtype))
        return named_output(is_str, names, out)

    return predict_fn
