"""torch.func's two empirical-NTK recipes (its "Neural Tangent Kernels" tutorial), as a user would
write them, with the one change a user needs on a real model: ``vmap``'s ``chunk_size`` (and,
for the Jacobian contraction, blocks of examples) so that they fit in memory.

* :func:`jacobian_contraction`: ``vmap(jacrev(f))`` per example, then
  ``einsum('Naf,Mbf->NMab')`` per parameter, summed;
* :func:`ntk_vector_products`: for every pair of examples ``vmap`` over the basis of the
  output of ``x1``'s example, ``vjp`` then ``jvp``; ``vmap`` over the pairs.

Both compute ``Θ (N1, N2, O, O)`` of a module on single examples (``f(params, x)`` runs the
module on a batch of one), as the tutorial does. Benchmark code: never imported by tangents.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, jacrev, jvp, vjp, vmap

__all__ = ["jacobian_contraction", "jacobian_contraction_bytes", "ntk_vector_products", "single_example_fn"]


def single_example_fn(model: torch.nn.Module):  # noqa: ANN201
    """``(f(params, x), params)``: the tutorial's ``fnet_single`` and the detached parameters."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def fnet_single(params: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**params, **buffers}, (x.unsqueeze(0),)).squeeze(0)

    return fnet_single, params


def jacobian_contraction_bytes(params: dict, n_examples: int, outputs: int, itemsize: int) -> int:
    """Bytes of the Jacobians of ``n_examples`` examples (what :func:`jacobian_contraction` holds)."""
    return n_examples * outputs * sum(p.numel() for p in params.values()) * itemsize


def _jacobians(fnet_single, params: dict, x: torch.Tensor) -> list[torch.Tensor]:  # noqa: ANN001
    jac = vmap(jacrev(fnet_single), (None, 0))(params, x)
    return [j.flatten(2) for j in jac.values()]


def jacobian_contraction(fnet_single, params: dict, x1: torch.Tensor, x2: torch.Tensor,  # noqa: ANN001
                         block: int | None = None) -> torch.Tensor:
    """The tutorial's ``empirical_ntk_jacobian_contraction``; with ``block``, over blocks of
    ``block`` examples of x1 and x2 (the Jacobians of two blocks held at a time)."""
    if block is None or (block >= len(x1) and block >= len(x2)):
        jac1 = _jacobians(fnet_single, params, x1)
        jac2 = _jacobians(fnet_single, params, x2)
        return sum(torch.einsum("Naf,Mbf->NMab", j1, j2) for j1, j2 in zip(jac1, jac2))
    rows = []
    for i in range(0, len(x1), block):
        jac1 = _jacobians(fnet_single, params, x1[i : i + block])
        row = []
        for j in range(0, len(x2), block):
            jac2 = _jacobians(fnet_single, params, x2[j : j + block])
            row.append(sum(torch.einsum("Naf,Mbf->NMab", a, b) for a, b in zip(jac1, jac2)))
            del jac2
        rows.append(torch.cat(row, 1))
        del jac1
    return torch.cat(rows, 0)


def ntk_vector_products(fnet_single, params: dict, x1: torch.Tensor, x2: torch.Tensor,  # noqa: ANN001
                        chunk: int | None = None) -> torch.Tensor:
    """The tutorial's ``empirical_ntk_ntk_vps``; ``chunk`` is the ``vmap`` chunk size over the
    examples of x2 (the examples of x1 one at a time when given)."""

    def get_ntk(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        def func_x1(params: dict) -> torch.Tensor:
            return fnet_single(params, x1)

        def func_x2(params: dict) -> torch.Tensor:
            return fnet_single(params, x2)

        output, vjp_fn = vjp(func_x1, params)

        def get_ntk_slice(vec: torch.Tensor) -> torch.Tensor:
            vjps = vjp_fn(vec)
            _, jvps = jvp(func_x2, (params,), vjps)
            return jvps

        basis = torch.eye(output.numel(), dtype=output.dtype, device=output.device).view(output.numel(), -1)
        return vmap(get_ntk_slice)(basis)

    inner = vmap(get_ntk, (None, 0), chunk_size=chunk)
    return vmap(inner, (0, None), chunk_size=None if chunk is None else 1)(x1, x2)
