"""Output-axis bookkeeping shared by every empirical kernel: trace, diagonal and batch axes.

neural-tangents lays an empirical kernel out as ``zip(f(x1).shape, f(x2).shape)``: every
output axis ``i`` of ``f`` contributes, in order,

* nothing if ``i`` is in ``trace_axes`` (the pair is traced and *averaged*: the kernel is
  divided by the product of the traced sizes),
* one axis if ``i`` is in ``diagonal_axes`` (only the diagonal of the pair is kept),
* the pair ``(d1_i, d2_i)`` otherwise.

So ``trace_axes=()`` on an ``(N, O)`` output gives ``(N1, N2, O, O)`` and the default
``trace_axes=(-1,)`` gives ``(N1, N2)``.

Internally every kernel is computed in a *canonical* layout: one leading "example" axis
``E`` (the batch axis when ``vmap_axes`` declares the batch elements independent, otherwise
a dummy axis of size 1 and the whole batch is one example) followed by the per-example
output axes ``S``. :class:`OutputSpec` knows how to contract two canonical tensors into the
canonical zipped kernel and how to move that to neural-tangents' layout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Axes = int | Sequence[int]

TRACE, DIAG, PAIR = "trace", "diag", "pair"


def canonicalize_axes(axes: Axes, ndim: int, name: str) -> tuple[int, ...]:
    """Non-negative, sorted, de-duplicated axes; a clear error when out of range."""
    if isinstance(axes, int):
        axes = (axes,)
    try:
        axes = tuple(int(a) for a in axes)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {axes!r}.") from None
    out = set()
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(
                f"{name}={axes}: axis {a} is out of range for an output of {ndim} dimensions; "
                f"use axes in [-{ndim}, {ndim})."
            )
        out.add(a % ndim)
    return tuple(sorted(out))


def check_axes_disjoint(trace_axes: Axes, diagonal_axes: Axes) -> None:
    """Rejects ``trace_axes`` and ``diagonal_axes`` that name the same (literal) axis."""
    t = {trace_axes} if isinstance(trace_axes, int) else set(trace_axes)
    d = {diagonal_axes} if isinstance(diagonal_axes, int) else set(diagonal_axes)
    if t & d:
        raise ValueError(
            f"trace_axes={tuple(sorted(t))} and diagonal_axes={tuple(sorted(d))} overlap on "
            f"{tuple(sorted(t & d))}: an axis is either traced (averaged) or kept diagonal, "
            "not both; remove it from one of them."
        )


#: Rows per block when a batch's kernel with itself is contracted by symmetric halves.
SELF_CONTRACT_BLOCK = 64
#: Bytes of the largest temporary of one structured contraction, the token-pair products
#: ``G1[t]·G2[t']`` of every example pair (``E1·E2·σ·T²`` floats, σ the output pairs): the
#: rows of ``x1`` are taken in panels that keep it within this (ResNet-18's second stage on
#: 128 examples, untraced: 1.7 GB in one piece, held twice while contracted; `_rules.structured`).
#: The panels cost no measurable time: ResNet-18, 2 threads, idle, interleaved medians of 5 for
#: 64 MiB / 256 MiB / one piece: 0.42 / 0.42 / 0.42 s (untraced, N = 16), 10.3 / 10.7 / 10.6 s
#: (untraced, N = 128), 4.7 / 4.6 / 4.5 s (traced, 125 x 125 examples; ranges overlap).
STRUCTURED_PANEL_BYTES = 64 << 20
#: Multiply-adds per kernel entry below which halving does not pay: mirroring an entry (a
#: transposed copy, ~3 ns) costs about as much as 400 multiply-adds of the saved product.
SELF_CONTRACT_MIN_WORK = 384


def by_symmetric_halves(
    e: int, panel: Callable[[int, int], torch.Tensor], mirror: Callable[[torch.Tensor], torch.Tensor],
    work_per_entry: int,
) -> torch.Tensor | None:
    """A kernel ``K`` of ``e`` examples with themselves from its upper half alone.

    ``panel(i, j)`` computes rows ``i:j`` and columns ``i:`` of ``K`` (axes 0 and 1 the two
    examples); ``mirror`` turns a block into its transpose (``K[e2, e1, ...]`` from
    ``K[e1, e2, ...]``). Row panels of ``max(SELF_CONTRACT_BLOCK, e / 8)`` rows: about 56 %
    of the full product's work. ``None`` when ``e`` is too small, or each entry too cheap
    (``work_per_entry`` multiply-adds), to bother.
    """
    if e < 2 * SELF_CONTRACT_BLOCK or work_per_entry < SELF_CONTRACT_MIN_WORK:
        return None
    block = max(SELF_CONTRACT_BLOCK, -(-e // 8))
    out: torch.Tensor | None = None
    for i in range(0, e, block):
        rows = panel(i, min(i + block, e))  # (rows, e - i, ...)
        if out is None:
            out = rows.new_empty((e, e) + tuple(rows.shape[2:]))
        out[i : i + block, i:] = rows
        if i + block < e:
            out[i + block :, i : i + block] = mirror(rows[:, block:])
    return out


@dataclass(frozen=True)
class OutputSpec:
    """How one output leaf of shape ``full_shape`` is contracted into its kernel.

    Attributes:
        kinds: for each canonical axis ``(E, *S)``, ``"trace"``, ``"diag"`` or ``"pair"``.
        divisor: product of the traced sizes (neural-tangents averages over traced axes).
        batch_axis: the axis of the true output that is the example axis ``E``, or None
            when the whole batch is one example (no ``vmap_axes``).
        true_kinds: the kinds of the true output axes, in their order.
    """

    kinds: tuple[str, ...]
    divisor: int
    batch_axis: int | None
    true_kinds: tuple[str, ...]
    sizes: tuple[int, ...] = ()

    @property
    def per_example_size(self) -> int:
        """``|S|``: the number of outputs per example."""
        return math.prod(self.sizes[1:])

    @property
    def pair_factor(self) -> int:
        """Output entries per example pair of the kernel: ``Π_S (s² if paired else s)``."""
        return math.prod(s * s if k == PAIR else s for k, s in zip(self.kinds[1:], self.sizes[1:]))

    @property
    def kept_factor(self) -> int:
        """Output entries per example pair before traced axes are summed away:
        ``Π_S (s² if paired, s if diagonal, 1 if traced)``."""
        return math.prod(s * s if k == PAIR else s if k == DIAG else 1 for k, s in zip(self.kinds[1:], self.sizes[1:]))

    @staticmethod
    def make(
        full_shape: Sequence[int],
        trace_axes: Axes,
        diagonal_axes: Axes,
        batch_axis: int | None,
    ) -> OutputSpec:
        ndim = len(full_shape)
        if ndim == 0:
            raise ValueError(
                "empirical kernels need outputs with at least one (batch) axis, got a scalar "
                "output; return f(params, x) of shape (N, ...)."
            )
        trace = canonicalize_axes(trace_axes, ndim, "trace_axes")
        diag = canonicalize_axes(diagonal_axes, ndim, "diagonal_axes")
        if set(trace) & set(diag):
            raise ValueError(
                f"trace_axes={trace} and diagonal_axes={diag} overlap: an axis is either "
                "traced (averaged) or kept diagonal, not both; remove it from one of them."
            )
        true_kinds = tuple(TRACE if i in trace else DIAG if i in diag else PAIR for i in range(ndim))
        divisor = 1
        for i in trace:
            divisor *= int(full_shape[i])
        if batch_axis is None:
            kinds = (PAIR,) + true_kinds
            sizes = (1,) + tuple(full_shape)
        else:
            others = tuple(k for i, k in enumerate(true_kinds) if i != batch_axis)
            kinds = (true_kinds[batch_axis],) + others
            sizes = (full_shape[batch_axis],) + tuple(s for i, s in enumerate(full_shape) if i != batch_axis)
        return OutputSpec(kinds, divisor, batch_axis, true_kinds, tuple(int(s) for s in sizes))

    # ----------------------------------------------------------------- contraction
    def labels(self, start: int = 0) -> tuple[list[int], list[int], list[int], int]:
        """Integer einsum labels for the canonical axes of operand 1, operand 2 and the output.

        Returns ``(lab1, lab2, out, next_free_label)``; the output is in canonical zipped
        order (pairs interleaved, diagonal axes once, traced axes absent).
        """
        lab1, lab2, out = [], [], []
        nxt = start
        for kind in self.kinds:
            if kind == PAIR:
                lab1.append(nxt)
                lab2.append(nxt + 1)
                out += [nxt, nxt + 1]
                nxt += 2
            else:
                lab1.append(nxt)
                lab2.append(nxt)
                if kind == DIAG:
                    out.append(nxt)
                nxt += 1
        return lab1, lab2, out, nxt

    def contract(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Canonical kernel ``Σ_R a[e1, s1, R] b[e2, s2, R]`` (trailing axes R summed), unscaled.

        Args:
            a: ``(E1, *S, *R)``.
            b: ``(E2, *S, *R)``.
        """
        if self.kinds[0] == PAIR and all(k == TRACE for k in self.kinds[1:]):  # the common case
            return torch.mm(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1).T)
        lab1, lab2, out, nxt = self.labels()
        rest = list(range(nxt, nxt + a.ndim - len(self.kinds)))
        return torch.einsum(a, lab1 + rest, b, lab2 + rest, out)

    def contract_self(self, a: torch.Tensor) -> torch.Tensor:
        """``contract(a, a)`` computing only the blocks with ``e1 <= e2`` (about half the
        work): the kernel of a batch with itself is symmetric, ``K[e1, e2, s, s'] =
        K[e2, e1, s', s]``, so the rest is the mirror image of what was computed."""
        out = None
        if self.kinds[0] == PAIR:
            kept = math.prod(s for k, s in zip(self.kinds[1:], a.shape[1:]) if k != TRACE)
            out = by_symmetric_halves(a.shape[0], lambda i, j: self.contract(a[i:j], a[i:]), self.mirror,
                                      a[0].numel() // max(kept, 1))
        return self.contract(a, a) if out is None else out

    def mirror(self, k: torch.Tensor) -> torch.Tensor:
        """The canonical kernel of the swapped batches: example axes and each pair swapped."""
        k = k.transpose(0, 1)
        position = 2
        for kind in self.kinds[1:]:
            if kind == PAIR:
                k = k.transpose(position, position + 1)
                position += 2
            elif kind == DIAG:
                position += 1
        return k

    def finalize(self, k: torch.Tensor) -> torch.Tensor:
        """From the canonical zipped kernel to neural-tangents' layout, averaged over traces
        (in place: ``k`` must be a fresh tensor that nothing else holds)."""
        sizes = {TRACE: 0, DIAG: 1, PAIR: 2}
        group_sizes = [sizes[kd] for kd in self.kinds]
        starts = [sum(group_sizes[:i]) for i in range(len(group_sizes))]
        groups = [list(range(s, s + n)) for s, n in zip(starts, group_sizes)]
        if self.batch_axis is None:
            k = k.reshape(k.shape[2:])  # drop the dummy (1, 1) example pair
        else:
            order = groups[1 : 1 + self.batch_axis] + [groups[0]] + groups[1 + self.batch_axis :]
            perm = [i for grp in order for i in grp]
            if perm != list(range(len(perm))):
                k = k.permute(perm)
        if self.divisor == 1:
            return k
        return k / self.divisor if k.requires_grad else k.div_(self.divisor)  # k is the caller's, fresh

    def shape(self, shape1: Sequence[int], shape2: Sequence[int]) -> tuple[int, ...]:
        """The final kernel shape for true outputs of shapes ``shape1`` and ``shape2``."""
        out: tuple[int, ...] = ()
        for kind, a1, a2 in zip(self.true_kinds, shape1, shape2):
            if kind == PAIR:
                out += (a1, a2)
            elif kind == DIAG:
                out += (a1,)
        return out


def reduce_full(spec: OutputSpec, k: torch.Tensor) -> torch.Tensor:
    """Canonical zipped kernel from a full ``(E1, *S, E2, *S)`` kernel (traces summed, unscaled)."""
    lab1, lab2, out, _ = spec.labels()
    return torch.einsum(k, lab1 + lab2, out)
