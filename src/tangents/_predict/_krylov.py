r"""Matrix functions :math:`f(A)\,b` by the Lanczos method: finite training times at scale.

The finite-time predictions need :math:`f(K)\,b` for :math:`f(\lambda) =
(1 - e^{-\tau\lambda})/\lambda` (test points) or :math:`1 - e^{-\tau\lambda}` (training
points), :math:`\tau = \eta t / n`. Instead of the eigendecomposition :math:`K = V\Lambda
V^\top` (:math:`O(n^3)`), ``k`` Lanczos steps from :math:`q_1 = b / \lVert b\rVert` give an
orthonormal basis :math:`Q_k` of the Krylov space and the tridiagonal
:math:`T_k = Q_k^\top A Q_k`, and

.. math::
    f(A)\,b \approx \lVert b\rVert\, Q_k f(T_k) e_1,

exact once the Krylov space is invariant and accurate much earlier for smooth :math:`f`
(the error is that of the best polynomial approximation of degree ``k`` on the spectrum).
All times share one run: :math:`T_k` does not depend on :math:`\tau`. Each column of
:math:`b` has its own recurrence; the columns share one product :math:`AQ` per step.

The basis is kept (and each new vector reorthogonalized against it) when it fits in the
memory budget; otherwise a second pass regenerates it from the recurrence, in
:math:`O(n)` memory per column (Lanczos without reorthogonalization is stable for matrix
functions, Musco, Musco & Sidford 2018).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch

from ._solvers import ConvergenceError, progress_bar

__all__ = ["lanczos_function"]


def _check_steps(k: int) -> bool:
    """Whether to test convergence after ``k`` steps (each test costs an eigendecomposition
    of ``T_k``): every step up to 10, then every 5th up to 100, then every 10th."""
    if k <= 10:
        return True
    return k % (5 if k <= 100 else 10) == 0


def _coefficients(
    alphas: list[torch.Tensor], betas: list[torch.Tensor], fn: Callable[[torch.Tensor], torch.Tensor],
    b_norm: torch.Tensor,
) -> torch.Tensor:
    """``‖b‖ f(T_k) e_1`` for every column, shape ``(T, c, k)``."""
    a = torch.stack(alphas, dim=1)  # (c, k)
    k = a.shape[1]
    t = torch.diag_embed(a)
    if k > 1:
        off = torch.stack(betas[: k - 1], dim=1)  # (c, k - 1)
        t = t + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    theta, s = torch.linalg.eigh(t)  # (c, k), (c, k, k)
    f = fn(theta)  # (T, c, k)
    return torch.einsum("cij,tcj,cj->tci", s, f, s[:, 0, :]) * b_norm[None, :, None]


def lanczos_function(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    tol: float,
    max_iter: int,
    budget: int,
    progress: Optional[bool] = None,
    where: str = "lanczos",
    what: str = "the kernel",
) -> torch.Tensor:
    r"""``f(A) b`` for symmetric ``A`` (given by ``matvec``), ``b`` of shape ``(n, c)``.

    Args:
        matvec: ``V (n, c) -> A V``.
        b: starting vectors, one per column.
        fn: ``θ (c, k) -> f(θ) (T, c, k)``: the function(s) at the Ritz values, one per time.
        tol: stop when the approximation changes by at most ``tol`` (relative, every time and
            column) between two convergence tests.
        max_iter: most Lanczos steps; not converging within them raises `ConvergenceError`.
        budget: bytes the stored basis may take; beyond, a second pass regenerates it.
        progress, where, what: progress bar and messages.

    Returns:
        ``(T, n, c)``.
    """
    n, c = b.shape
    steps = min(max_iter, n)
    store = (steps + 1) * n * c * b.element_size() <= budget
    b_norm = torch.linalg.vector_norm(b, dim=0)
    live = b_norm > 0
    q = b / torch.where(live, b_norm, torch.ones_like(b_norm))
    q_prev = torch.zeros_like(b)
    beta_prev = torch.zeros_like(b_norm)
    alphas: list[torch.Tensor] = []
    betas: list[torch.Tensor] = []
    basis: list[torch.Tensor] = []
    previous: Optional[torch.Tensor] = None
    coeff: Optional[torch.Tensor] = None
    change = float("inf")
    scale = 0.0
    bar = progress_bar(steps, f"lanczos ({what})", progress)
    converged = False
    try:
        for k in range(1, steps + 1):
            if store:
                basis.append(q)
            w = matvec(q)
            a = (q * w).sum(0)
            w = w - q * a - q_prev * beta_prev
            if store:  # full reorthogonalization, twice is enough (Parlett)
                stacked = torch.stack(basis)  # (k, n, c)
                for _ in range(2):
                    w = w - torch.einsum("knc,kc->nc", stacked, torch.einsum("knc,nc->kc", stacked, w))
            beta = torch.linalg.vector_norm(w, dim=0)
            if not bool(torch.isfinite(beta).all() and torch.isfinite(a).all()):
                raise ValueError(
                    f"{where}: {what} gave NaN or infinite products in the Lanczos iteration: the "
                    f"kernel (or y_train) contains NaN or infinite entries; check how it was computed."
                )
            alphas.append(a)
            scale = max(scale, float(a.abs().max()) + 2 * float(beta.max()))
            invariant = beta <= n * torch.finfo(b.dtype).eps * max(scale, 1e-300)  # exact subspace
            beta = torch.where(invariant, torch.zeros_like(beta), beta)
            bar.update()
            if bool(invariant.all()) or k == steps or _check_steps(k):
                coeff = _coefficients(alphas, betas + [beta], fn, b_norm)
                if bool(invariant.all()) or k == n:
                    converged = True  # the Krylov spaces are invariant: exact
                elif previous is not None:
                    pad = torch.nn.functional.pad(previous, (0, coeff.shape[-1] - previous.shape[-1]))
                    diff = torch.linalg.vector_norm(coeff - pad, dim=-1)
                    size = torch.linalg.vector_norm(coeff, dim=-1)
                    ratio = torch.where(size > 0, diff / torch.where(size > 0, size, torch.ones_like(size)), diff)
                    change = float(ratio.max())
                    bar.set_postfix_str(f"change {change:.1e}", refresh=False)
                    converged = change <= tol
                previous = coeff
                if converged:
                    break
            betas.append(beta)
            q_prev, q = q, torch.where(invariant, torch.zeros_like(w), w / torch.where(invariant, torch.ones_like(beta), beta))
            beta_prev = beta
    finally:
        bar.close()
    if not converged:
        raise ConvergenceError(
            f"{where}: the Lanczos iteration on {what} did not converge: after {steps} steps the "
            f"finite-time prediction still changed by {change:.2e} (relative) between checks, "
            f"above tol={tol:g}. Raise max_iter (now {max_iter}) or loosen tol; long times "
            f"(large learning_rate · t) and small diag_reg need more steps; solver='cholesky' "
            f"uses an eigendecomposition instead where the kernel fits in memory.",
            change, steps, tol,
        )
    assert coeff is not None
    k = coeff.shape[-1]
    if store:
        return torch.einsum("knc,tck->tnc", torch.stack(basis[:k]), coeff)
    return _second_pass(matvec, b, b_norm, alphas, betas, coeff)


def _second_pass(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    b_norm: torch.Tensor,
    alphas: list[torch.Tensor],
    betas: list[torch.Tensor],
    coeff: torch.Tensor,
) -> torch.Tensor:
    """``Σ_i q_i coeff_i`` with the basis regenerated by the first pass's recurrence."""
    k = coeff.shape[-1]
    live = b_norm > 0
    q = b / torch.where(live, b_norm, torch.ones_like(b_norm))
    q_prev = torch.zeros_like(b)
    out = torch.einsum("nc,tc->tnc", q, coeff[:, :, 0])
    for i in range(k - 1):
        w = matvec(q) - q * alphas[i] - (q_prev * betas[i - 1] if i else 0.0)
        beta = betas[i]
        q_prev, q = q, torch.where(beta > 0, w / torch.where(beta > 0, beta, torch.ones_like(beta)), torch.zeros_like(w))
        out += torch.einsum("nc,tc->tnc", q, coeff[:, :, i + 1])
    return out
