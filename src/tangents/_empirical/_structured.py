"""STRUCTURED_DERIVATIVES: the NTK from per-layer derivatives and the structure of each layer.

    Θ = Σ_p Θ_p,   Θ_p from ``G = ∂f/∂y`` at the output ``y`` of each call that uses ``p``

1. *Discovery* (one example, plain autograd): a :class:`~._recorder.Recorder` lists the
   calls that consume parameters, and the chain rule through them is checked against
   autograd's parameter gradient; parameters that fail (used where the recorder cannot see)
   are marked for whole-network Jacobians.
2. *Features* (per batch): one reverse-mode Jacobian with respect to zero probes added to
   every recorded output gives all ``G`` at once (``vmap``-ed over independent examples),
   together with the inputs of the recorded calls.
3. *Contraction*: linear, ``x @ W`` and ``conv2d`` uses of a parameter used once contribute
   by the structured rule or by their cheap Jacobian ``Σ_t G[t] ⊗ x[t]``, whichever costs
   fewer FLOPs; other uses by a reverse-mode product through the single call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.func import jacrev, vjp, vmap

from ._axes import OutputSpec
from ._function import Problem
from ._jacobian import contract_jacobians
from ._recorder import Recorder, Use
from ._rules import classify, generic_jacobian, jacobian_of, structured, structured_is_cheaper, tokens


@dataclass
class Plan:
    """What discovery learned: the recorded uses and the parameters they do not explain."""

    uses: list[Use]
    unexplained: list[int]


def _first_example(problem: Problem, xb: Any, kw: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The first example (independent batches) or the whole batch, as ``per_example`` takes it."""
    if not problem.independent:
        return xb, kw
    xs, ks = problem.slice(xb, kw, 0, 1)
    xe = _map(lambda t: t[0], xs)
    ke = {k: (v[0] if k in problem.kwargs_axes and isinstance(v, torch.Tensor) else v) for k, v in ks.items()}
    return xe, ke


def use_shapes(problem: Problem, tensors: tuple[torch.Tensor, ...], xb: Any, kw: dict[str, Any]) -> list[tuple[int, ...]]:
    """Output shapes of the recorded uses for this batch (per example when independent)."""
    xe, ke = _first_example(problem, xb, kw)
    rec = Recorder(tensors)
    with torch.no_grad(), rec:
        problem.per_example(tensors, xe, ke)
    return [u.out_shape for u in rec.uses]


def discover(problem: Problem, tensors: tuple[torch.Tensor, ...], xb: Any, kw: dict[str, Any]) -> Plan:
    """Records parameter uses on the first example and verifies the chain rule through them."""
    xe, ke = _first_example(problem, xb, kw)
    ts = tuple(t.detach().requires_grad_(t.is_floating_point()) for t in tensors)
    with torch.enable_grad():
        rec = Recorder(ts)
        with rec:
            problem.per_example(ts, xe, ke)
        uses = rec.uses
        probes = tuple(torch.zeros(u.out_shape, dtype=ts[0].dtype, device=ts[0].device, requires_grad=True)
                       for u in uses)
        probing = Recorder(ts, probes)
        with probing:
            outs = problem.per_example(ts, xe, ke)
        if len(probing.aux) != len(uses):
            return Plan([], list(range(len(ts))))
        gen = torch.Generator(device="cpu").manual_seed(0)
        cots = [torch.randn(o.shape, generator=gen, dtype=o.dtype).to(o.device) for o in outs]
        diff = [i for i, t in enumerate(ts) if t.requires_grad]
        grads = torch.autograd.grad(outs, [ts[i] for i in diff] + list(probes), cots, allow_unused=True)
    direct = dict(zip(diff, grads[: len(diff)]))
    rebuilt = {i: torch.zeros_like(ts[i]) for i in diff}
    plain = tuple(t.detach() for t in ts)
    for use, g, inputs in zip(uses, grads[len(diff):], probing.aux):
        if g is None:
            continue
        idxs = sorted(set(use.params.values()))
        inputs = [t.detach() for t in inputs]

        def op(*ps: torch.Tensor, use: Use = use, idxs: list[int] = idxs, inputs: list = inputs) -> torch.Tensor:
            full = list(plain)
            for i, p in zip(idxs, ps):
                full[i] = p
            return use.call(tuple(full), inputs)

        for i, c in zip(idxs, vjp(op, *[plain[i] for i in idxs])[1](g)):
            if i in rebuilt:
                rebuilt[i] = rebuilt[i] + c
    unexplained = set(rec.opaque) & set(diff)
    rtol = 1e-4 if ts[0].dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-8
    for i in diff:
        d = direct[i] if direct[i] is not None else torch.zeros_like(ts[i])
        if d.numel() == 0:
            continue
        # a missed path gives an O(1) discrepancy; rounding gives ~eps · |grad|
        if float((rebuilt[i] - d).abs().max()) > rtol * max(float(d.abs().max()), 1e-30):
            unexplained.add(i)
    return Plan(uses, sorted(unexplained))


def _map(fn: Any, tree: Any) -> Any:
    from ._function import _map_tensors

    return _map_tensors(fn, tree)


@dataclass
class Features:
    """Per batch: ``gs[leaf][k]`` = G of use k ``(E, *S, *y_k)``; ``inputs[k]``; Jacobians of the
    unexplained parameters ``jac[leaf]``."""

    gs: list[tuple[torch.Tensor, ...]]
    inputs: list[list[torch.Tensor]]
    jac: list[tuple[torch.Tensor, ...]]


def features(problem: Problem, tensors: tuple[torch.Tensor, ...], plan: Plan, xb: Any, kw: dict[str, Any]) -> Features:
    dtype, device = tensors[0].dtype, tensors[0].device
    shapes = use_shapes(problem, tensors, xb, kw) if not problem.independent else [u.out_shape for u in plan.uses]
    probes = tuple(torch.zeros(s, dtype=dtype, device=device) for s in shapes)
    unexplained = plan.unexplained

    def h(probes: tuple, sub: tuple, xe: Any, ke: dict) -> tuple[Any, Any]:
        full = list(tensors)
        for i, t in zip(unexplained, sub):
            full[i] = t
        rec = Recorder(tuple(full), probes)
        with rec:
            outs = problem.per_example(tuple(full), xe, ke)
        return outs, rec.aux

    sub = tuple(tensors[i] for i in unexplained)
    jac = jacrev(h, argnums=(0, 1), has_aux=True)
    if problem.independent:
        jac = vmap(jac, in_dims=(None, None, 0, problem.kw_in_dims(kw)))
        (per_leaf), aux = jac(probes, sub, xb, kw)
        gs = [tuple(j[0]) for j in per_leaf]
        js = [tuple(j[1]) for j in per_leaf]
        return Features(gs, aux, js)
    per_leaf, aux = jac(probes, sub, xb, kw)
    gs = [tuple(g.unsqueeze(0) for g in j[0]) for j in per_leaf]
    js = [tuple(g.unsqueeze(0) for g in j[1]) for j in per_leaf]
    return Features(gs, [[t.unsqueeze(0) for t in a] for a in aux], js)


def ntk_structured_derivatives(
    problem: Problem,
    tensors: tuple[torch.Tensor, ...],
    x1: Any,
    kw1: dict[str, Any],
    x2: Any | None,
    kw2: dict[str, Any],
    specs: list[OutputSpec],
    cache: dict | None = None,
) -> list[torch.Tensor]:
    """Canonical kernels (one per output leaf) for a block of examples.

    ``cache`` (a dict kept by the caller) reuses the discovery for the same parameter and
    per-example input shapes (the recorded calls do not depend on the values).
    """
    key = _plan_key(problem, tensors, x1, kw1)
    plan = cache.get(key) if cache is not None else None
    if plan is None:
        plan = discover(problem, tensors, x1, kw1)
        if cache is not None:
            cache[key] = plan
    f1 = features(problem, tensors, plan, x1, kw1)
    f2 = f1 if x2 is None else features(problem, tensors, plan, x2, kw2)
    uses_of: dict[int, list[int]] = {}
    for k, use in enumerate(plan.uses):
        for i in sorted(set(use.params.values()) - set(plan.unexplained)):
            uses_of.setdefault(i, []).append(k)
    kernels = []
    for leaf, spec in enumerate(specs):
        n_lead = len(spec.kinds)
        total = contract_jacobians(f1.jac[leaf], f2.jac[leaf], spec) if plan.unexplained else None
        for p, ks in uses_of.items():
            contribution = _contribution(problem, tensors, plan, p, ks, f1, f2, leaf, spec, n_lead)
            total = contribution if total is None else _accumulate(total, contribution)
        kernels.append(total)
    return kernels


def _accumulate(total: torch.Tensor, contribution: torch.Tensor) -> torch.Tensor:
    """``total + contribution``, in place when nothing differentiates through ``total`` (a
    fresh kernel-sized tensor each time costs a page fault per 4 KiB)."""
    if total.requires_grad or contribution.requires_grad or total.shape != torch.broadcast_shapes(total.shape, contribution.shape):
        return total + contribution
    return total.add_(contribution)


def _plan_key(problem: Problem, tensors: tuple[torch.Tensor, ...], xb: Any, kw: dict[str, Any]) -> tuple:
    def sig(t: Any) -> Any:
        if isinstance(t, torch.Tensor):
            shape = tuple(t.shape[1:]) if problem.independent else tuple(t.shape)
            return (shape, t.dtype, t.device)
        return repr(t)

    from torch.utils._pytree import tree_flatten

    leaves = tree_flatten((xb, kw))[0]
    return (problem.independent, tuple(sig(t) for t in tensors), tuple(sig(l) for l in leaves))


def _contribution(problem: Problem, tensors: tuple[torch.Tensor, ...], plan: Plan, p: int, ks: list[int],
                  f1: Features, f2: Features, leaf: int, spec: OutputSpec, n_lead: int) -> torch.Tensor:
    """Θ_p for one output leaf: structured when ``p`` has one linear-ish use, else Jacobians."""
    p_shape = tensors[p].shape
    rules = [classify(plan.uses[k], p) for k in ks]
    if len(ks) == 1 and rules[0] is not None:
        k, rule = ks[0], rules[0]
        g1, x1 = tokens(plan.uses[k], rule, p_shape, f1.gs[leaf][k], f1.inputs[k], n_lead)
        g2, x2 = (g1, x1) if f2 is f1 else tokens(plan.uses[k], rule, p_shape, f2.gs[leaf][k], f2.inputs[k], n_lead)
        if x1 is not None and structured_is_cheaper(spec, g1, x1, g2, x2):
            return structured(spec, g1, x1, g2, x2)
        if x1 is None:  # a bias: G summed over tokens is its Jacobian
            j1 = g1.sum(-2)
            return spec.contract_self(j1) if f2 is f1 else spec.contract(j1, g2.sum(-2))
        j1 = jacobian_of(rule, p_shape, g1, x1)
        return spec.contract_self(j1) if f2 is f1 else spec.contract(j1, jacobian_of(rule, p_shape, g2, x2))

    def jac(f: Features) -> torch.Tensor:
        total = None
        for k, rule in zip(ks, rules):
            use, g, inputs = plan.uses[k], f.gs[leaf][k], f.inputs[k]
            if rule is not None:
                gg, xx = tokens(use, rule, p_shape, g, inputs, n_lead)
                j = jacobian_of(rule, p_shape, gg, xx)
            else:
                j = generic_jacobian(use, p, tensors, g, inputs, n_lead, problem.independent)
            total = j if total is None else total + j
        return total

    j1 = jac(f1)
    return spec.contract_self(j1) if f2 is f1 else spec.contract(j1, jac(f2))
