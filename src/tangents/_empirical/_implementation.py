"""`NtkImplementation`: the three ways of computing an empirical NTK, and the function of each."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import torch

from ._jacobian import ntk_jacobian_contraction
from ._ntk_vp import ntk_vector_products


class NtkImplementation(enum.IntEnum):
    """How the empirical NTK is computed (neural-tangents' names and values; ints accepted).

    Attributes:
        AUTO: ``0`` (the default), the one of the others predicted to be fastest among those
            that fit in memory, from one forward pass on one example (its FLOPs, activations and
            the shapes of its linear and convolutional layers; see ``_empirical/_memory.py``).
        JACOBIAN_CONTRACTION: ``1``, per-example Jacobians by reverse mode, contracted over the
            parameters. Simple and reliable; best for small outputs and weight-sharing nets.
        NTK_VECTOR_PRODUCTS: ``2``, the NTK column by column as J1 (J2ᵀ e): one reverse- and
            one forward-mode product per output of x2, no Jacobian contraction. Each example
            is evaluated twice, in batches of different sizes: in float32 a ReLU input within
            rounding of zero can fall on different sides in the two, and that example's
            entries then differ from the other implementations by the unit's share of the
            kernel (5e-3 of the largest entry measured on a ResNet-18; see the README's
            "Agreement"). Use float64 or another implementation when that matters.
        STRUCTURED_DERIVATIVES: ``3``, uses the structure of linear, convolutional and
            elementwise layers: for ``y = x W`` the contribution of ``W`` is
            ``(∂f/∂y1 · ∂f/∂y2)(x1 · x2)`` instead of a contraction over ``in × out``
            Jacobian entries; parameters used in other ways fall back to Jacobians.
    """

    AUTO = 0
    JACOBIAN_CONTRACTION = 1
    NTK_VECTOR_PRODUCTS = 2
    STRUCTURED_DERIVATIVES = 3


#: AUTO: all three give the same numbers (to rounding), so the default is the one predicted to
#: be fastest (neural-tangents' default is JACOBIAN_CONTRACTION, often many times slower).
DEFAULT_NTK_IMPLEMENTATION = NtkImplementation.AUTO


def check_implementation(implementation: NtkImplementation | int) -> NtkImplementation:
    try:
        return NtkImplementation(implementation)
    except ValueError:
        raise ValueError(
            f"implementation={implementation!r} is not an NtkImplementation; use one of "
            + ", ".join(f"{m.name} ({m.value})" for m in NtkImplementation)
            + "."
        ) from None


def implementation_fn(implementation: NtkImplementation) -> Callable[..., list[torch.Tensor]]:
    if implementation == NtkImplementation.JACOBIAN_CONTRACTION:
        return ntk_jacobian_contraction
    if implementation == NtkImplementation.NTK_VECTOR_PRODUCTS:
        return ntk_vector_products
    from ._structured import ntk_structured_derivatives

    return ntk_structured_derivatives


def run_planned(planner: Any, *args: Any, **kwargs: Any) -> list[torch.Tensor]:
    """The kernel by the implementation ``planner`` (a `MemoryPlanner`) chose, or was told."""
    impl = planner.chosen or planner.implementation or NtkImplementation.JACOBIAN_CONTRACTION
    return implementation_fn(impl)(*args, cache=planner.cache, **kwargs)
