"""STRUCTURED_DERIVATIVES: the NTK from per-layer derivatives and the structure of each layer.

    Θ = Σ_p Θ_p,   Θ_p from ``G = ∂f/∂y`` at the output ``y`` of each call that uses ``p``

1. *Discovery* (one example, plain autograd): a :class:`~._recorder.Recorder` lists the
   calls that consume parameters, and the chain rule through them is checked against
   autograd's parameter gradient; parameters that fail (used where the recorder cannot see)
   are marked for whole-network Jacobians.
2. *Features* (per batch): one reverse-mode Jacobian with respect to zero probes added to
   every recorded output gives all ``G`` at once, together with the inputs of the recorded
   calls: with independent examples from one backward pass of the summed outputs through
   the batched ``f`` (:class:`BatchedProbes`, verified once on three examples), else
   ``vmap``-ed over the examples.
3. *Contraction*: linear, ``x @ W`` and ``conv2d`` uses of a parameter used once contribute
   by the structured rule or by their cheap Jacobian ``Σ_t G[t] ⊗ x[t]``, whichever costs
   fewer FLOPs; ``c * p`` by ``c² G Gᵀ``; other uses by a reverse-mode product through the
   single call. For a batch with itself, Grams of derivatives that are multiples of each
   other (a layer's weight and bias) are computed once (:class:`SelfGrams`).
"""

from __future__ import annotations

from dataclasses import dataclass
import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch.func import jacrev, vjp, vmap
from .._torch_private import tree_flatten

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
    key = problem.signature(tensors, x1, kw1)
    plan = cache.get(key) if cache is not None else None
    if plan is None:
        plan = discover(problem, tensors, x1, kw1)
        if cache is not None:
            cache[key] = plan
    if not plan.batched_checked and problem.batch_size(x1, kw1) >= 2:
        plan.batched = batched_probes(problem, tensors, plan, x1, kw1)
        plan.batched_checked = True

    def features_of(xb: Any, kw: dict[str, Any]) -> Features:
        if plan.batched is not None:
            return _features_from_batch(problem, tensors, plan, plan.batched, xb, kw)
        return features(problem, tensors, plan, xb, kw)

    f1 = features_of(x1, kw1)
    f2 = f1 if x2 is None else features_of(x2, kw2)
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
    if any(t.requires_grad for t in operands) or (
            any(t.shape != total.shape for t in operands) and total.shape != torch.broadcast_shapes(*(t.shape for t in operands))):
        return total + (k * factor if times is None else k * times * factor)
    return total.add_(k, alpha=factor) if times is None else total.addcmul_(k, times, value=factor)


#: Relative agreement (in units of the dtype's epsilon) for two tensors to count as multiples.
MULTIPLE_TOLERANCE = 8


def _max_abs(t: torch.Tensor) -> float:
    """``max |t|`` in one pass over ``t`` (NaN if ``t`` has one)."""
    low, high = (float(v) for v in torch.aminmax(t))
    return float("nan") if math.isnan(low) or math.isnan(high) else max(-low, high)


@functools.lru_cache(maxsize=64)
def _spread(n: int, device: torch.device) -> torch.Tensor:
    """``Fingerprint.SPREAD`` indices spread evenly over ``range(n)``."""
    return torch.linspace(0, n - 1, Fingerprint.SPREAD, device=device).long()


class Fingerprint:
    """A tensor with a few spread-out entries read once (``values``), so that other tensors
    are tested for being multiples of it (:meth:`multiple`) mostly in plain Python."""

    SPREAD = 17

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.flat = tensor.reshape(-1)
        n = self.flat.numel()
        self.values: list[float] = self.flat[_spread(n, tensor.device)].tolist() if n and tensor.is_floating_point() else []

    def multiple(self, other: Fingerprint) -> float | None:
        """``λ`` with ``other = λ self`` to within rounding, else None: ``max|other - λ self|
        <= 8 ε m`` with ``m`` the largest spread-out ``|other|`` (at most ``max|other|``, so
        the test is if anything stricter than ``8 ε max|other|``).

        ``λ`` is the ratio at the largest spread-out entry (a ratio of two floats: exact to
        rounding, unlike a long dot product); the spread-out entries are compared first, all
        entries (one pass for ``other - λ self``, one for its extremes) only if they agree.
        """
        a, b = other.tensor, self.tensor
        if a is b:
            return 1.0
        if (a.shape != b.shape or a.dtype != b.dtype or a.device != b.device or not self.values
                or a.requires_grad or b.requires_grad):
            return None
        j = max(range(len(self.values)), key=lambda i: abs(self.values[i]))
        if self.values[j] == 0.0:
            return None
        lam = other.values[j] / self.values[j]
        tol = MULTIPLE_TOLERANCE * torch.finfo(a.dtype).eps
        bound = tol * max(abs(x) for x in other.values)
        if not max(abs(x - lam * y) for x, y in zip(other.values, self.values)) <= bound:  # NaN: no
            return None
        if not _max_abs(torch.add(other.flat, self.flat, alpha=-lam)) <= bound:
            return None
        return lam


def multiple_of(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """``λ`` with ``a = λ b`` to within rounding, else None (see :meth:`Fingerprint.multiple`)."""
    return Fingerprint(b).multiple(Fingerprint(a))


class SelfGrams:
    """``spec.contract_self(a)`` for the tensors of one output leaf of a batch with itself,
    contracted once for tensors that are multiples of each other (and likewise the Grams
    ``X Xᵀ`` of layer inputs, by :meth:`inputs`).

    In a layer ``y = c (x Wᵀ) + s b`` the derivatives at the two calls are
    ``∂f/∂(x Wᵀ) = c G`` and ``∂f/∂(s b) = G``, so the bias's Gram is ``1/c²`` times the one
    the weight needs; ``nn.Linear``'s weight and bias share one ``G`` outright. A tensor is
    matched against the last ``KEPT`` contracted (:class:`Fingerprint`); a shared Gram
    differs from a recomputed one by less than the rounding of the contraction itself.
    """

    KEPT = 4

    def __init__(self, spec: OutputSpec) -> None:
        self.spec = spec
        self.kept: list[tuple[Fingerprint, torch.Tensor]] = []
        self._inputs: SelfGrams | None = None

    def of(self, a: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``(k, c)`` with ``spec.contract_self(a) = c k``; ``k`` may be shared: never modify it."""
        mine = Fingerprint(a)
        for theirs, k in reversed(self.kept):  # the latest first: a layer's bias follows its weight
            lam = theirs.multiple(mine)
            if lam is not None:
                return k, lam * lam
        k = self.spec.contract_self(a)
        self.kept = (self.kept + [(mine, k)])[-self.KEPT :]
        return k, 1.0

    def inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``(k, c)`` with ``c k = x xᵀ`` ``(E, E)`` for layer inputs ``x`` ``(E, n)``."""
        if self._inputs is None:
            self._inputs = SelfGrams(OutputSpec((PAIR,), 1, 0, (PAIR,), (x.shape[0],)))
        return self._inputs.of(x)


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
