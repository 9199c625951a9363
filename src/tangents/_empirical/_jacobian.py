"""JACOBIAN_CONTRACTION: per-example Jacobians, contracted parameter by parameter.

    Θ(x1, x2) = Σ_p  J_p(x1) J_p(x2)ᵀ,     J_p(x) = ∂f(x)/∂p  of shape (E, *S, *p.shape)

Where the probes of ``_probes.py`` explain a parameter (its uses are recorded calls and
the chain rule through them agrees with autograd), its per-example Jacobian is built from
the derivatives ``G`` at its uses and their inputs (:class:`JacobianSource`): ``Σ_t G[t] ⊗
x[t]`` for a linear or convolutional use (one batched matrix product), ``c G`` for ``c p``,
a reverse-mode product through the single call otherwise. The others come from
``torch.func.jacrev`` (``vmap``-ed over independent examples). The contraction over the
parameter axes is one ``einsum`` per parameter, each Jacobian built just before it is
contracted and dropped after, so only one parameter's Jacobians are held at a time and the
full ``(E1, E2, S, S)`` kernel is never built when axes are traced.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.func import jacrev, vmap

from ._axes import OutputSpec
from ._function import Problem
from ._probes import Features, Plan, features_of, plan_for, same_structure
from ._rules import classify, generic_jacobian, jacobian_of, scale_of, tokens


#: Bytes of activations that one chunk of reverse-mode seeds may hold (``jacrev``'s chunk_size).
SEED_CHUNK_BYTES = 128 << 20


def jacrev_jacobians(problem: Problem, tensors: tuple[torch.Tensor, ...], xb: Any, kw: dict[str, Any],
                     activations: int | None = None) -> list[tuple[torch.Tensor, ...]]:
    """``[J_leaf]`` by ``torch.func.jacrev``: per output leaf, per parameter ``(E, *S, *p)``.

    ``activations`` (floats of one pass of ``f``) bounds the seeds per reverse pass to
    ``SEED_CHUNK_BYTES`` (None: all at once).
    """
    chunk = None
    if activations:
        chunk = max(1, SEED_CHUNK_BYTES // (activations * tensors[0].element_size()))
    jac = jacrev(problem.per_example, argnums=0, chunk_size=chunk)
    if problem.independent:
        jac = vmap(jac, in_dims=(None, 0, problem.kw_in_dims(kw)))
        return [tuple(j) for j in jac(tensors, xb, kw)]
    return [tuple(j.unsqueeze(0) for j in js) for js in jac(tensors, xb, kw)]


class JacobianSource:
    """The per-example Jacobians of one batch, each built on request (:meth:`jacobian`).

    Args:
        problem, tensors: the function and its parameters.
        xb, kw: a batch, example axis first.
        n_leads: per output leaf, ``1 + len(S)``: the leading axes ``(E, *S)`` of its Jacobians.
        cache: where the :class:`~._probes.Plan` is kept between calls (None: discovered anew).
        plan: a plan to use (the other batch's, when both have the same structure).
    """

    def __init__(self, problem: Problem, tensors: tuple[torch.Tensor, ...], xb: Any, kw: dict[str, Any],
                 n_leads: list[int], cache: dict | None = None, plan: Plan | None = None) -> None:
        self.problem, self.tensors, self.n_leads = problem, tensors, n_leads
        own = plan_for(problem, tensors, xb, kw, cache)
        self.plan = own if plan is None or not same_structure(plan, own) else plan
        self.jacrev: list[tuple[torch.Tensor, ...]] | None = None
        self.features: Features | None = None
        recorded = sum(math.prod(u.out_shape) for u in self.plan.uses)
        if not self.plan.uses or (not problem.independent and recorded > sum(t.numel() for t in tensors)):
            # Nothing recorded, or the whole batch as one example: the derivatives at every
            # layer output for every output entry (quadratic in the batch) would outgrow the
            # Jacobians themselves; those by jacrev, a chunk of output entries at a time.
            self.jacrev = jacrev_jacobians(problem, tensors, xb, kw, recorded or None)
        else:
            self.features = features_of(problem, tensors, self.plan, xb, kw)
        self.uses_of: dict[int, list[int]] = {}
        unexplained = set(self.plan.unexplained)
        for k, use in enumerate(self.plan.uses):
            for i in sorted(set(use.params.values()) - unexplained):
                self.uses_of.setdefault(i, []).append(k)

    def jacobian(self, leaf: int, p: int) -> torch.Tensor | None:
        """``∂f_leaf/∂p`` per example, ``(E, *S, *p.shape)``; None if ``f`` does not use ``p``."""
        if self.jacrev is not None:
            return self.jacrev[leaf][p]
        if p in self.plan.unexplained:
            return self.features.jac[leaf][self.plan.unexplained.index(p)]
        ks = self.uses_of.get(p)
        if not ks:
            return None
        total = None
        for k in ks:
            j = use_jacobian(self.problem, self.tensors, self.plan, self.features, k, p, leaf, self.n_leads[leaf])
            total = j if total is None else total + j
        return total

    def all(self, leaf: int) -> tuple[torch.Tensor, ...]:
        """Every parameter's Jacobian for output leaf ``leaf`` (zeros for unused parameters)."""
        out = []
        for p, t in enumerate(self.tensors):
            j = self.jacobian(leaf, p)
            if j is None:
                lead = self._lead(leaf)
                j = t.new_zeros((*lead, *t.shape))
            out.append(j)
        return tuple(out)

    def _lead(self, leaf: int) -> tuple[int, ...]:
        """``(E, *S)`` of output leaf ``leaf``."""
        first = self.jacrev[leaf][0] if self.jacrev is not None else self.features.gs[leaf][0]
        return tuple(first.shape[: self.n_leads[leaf]])


def use_jacobian(problem: Problem, tensors: tuple[torch.Tensor, ...], plan: Plan, f: Features, k: int, p: int,
                 leaf: int, n_lead: int) -> torch.Tensor:
    """The part of ``∂f_leaf/∂p`` that flows through use ``k``: ``(E, *S, *p.shape)``."""
    use, g, inputs = plan.uses[k], f.gs[leaf][k], f.inputs[k]
    p_shape = tensors[p].shape
    scale = scale_of(use, p)
    if scale is not None:
        return g.reshape(*g.shape[:n_lead], *p_shape) * scale.factor
    rule = classify(use, p)
    if rule is not None:
        gg, xx = tokens(use, rule, p_shape, g, inputs, n_lead)
        return jacobian_of(rule, p_shape, gg, xx)
    return generic_jacobian(use, p, tensors, g, inputs, n_lead, problem.independent)


def sources(problem: Problem, tensors: tuple[torch.Tensor, ...], x1: Any, kw1: dict[str, Any], x2: Any | None,
            kw2: dict[str, Any], specs: list[OutputSpec], cache: dict | None) -> tuple[JacobianSource, JacobianSource]:
    """The :class:`JacobianSource` of ``x1`` and of ``x2`` (the same object when ``x2`` is None)."""
    n_leads = [len(s.kinds) for s in specs]
    s1 = JacobianSource(problem, tensors, x1, kw1, n_leads, cache)
    s2 = s1 if x2 is None else JacobianSource(problem, tensors, x2, kw2, n_leads, cache, plan=s1.plan)
    return s1, s2


def contract_jacobians(j1: tuple[torch.Tensor, ...], j2: tuple[torch.Tensor, ...], spec: OutputSpec) -> torch.Tensor:
    """``Σ_p spec.contract(J1_p, J2_p)``: the canonical (unscaled) kernel of one output leaf
    (by symmetric halves when ``j2`` is ``j1``)."""
    total = None
    for a, b in zip(j1, j2):
        total = accumulate(total, spec.contract_self(a) if a is b else spec.contract(a, b))
    return total


def accumulate(total: torch.Tensor | None, k: torch.Tensor) -> torch.Tensor:
    """``total + k``, in place when nothing differentiates through it (``k`` is fresh)."""
    if total is None:
        return k
    if total.requires_grad or k.requires_grad or total.shape != torch.broadcast_shapes(total.shape, k.shape):
        return total + k
    return total.add_(k)


def ntk_jacobian_contraction(
    problem: Problem,
    tensors: tuple[torch.Tensor, ...],
    x1: Any,
    kw1: dict[str, Any],
    x2: Any | None,
    kw2: dict[str, Any],
    specs: list[OutputSpec],
    cache: dict | None = None,
) -> list[torch.Tensor]:
    """Canonical kernels (one per output leaf) for a block of examples; ``x2=None`` reuses J(x1)."""
    s1, s2 = sources(problem, tensors, x1, kw1, x2, kw2, specs, cache)
    out = []
    for leaf, spec in enumerate(specs):
        total = None
        for p in range(len(tensors)):
            a = s1.jacobian(leaf, p)
            if a is None:
                continue
            if s2 is s1:
                k = spec.contract_self(a)
            else:
                b = s2.jacobian(leaf, p)
                if b is None:  # p does not reach f(x2): no contribution
                    continue
                k = spec.contract(a, b)
            total = accumulate(total, k)
        if total is None:  # no parameter reaches this output
            total = _zero_kernel(problem, tensors, spec, s1, s2, leaf)
        out.append(total)
    return out


def _zero_kernel(problem: Problem, tensors: tuple[torch.Tensor, ...], spec: OutputSpec, s1: JacobianSource,
                 s2: JacobianSource, leaf: int) -> torch.Tensor:
    t = tensors[0]
    z1 = t.new_zeros((*s1._lead(leaf), 1))
    z2 = t.new_zeros((*s2._lead(leaf), 1))
    return spec.contract(z1, z2)
