"""Structure rules: the NTK contribution of a parameter from ``G = ∂f/∂y`` and the layer input.

For a linear use ``y[t] = W x[t]`` (``t`` runs over tokens / pixels / the size-1 batch of
one example), ``∂f/∂W = Σ_t G[t] ⊗ x[t]``, so the contribution of ``W`` is

    Θ_W(a, b) = Σ_{t, t'} (G_a[t] · G_b[t']) (x_a[t] · x_b[t'])          (structured)

costing ``T² (out + in)`` per pair of examples (times the output pairs) instead of
``out × in`` for contracting explicit Jacobians; with one token (an MLP) this is the
product of two small Gram matrices. A convolution is the same after ``unfold`` (tokens =
output pixels, inputs = patches). Each rule returns either the structured contraction or,
when that would cost more (many tokens), the per-example Jacobian ``Σ_t G[t] ⊗ x[t]``; any
other use (an elementwise scale, a norm's affine weight, attention projections inside one
fused call, ...) gets its Jacobian from a reverse-mode product through that one call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import vjp, vmap

from .._torch_private import C_LINEAR, TensorBase
from ._axes import PAIR, STRUCTURED_PANEL_BYTES, TRACE, OutputSpec, by_symmetric_halves
from ._recorder import Use

_LINEAR = {F.linear, C_LINEAR}
_T = TensorBase
_MUL = {torch.mul, torch.multiply, _T.mul, _T.multiply}
_DIV = {torch.div, torch.divide, torch.true_divide, _T.div, _T.divide, _T.true_divide}
_NEG = {torch.neg, torch.negative, _T.neg, _T.negative}
_MATMUL = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, TensorBase.matmul}
_CONV2D = {F.conv2d, torch.conv2d}


@dataclass
class Linearish:
    """A use linear in the parameter with token structure: ``x`` → ``X (E, T, in)`` and
    ``G`` → ``(E, *S, T, out)``; ``role`` says how the Jacobian is laid out as the parameter."""

    role: str  # "weight" / "bias" (F.linear), "weight_t" (x @ W), "conv_weight" / "conv_bias"


def classify(use: Use, p: int) -> Linearish | None:
    """The structured rule for parameter ``p`` in ``use``, or None (generic fallback)."""
    if len(use.params) != len(set(use.params.values())):
        return None
    if len(use.inputs) != 1 or isinstance(use.arg(0, "input"), tuple):
        return None  # the input is a parameter itself, or there are several tensor inputs
    if use.func in _LINEAR:
        if len(use.arg_shapes) > 1 and use.arg_shapes[1] is not None and len(use.arg_shapes[1]) != 2:
            return None  # a 1-D weight
        if use.arg(1, "weight") == ("param", p):
            return Linearish("weight")
        if use.arg(2, "bias") == ("param", p):
            return Linearish("bias")
    elif (use.func in _MATMUL and use.arg(1, "other") == ("param", p) and len(use.params) == 1
          and len(use.arg_shapes) > 1 and use.arg_shapes[1] is not None and len(use.arg_shapes[1]) == 2):
        return Linearish("weight_t")
    elif use.func in _CONV2D:
        groups = use.arg(6, "groups") or 1
        if groups != 1 or _conv_padding(use) is None:
            return None
        if use.arg(1, "weight") == ("param", p):
            return Linearish("conv_weight")
        if use.arg(2, "bias") == ("param", p):
            return Linearish("conv_bias")
    return None


@dataclass
class Scale:
    """A call of the parameter alone times a number, ``y = c p`` (``c * p``, ``p / c``,
    ``-p``): every example's Jacobian is ``c G``, no product through the call needed."""

    factor: float


def _number(a: object) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool)


def scale_of(use: Use, p: int) -> Scale | None:
    """The :class:`Scale` rule for parameter ``p`` in ``use``, or None."""
    if use.inputs or list(use.params.values()) != [p]:
        return None
    first, second = use.arg(0, "input"), use.arg(1, "other")
    mine = ("param", p)
    if use.func in _NEG and first == mine:
        return Scale(-1.0)
    if use.func in _MUL and mine in (first, second):
        number = second if first == mine else first
        return Scale(float(number)) if _number(number) else None
    if use.func in _DIV and first == mine and _number(second) and second != 0 and use.arg(2, "rounding_mode") is None:
        return Scale(1.0 / second)
    return None


def _conv_padding(use: Use) -> int | tuple[int, ...] | None:
    """conv2d's padding as ints for ``unfold``; None if it is asymmetric (``"same"`` with an
    even receptive field)."""
    padding = use.arg(4, "padding")
    if padding is None or padding == "valid":
        return 0
    if padding != "same":
        return padding
    dilation = use.arg(5, "dilation") or 1
    dilation = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
    if len(use.arg_shapes) < 2 or use.arg_shapes[1] is None:
        return None
    kernel = use.arg_shapes[1][2:]
    total = [d * (k - 1) for d, k in zip(dilation, kernel)]
    if any(t % 2 for t in total):
        return None
    return tuple(t // 2 for t in total)


def tokens(use: Use, rule: Linearish, p_shape: torch.Size, g: torch.Tensor, inputs: list[torch.Tensor], n_lead: int
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(G (E, *S, T, out), X (E, T, in) or None for a bias)`` for a linear-ish use.

    ``g`` is ``(E, *S, *y)`` (``n_lead = 1 + len(S)`` leading axes); ``inputs`` the recorded
    per-example inputs with a leading ``E``.
    """
    lead = g.shape[:n_lead]
    x = inputs[0] if inputs else None
    if rule.role in ("conv_weight", "conv_bias"):
        # y: (E, *S, [b,] C_out, H', W') -> (E, *S, T = b·H'·W', C_out)
        y_nd = g.ndim - n_lead
        gg = g if y_nd == 4 else g.unsqueeze(n_lead)
        gg = gg.flatten(n_lead + 2).movedim(n_lead + 1, -1)  # (E, *S, b, L, C_out)
        gg = gg.flatten(n_lead, n_lead + 1)
        if rule.role == "conv_bias":
            return gg, None
        stride, padding = use.arg(3, "stride"), _conv_padding(use)
        dilation = use.arg(5, "dilation")
        xs = x if x.ndim == 5 else x.unsqueeze(1)  # (E, b, C_in, H, W)
        e, b = xs.shape[:2]
        patches = F.unfold(xs.flatten(0, 1), p_shape[2:], dilation=dilation or 1, padding=padding,
                           stride=stride or 1)  # (E·b, C_in·kh·kw, L)
        patches = patches.transpose(1, 2).reshape(e, -1, patches.shape[1])  # (E, T, C_in·kh·kw)
        return gg, patches
    out = p_shape[0] if rule.role in ("weight", "bias") else p_shape[1]
    gg = g.reshape(*lead, -1, out)
    if rule.role == "bias":
        return gg, None
    return gg, x.reshape(x.shape[0], -1, x.shape[-1])


def jacobian_of(rule: Linearish, p_shape: torch.Size, gg: torch.Tensor, xx: torch.Tensor | None) -> torch.Tensor:
    """The per-example Jacobian ``Σ_t G[t] ⊗ x[t]`` laid out like the parameter: ``(E, *S, *p)``.

    One batched matrix product over the examples and outputs, written straight into the
    parameter's layout (an ``einsum`` would, for one token, broadcast a product and then copy
    the Jacobian, a parameter-sized tensor per output, into another layout, twice).
    """
    if xx is None:
        return gg.sum(-2).reshape(*gg.shape[:-2], *p_shape)
    lead = gg.shape[:-2]
    e, t = xx.shape[:2]
    g = gg.reshape(e, -1, t, gg.shape[-1])  # (E, |S|, T, out)
    x = xx.unsqueeze(1)  # (E, 1, T, in)
    if rule.role == "weight_t":  # x @ W, W (in, out): J[e, s] = x[e]ᵀ G[e, s]
        j = torch.matmul(x.transpose(-1, -2), g)
    else:  # W (out, in, ...): J[e, s] = G[e, s]ᵀ x[e]
        j = torch.matmul(g.transpose(-1, -2), x)
    return j.reshape(*lead, *p_shape)


def structured(spec: OutputSpec, g1: torch.Tensor, x1: torch.Tensor, g2: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """``Σ_{t,t'} (G1[t]·G2[t']) (x1[t]·x2[t'])`` in the canonical zipped layout (unscaled).

    ``g`` ``(E, *S, T, out)`` and ``x`` ``(E, T, in)``. With a paired example axis the rows of
    example 1 go in panels whose token-pair products fit ``STRUCTURED_PANEL_BYTES``, and a
    batch with itself computes its upper half only (the rest is the mirror image).
    """
    lab1, lab2, out, nxt = spec.labels()
    e1, e2 = lab1[0], lab2[0]
    keep = out + ([e1] if spec.kinds[0] == TRACE else [])
    if g1 is g2 and x1 is x2 and keep == [e1, e2]:  # a batch with itself, output axes traced
        gg, xx = _self_gram(g1.movedim(-2, 1).flatten(2)), _self_gram(x1)  # G as (E, T, S·out)
        return torch.einsum(gg, keep + [nxt, nxt + 1], xx, keep + [nxt, nxt + 1], out)
    if spec.kinds[0] != PAIR:
        return _structured_block(spec, g1, x1, g2, x2)
    same = g1 is g2 and x1 is x2
    pairs = spec.kept_factor  # traced output axes are summed in the products
    per_row = x2.shape[0] * pairs * x1.shape[1] * x2.shape[1] * g1.element_size()
    rows = max(1, STRUCTURED_PANEL_BYTES // max(per_row, 1))

    def panel(i: int, j: int) -> torch.Tensor:  # rows i:j against columns i: (same) or all
        c = i if same else 0
        parts = [_structured_block(spec, g1[r : min(r + rows, j)], x1[r : min(r + rows, j)], g2[c:], x2[c:])
                 for r in range(i, j, rows)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, 0)

    if same:
        work = x1.shape[1] ** 2 * (g1.shape[-1] * spec.pair_factor + x1.shape[-1]) // pairs  # multiply-adds per entry
        halves = by_symmetric_halves(x1.shape[0], panel, spec.mirror, work)
        if halves is not None:
            return halves
    return panel(0, x1.shape[0])


def _structured_block(spec: OutputSpec, g1: torch.Tensor, x1: torch.Tensor, g2: torch.Tensor, x2: torch.Tensor
                      ) -> torch.Tensor:
    """:func:`structured` in one piece: the token-pair products of every example pair at once."""
    lab1, lab2, out, nxt = spec.labels()
    t1, t2, o, i = nxt, nxt + 1, nxt + 2, nxt + 3
    e1, e2 = lab1[0], lab2[0]
    keep = out + ([e1] if spec.kinds[0] == TRACE else [])
    ee = [e1, e2] if e1 != e2 else [e1]
    gg = torch.einsum(g1, lab1 + [t1, o], g2, lab2 + [t2, o], keep + [t1, t2])
    xx = torch.einsum(x1, [e1, t1, i], x2, [e2, t2, i], ee + [t1, t2])
    return torch.einsum(gg, keep + [t1, t2], xx, ee + [t1, t2], out)


def _self_gram(x: torch.Tensor) -> torch.Tensor:
    """``Σ_i x[e1, t1, i] x[e2, t2, i]`` as ``(E, E, T, T)``, by symmetric halves."""
    def panel(i: int, j: int) -> torch.Tensor:
        return torch.einsum(x[i:j], [0, 1, 2], x[i:], [3, 4, 2], [0, 3, 1, 4])

    out = by_symmetric_halves(x.shape[0], panel, lambda k: k.permute(1, 0, 3, 2), x.shape[2])
    return panel(0, x.shape[0]) if out is None else out


def structured_is_cheaper(spec: OutputSpec, g1: torch.Tensor, x1: torch.Tensor, g2: torch.Tensor, x2: torch.Tensor) -> bool:
    """FLOP estimate of :func:`structured` against building and contracting Jacobians."""
    e1, t1, n_in = x1.shape
    e2, t2 = x2.shape[:2]
    n_out = g1.shape[-1]
    s_sizes = g1.shape[1:-2]
    pair = math.prod(s * s if k == PAIR else s for k, s in zip(spec.kinds[1:], s_sizes))
    s_all = math.prod(s_sizes)
    structured_cost = e1 * e2 * t1 * t2 * (pair * n_out + n_in + pair)
    jacobian_cost = (e1 * t1 + e2 * t2) * s_all * n_out * n_in + e1 * e2 * pair * n_out * n_in
    return structured_cost <= jacobian_cost


def generic_jacobian(use: Use, p: int, tensors: tuple[torch.Tensor, ...], g: torch.Tensor,
                     inputs: list[torch.Tensor], n_lead: int, independent: bool) -> torch.Tensor:
    """``(∂y/∂p)ᵀ G`` for every example and output entry, through the single call ``use``.

    Returns ``(E, *S, *p.shape)``.
    """
    lead = g.shape[:n_lead]
    gf = g.reshape(lead[0], -1, *g.shape[n_lead:])  # (E, |S|, *y)

    def per_example(g_e: torch.Tensor, inputs_e: list[torch.Tensor]) -> torch.Tensor:
        def op(pt: torch.Tensor) -> torch.Tensor:
            full = list(tensors)
            full[p] = pt
            return use.call(tuple(full), inputs_e)

        _, pull = vjp(op, tensors[p])
        return vmap(lambda c: pull(c)[0])(g_e)

    if not use.inputs:  # a parameter-only call (b_std * b, W.t(), ...): the same for every example
        j = per_example(gf.reshape(-1, *g.shape[n_lead:]), [])
    elif independent:
        j = vmap(per_example)(gf, inputs)
    else:
        j = per_example(gf[0], [t[0] for t in inputs]).unsqueeze(0)
    return j.reshape(*lead, *tensors[p].shape)
