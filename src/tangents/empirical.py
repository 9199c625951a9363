"""Empirical (finite-width) kernels of any ``torch.nn.Module`` or function ``f(params, x)``.

For a network ``f`` with parameters ``θ``, the empirical neural tangent kernel and NNGP are

    Θ(x1, x2) = Σ_p ∂f(x1)/∂p · ∂f(x2)/∂pᵀ,        K(x1, x2) = f(x1) f(x2)ᵀ,

laid out as neural-tangents does: nearly ``zip(f(x1).shape, f(x2).shape)``, with the pairs
of ``trace_axes`` averaged away (mean, not sum) and the pairs of ``diagonal_axes`` reduced
to their diagonal. For an output of shape ``(N, O)``: ``trace_axes=()`` gives
``(N1, N2, O, O)``, the default ``trace_axes=(-1,)`` gives ``(N1, N2)``, and
``trace_axes=(), diagonal_axes=(-1,)`` gives ``(N1, N2, O)``.

Three implementations (:class:`NtkImplementation`, Novak et al. 2022, "Fast Finite Width
Neural Tangent Kernel") compute the same numbers with different costs; AUTO picks one from
a FLOP and memory estimate made for the actual model and inputs.

Memory. Before computing, the cost model (``_empirical/_memory.py``) estimates the peak
memory. With ``vmap_axes`` (examples independent) the kernel is computed in blocks of
``chunk_size`` examples of x1 and x2, chosen automatically when the whole would not fit in
``memory_limit`` (default: the memory available now); without ``vmap_axes`` nothing can be
tiled, and a computation that would not fit raises ``MemoryError`` saying what to do.

Not assumed: anything about the batch, unless ``vmap_axes`` says the examples are
independent (then per-example work, tiling, and the cheaper structured rules apply).

Example:
    >>> import torch, tangents
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
    >>> ntk_fn = tangents.empirical_ntk_fn(net, vmap_axes=0)
    >>> ntk_fn(torch.randn(5, 4), torch.randn(2, 4)).shape
    torch.Size([5, 2])
"""

from __future__ import annotations

import functools
from collections import namedtuple
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn
from torch.func import vjp

from ._empirical._axes import Axes, check_axes_disjoint
from ._empirical._implementation import DEFAULT_NTK_IMPLEMENTATION, NtkImplementation
from ._empirical._implementation import check_implementation as _implementation
from ._empirical._implementation import run_planned
from ._empirical._engine import empirical_kernel, nngp_impl
from ._empirical._function import make_problem, split_kwargs
from ._empirical._memory import MemoryPlanner
from ._empirical._ntk_vp import jvp_any, ntk_vector_products

PyTree = Any
ApplyFn = Callable[..., PyTree] | nn.Module


class EmpiricalKernelFn(Protocol):
    """``kernel_fn(x1, x2=None, params=None, **apply_fn_kwargs)`` → kernel (a tree like f's output)."""

    def __call__(self, x1: PyTree, x2: PyTree | None = None, params: PyTree | None = None, **kwargs: Any) -> PyTree: ...


def empirical_ntk_fn(
    f: ApplyFn,
    trace_axes: Axes = (-1,),
    diagonal_axes: Axes = (),
    vmap_axes: Any = None,
    implementation: NtkImplementation | int = DEFAULT_NTK_IMPLEMENTATION,
    chunk_size: int | None = None,
    memory_limit: int | None = None,
) -> EmpiricalKernelFn:
    """Returns ``ntk_fn(x1, x2=None, params=None, **apply_fn_kwargs)``, the empirical NTK of ``f``.

    ``Θ(x1, x2) = Σ_p J_p(x1) J_p(x2)ᵀ`` with ``J_p = ∂f/∂p``, in neural-tangents' layout (see
    the module docstring). For tuple/dict outputs the kernel is a tree of the same structure
    (cross terms between output leaves are ignored, as in neural-tangents).

    Args:
        f: an ``nn.Module`` (called as ``f(x, **kwargs)``; parameters default to its own,
            buffers are its own) or a function ``f(params, x, **kwargs)`` of a parameter tree
            (nested tuples/lists/dicts; None leaves allowed and held constant).
        trace_axes: output axes whose pairs are averaged away.
        diagonal_axes: output axes whose pairs are reduced to their diagonal.
        vmap_axes: None (nothing assumed about the batch: exact for any f), an int ``a``
            (the example axis of x and of f(x), meaning ``f`` acts on examples
            independently), or a triple ``(in_axes, out_axes, kwargs_axes)``. Declaring it
            is what makes per-example computation and ``chunk_size`` possible.
        implementation: an :class:`NtkImplementation` or its int value.
        chunk_size: with ``vmap_axes``, compute the kernel in blocks of at most this many
            examples of x1 and x2, bounding memory. None: one block, unless the memory
            estimate exceeds ``memory_limit``, in which case a chunk size is chosen.
        memory_limit: bytes the computation may use; default: the memory available on the
            device now. A computation estimated not to fit raises ``MemoryError`` with the fix.

    Returns:
        ``ntk_fn(x1, x2=None, params=None, **apply_fn_kwargs)``. ``x2=None`` means ``x1``; a
        kwarg given as a pair ``(v1, v2)`` goes to ``f(x1)`` and ``f(x2)`` respectively.

    Example:
        >>> f = lambda p, x: torch.tanh(x @ p[0]) @ p[1]
        >>> params = (torch.randn(3, 16), torch.randn(16, 2))
        >>> ntk = empirical_ntk_fn(f, trace_axes=())(torch.randn(4, 3), None, params)
        >>> ntk.shape  # (N1, N2, O, O)
        torch.Size([4, 4, 2, 2])
    """
    check_axes_disjoint(trace_axes, diagonal_axes)
    implementation = _implementation(implementation)
    cache: dict = {}  # structured derivatives: discovered layer structure per input shape

    def ntk_fn(x1: PyTree, x2: PyTree | None = None, params: PyTree | None = None, **apply_fn_kwargs: Any) -> PyTree:
        problem = make_problem(f, params, vmap_axes, "empirical_ntk_fn")
        planner = MemoryPlanner(implementation, memory_limit, cache)
        return empirical_kernel(
            functools.partial(run_planned, planner), problem, x1, x2, apply_fn_kwargs, trace_axes, diagonal_axes, chunk_size,
            planner=planner,
        )

    return ntk_fn


def empirical_nngp_fn(f: ApplyFn, trace_axes: Axes = (-1,), diagonal_axes: Axes = ()) -> EmpiricalKernelFn:
    """Returns ``nngp_fn(x1, x2=None, params=None, **apply_fn_kwargs)``: ``f(x1) f(x2)ᵀ``.

    Same layout, ``trace_axes`` (averaged) and ``diagonal_axes`` as :func:`empirical_ntk_fn`;
    for an ``(N, O)`` output the default gives ``K[i, j] = f(x1_i) · f(x2_j) / O``.

    Example:
        >>> net = torch.nn.Linear(3, 2)
        >>> empirical_nngp_fn(net)(torch.randn(4, 3)).shape
        torch.Size([4, 4])
    """
    check_axes_disjoint(trace_axes, diagonal_axes)

    def nngp_fn(x1: PyTree, x2: PyTree | None = None, params: PyTree | None = None, **apply_fn_kwargs: Any) -> PyTree:
        problem = make_problem(f, params, None, "empirical_nngp_fn")
        return empirical_kernel(nngp_impl, problem, x1, x2, apply_fn_kwargs, trace_axes, diagonal_axes, None)

    return nngp_fn


_GETS = ("nngp", "ntk")


def empirical_kernel_fn(
    f: ApplyFn,
    trace_axes: Axes = (-1,),
    diagonal_axes: Axes = (),
    vmap_axes: Any = None,
    implementation: NtkImplementation | int = DEFAULT_NTK_IMPLEMENTATION,
    chunk_size: int | None = None,
    memory_limit: int | None = None,
) -> Callable[..., Any]:
    """Returns ``kernel_fn(x1, x2=None, get=None, params=None, **apply_fn_kwargs)``.

    ``get`` is ``"nngp"``, ``"ntk"`` (returns that kernel) or a tuple of them (returns a
    namedtuple ``EmpiricalKernel`` with those fields); None means ``("nngp", "ntk")``.
    The other arguments are those of :func:`empirical_ntk_fn` and :func:`empirical_nngp_fn`.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        >>> k = empirical_kernel_fn(net)(torch.randn(4, 3), None, ("nngp", "ntk"))
        >>> k.ntk.shape, k.nngp.shape
        (torch.Size([4, 4]), torch.Size([4, 4]))
    """
    fns = {
        "nngp": empirical_nngp_fn(f, trace_axes, diagonal_axes),
        "ntk": empirical_ntk_fn(f, trace_axes, diagonal_axes, vmap_axes, implementation, chunk_size, memory_limit),
    }

    def kernel_fn(
        x1: PyTree,
        x2: PyTree | None = None,
        get: str | tuple[str, ...] | None = None,
        params: PyTree | None = None,
        **apply_fn_kwargs: Any,
    ) -> Any:
        gets = _GETS if get is None else get
        single = isinstance(gets, str)
        names = (gets,) if single else tuple(gets)
        bad = [g for g in names if g not in fns]
        if bad or not names:
            raise ValueError(f"get={get!r}: empirical kernels are {_GETS}; pass one of them or a tuple of them.")
        out = {g: fns[g](x1, x2, params, **apply_fn_kwargs) for g in names}
        if single:
            return out[gets]
        return namedtuple("EmpiricalKernel", names)(**out)

    return kernel_fn


def empirical_ntk_vp_fn(
    f: ApplyFn, x1: PyTree, x2: PyTree | None = None, params: PyTree | None = None, **apply_fn_kwargs: Any
) -> Callable[[PyTree], PyTree]:
    """Returns ``ntk_vp(v) = Θ(x1, x2) v = J(x1) (J(x2)ᵀ v)`` without building the NTK.

    One reverse-mode product through ``f(x2)`` and one forward-mode product through ``f(x1)``
    per call: the cost of about three forward passes and the memory of one backward pass.

    Args:
        f, params, apply_fn_kwargs: as in :func:`empirical_ntk_fn`.
        x1: first batch; the result has the shape (and tree structure) of ``f(x1)``.
        x2: second batch (None: ``x1``); ``v`` has the shape of ``f(x2)``.

    Example:
        >>> net = torch.nn.Linear(3, 2)
        >>> x1, x2 = torch.randn(5, 3), torch.randn(4, 3)
        >>> empirical_ntk_vp_fn(net, x1, x2)(torch.randn(4, 2)).shape
        torch.Size([5, 2])
    """
    problem = make_problem(f, params, None, "empirical_ntk_vp_fn")
    kw1, kw2 = split_kwargs(apply_fn_kwargs, x2 is not None)
    x2_, kw2_ = (x1, kw1) if x2 is None else (x2, kw2)
    tensors = problem.tensors

    def f_of(x: PyTree, kw: dict[str, Any]) -> Callable[..., PyTree]:
        return lambda *t: problem.apply(problem.params_from(t), x, **kw)

    def ntk_vp(cotangents: PyTree) -> PyTree:
        _, pullback = vjp(f_of(x2_, kw2_), *tensors)
        tangents = pullback(cotangents)
        return jvp_any(f_of(x1, kw1), tensors, tuple(tangents))

    return ntk_vp
