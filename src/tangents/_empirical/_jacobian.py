"""JACOBIAN_CONTRACTION: per-example Jacobians by reverse mode, contracted parameter by parameter.

    Θ(x1, x2) = Σ_p  J_p(x1) J_p(x2)ᵀ,     J_p(x) = ∂f(x)/∂p  of shape (E, *S, *p.shape)

The Jacobians come from ``torch.func.jacrev`` (``vmap``-ed over independent examples when
``vmap_axes`` is given); the contraction over the parameter axes is one ``einsum`` per
parameter, so the full ``(E1, E2, S, S)`` kernel is never built when axes are traced.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.func import jacrev, vmap

from ._axes import OutputSpec
from ._function import Problem


def jacobians(problem: Problem, tensors: tuple[torch.Tensor, ...], xb: Any, kw: dict[str, Any]) -> list[tuple[torch.Tensor, ...]]:
    """``[J_leaf]``, one tuple per output leaf of per-parameter Jacobians ``(E, *S, *p)``."""
    jac = jacrev(problem.per_example, argnums=0)
    if problem.independent:
        jac = vmap(jac, in_dims=(None, 0, problem.kw_in_dims(kw)))
        return [tuple(j) for j in jac(tensors, xb, kw)]
    return [tuple(j.unsqueeze(0) for j in js) for js in jac(tensors, xb, kw)]


def contract_jacobians(j1: tuple[torch.Tensor, ...], j2: tuple[torch.Tensor, ...], spec: OutputSpec) -> torch.Tensor:
    """``Σ_p spec.contract(J1_p, J2_p)``: the canonical (unscaled) kernel of one output leaf
    (by symmetric halves when ``j2`` is ``j1``)."""
    total = None
    for a, b in zip(j1, j2):
        k = spec.contract_self(a) if a is b else spec.contract(a, b)
        total = k if total is None else total + k
    return total


def ntk_jacobian_contraction(
    problem: Problem,
    tensors: tuple[torch.Tensor, ...],
    x1: Any,
    kw1: dict[str, Any],
    x2: Any | None,
    kw2: dict[str, Any],
    specs: list[OutputSpec],
) -> list[torch.Tensor]:
    """Canonical kernels (one per output leaf) for a block of examples; ``x2=None`` reuses J(x1)."""
    j1 = jacobians(problem, tensors, x1, kw1)
    j2 = j1 if x2 is None else jacobians(problem, tensors, x2, kw2)
    return [contract_jacobians(a, b, s) for a, b, s in zip(j1, j2, specs)]
