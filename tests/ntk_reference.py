"""An independent empirical NTK for the tests: the whole batch's Jacobian by ``torch.func.jacrev``
(no ``vmap`` over examples, no probes, no structure), contracted by one ``tensordot`` and laid
out as neural-tangents does with one ``einsum``.

    Θ[a..., b...] = Σ_θ ∂f(x1)[a...]/∂θ · ∂f(x2)[b...]/∂θ

then every output axis ``i`` is paired (``a_i, b_i`` interleaved), traced (``a_i = b_i``,
averaged) or kept diagonal (``a_i = b_i``, once). Nothing here is shared with
``tangents._empirical``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.func import functional_call, jacrev
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._pytree import tree_flatten, tree_unflatten


def _flat_jacobian(f: Any, params: Any, x: Any) -> torch.Tensor:
    """``(*f(x).shape, P)``: the Jacobian of the whole batch, parameters concatenated."""
    if isinstance(f, torch.nn.Module):
        module = f
        names = list(params)
        buffers = dict(module.named_buffers())

        def g(*ts: torch.Tensor) -> torch.Tensor:
            return functional_call(module, {**buffers, **dict(zip(names, ts))}, (x,))

        tensors = [params[k] for k in names]
    else:
        leaves, spec = tree_flatten(params)
        idx = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]

        def g(*ts: torch.Tensor) -> torch.Tensor:
            full = list(leaves)
            for i, t in zip(idx, ts):
                full[i] = t
            return f(tree_unflatten(full, spec), x)

        tensors = [leaves[i] for i in idx]
    with sdpa_kernel([SDPBackend.MATH]):  # the fused CPU attention has no batching rule
        out = g(*tensors)
        js = jacrev(g, argnums=tuple(range(len(tensors))))(*tensors)
    return torch.cat([j.reshape(*out.shape, -1) for j in js], -1)


def _per_example_jacobian(f: Any, params: Any, x: torch.Tensor) -> torch.Tensor:
    """``_flat_jacobian`` of each example alone (``f`` on a batch of one), stacked: what
    ``vmap_axes=0`` means, in a plain loop."""
    return torch.cat([_flat_jacobian(f, params, x[i : i + 1]) for i in range(x.shape[0])])


def reference_ntk(f: Any, x1: Any, x2: Any | None = None, params: Any = None, trace_axes: tuple[int, ...] = (-1,),
                  diagonal_axes: tuple[int, ...] = (), per_example: bool = False) -> torch.Tensor:
    """The empirical NTK of ``f`` in neural-tangents' layout (see the module docstring).

    ``f`` is an ``nn.Module`` (``params``: a dict of the parameters to differentiate, default
    those with ``requires_grad``) or ``f(params, x)``. ``per_example``: each example's
    derivatives from ``f`` on that example alone (``vmap_axes=0``'s meaning), else from ``f``
    on the whole batch (the two agree when ``f`` treats examples independently).
    """
    if isinstance(f, torch.nn.Module) and params is None:
        params = {k: v.detach() for k, v in f.named_parameters() if v.requires_grad}
    jacobian = _per_example_jacobian if per_example else _flat_jacobian
    j1 = jacobian(f, params, x1)
    j2 = j1 if x2 is None else jacobian(f, params, x2)
    full = torch.tensordot(j1, j2, dims=([j1.ndim - 1], [j2.ndim - 1]))  # (*out1, *out2)
    ndim = j1.ndim - 1
    trace = {a % ndim for a in trace_axes}
    diag = {a % ndim for a in diagonal_axes}
    lab1, lab2, out = [], [], []
    divisor = 1
    for i in range(ndim):
        a, b = 2 * i, 2 * i + 1
        if i in trace:
            lab1.append(a)
            lab2.append(a)
            divisor *= j1.shape[i]
        elif i in diag:
            lab1.append(a)
            lab2.append(a)
            out.append(a)
        else:
            lab1.append(a)
            lab2.append(b)
            out += [a, b]
    return torch.einsum(full, lab1 + lab2, out) / divisor
