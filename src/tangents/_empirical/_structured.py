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
from collections.abc import Callable
from typing import Any

import torch
from torch.func import jacrev, vjp, vmap

from ._axes import PAIR, OutputSpec
from ._function import Problem
from ._jacobian import contract_jacobians
from ._recorder import Recorder, Use
from ._rules import classify, generic_jacobian, jacobian_of, scale_of, structured, structured_is_cheaper, tokens


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
        grams = SelfGrams(spec) if f2 is f1 else None
        for p, ks in uses_of.items():
            total = _add_contribution(total, problem, tensors, plan, p, ks, f1, f2, leaf, spec, n_lead, grams)
        kernels.append(total)
    return kernels


def _accumulate(total: torch.Tensor | None, k: torch.Tensor, factor: float = 1.0,
                times: torch.Tensor | None = None) -> torch.Tensor:
    """``total + factor · k`` (``⊙ times``), in place when nothing differentiates through
    ``total`` (a fresh kernel-sized tensor each time costs a page fault per 4 KiB). ``k`` may
    be a remembered Gram: it is never modified, nor returned itself."""
    if total is None:
        out = k * times if times is not None else k * factor
        return out.mul_(factor) if times is not None and factor != 1.0 else out
    operands = (total, k) if times is None else (total, k, times)
    if any(t.requires_grad for t in operands) or total.shape != torch.broadcast_shapes(*(t.shape for t in operands)):
        return total + (k * factor if times is None else k * times * factor)
    return total.add_(k, alpha=factor) if times is None else total.addcmul_(k, times, value=factor)


#: Relative agreement (in units of the dtype's epsilon) for two tensors to count as multiples.
MULTIPLE_TOLERANCE = 8


def multiple_of(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """``λ`` with ``a = λ b`` to within rounding (``max|a - λb| <= 8 ε max|a|``), else None.

    ``λ = a[j] / b[j]`` at the largest of a few spread-out entries of ``b`` (a ratio of two
    floats: exact to rounding, unlike a long dot product), checked on those entries first
    (tensors that are not multiples are told apart in a few reads), then on all of them.
    """
    if a is b:
        return 1.0
    if (a.shape != b.shape or a.dtype != b.dtype or a.device != b.device or a.numel() == 0
            or a.requires_grad or b.requires_grad or not a.is_floating_point()):
        return None
    fa, fb = a.reshape(-1), b.reshape(-1)
    spread = torch.linspace(0, fa.numel() - 1, 17, device=a.device).long()
    sa, sb = fa[spread], fb[spread]
    j = int(sb.abs().argmax())
    if float(sb[j]) == 0.0:
        return None
    lam = float(sa[j]) / float(sb[j])
    tol = MULTIPLE_TOLERANCE * torch.finfo(a.dtype).eps
    for xa, xb in ((sa, sb), (fa, fb)):
        if not float(torch.add(xa, xb, alpha=-lam).abs().amax()) <= tol * float(xa.abs().amax()):  # NaN: no
            return None
    return lam


class SelfGrams:
    """``spec.contract_self(a)`` for the tensors of one output leaf of a batch with itself,
    contracted once for tensors that are multiples of each other (and likewise the Grams
    ``X Xᵀ`` of layer inputs, by :meth:`inputs`).

    In a layer ``y = c (x Wᵀ) + s b`` the derivatives at the two calls are
    ``∂f/∂(x Wᵀ) = c G`` and ``∂f/∂(s b) = G``, so the bias's Gram is ``1/c²`` times the one
    the weight needs; ``nn.Linear``'s weight and bias share one ``G`` outright. A tensor is
    matched against the last ``KEPT`` contracted (:func:`multiple_of`); a shared Gram differs
    from a recomputed one by less than the rounding of the contraction itself.
    """

    KEPT = 4

    def __init__(self, spec: OutputSpec) -> None:
        self.spec = spec
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._inputs: SelfGrams | None = None

    def of(self, a: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``(k, c)`` with ``spec.contract_self(a) = c k``; ``k`` may be shared: never modify it."""
        for b, k in self.kept:
            lam = multiple_of(a, b)
            if lam is not None:
                return k, lam * lam
        k = self.spec.contract_self(a)
        self.kept = (self.kept + [(a, k)])[-self.KEPT :]
        return k, 1.0

    def inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``(k, c)`` with ``c k = x xᵀ`` ``(E, E)`` for layer inputs ``x`` ``(E, n)``."""
        if self._inputs is None:
            self._inputs = SelfGrams(OutputSpec((PAIR,), 1, 0, (PAIR,), (x.shape[0],)))
        return self._inputs.of(x)


def _plan_key(problem: Problem, tensors: tuple[torch.Tensor, ...], xb: Any, kw: dict[str, Any]) -> tuple:
    def sig(t: Any) -> Any:
        if isinstance(t, torch.Tensor):
            shape = tuple(t.shape[1:]) if problem.independent else tuple(t.shape)
            return (shape, t.dtype, t.device)
        return repr(t)

    from torch.utils._pytree import tree_flatten

    leaves = tree_flatten((xb, kw))[0]
    return (problem.independent, tuple(sig(t) for t in tensors), tuple(sig(l) for l in leaves))


def _add_contribution(total: torch.Tensor | None, problem: Problem, tensors: tuple[torch.Tensor, ...], plan: Plan,
                      p: int, ks: list[int], f1: Features, f2: Features, leaf: int, spec: OutputSpec, n_lead: int,
                      grams: SelfGrams | None) -> torch.Tensor:
    """``total + Θ_p`` for one output leaf: structured when ``p`` has one linear-ish use, a
    multiple of ``G`` for ``c p``, else Jacobians. ``grams`` (a batch with itself) shares
    Grams between parameters whose derivatives are multiples of each other."""
    p_shape = tensors[p].shape

    def contract(j1: torch.Tensor, j2: Callable[[], torch.Tensor], factor: float = 1.0) -> torch.Tensor:
        if grams is None:
            return _accumulate(total, spec.contract(j1, j2()), factor)
        k, c = grams.of(j1)
        return _accumulate(total, k, c * factor)

    if len(ks) == 1:
        k = ks[0]
        use = plan.uses[k]
        scale = scale_of(use, p)
        if scale is not None:  # every example's Jacobian is c G
            return contract(f1.gs[leaf][k], lambda: f2.gs[leaf][k], scale.factor ** 2)
        rule = classify(use, p)
        if rule is not None:
            g1, x1 = tokens(use, rule, p_shape, f1.gs[leaf][k], f1.inputs[k], n_lead)
            g2, x2 = (g1, x1) if f2 is f1 else tokens(use, rule, p_shape, f2.gs[leaf][k], f2.inputs[k], n_lead)
            if x1 is not None and structured_is_cheaper(spec, g1, x1, g2, x2):
                if grams is not None and x1.shape[1] == 1 and spec.kinds[0] == PAIR:
                    # one token: Θ_W = (G Gᵀ) ⊙ (X Xᵀ), both Grams shareable
                    gg, c = grams.of(g1.squeeze(-2))
                    xx, cx = grams.inputs(x1.squeeze(1))
                    return _accumulate(total, gg, c * cx, xx.reshape(*xx.shape, *[1] * (gg.ndim - 2)))
                return _accumulate(total, structured(spec, g1, x1, g2, x2))
            if x1 is None:  # a bias: G summed over tokens is its Jacobian
                return contract(g1.sum(-2), lambda: g2.sum(-2))
            return contract(jacobian_of(rule, p_shape, g1, x1), lambda: jacobian_of(rule, p_shape, g2, x2))

    def jac(f: Features) -> torch.Tensor:
        total = None
        for k in ks:
            use, g, inputs = plan.uses[k], f.gs[leaf][k], f.inputs[k]
            rule, scale = classify(use, p), scale_of(use, p)
            if scale is not None:
                j = g.reshape(*g.shape[:n_lead], *p_shape) * scale.factor
            elif rule is not None:
                gg, xx = tokens(use, rule, p_shape, g, inputs, n_lead)
                j = jacobian_of(rule, p_shape, gg, xx)
            else:
                j = generic_jacobian(use, p, tensors, g, inputs, n_lead, problem.independent)
            total = j if total is None else total + j
        return total

    return contract(jac(f1), lambda: jac(f2))
