r"""Solvers of :math:`(K + \lambda I)\,x = b` for train-train kernels: Cholesky or preconditioned CG.

* ``"cholesky"``: the dense factorizations of `_common` (Cholesky at :math:`t = \infty`, an
  eigendecomposition at finite :math:`t`): :math:`O(n^3)` time, :math:`O(n^2)` memory.
* ``"cg"``: matrix products only (`_operators.KernelOperator`): preconditioned conjugate
  gradients at :math:`t = \infty`, Lanczos (`_krylov`) at finite :math:`t`; every output
  column is solved at once (one pass over the kernel per iteration).
* ``"auto"``: ``"cholesky"`` while the dense factorization is small and fits in free memory,
  ``"cg"`` beyond (`choose`).

The preconditioner is :math:`P = LL^\top + \sigma^2 I`, applied by the Woodbury identity
:math:`P^{-1} = \sigma^{-2}(I - L(\sigma^2 I + L^\top L)^{-1}L^\top)`, with :math:`L`
(``n × r``) a partial pivoted Cholesky factor of :math:`K` (greedy largest-residual pivots,
Harbrecht et al. 2012, as in GPyTorch) or a Nyström factor
:math:`K_{nS}K_{SS}^{-1/2}` on ``r`` uniformly drawn columns (one pass over a stored
kernel), and :math:`\sigma^2 = \lambda` plus the mean of what :math:`LL^\top` leaves of
:math:`\operatorname{diag} K`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from ._operators import KernelOperator, StoredKernel, TensorKernel, memory_budget

__all__ = [
    "AUTO_CHOLESKY_MAX",
    "AUTO_EIGH_MAX",
    "SOLVERS",
    "ConvergenceError",
    "IterativeSystem",
    "LowRankPreconditioner",
    "SolverOptions",
    "choose",
    "conjugate_gradients",
    "nystrom_factor",
    "pivoted_cholesky",
    "solver_options",
]

SOLVERS = ("auto", "cholesky", "cg")
PRECONDITIONERS = ("auto", "pivoted_cholesky", "nystrom", "none")

#: ``solver="auto"`` factorizes (Cholesky, t = ∞) up to this many flattened training
#: points, if the dense matrices fit in free memory; beyond, conjugate gradients.
AUTO_CHOLESKY_MAX = 10_000
#: The same for the eigendecomposition of finite times (about ten Choleskys of work).
AUTO_EIGH_MAX = 5_000
#: Default rank of the preconditioner (on NTK regression, N = 6,000: ranks 100 / 200 / 500 /
#: 1,000 took 101 / 78 / 45 / 32 CG iterations to tol = 1e-6; 500 was the fastest).
DEFAULT_RANK = 500
#: Default iteration limit of CG and Lanczos (``max_iter=None``).
DEFAULT_MAX_ITER = 1000


class ConvergenceError(RuntimeError):
    """An iterative solve stopped before reaching its tolerance.

    Attributes:
        residual: the largest relative residual (CG) or relative change (Lanczos) reached.
        iterations: iterations made.
        tol: the tolerance asked for.
        solution: the last iterate (not an answer to trust; for inspection).
    """

    def __init__(self, message: str, residual: float, iterations: int, tol: float,
                 solution: Optional[torch.Tensor] = None) -> None:
        super().__init__(message)
        self.residual = residual
        self.iterations = iterations
        self.tol = tol
        self.solution = solution


@dataclasses.dataclass(frozen=True)
class SolverOptions:
    """The validated ``solver=``, ``tol=``, ... arguments of a predictor."""

    solver: str = "auto"
    tol: float = 1e-6
    max_iter: Optional[int] = None
    preconditioner: str = "auto"
    preconditioner_rank: Optional[int] = None
    progress: Optional[bool] = None
    seed: int = 0

    def iterations(self, n: int) -> int:
        """``max_iter``, or ``min(max(n, 100), 1000)`` (rounding may need more than ``n``)."""
        return self.max_iter if self.max_iter is not None else min(max(n, 100), DEFAULT_MAX_ITER)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def solver_options(
    where: str,
    solver: Any = "auto",
    tol: Any = 1e-6,
    max_iter: Any = None,
    preconditioner: Any = "auto",
    preconditioner_rank: Any = None,
    progress: Any = None,
) -> SolverOptions:
    """Checks the solver arguments of ``where`` once, with messages that name them."""
    if not isinstance(solver, str):
        raise TypeError(f"{where}: solver must be one of {', '.join(map(repr, SOLVERS))}, got {type(solver).__name__} {solver!r}.")
    if solver.lower() not in SOLVERS:
        raise ValueError(f"{where}: solver={solver!r} is not supported; choose from {', '.join(map(repr, SOLVERS))}.")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (0 < float(tol) < 1):
        raise ValueError(
            f"{where}: tol must be a number between 0 and 1 (the relative residual at which CG "
            f"stops, e.g. tol=1e-6), got {tol!r}."
        )
    if max_iter is not None and (not _is_int(max_iter) or max_iter < 1):
        raise ValueError(
            f"{where}: max_iter must be a positive integer or None (default: min(max(n, 100), "
            f"{DEFAULT_MAX_ITER})), got {max_iter!r}."
        )
    if not isinstance(preconditioner, str) or preconditioner.lower() not in PRECONDITIONERS:
        raise ValueError(
            f"{where}: preconditioner={preconditioner!r} is not supported; choose from "
            f"{', '.join(map(repr, PRECONDITIONERS))}."
        )
    if preconditioner_rank is not None and (not _is_int(preconditioner_rank) or preconditioner_rank < 0):
        raise ValueError(
            f"{where}: preconditioner_rank must be a non-negative integer or None (default "
            f"{DEFAULT_RANK}), got {preconditioner_rank!r}."
        )
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"{where}: progress must be True, False or None (shown after two seconds), got {progress!r}.")
    return SolverOptions(solver.lower(), float(tol), max_iter, preconditioner.lower(), preconditioner_rank, progress)


def choose(options: SolverOptions, n: int, dense_bytes: int, device: torch.device, finite_t: bool) -> str:
    """``"cholesky"`` or ``"cg"`` for ``options.solver`` (``"auto"`` decides by size and the
    free memory: the dense matrices must fit in 80 % of it)."""
    if options.solver != "auto":
        return options.solver
    limit = AUTO_EIGH_MAX if finite_t else AUTO_CHOLESKY_MAX
    return "cholesky" if n <= limit and dense_bytes <= memory_budget(device, 0.8) else "cg"


def progress_bar(total: int, desc: str, progress: Optional[bool]) -> Any:
    """A tqdm bar: always for ``True``, never for ``False``, after two seconds for ``None``."""
    return tqdm(total=total, desc=desc, disable=progress is False, delay=0 if progress else 2.0, leave=False)


# ---------------------------------------------------------------------- conjugate gradients


def conjugate_gradients(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    precondition: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    tol: float,
    max_iter: int,
    progress: Optional[bool] = None,
    where: str = "cg",
    what: str = "the kernel",
    hint: str = "",
    residual: str = "|(K + diag_reg) x - y| / |y|",
    advice: str = (
        "raise diag_reg (the system is better conditioned), raise preconditioner_rank, or use "
        "solver='cholesky' if the kernel fits in memory."
    ),
) -> tuple[torch.Tensor, int]:
    r"""Solves :math:`Ax = b` column by column by preconditioned conjugate gradients.

    All ``c`` columns share one product :math:`A [p_1 \dots p_c]` per iteration, each with
    its own step sizes; a column stops when its relative residual
    :math:`\lVert b - Ax\rVert / \lVert b\rVert \le` ``tol``.

    Args:
        matvec: ``V (n, c) -> A V``, :math:`A` symmetric positive definite.
        b: right-hand sides ``(n, c)``.
        precondition: ``V -> P⁻¹ V`` (symmetric positive definite), or ``None``.
        tol, max_iter: stopping rule; not reaching ``tol`` in ``max_iter`` raises.
        progress: tqdm bar with the iterations and the largest residual.
        where, what, hint, residual, advice: for messages (the call, the matrix, a diagnosis,
            how the residual is measured, what to change).

    Returns:
        ``(x, iterations)``, ``x`` of shape ``(n, c)``.

    Raises:
        ConvergenceError: ``tol`` not reached; the message gives the residual reached.
        ValueError: :math:`p^\top A p \le 0` (the matrix is not positive definite) or
            non-finite values (NaN or inf in the kernel).
    """
    apply_p = precondition if precondition is not None else (lambda v: v)
    b_norm = torch.linalg.vector_norm(b, dim=0)
    safe_norm = torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm))
    x = torch.zeros_like(b)
    r = b.clone()
    z = apply_p(r)
    p = z.clone()
    rz = (r * z).sum(0)
    res = torch.linalg.vector_norm(r, dim=0) / safe_norm
    active = res > tol
    bar = progress_bar(max_iter, f"cg ({what})", progress)
    it = 0
    try:
        while bool(active.any()):
            if it >= max_iter:
                worst = float(res.max())
                raise ConvergenceError(
                    f"{where}: conjugate gradients on {what} did not converge: after {it} "
                    f"iterations the relative residual {residual} is {worst:.2e} (the largest over "
                    f"{b.shape[1]} right-hand sides), above tol={tol:g}. {hint}Raise max_iter (now "
                    f"{max_iter}), loosen tol, {advice}",
                    worst, it, tol, x,
                )
            q = matvec(p)
            pq = (p * q).sum(0)
            if not bool(torch.isfinite(pq).all()):
                raise ValueError(
                    f"{where}: {what} gave NaN or infinite products in conjugate gradients: the "
                    f"kernel (or y_train) contains NaN or infinite entries; check how it was computed."
                )
            if bool((active & (pq <= 0)).any()):
                raise ValueError(
                    f"{where}: {what} (+ diag_reg) is not positive definite (conjugate gradients "
                    f"found a direction p with pᵀKp = {float(pq[active].min()):.3g} <= 0), so the "
                    f"solve is ill-posed. {hint}Increase diag_reg (e.g. diag_reg=1e-4, relative to "
                    f"the mean of the kernel diagonal) to regularize it."
                )
            alpha = torch.where(active, rz / torch.where(active, pq, torch.ones_like(pq)), torch.zeros_like(pq))
            x.add_(p * alpha)
            r.sub_(q * alpha)
            res = torch.where(active, torch.linalg.vector_norm(r, dim=0) / safe_norm, res)
            active = res > tol
            it += 1
            bar.set_postfix_str(f"residual {float(res.max()):.1e}", refresh=False)
            bar.update()
            if not bool(active.any()):
                break
            z = apply_p(r)
            rz_new = (r * z).sum(0)
            beta = torch.where(active, rz_new / torch.where(rz != 0, rz, torch.ones_like(rz)), torch.zeros_like(rz))
            p = z + p * beta
            rz = rz_new
    finally:
        bar.close()
    return x, it


# ---------------------------------------------------------------------- preconditioners


class LowRankPreconditioner:
    r""":math:`P^{-1}` for :math:`P = LL^\top + \sigma^2 I`, ``L`` of shape ``(n, k)``.

    With :math:`L = US V^\top` (``S²`` and ``V`` from the ``k × k`` eigendecomposition of
    :math:`L^\top L`, ``U = L V S⁻¹``; directions with ``s² <= eps · max s²`` dropped),
    :math:`P^{-1}v = U(S^2 + \sigma^2)^{-1}U^\top v + \sigma^{-2}(v - UU^\top v)`: the
    Woodbury identity without its cancellation for small :math:`\sigma^2`; the second term
    is absent when ``U`` spans everything (``k = n``).
    """

    def __init__(self, factor: torch.Tensor, sigma2: float) -> None:
        self.sigma2 = float(sigma2)
        self.U: Optional[torch.Tensor] = None
        if factor.shape[1]:
            s2, v = torch.linalg.eigh(factor.T @ factor)
            keep = s2 > torch.finfo(factor.dtype).eps * float(s2.max().clamp_min(0))
            s2, v = s2[keep], v[:, keep]
            if len(s2):
                self.U = (factor @ v) / torch.sqrt(s2)
                self.scale = 1.0 / (s2 + self.sigma2)
        self.complement = self.U is None or self.U.shape[1] < factor.shape[0]

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if self.U is None:
            return v / self.sigma2
        w = self.U.T @ v
        out = self.U @ (w * self.scale[:, None])
        if self.complement:
            out += (v - self.U @ w) / self.sigma2
        return out


def _singular(where: str, what: str, detail: str) -> ValueError:
    return ValueError(
        f"{where}: {what} is singular or nearly so ({detail}); with diag_reg=0 the solve is "
        f"ill-posed. Duplicated (or nearly duplicated) training points make the kernel singular. "
        f"Raise diag_reg (e.g. diag_reg=1e-6 or more, relative to the mean of the kernel diagonal)."
    )


def pivoted_cholesky(
    op: KernelOperator, rank: int, diag: torch.Tensor, stop: float
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """A rank-``≤ rank`` partial Cholesky factor ``L`` of ``K`` with greedy pivots.

    Each step takes the row of the largest remaining diagonal entry (one row of ``K``),
    so ``K − LLᵀ`` is positive semi-definite with diagonal ``residual``.

    Returns:
        ``(L (n, k), residual (n,), stopped)``; ``stopped`` is ``True`` if a pivot fell to
        ``stop`` or below before ``rank`` steps (``K`` is then within ``stop`` of rank ``k``).
    """
    n = diag.shape[0]
    d = diag.clone()
    L = diag.new_zeros((n, rank))
    stopped = False
    k = 0
    for k in range(rank):
        i = int(torch.argmax(d))
        pivot = float(d[i])
        if pivot <= stop:
            stopped = True
            break
        row = op.rows(torch.tensor([i]))[0].to(device=d.device, dtype=d.dtype)
        col = (row - L[:, :k] @ L[i, :k]) / math.sqrt(pivot)
        L[:, k] = col
        d -= col * col
        d[i] = 0.0
        d.clamp_(min=0.0)
    else:
        k = rank
    return L[:, :k], d, stopped


def nystrom_factor(
    op: KernelOperator, rank: int, diag: torch.Tensor, stop: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``L = K_{nS} K_{SS}^{-1/2}`` on ``rank`` columns ``S`` drawn uniformly (one pass over
    the kernel); eigenvalues of ``K_SS`` at or below ``stop`` are dropped and reported."""
    n = diag.shape[0]
    index = torch.randperm(n, generator=generator)[:rank].sort().values
    rows = op.rows(index).to(device=diag.device, dtype=diag.dtype)  # (r, n)
    w = rows[:, index.to(rows.device)]
    w = 0.5 * (w + w.T)
    evals, evecs = torch.linalg.eigh(w)
    keep = evals > stop
    factor = (rows.T @ evecs[:, keep]) / torch.sqrt(evals[keep])
    residual = (diag - (factor * factor).sum(1)).clamp_(min=0.0)
    return factor, residual, bool((~keep).any())


class IterativeSystem:
    r"""The system :math:`(K + \lambda I)x = b` of one train-train kernel, for CG and Lanczos.

    :math:`\lambda` is ``diag_reg · mean(diag K)`` (or ``diag_reg`` itself when absolute);
    the diagonal and the preconditioner are computed on first use and kept.

    Args:
        op: the kernel (`KernelOperator`).
        diag_reg, absolute: the regularizer as the predictors take it.
        options: `SolverOptions`.
        dtype: working precision of the vectors (products of float32 kernels are made in it).
        where, what: for messages.
    """

    def __init__(self, op: KernelOperator, diag_reg: float, absolute: bool, options: SolverOptions,
                 dtype: torch.dtype, where: str, what: str) -> None:
        self.op = op
        self.diag_reg = float(diag_reg)
        self.absolute = absolute
        self.options = options
        self.dtype = dtype
        self.where = where
        self.what = what
        self._diag: Optional[torch.Tensor] = None
        self._lam: Optional[float] = None
        self._precondition: Any = None
        self.iterations = 0  # of the last solve

    @property
    def n(self) -> int:
        return self.op.n

    def diag(self) -> torch.Tensor:
        if self._diag is None:
            d = self.op.diagonal().to(self.dtype)
            if not bool(torch.isfinite(d).all()):
                raise ValueError(
                    f"{self.where}: the diagonal of {self.what} contains NaN or infinite entries; check "
                    f"the kernel computation."
                )
            self._diag = d
        return self._diag

    def lam(self) -> float:
        """The absolute regularizer :math:`\\lambda`."""
        if self._lam is None:
            self._lam = self.diag_reg if self.absolute else self.diag_reg * float(self.diag().mean()) if self.diag_reg else 0.0
        return self._lam

    def working_copy(self) -> None:
        """An in-memory kernel in another dtype than the solve is converted once, if the copy
        takes at most a quarter of the free memory (each product then reads it directly
        instead of converting every block again)."""
        op = self.op
        if isinstance(op, TensorKernel) and op.dtype != self.dtype:
            if op.n * op.n * self.dtype.itemsize <= memory_budget(op.device, 0.25):
                self.op = TensorKernel(op.flat().to(self.dtype), op.what)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        out = self.op.matmul(v)
        lam = self.lam()
        if lam:
            out.add_(v, alpha=lam)
        return out

    def hint(self) -> str:
        if self.diag_reg == 0:
            return ("diag_reg is 0: a kernel with duplicated training points is singular and CG "
                    "cannot converge on it; raise diag_reg. ")
        return ""

    def preconditioner(self) -> Optional[LowRankPreconditioner]:
        if self._precondition is None:
            self._precondition = self._build_preconditioner() or False
        return self._precondition or None

    def _build_preconditioner(self) -> Optional[LowRankPreconditioner]:
        opts = self.options
        kind = opts.preconditioner
        if kind == "auto":
            kind = "nystrom" if isinstance(self.op, StoredKernel) else "pivoted_cholesky"
        rank = min(self.n, DEFAULT_RANK if opts.preconditioner_rank is None else opts.preconditioner_rank)
        if opts.preconditioner_rank is None:  # L and U (n × rank each) in an eighth of the free memory
            rank = min(rank, memory_budget(self.op.device, 0.125) // max(1, 2 * self.n * self.dtype.itemsize))
        if kind == "none" or rank == 0:
            return None
        diag = self.diag()
        scale = float(diag.max())
        # A pivot (or an eigenvalue of K_SS) this small means cond(K) > 1/√eps: singular to
        # the precision of any solve when diag_reg = 0.
        stop = math.sqrt(torch.finfo(self.dtype).eps) * scale
        lam = self.lam()
        if kind == "pivoted_cholesky":
            factor, residual, deficient = pivoted_cholesky(self.op, rank, diag, stop)
            detail = (f"a partial pivoted Cholesky factor reached a pivot <= {stop / scale:.1e} of the "
                      f"largest diagonal entry after {factor.shape[1]} steps")
        else:
            gen = torch.Generator().manual_seed(opts.seed)
            factor, residual, deficient = nystrom_factor(self.op, rank, diag, stop, gen)
            detail = f"the kernel among {rank} training points has eigenvalues <= {stop / scale:.1e} of its largest diagonal entry"
        if not bool(torch.isfinite(factor).all()):
            raise ValueError(
                f"{self.where}: {self.what} contains NaN or infinite entries (found in the rows read "
                f"for the preconditioner); check how it was computed."
            )
        if lam == 0 and deficient:
            raise _singular(self.where, self.what, detail)
        # (sigma2 is used only on the complement of L's columns, empty for a full factor)
        sigma2 = max(lam + float(residual.mean()), torch.finfo(self.dtype).eps * scale)
        return LowRankPreconditioner(factor, sigma2)

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        r"""``(K + λI)⁻¹ b`` for ``b`` of shape ``(n, c)`` (in the working precision)."""
        self.working_copy()
        x, self.iterations = conjugate_gradients(
            self.matvec,
            b.to(self.dtype),
            precondition=self.preconditioner(),
            tol=self.options.tol,
            max_iter=self.options.iterations(self.n),
            progress=self.options.progress,
            where=self.where,
            what=self.what,
            hint=self.hint(),
        )
        return x
