"""STRUCTURED_DERIVATIVES: the NTK from per-layer derivatives and the structure of each layer.

    Θ = Σ_p Θ_p,   Θ_p from ``G = ∂f/∂y`` at the output ``y`` of each call that uses ``p``

1. *Discovery* and 2. *features* (``_probes.py``): the recorded calls that use each
   parameter, and for a batch the derivatives ``G`` at their outputs and their inputs.
3. *Contraction*: linear, ``x @ W`` and ``conv2d`` uses of a parameter used once contribute
   by the structured rule or by their cheap Jacobian ``Σ_t G[t] ⊗ x[t]``, whichever costs
   fewer FLOPs; ``c * p`` by ``c² G Gᵀ``; other uses by a reverse-mode product through the
   single call. For a batch with itself, Grams of derivatives that are multiples of each
   other (a layer's weight and bias) are computed once (:class:`SelfGrams`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch

from ._axes import PAIR, OutputSpec
from ._function import Problem
from ._jacobian import JacobianSource, _zero_kernel, sources
from ._rules import classify, jacobian_of, scale_of, structured, structured_is_cheaper, tokens



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
    s1, s2 = sources(problem, tensors, x1, kw1, x2, kw2, specs, cache)
    kernels = []
    for leaf, spec in enumerate(specs):
        total = None
        grams = SelfGrams(spec) if s2 is s1 else None
        for p in range(len(tensors)):
            total = _add_contribution(total, s1, s2, p, leaf, spec, grams)
        if total is None:  # no parameter reaches this output
            total = _zero_kernel(problem, tensors, spec, s1, s2, leaf)
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
    """``Fingerprint.SPREAD`` indices spread evenly over ``range(n)``, the first ``0`` and the
    last ``n - 1`` (in integers: a float32 ``linspace`` rounds ``n - 1`` up to ``n`` past 2**24)."""
    return torch.arange(Fingerprint.SPREAD, device=device) * (n - 1) // (Fingerprint.SPREAD - 1)


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


def _add_contribution(total: torch.Tensor | None, s1: JacobianSource, s2: JacobianSource, p: int, leaf: int,
                      spec: OutputSpec, grams: SelfGrams | None) -> torch.Tensor | None:
    """``total + Θ_p`` for one output leaf: structured when ``p`` has one linear-ish use and
    that is cheaper, a multiple of ``G`` for ``c p``, else Jacobians. ``grams`` (a batch with
    itself) shares Grams between parameters whose derivatives are multiples of each other."""
    tensors, plan = s1.tensors, s1.plan
    p_shape = tensors[p].shape
    n_lead = s1.n_leads[leaf]

    def contract(j1: torch.Tensor | None, j2: Callable[[], torch.Tensor | None], factor: float = 1.0
                 ) -> torch.Tensor | None:
        if j1 is None:
            return total
        if grams is None:
            b = j2()
            return total if b is None else _accumulate(total, spec.contract(j1, b), factor)
        k, c = grams.of(j1)
        return _accumulate(total, k, c * factor)

    ks = s1.uses_of.get(p, []) if s1.features is not None else []
    if len(ks) == 1 and s2.features is not None:
        f1, f2 = s1.features, s2.features
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
    return contract(s1.jacobian(leaf, p), lambda: s2.jacobian(leaf, p))
