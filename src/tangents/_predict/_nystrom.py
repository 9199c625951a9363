r"""Nyström kernel regression solved Falkon's way: ``N × M`` kernel entries, ``M × M`` memory.

With ``M`` centres :math:`C \subset X` (chosen uniformly, or by approximate ridge leverage
scores), the Nyström estimator is :math:`f(x) = K_{xC}\,\alpha` with

.. math::
    (K_{nM}^\top K_{nM} + \lambda K_{MM})\,\alpha = K_{nM}^\top y,

the kernel ridge regression :math:`K_{xX}(K + \lambda I)^{-1}y` restricted to the span of
the centres (exactly it when ``C = X``; Rudi, Carratino & Rosasco 2017). The system is
solved by conjugate gradients preconditioned as in Falkon: with
:math:`T^\top T = K_{MM}` and :math:`A^\top A = TT^\top / M + \lambda_n I`
(:math:`\lambda_n = \lambda / n`, both Cholesky factors of ``M × M`` matrices) and
:math:`B = T^{-1}A^{-1}`, CG runs on

.. math::
    B^\top \left(\tfrac{1}{n} K_{nM}^\top K_{nM} + \lambda_n K_{MM}\right) B\,\beta
    = A^{-\top}\left(T^{-\top}\tfrac{1}{n} K_{nM}^\top K_{nM} T^{-1} + \lambda_n I\right)A^{-1}\beta
    = B^\top \tfrac{1}{n} K_{nM}^\top y,

whose matrix is close to the identity when ``K_nM`` is well sampled by the centres
(:math:`K_{nM}^\top K_{nM} \approx \frac{n}{M} K_{MM}^2`), so a few tens of iterations
suffice; :math:`\alpha = B\beta`. Each iteration is one pass over the blocks of
:math:`K_{nM}` (kept in memory while they fit, else read from ``cache_dir`` or
recomputed), never ``N × N``. ``T`` and ``A`` share one ``M × M`` matrix, both computed
in place.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ._common import (
    ArrayLike,
    Get,
    as_tensor,
    canonical_get,
    check_bool,
    check_number,
    check_solve_dtype,
    check_targets,
    named_output,
    output_dtype,
)
from ._nystrom_blocks import KernelBlock, LocalBlocks, dask_blocks
from ._operators import BLOCK_BYTES, _is_pair, memory_budget, slice_inputs
from ._solvers import conjugate_gradients, solver_options

__all__ = ["nystrom"]

_WHERE = "nystrom"
CENTERS = ("uniform", "leverage")


def nystrom(
    kernel_fn: Callable[..., Any],
    x_train: ArrayLike,
    y_train: ArrayLike,
    n_centers: Optional[int] = None,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
    centers: Union[str, ArrayLike] = "uniform",
    seed: Union[int, torch.Generator, None] = None,
    *,
    solve_dtype: torch.dtype = torch.float64,
    tol: float = 1e-6,
    max_iter: Optional[int] = None,
    cache_bytes: Optional[int] = None,
    cache_dir: Union[str, os.PathLike, None] = None,
    client: Any = None,
    progress: Optional[bool] = None,
    **kernel_fn_kwargs: Any,
) -> Callable[..., Any]:
    r"""Kernel regression with ``M`` Nyström centres, for ``10⁵``–``10⁶`` training points.

    Predicts like `gradient_descent_mse_ensemble` at ``t = ∞``: the NNGP or NTK posterior
    mean :math:`K_{xX}(K + \lambda I)^{-1} y`, here restricted to the span of the centres
    (see the module doc for the system and Falkon's preconditioner). Kernels are computed
    by ``kernel_fn`` in blocks of rows of :math:`K(X, C)`: ``N · M`` entries per pass and
    ``O(M²)`` memory for the two ``M × M`` Cholesky factors (per kernel).

    With ``n_centers = N`` the result is the exact kernel ridge regression (to ``tol``).
    Accuracy grows with ``M``: ``M`` of a few thousand often matches the exact solve to a
    fraction of a point of accuracy when ``diag_reg`` is not tiny (the effective dimension
    of the problem is what matters).

    Args:
        kernel_fn: ``kernel_fn(x1, x2, get, **kwargs)`` with 2-D kernels ``(N1, N2)`` (outputs
            traced), e.g. ``stax.serial(...).kernel_fn``.
        x_train: training inputs ``(N, ...)``.
        y_train: targets ``(N, C)`` or ``(N,)``; every column is solved at once.
        n_centers: ``M``, the number of centres (``1 <= M <= N``); may be omitted when
            ``centers`` gives their indices.
        diag_reg: :math:`\lambda = ` ``diag_reg · mean(diag K)`` over all training points
            (or ``diag_reg`` itself with ``diag_reg_absolute_scale``), as the exact solvers.
        diag_reg_absolute_scale: ``True`` for an absolute ``diag_reg``.
        centers: ``"uniform"`` (a uniform sample without replacement), ``"leverage"``
            (sampled by approximate ridge leverage scores from a uniform pilot of ``M``
            points: one more pass over ``N × M`` entries; needs ``diag_reg > 0``), or the
            indices of the centres in ``x_train`` (a 1-D integer array).
        seed: an ``int``, a ``torch.Generator`` or ``None`` (torch's global generator).
        solve_dtype: precision of the factors and of CG (the kernel blocks stay in their
            own dtype, e.g. float32, and are converted one block at a time).
        tol: CG stops at the relative residual ``tol`` of the preconditioned system.
        max_iter: most CG iterations (default ``min(max(M, 100), 1000)``); a solve that does not
            reach ``tol`` raises `ConvergenceError` with the residual reached.
        cache_bytes: bytes of ``K(X, C)`` blocks kept in memory between CG iterations
            (default: half the free memory; ``0`` recomputes every block at every
            iteration). With a ``client`` the blocks stay in the workers' memory instead.
        cache_dir: a directory (e.g. on a local SSD) for the blocks of ``K(X, C)`` beyond
            ``cache_bytes``: each is written once, into a temporary subdirectory deleted when
            the fit ends, and read back at every CG iteration instead of being recomputed
            (reading ``N · M`` floats is usually many times faster than computing them).
            Needs up to ``N · M · itemsize`` bytes of free disk (checked first). ``None``
            (the default) recomputes them. Not with a ``client``.
        client: a ``dask.distributed.Client``: the kernel blocks are computed as tasks on its
            cluster (inputs scattered once, blocks kept in the workers' memory between
            iterations, only ``M × C`` vectors sent per iteration).
        progress: tqdm bars of blocks and CG iterations: ``True``, ``False``, or ``None``
            (shown when a pass takes over two seconds).
        **kernel_fn_kwargs: passed to ``kernel_fn`` (not per-example pairs).

    Returns:
        ``predict_fn(t=None, x_test=None, get=None, compute_cov=False)``: the mean
        ``(N_test, C)`` (shaped like ``y_train``'s rows) for a string ``get``, else a named
        tuple ``Gaussians`` of means (``get=None`` is ``("nngp", "ntk")``); ``x_test=None``
        gives the fitted values on the training inputs. The solve for each kernel is made on
        first use and kept (the attribute ``predict_fn.info`` records the centres, the
        iterations and the regularizer).

    Raises:
        ConvergenceError: CG did not reach ``tol`` within ``max_iter``.

    Example:
        >>> net = stax.serial(stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(),
        ...                   stax.Dense(1, W_std=1.5, b_std=0.05))
        >>> predict_fn = predict.nystrom(net.kernel_fn, x_train, y_train, n_centers=2000,
        ...                              diag_reg=1e-4, seed=0)
        >>> y_test = predict_fn(x_test=x_test, get="ntk")  # (N_test, C)
    """
    if not callable(kernel_fn):
        raise TypeError(f"{_WHERE}: kernel_fn must be callable as kernel_fn(x1, x2, get), got {type(kernel_fn).__name__}.")
    options = solver_options(_WHERE, "cg", tol, max_iter, "none", None, progress)
    diag_reg = check_number(diag_reg, "diag_reg", _WHERE)
    absolute = check_bool(diag_reg_absolute_scale, "diag_reg_absolute_scale", _WHERE)
    sd = check_solve_dtype(solve_dtype, _WHERE)
    x_first = _first(x_train)
    n = int(x_first.shape[0]) if x_first.ndim else 0
    device = x_first.device
    y = as_tensor(y_train, "y_train", device)
    check_targets(y, _WHERE)
    vector = y.ndim == 1
    y2 = y.reshape(y.shape[0], -1)
    if y.shape[0] != n:
        raise ValueError(
            f"{_WHERE}: x_train has {n} examples (shape {tuple(x_first.shape)}) but y_train has "
            f"{y.shape[0]} (shape {tuple(y.shape)}); pass one target row per training input."
        )
    for key, v in kernel_fn_kwargs.items():
        if _is_pair(v):
            raise ValueError(
                f"{_WHERE}: per-example keyword arguments such as {key}=(..., ...) are not supported; "
                f"use gradient_descent_mse_ensemble(..., solver='cg')."
            )
    if cache_bytes is not None and (isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0):
        raise ValueError(f"{_WHERE}: cache_bytes must be a non-negative integer or None, got {cache_bytes!r}.")
    spill_dir = _spill_dir(cache_dir, client)
    gen = _generator(seed)
    pilot = _centre_index(centers, n_centers, n, diag_reg, gen)  # the centres, or a pilot for "leverage"
    kdtype = x_first.dtype if x_first.is_floating_point() else torch.get_default_dtype()
    out_dtype = output_dtype(torch.empty(0, dtype=kdtype))
    leverage = isinstance(centers, str) and centers == "leverage"
    info: dict[str, Any] = {"centers": None if leverage else pilot, "iterations": {}, "lambda": {}, "jitter": {}}
    fitted: dict[str, torch.Tensor] = {}  # name -> alpha (M, m)
    y_work = y2.to(sd)

    def rows_of(index: torch.Tensor) -> Any:
        return slice_inputs(x_train, index.to(device))

    def blocks(x: Any, index: torch.Tensor, names: tuple[str, ...], rows_y: Optional[torch.Tensor], m: int,
               train: bool, persist: bool) -> Any:
        """Blocks of ``K(x, x_train[index])`` (``train``: x is x_train, with the diagonal)."""
        rows = max(1, min(m, BLOCK_BYTES // max(1, len(index) * 8 * len(names))))
        kwargs = dict(
            kernel_fn=kernel_fn, x=x, centres=rows_of(index), names=names, kwargs=kernel_fn_kwargs, y=rows_y, n=m,
            block_rows=rows, cache_bytes=_cache(cache_bytes, device) if persist else 0, with_diagonal=train,
            centre_index=index if train else None, progress=progress,
        )
        if client is not None:
            return dask_blocks(client, persist, **kwargs)
        if persist and spill_dir is not None:
            itemsize = torch.empty((), dtype=kdtype).element_size()
            _check_disk(spill_dir, m * len(index) * len(names) * itemsize - kwargs["cache_bytes"])
            return LocalBlocks(**kwargs, spill_dir=spill_dir)
        return LocalBlocks(**kwargs)

    def kernel_among(index: torch.Tensor, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        out = kernel_fn(rows_of(index), None, names, **kernel_fn_kwargs)
        return {g: torch.as_tensor(out if isinstance(out, torch.Tensor) else getattr(out, g)) for g in names}

    def centres(g: str) -> torch.Tensor:
        """The centres: given or uniform, or sampled by leverage scores of kernel ``g``."""
        if info["centers"] is None:
            info["centers"] = _leverage_centres(g)
        return info["centers"]

    def _leverage_centres(g: str) -> torch.Tensor:
        r"""``M`` rows sampled without replacement with probabilities proportional to
        :math:`\tilde l_i = (K_{ii} - K_{iS}(K_{SS} + \lambda\tfrac{|S|}{N} I)^{-1}K_{Si})/\lambda`,
        the ridge leverage scores estimated from the uniform pilot ``S`` (Musco & Musco 2017)."""
        k_ss = kernel_among(pilot, (g,))[g].to(sd)
        lam = diag_reg if absolute else diag_reg * float(k_ss.diagonal().mean())
        k_ss.diagonal().add_(lam * len(pilot) / n)
        factor, bad = torch.linalg.cholesky_ex(k_ss)
        if int(bad):
            raise ValueError(
                f"{_WHERE}: centers='leverage': the {g!r} kernel among the pilot points is not positive "
                f"definite; raise diag_reg."
            )
        src = blocks(x_train, pilot, (g,), None, n, True, False)
        try:
            parts = src.reduce(_leverage_block, g, factor, desc="nystrom: leverage scores")
        finally:
            src.close()
        scores = (torch.cat([p[0] for p in parts]) - torch.cat([p[1] for p in parts])).clamp_min(0) / lam
        scores = scores + 1e-12 * float(scores.max()) + 1e-300  # every point stays possible
        weights = scores.cpu().to(torch.float64)
        drawn = torch.multinomial(weights, int(n_centers), replacement=False, generator=gen)  # type: ignore[arg-type]
        return drawn.sort().values

    def fit(names: tuple[str, ...]) -> None:
        index = centres(names[0])
        src = blocks(x_train, index, names, y_work, n, True, True)
        try:
            _fit(src, index, names)
        finally:
            src.close()

    def _fit(src: Any, index: torch.Tensor, names: tuple[str, ...]) -> None:
        m_out = y_work.shape[1]
        first = src.reduce(_first_pass, desc="nystrom: K(X, centres)")
        diag = {g: torch.cat([f[0][g] for f in first]).to(sd) for g in names}
        rhs = {g: sum(f[1][g] for f in first).to(sd) / n for g in names}  # (1/n) K_nMᵀ y, (M, m)
        for g in names:
            if not bool(torch.isfinite(diag[g]).all()) or not bool(torch.isfinite(rhs[g]).all()):
                raise ValueError(
                    f"{_WHERE}: kernel_fn(x_train, centres, {g!r}) gave NaN or infinite entries; check "
                    f"the inputs and the network."
                )
        lam = {g: (diag_reg if absolute else diag_reg * float(diag[g].mean())) for g in names}
        pending = kernel_among(index, names)
        pre = {}
        for g in names:
            pre[g] = _FalkonPreconditioner(pending, g, lam[g], lam[g] / n, sd, kdtype)
            info["lambda"][g] = lam[g]
            info["jitter"][g] = pre[g].jitter
        # β-space right-hand sides Bᵀ (1/n) K_nMᵀ y, all kernels side by side
        b = torch.cat([pre[g].bt(rhs[g]) for g in names], dim=1)

        def matvec(beta: torch.Tensor) -> torch.Tensor:
            parts = beta.split(m_out, dim=1)
            u = {g: pre[g].b(p) for g, p in zip(names, parts)}
            w = src.reduce(_normal_product, u, sd, desc="nystrom: CG pass")
            out = []
            for g, p in zip(names, parts):
                total = sum(r[g] for r in w) / n
                out.append(pre[g].a_t(pre[g].t_t(total) + pre[g].lam * pre[g].a_inv(p)))
            return torch.cat(out, dim=1)

        hint = "" if diag_reg else (
            "diag_reg is 0: the Nyström system is then least squares and may be ill-conditioned; raise diag_reg. "
        )
        beta, iterations = conjugate_gradients(
            matvec, b, tol=options.tol, max_iter=options.iterations(len(index)), progress=progress,
            where=_WHERE, what="the preconditioned Nyström system", hint=hint,
            residual="|Bᵀ(H α - K_nMᵀ y)| / |Bᵀ K_nMᵀ y|",
            advice="raise diag_reg (the system is better conditioned) or n_centers.",
        )
        for g, p in zip(names, beta.split(m_out, dim=1)):
            fitted[g] = pre[g].b(p)
            info["iterations"][g] = iterations

    def predict_fn(
        t: Optional[ArrayLike] = None,
        x_test: Optional[ArrayLike] = None,
        get: Get = None,
        compute_cov: bool = False,
    ) -> Any:
        """Posterior mean(s) on ``x_test`` (``None``: fitted values on ``x_train``).

        Args:
            t: only ``None`` (``t = ∞``).
            x_test: test inputs ``(N_test, ...)``, or ``None``.
            get: ``"nngp"``, ``"ntk"``, a tuple of them, or ``None`` for both.
            compute_cov: only ``False``.
        """
        where = f"{_WHERE} predict_fn"
        is_str, names = canonical_get(get, ("nngp", "ntk"), where)
        if t is not None:
            raise ValueError(
                f"{where}: Nyström regression predicts the end of training, t=None, got t={t!r}; for "
                f"finite times use gradient_descent_mse_ensemble(..., solver='cg')."
            )
        if check_bool(compute_cov, "compute_cov", where):
            raise ValueError(
                f"{where}: compute_cov=True is not supported by nystrom (means only); use "
                f"gradient_descent_mse_ensemble(..., solver='cg') for covariances."
            )
        missing = tuple(g for g in names if g not in fitted)
        if missing:
            fit(missing)
        alpha = {g: fitted[g] for g in names}
        if x_test is None:
            x, m = x_train, n
        else:
            xt = _first(x_test)
            x, m = x_test, int(xt.shape[0]) if xt.ndim else 0
        src = blocks(x, info["centers"], names, None, m, False, False)
        try:
            res = src.reduce(_predict_block, alpha, sd, desc="nystrom: predictions")
        finally:
            src.close()
        out = {}
        for g in names:
            flat = torch.cat([r[g] for r in res]) if res else y_work.new_zeros((0, y_work.shape[1]))
            out[g] = (flat.reshape(-1) if vector else flat.reshape((m,) + tuple(y.shape[1:]))).to(out_dtype)
        return named_output(is_str, names, out)

    predict_fn.info = info  # type: ignore[attr-defined]
    return predict_fn


class _FalkonPreconditioner:
    r""":math:`T` and :math:`A` of the module doc, both in one ``M × M`` matrix of ``dtype``
    (as Falkon stores them): the upper Cholesky factor :math:`T` of ``K_MM + jitter``
    (:math:`T^\top T`) in its upper triangle, the upper Cholesky factor :math:`A` of
    ``TTᵀ / M + λ_n I`` (:math:`A^\top A`) transposed in its lower triangle, and each
    diagonal in a vector of its own, put in place before the solves with that factor. Both
    are computed in place (`_cholesky_upper_in_place`, `_gram_of_upper_into_lower`): at
    M = 20,000 in float64 the preconditioner holds 3.2 GB, and at most ``K_MM`` in its own
    dtype besides while it is built.

    The jitter starts at ``M · eps · mean diag`` and grows tenfold while the factorization
    fails (float32 kernels are indefinite at their rounding); it is recorded. Past
    ``√eps(kernel dtype) · mean diag`` it would hide a singular kernel: with ``λ = 0`` that
    is an error naming diag_reg; with ``λ > 0`` it may grow up to ``λ`` (it perturbs the
    regularizer :math:`\lambda K_{MM}` by at most :math:`\lambda \cdot` jitter).

    Args:
        pending: ``{name: K_MM}``; the entry is removed (its memory freed once factorized).
    """

    def __init__(self, pending: dict[str, torch.Tensor], g: str, lam: float, lam_n: float, dtype: torch.dtype,
                 kernel_dtype: torch.dtype) -> None:
        original = pending.pop(g)
        m = original.shape[0]
        if not bool(torch.isfinite(original).all()):
            raise ValueError(f"{_WHERE}: the kernel {g!r} among the centres contains NaN or infinite entries.")
        scale = float(original.diagonal().mean())
        jitter = m * torch.finfo(dtype).eps * max(abs(scale), 1e-300)
        singular = math.sqrt(torch.finfo(kernel_dtype).eps) * abs(scale)
        cap = max(singular, lam)
        while True:
            k = _symmetrize_inplace(original.to(dtype=dtype, copy=True))
            k.diagonal().add_(jitter)
            if _cholesky_upper_in_place(k):  # T above the diagonal; K_MM's lower triangle left below
                break
            del k
            if jitter * 10 > cap:
                added = f"{jitter / abs(scale):.1e} of its mean diagonal"
                raise _singular_centres(g, m, f"its Cholesky factorization fails even with {added} added")
            jitter *= 10
        del original
        smallest = float(k.diagonal().min()) ** 2  # the last pivots of a (nearly) singular kernel
        if lam == 0 and smallest <= singular:
            raise _singular_centres(g, m, f"a Cholesky pivot is {smallest / abs(scale):.1e} of its mean diagonal")
        self.jitter = jitter
        self.lam = lam_n
        self.factors = k
        self.diag_t = k.diagonal().clone()
        inner_diag = _gram_of_upper_into_lower(k, 1.0 / m)  # TTᵀ / M below the diagonal
        inner_diag += lam_n
        k.diagonal().copy_(inner_diag)
        # k's lower triangle is the upper one of k.mT: AᵀA factorized there leaves Aᵀ below
        if not _cholesky_upper_in_place(k.mT):  # pragma: no cover - TTᵀ/M + λI is positive definite
            raise ValueError(f"{_WHERE}: the Falkon preconditioner of {g!r} could not be factorized; raise diag_reg.")
        self.diag_a = k.diagonal().clone()
        self._diagonal = "a"

    def _with(self, which: str) -> torch.Tensor:
        """The matrix with the diagonal of ``which`` (``"t"``: T, ``"a"``: A) in place."""
        if self._diagonal != which:
            self.factors.diagonal().copy_(self.diag_t if which == "t" else self.diag_a)
            self._diagonal = which
        return self.factors

    # B = T⁻¹ A⁻¹; T above the diagonal, Aᵀ below
    def a_inv(self, v: torch.Tensor) -> torch.Tensor:
        """``A⁻¹ v``."""
        return torch.linalg.solve_triangular(self._with("a").mT, v, upper=True)

    def a_t(self, v: torch.Tensor) -> torch.Tensor:
        """``A⁻ᵀ v``."""
        return torch.linalg.solve_triangular(self._with("a"), v, upper=False)

    def t_t(self, v: torch.Tensor) -> torch.Tensor:
        """``T⁻ᵀ v``."""
        return torch.linalg.solve_triangular(self._with("t").mT, v, upper=False)

    def b(self, v: torch.Tensor) -> torch.Tensor:
        """``B v = T⁻¹ A⁻¹ v``."""
        w = self.a_inv(v)
        return torch.linalg.solve_triangular(self._with("t"), w, upper=True)

    def bt(self, v: torch.Tensor) -> torch.Tensor:
        """``Bᵀ v = A⁻ᵀ T⁻ᵀ v``."""
        return self.a_t(self.t_t(v))


def _gram_of_upper_into_lower(f: torch.Tensor, factor: float, block: int = 2048) -> torch.Tensor:
    """``factor · UUᵀ`` of the upper-triangular ``U`` held in the upper triangle of ``f``
    (whatever lies below), written below the diagonal of ``f`` itself, ``U`` untouched;
    returns its diagonal.

    By blocks of rows ``J ≤ I``: ``(UUᵀ)[I, J] = U[I, k ≥ I] U[J, k ≥ I]ᵀ`` (``U[i, k] = 0``
    for ``k < i``), a sixth of the FLOPs of the full product. Row block ``I`` is read first
    (its diagonal block through a copy with zeros below the diagonal), then its results are
    written in rows ``I`` below the diagonal, which no later block reads (they read rows
    ``J ≤ I'`` at columns ``k ≥ I' > I``, all above the diagonal).
    """
    m = f.shape[0]
    diagonal = torch.empty(m, dtype=f.dtype, device=f.device)
    for i0 in range(0, m, block):
        i1 = min(i0 + block, m)
        row = f[i0:i1, i0:].clone()  # U[I, k ≥ I]
        row[:, : i1 - i0] = row[:, : i1 - i0].triu()
        for j0 in range(0, i1, block):
            j1 = min(j0 + block, i1)
            other = row if j0 == i0 else f[j0:j1, i0:]  # U[J, k ≥ I]: above the diagonal for J < I
            part = row @ other.mT
            part *= factor
            if j0 < i0:
                f[i0:i1, j0:j1] = part
            else:  # the diagonal block: its lower triangle, and its diagonal apart
                part = 0.5 * (part + part.mT)
                diagonal[i0:i1] = part.diagonal()
                rows, cols = torch.tril_indices(i1 - i0, i1 - i0, -1, device=f.device)
                f[i0 + rows, i0 + cols] = part[rows, cols]
    return diagonal


def _cholesky_upper_in_place(f: torch.Tensor, block: int = 2048) -> bool:
    """Factorizes the symmetric matrix held in the upper triangle (and diagonal) of ``f`` as
    ``UᵀU``, ``U`` written over that upper triangle, the strict lower triangle untouched.
    Returns whether it was positive definite.

    Blocked, right-looking, by rows of blocks ``K``: the diagonal block (a ``b × b`` copy)
    by ``torch.linalg.cholesky``, the rest of its rows by a triangular solve, then the
    trailing upper triangle updated, ``f[I, J] −= U[K, I]ᵀ U[K, J]`` for ``I ≤ J``; the
    diagonal blocks are updated through ``b × b`` copies, so the lower triangle is never
    written. ``M³/3`` FLOPs in torch's BLAS, no second ``M × M`` matrix.
    """
    m = f.shape[0]
    for k0 in range(0, m, block):
        k1 = min(k0 + block, m)
        diagonal = f[k0:k1, k0:k1]
        upper = diagonal.triu()
        factor, info = torch.linalg.cholesky_ex(upper + upper.triu(1).mT, upper=True)
        if int(info) != 0:
            return False
        _set_upper(diagonal, factor)
        if k1 == m:
            break
        panel = f[k0:k1, k1:]  # rows K right of the diagonal block: all above the diagonal
        panel.copy_(torch.linalg.solve_triangular(factor.mT, panel, upper=False))
        for i0 in range(k1, m, block):
            i1 = min(i0 + block, m)
            left = panel[:, i0 - k1 : i1 - k1]
            block_ii = f[i0:i1, i0:i1]
            _set_upper(block_ii, block_ii - left.mT @ left)
            if i1 < m:
                f[i0:i1, i1:] -= left.mT @ panel[:, i1 - k1 :]
    return True


def _set_upper(target: torch.Tensor, values: torch.Tensor) -> None:
    """``target``'s upper triangle (with its diagonal) set from ``values``; the rest kept."""
    rows, cols = torch.triu_indices(target.shape[0], target.shape[1], device=target.device)
    target[rows, cols] = values[rows, cols]


def _singular_centres(g: str, m: int, detail: str) -> ValueError:
    return ValueError(
        f"{_WHERE}: the {g!r} kernel among the {m} centres is singular or nearly so ({detail}); "
        f"with this diag_reg the solve is ill-posed. Duplicated training points make the kernel "
        f"singular. Raise diag_reg (e.g. diag_reg=1e-6 or more, relative to the mean of the kernel "
        f"diagonal)."
    )


def _symmetrize_inplace(k: torch.Tensor, block: int = 2048) -> torch.Tensor:
    """``(K + Kᵀ) / 2`` in place, by blocks (no second ``M × M`` matrix)."""
    m = k.shape[0]
    for i in range(0, m, block):
        for j in range(i, m, block):
            a = k[i : i + block, j : j + block]
            b = k[j : j + block, i : i + block]
            avg = 0.5 * (a + b.T)
            a.copy_(avg)
            b.copy_(avg.T)
    return k


def _first_pass(block: KernelBlock) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(diag K(x_i, x_i), K_bᵀ y_b)`` of one block (float64 products)."""
    y = block.y.to(torch.float64)
    return block.diag, {g: k.to(torch.float64).T @ y for g, k in block.k.items()}


def _normal_product(block: KernelBlock, u: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``K_bᵀ (K_b u)`` for each kernel."""
    out = {}
    for g, v in u.items():
        k = block.k[g].to(device=v.device, dtype=dtype)
        out[g] = k.T @ (k @ v)
    return out


def _leverage_block(block: KernelBlock, g: str, factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(diag K_bb, rowsum((L⁻¹ K_Sb)²))`` of one block against the pilot points."""
    z = torch.linalg.solve_triangular(factor, block.k[g].to(device=factor.device, dtype=factor.dtype).T, upper=False)
    return block.diag[g].to(factor.dtype), (z * z).sum(0)


def _predict_block(block: KernelBlock, alpha: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {g: block.k[g].to(device=a.device, dtype=dtype) @ a for g, a in alpha.items()}


def _first(x: Any) -> torch.Tensor:
    while isinstance(x, (list, tuple)) and x:
        x = x[0]
    if isinstance(x, np.ndarray):
        return torch.as_tensor(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{_WHERE}: inputs must be torch tensors, numpy arrays or lists of them, got {type(x).__name__}.")
    return x


def _generator(seed: Union[int, torch.Generator, None]) -> Optional[torch.Generator]:
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"{_WHERE}: seed must be a non-negative int, a torch.Generator or None, got {seed!r}.")
    return torch.Generator().manual_seed(int(seed))


def _spill_dir(cache_dir: Any, client: Any) -> Optional[Path]:
    """``cache_dir`` checked: an existing directory, and no ``client``."""
    if cache_dir is None:
        return None
    if not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"{_WHERE}: cache_dir must be a directory path or None, got {type(cache_dir).__name__}.")
    if client is not None:
        raise ValueError(
            f"{_WHERE}: cache_dir is for blocks computed in this process; with a client they stay in the "
            f"workers' memory. Pass one or the other."
        )
    path = Path(cache_dir)
    if not path.is_dir():
        raise ValueError(f"{_WHERE}: cache_dir={str(cache_dir)!r} is not an existing directory; create it first.")
    return path


def _check_disk(path: Path, needed: int) -> None:
    free = shutil.disk_usage(path).free
    if needed > free:
        raise OSError(
            errno.ENOSPC,
            f"{_WHERE}: the blocks of K(X, centres) beyond cache_bytes need {needed / 2**30:.1f} GiB in cache_dir={str(path)!r} "
            f"but {free / 2**30:.1f} GiB are free; choose a larger disk, raise cache_bytes, or pass cache_dir=None "
            f"(recompute them at every iteration).",
        )


def _cache(cache_bytes: Optional[int], device: torch.device) -> int:
    return memory_budget(device, 0.5) if cache_bytes is None else cache_bytes


def _centre_index(
    centers: Any, n_centers: Optional[int], n: int, diag_reg: float, gen: Optional[torch.Generator]
) -> torch.Tensor:
    """The rows of ``x_train`` used as centres, sorted (validated)."""
    if isinstance(centers, str):
        if centers not in CENTERS:
            raise ValueError(
                f"{_WHERE}: centers={centers!r} is not supported; choose 'uniform', 'leverage', or pass "
                f"the indices of the centres in x_train."
            )
        if isinstance(n_centers, bool) or not isinstance(n_centers, (int, np.integer)) or not 1 <= n_centers <= n:
            raise ValueError(
                f"{_WHERE}: n_centers must be an integer between 1 and the {n} training points, got "
                f"{n_centers!r}."
            )
        if centers == "leverage" and diag_reg == 0:
            raise ValueError(
                f"{_WHERE}: centers='leverage' samples by ridge leverage scores, which need diag_reg > 0; "
                f"pass diag_reg (e.g. 1e-4) or centers='uniform'."
            )
        return torch.randperm(n, generator=gen)[: int(n_centers)].sort().values  # (the pilot for "leverage")
    index = torch.as_tensor(np.asarray(centers.cpu() if isinstance(centers, torch.Tensor) else centers))
    if index.ndim != 1 or index.dtype.is_floating_point or index.dtype == torch.bool or not len(index):
        raise ValueError(
            f"{_WHERE}: centers must be 'uniform', 'leverage' or a non-empty 1-D array of row indices "
            f"of x_train, got {centers!r}."
        )
    index = index.to(torch.long)
    if int(index.min()) < 0 or int(index.max()) >= n or len(torch.unique(index)) != len(index):
        raise ValueError(f"{_WHERE}: centers must be distinct row indices between 0 and {n - 1}.")
    if n_centers is not None and n_centers != len(index):
        raise ValueError(f"{_WHERE}: n_centers={n_centers} but centers gives {len(index)} indices; omit n_centers.")
    return index.sort().values
