"""Where each parameter enters ``f``, and the derivatives of ``f`` there, for a batch of examples.

    ∂f/∂p = Σ_{uses of p} (∂y/∂p)ᵀ G,        G = ∂f/∂y at the output ``y`` of each use

1. *Discovery* (:func:`discover`, one example, plain autograd): a :class:`~._recorder.Recorder`
   lists the calls that consume parameters, and the chain rule through them is checked
   against autograd's parameter gradient; parameters that fail (used where the recorder
   cannot see) are marked for whole-network Jacobians.
2. *Features* (:func:`features_of`, per batch): one reverse-mode Jacobian with respect to
   zero probes added to every recorded output gives all ``G`` at once, together with the
   inputs of the recorded calls: with independent examples from one backward pass of the
   summed outputs through the batched ``f`` (:class:`BatchedProbes`, verified once on three
   examples), else ``vmap``-ed over the examples.

STRUCTURED_DERIVATIVES contracts these features layer by layer (``_structured.py``);
JACOBIAN_CONTRACTION and NTK_VECTOR_PRODUCTS build per-example Jacobians from them
(``_jacobian.py``): ``Σ_t G[t] ⊗ x[t]`` is one batched matrix product per layer, where
``vmap`` of a reverse-mode Jacobian runs a batched weight-gradient convolution per layer
(on a ResNet-18, 2.1 of 3.4 s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.func import jacrev, vjp, vmap
from .._torch_private import tree_flatten

from ._function import Problem
from ._recorder import Recorder, Use


@dataclass
class Plan:
    """What discovery learned: the recorded uses and the parameters they do not explain."""

    uses: list[Use]
    unexplained: list[int]
    batched: BatchedProbes | None = None  # set once verified (see `batched_probes`)
    batched_checked: bool = False


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
    for i in diff:
        d = direct[i] if direct[i] is not None else torch.zeros_like(ts[i])
        if not _agrees(d, rebuilt[i]):
            unexplained.add(i)
    return Plan(uses, sorted(unexplained))


def _agrees(reference: torch.Tensor, other: torch.Tensor) -> bool:
    """``other`` equals ``reference`` to within rounding: ``max|other - reference| <=
    rtol max|reference|`` (rtol 1e-4 in single or half precision, 1e-8 in double). A path
    missed by the chain rule, or a layer that mixes examples, gives an O(1) discrepancy;
    rounding ~eps. NaN never agrees."""
    if reference.numel() == 0:
        return True
    rtol = 1e-4 if reference.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-8
    with torch.no_grad():
        return float((other - reference).abs().max()) <= rtol * max(float(reference.abs().max()), 1e-30)


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


@dataclass
class BatchedProbes:
    """Where the examples sit in each recorded call of ``f`` run on a whole batch.

    Probing one example at a time (``vmap`` of a reverse-mode Jacobian) costs a ``vmap``-ed
    backward pass; with independent examples the same ``G`` come from one backward pass of
    the *summed* outputs through the batched ``f``, ``∂(Σ_e f_e)/∂y_e = ∂f_e/∂y_e``, when every
    probe carries the example axis where the batched call has it: ``out_axes[k]`` is that
    axis of use ``k``'s output (None: the output is shared by all examples, e.g. ``c * b``,
    and its probe gets a leading example axis), ``input_axes[k]`` those of its inputs.
    """

    out_axes: list[int | None]
    input_axes: list[list[int | None]]


_NO_AXIS = -1


def _example_axis(per_example: tuple[int, ...], batched: tuple[int, ...], n: int) -> int | None:
    """The axis that holds ``n`` examples in ``batched`` and one in ``per_example`` (None if
    the shapes agree: not batched); ``_NO_AXIS`` if the shapes relate otherwise."""
    if len(per_example) != len(batched):
        return _NO_AXIS
    differ = [i for i, (a, b) in enumerate(zip(per_example, batched)) if a != b]
    if not differ:
        return None
    if len(differ) == 1 and per_example[differ[0]] == 1 and batched[differ[0]] == n:
        return differ[0]
    return _NO_AXIS


def _probe_batch(problem: Problem, tensors: tuple[torch.Tensor, ...], plan: Plan, out_axes: list[int | None],
                 xb: Any, kw: dict[str, Any]) -> tuple[list[tuple[torch.Tensor, ...]], list[list[torch.Tensor]]]:
    """``(∂(Σ_e f_e)/∂probe_k`` ``(*S, *probe_k)`` per leaf, recorded inputs``)`` from ``f``
    run on the whole batch: one plain backward pass per output entry ``S`` (batched over
    them when there are several). The results stay differentiable in the parameters when
    grad mode is on and they require grad, as the per-example path's do."""
    n = problem.batch_size(xb, kw)
    dtype, device = tensors[0].dtype, tensors[0].device
    keep_graph = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    with torch.enable_grad():
        zero = torch.zeros((), dtype=dtype, device=device, requires_grad=True)
        probes: list[torch.Tensor] = []  # what the G are taken against, one node each

        def attach(k: int, y: torch.Tensor) -> torch.Tensor:
            if k >= len(out_axes):  # more calls than on one example: refused below
                probes.append(y)
                return y
            if out_axes[k] is None:  # shared by all examples: seen by each through its own view
                probes.append((y + zero).expand(n, *y.shape))
                return probes[-1]
            probes.append(zero.expand(y.shape))  # a view of one zero: nothing to fill
            return y + probes[-1]

        rec = Recorder(tensors, attach)
        with rec:
            outs = problem.per_batch(tensors, xb, kw)
        if len(probes) != len(plan.uses):
            raise ValueError(
                f"empirical_ntk_fn: f made {len(probes)} calls with parameters on a batch of {n} examples "
                f"but {len(plan.uses)} on one example; with vmap_axes, f must treat every example "
                "alike whatever the batch size. Make f independent of the batch size, or drop vmap_axes."
            )
        jac = []
        for i, out in enumerate(outs):
            total = out.sum(0)
            m = total.numel()
            seeds = torch.ones_like(total) if m == 1 else torch.eye(m, dtype=dtype, device=device).reshape(m, *total.shape)
            grads = torch.autograd.grad(total, probes, seeds, retain_graph=keep_graph or i + 1 < len(outs),
                                        create_graph=keep_graph, allow_unused=True, is_grads_batched=m > 1)
            per_use = []
            for g, probe in zip(grads, probes):
                g = torch.zeros((m, *probe.shape), dtype=dtype, device=device) if g is None else g
                per_use.append(g.reshape(*total.shape, *probe.shape))
            jac.append(tuple(per_use))
    aux = rec.aux
    if not keep_graph:
        jac = [tuple(g.detach() for g in per_use) for per_use in jac]
        aux = [[t.detach() for t in ins] for ins in aux]
    return jac, aux


def _features_from_batch(problem: Problem, tensors: tuple[torch.Tensor, ...], plan: Plan, layout: BatchedProbes,
                         xb: Any, kw: dict[str, Any]) -> Features:
    """:func:`features` by one backward pass of the batch (see :class:`BatchedProbes`)."""
    n = problem.batch_size(xb, kw)
    jac, aux = _probe_batch(problem, tensors, plan, layout.out_axes, xb, kw)
    gs = []
    for per_use in jac:
        leaf = []
        for g, use, ax in zip(per_use, plan.uses, layout.out_axes):
            n_s = g.ndim - len(use.out_shape) - (ax is None)  # G: (*S, *probe)
            leaf.append(g.movedim(n_s, 0) if ax is None else g.movedim(n_s + ax, 0).unsqueeze(1 + n_s + ax))
        gs.append(tuple(leaf))
    inputs = [[t.expand(n, *t.shape) if ax is None else t.movedim(ax, 0).unsqueeze(ax + 1) for t, ax in zip(ins, axes)]
              for ins, axes in zip(aux, layout.input_axes)]
    return Features(gs, inputs, [() for _ in gs])


def batched_probes(problem: Problem, tensors: tuple[torch.Tensor, ...], plan: Plan, xb: Any, kw: dict[str, Any]
                   ) -> BatchedProbes | None:
    """The :class:`BatchedProbes` of ``f``, verified on three examples (first, middle, last)
    against probing them one at a time; None when ``f`` run on a batch does not show the
    examples apart, when those examples are not distinct (they could not reveal a layer that
    mixes examples), or when the verification fails (batch-dependent layers, a probe
    broadcast along another axis, ...)."""
    e = problem.batch_size(xb, kw)
    indices = sorted({0, e // 2, e - 1})
    n = len(indices)
    if not problem.independent or plan.unexplained or not plan.uses or n < 2:
        return None
    xs, ks = problem.take(xb, kw, indices)
    leaves = [t.reshape(n, -1) for t in tree_flatten((xs, {k: v for k, v in ks.items() if k in problem.kwargs_axes}))[0]
              if isinstance(t, torch.Tensor)]
    if any(all(torch.equal(t[i], t[j]) for t in leaves) for i in range(n) for j in range(i + 1, n)):
        return None
    rec = Recorder(tensors)
    try:
        with torch.no_grad(), rec:
            problem.per_batch(tensors, xs, ks)
    except Exception:  # noqa: BLE001 - only an optimization: fall back to per-example probes
        return None
    if [u.func for u in rec.uses] != [u.func for u in plan.uses]:
        return None
    out_axes = [_example_axis(u.out_shape, b.out_shape, n) for u, b in zip(plan.uses, rec.uses)]
    if any(ax == _NO_AXIS or (ax is None and u.inputs) for ax, u in zip(out_axes, plan.uses)):
        return None
    reference = features(problem, tensors, plan, xs, ks)
    try:
        _, aux = _probe_batch(problem, tensors, plan, out_axes, xs, ks)
        input_axes = [[_example_axis(tuple(r.shape[1:]), tuple(t.shape), n) for r, t in zip(rs, ts)]
                      for rs, ts in zip(reference.inputs, aux)]
        if any(ax == _NO_AXIS for axes in input_axes for ax in axes):
            return None
        layout = BatchedProbes(out_axes, input_axes)
        ours = _features_from_batch(problem, tensors, plan, layout, xs, ks)
    except Exception:  # noqa: BLE001
        return None
    pairs = [(a, b) for ra, oa in zip(reference.gs, ours.gs) for a, b in zip(ra, oa)]
    pairs += [(a, b) for ra, oa in zip(reference.inputs, ours.inputs) for a, b in zip(ra, oa)]
    if not all(a.shape == b.shape and _agrees(a, b) for a, b in pairs):
        return None
    return layout



def plan_for(problem: Problem, tensors: tuple[torch.Tensor, ...], xb: Any, kw: dict[str, Any],
             cache: dict | None = None) -> Plan:
    """The :class:`Plan` of ``f`` for batches like ``xb``: discovered on its first example (and,
    with independent examples, the batched probes verified once), reused through ``cache``
    (a dict kept by the caller) for the same parameter and per-example input shapes: the
    recorded calls do not depend on the values."""
    key = ("plan", problem.signature(tensors, xb, kw))
    plan = cache.get(key) if cache is not None else None
    if plan is None:
        plan = discover(problem, tensors, xb, kw)
        if cache is not None:
            cache[key] = plan
    if not plan.batched_checked and problem.batch_size(xb, kw) >= 2:
        plan.batched = batched_probes(problem, tensors, plan, xb, kw)
        plan.batched_checked = True
    return plan


def same_structure(a: Plan, b: Plan) -> bool:
    """Whether two plans (of ``x1`` and ``x2``) record the same calls on the same parameters."""
    return (a is b or (a.unexplained == b.unexplained and len(a.uses) == len(b.uses)
                       and all(u.func is v.func and u.params == v.params for u, v in zip(a.uses, b.uses))))


def features_of(problem: Problem, tensors: tuple[torch.Tensor, ...], plan: Plan, xb: Any, kw: dict[str, Any]
                ) -> Features:
    """:func:`features` of a batch, by one backward pass of the batch when the plan allows."""
    if plan.batched is not None:
        return _features_from_batch(problem, tensors, plan, plan.batched, xb, kw)
    return features(problem, tensors, plan, xb, kw)
