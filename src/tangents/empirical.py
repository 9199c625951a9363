"""Empirical (finite-width) kernels of any ``torch.nn.Module`` or function ``f(params, x)``.

For a network ``f`` with parameters ``θ``, the empirical neural tangent kernel and NNGP are

    Θ(x1, x2) = Σ_p ∂f(x1)/∂p · ∂f(x2)/∂pᵀ,        K(x1, x2) = f(x1) f(x2)ᵀ,

laid out as neural-tangents does: nearly ``zip(f(x1).shape, f(x2).shape)``, with the pairs
of ``trace_axes`` averaged away (mean, not sum) and the pairs of ``diagonal_axes`` reduced
to their diagonal. For an output of shape ``(N, O)``: ``trace_axes=()`` gives
``(N1, N2, O, O)``, the default ``trace_axes=(-1,)`` gives ``(N1, N2)``, and
``trace_axes=(), diagonal_axes=(-1,)`` gives ``(N1, N2, O)``.

Parameters. For an ``nn.Module`` the kernel is that of the parameters an optimizer would
train: those with ``requires_grad=True`` (frozen layers are constants, as in fine-tuning);
``parameters="all"``, a name filter, a list of names or a dict of values choose others. For
a function ``f(params, x)`` every tensor of ``params`` is differentiated, as in
neural-tangents.

Three implementations (:class:`NtkImplementation`, Novak et al. 2022, "Fast Finite Width
Neural Tangent Kernel") compute the same numbers with different costs. The default, AUTO,
runs the one predicted to be fastest among those that fit in memory, from one forward pass
on one example (FLOPs and memory of each; the prediction of the last call is
``ntk_fn.plan``). In float64 the three agree to about 1e-15 relative. In float32 they agree
to a few 1e-7 of the largest entry, except where a ReLU's input or a max-pool's two largest
inputs are within float32 rounding of each other: that unit's derivative is then one-sided,
and NTK_VECTOR_PRODUCTS, which differentiates every example twice (reverse mode in a batch
of its own, forward mode in the batch of ``x1``, and float32 convolutions round differently
in batches of different sizes), may take the two sides in the two passes. The entries of
that example then differ from the other implementations' (and lose their symmetry) by up
to that unit's share, 1e-4 to 1e-2 relative on a ResNet-18; JACOBIAN_CONTRACTION and
STRUCTURED_DERIVATIVES differentiate each example once. Use float64, or one of those two,
when such entries matter.

Memory. Before computing, the cost model (``_empirical/_memory.py``) estimates the peak
memory, the result included. With ``vmap_axes`` (examples independent) the kernel is
computed in blocks of ``chunk_size`` examples of x1 and x2 (through `tangents.blocks`, with
a progress bar once it takes more than two seconds), chosen automatically when the whole
would not fit in ``memory_limit`` (default: 80 % of the memory available now); without
``vmap_axes`` nothing can be tiled, and a computation that would not fit raises
``MemoryError`` saying what to do, as does a result that alone would not fit.

Not assumed: anything about the batch, unless ``vmap_axes`` says the examples are
independent (then per-example work, tiling, and the cheaper structured rules apply).
Modules in training mode: BatchNorm uses the batch's statistics (its running statistics are
left untouched), which ``vmap_axes`` refuses; active dropout is refused (``module.eval()``).

The first call in a process also imports ``torch._dynamo`` (1 to 8 s, depending on the
machine and its disk cache): torch.func's reverse-mode transforms do on first use
(``torch._functorch.eager_transforms._autograd_grad`` enters
``torch._dynamo.compiled_autograd._disable()``), torch.func's own NTK recipes included.

Example:
    >>> import torch, tangents
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
    >>> ntk_fn = tangents.empirical_ntk_fn(net, vmap_axes=0)
    >>> ntk_fn(torch.randn(5, 4), torch.randn(2, 4)).shape
    torch.Size([5, 2])
"""

from __future__ import annotations

import dataclasses
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
from ._empirical._engine import check_ntk_vp_memory, computing, empirical_kernel, nngp_impl
from ._empirical._function import make_problem, split_kwargs
from ._empirical._function import Parameters
from ._empirical._memory import Estimate, MemoryPlanner
from ._empirical._ntk_vp import jvp_any

__all__ = [
    "EmpiricalKernelFn",
    "NtkImplementation",
    "NtkPlan",
    "empirical_kernel_fn",
    "empirical_nngp_fn",
    "empirical_ntk_fn",
    "empirical_ntk_vp_fn",
]

PyTree = Any
ApplyFn = Callable[..., PyTree] | nn.Module


class EmpiricalKernelFn(Protocol):
    """``kernel_fn(x1, x2=None, params=None, **apply_fn_kwargs)`` → kernel (a tree like f's output)."""

    def __call__(self, x1: PyTree, x2: PyTree | None = None, params: PyTree | None = None, **kwargs: Any) -> PyTree: ...


@dataclasses.dataclass(frozen=True)
class NtkPlan:
    """How the last call of an ``ntk_fn`` was computed, and what was predicted.

    Attributes:
        implementation: the :class:`NtkImplementation` that ran.
        chunk_size: examples per block (None: one block).
        estimates: per candidate implementation (AUTO: all three; otherwise the one asked
            for), the prediction: ``seconds``, ``memory`` (peak bytes, result included),
            ``flops`` (of matrix products) and ``traffic`` (bytes through memory).
    """

    implementation: NtkImplementation
    chunk_size: int | None
    estimates: dict[NtkImplementation, Estimate]


def empirical_ntk_fn(
    f: ApplyFn,
    trace_axes: Axes = (-1,),
    diagonal_axes: Axes = (),
    vmap_axes: Any = None,
    implementation: NtkImplementation | int = DEFAULT_NTK_IMPLEMENTATION,
    chunk_size: int | None = None,
    memory_limit: int | None = None,
    *,
    parameters: Parameters = "trainable",
    progress: bool | None = None,
) -> EmpiricalKernelFn:
    """Returns ``ntk_fn(x1, x2=None, params=None, **apply_fn_kwargs)``, the empirical NTK of ``f``.

    ``Θ(x1, x2) = Σ_p J_p(x1) J_p(x2)ᵀ`` with ``J_p = ∂f/∂p``, in neural-tangents' layout (see
    the module docstring): for an output ``(N, O)``, ``(N1, N2)`` with the default
    ``trace_axes=(-1,)`` (``Θ[i, j] = Σ_o Θ[i, j, o, o] / O``), ``(N1, N2, O, O)`` with
    ``trace_axes=()``. For tuple/dict outputs the kernel is a tree of the same structure
    (cross terms between output leaves are ignored, as in neural-tangents).

    Args:
        f: an ``nn.Module`` (called as ``f(x, **kwargs)``; its parameters are chosen by
            ``parameters``, its buffers are its own) or a function ``f(params, x, **kwargs)``
            of a parameter tree (nested tuples/lists/dicts; None leaves allowed and held
            constant; every tensor leaf is differentiated).
        trace_axes: output axes whose pairs are averaged away.
        diagonal_axes: output axes whose pairs are reduced to their diagonal.
        vmap_axes: None (nothing assumed about the batch: exact for any f), an int ``a``
            (the example axis of x and of f(x), meaning ``f`` acts on examples
            independently), or a triple ``(in_axes, out_axes, kwargs_axes)``. Declaring it
            is what makes per-example computation and ``chunk_size`` possible.
        implementation: an :class:`NtkImplementation` or its int value; the default, AUTO,
            runs the one predicted to be fastest that fits in memory (the numbers are the same).
        chunk_size: with ``vmap_axes``, compute the kernel in blocks of at most this many
            examples of x1 and x2, bounding memory. None: one block, unless the memory
            estimate exceeds ``memory_limit``, in which case a chunk size is chosen.
        memory_limit: bytes the computation may use; default: 80 % of the memory available on
            the device now. A computation estimated not to fit raises ``MemoryError`` with the fix.
        parameters: for an ``nn.Module``, which parameters the kernel differentiates:
            ``"trainable"`` (default: those with ``requires_grad=True``), ``"all"``, a name
            filter ``name -> bool`` (e.g. ``lambda n: n.startswith("fc.")``), a list of names,
            or a dict ``name -> tensor`` of values to differentiate at. A ``params`` dict
            passed to ``ntk_fn`` overrides it for that call.
        progress: ``True`` shows a progress bar over blocks, ``False`` never; the default
            shows one once a blocked computation has run for two seconds.

    Returns:
        ``ntk_fn(x1, x2=None, params=None, **apply_fn_kwargs)``: ``x1`` (and ``x2``) a tensor
        (or tree of tensors) of examples, ``(N1, ...)`` along ``vmap_axes``; ``x2=None``
        means ``x1``; a kwarg given as a pair ``(v1, v2)`` goes to ``f(x1)`` and ``f(x2)``
        respectively. ``ntk_fn.plan`` is the :class:`NtkPlan` of its last call.

    Raises:
        ValueError: bad axes, inputs with NaN or inf, inputs ``f`` cannot take (the message
            names ``x1``/``x2``, their shapes and ``vmap_axes``), modules in training mode
            that ``vmap_axes`` or the kernel cannot allow.
        MemoryError: before computing, when the result or the computation is estimated not
            to fit in ``memory_limit``.

    Example:
        >>> f = lambda p, x: torch.tanh(x @ p[0]) @ p[1]
        >>> params = (torch.randn(3, 16), torch.randn(16, 2))
        >>> ntk = empirical_ntk_fn(f, trace_axes=())(torch.randn(4, 3), None, params)
        >>> ntk.shape  # (N1, N2, O, O)
        torch.Size([4, 4, 2, 2])
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        >>> _ = net[0].requires_grad_(False)  # frozen: the kernel of the last layer alone
        >>> ntk_fn = empirical_ntk_fn(net, vmap_axes=0)
        >>> ntk_fn(torch.randn(5, 3)).shape, ntk_fn.plan.implementation
        (torch.Size([5, 5]), <NtkImplementation.STRUCTURED_DERIVATIVES: 3>)
    """
    check_axes_disjoint(trace_axes, diagonal_axes)
    implementation = _implementation(implementation)
    cache: dict = {}  # per input signature: the profile and the layer structure

    def ntk_fn(x1: PyTree, x2: PyTree | None = None, params: PyTree | None = None, **apply_fn_kwargs: Any) -> PyTree:
        problem = make_problem(f, params, vmap_axes, "empirical_ntk_fn", parameters)
        planner = MemoryPlanner(implementation, memory_limit, cache)
        out = empirical_kernel(
            functools.partial(run_planned, planner), problem, x1, x2, apply_fn_kwargs, trace_axes, diagonal_axes,
            chunk_size, planner=planner, progress=progress,
        )
        ntk_fn.plan = NtkPlan(
            NtkImplementation(planner.chosen), planner.estimate.chunk_size if planner.estimate else None,
            {NtkImplementation(i): e for i, e in planner.estimates.items()},
        )
        return out

    ntk_fn.plan = None
    return ntk_fn


def empirical_nngp_fn(f: ApplyFn, trace_axes: Axes = (-1,), diagonal_axes: Axes = (), *,
                      memory_limit: int | None = None) -> EmpiricalKernelFn:
    """Returns ``nngp_fn(x1, x2=None, params=None, **apply_fn_kwargs)``: ``f(x1) f(x2)ᵀ``.

    ``K(x1, x2) = f(x1) f(x2)ᵀ`` summed over the output entries, with the same layout,
    ``trace_axes`` (averaged) and ``diagonal_axes`` as :func:`empirical_ntk_fn`: for an
    ``(N, O)`` output the default gives ``K[i, j] = f(x1_i) · f(x2_j) / O``, ``(N1, N2)``.
    ``f`` runs once on each batch as given (its module's own parameters and buffers, or
    ``params``). A result (with the outputs) estimated not to fit in ``memory_limit`` bytes
    (default: 80 % of the memory available now) raises ``MemoryError`` first.

    Example:
        >>> net = torch.nn.Linear(3, 2)
        >>> empirical_nngp_fn(net)(torch.randn(4, 3)).shape
        torch.Size([4, 4])
    """
    check_axes_disjoint(trace_axes, diagonal_axes)

    def nngp_fn(x1: PyTree, x2: PyTree | None = None, params: PyTree | None = None, **apply_fn_kwargs: Any) -> PyTree:
        problem = make_problem(f, params, None, "empirical_nngp_fn", "all")
        return empirical_kernel(nngp_impl, problem, x1, x2, apply_fn_kwargs, trace_axes, diagonal_axes, None,
                                caller="empirical_nngp_fn", memory_limit=memory_limit)

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
    *,
    parameters: Parameters = "trainable",
    progress: bool | None = None,
) -> Callable[..., Any]:
    """Returns ``kernel_fn(x1, x2=None, get=None, params=None, **apply_fn_kwargs)``: the
    empirical NNGP ``K = f(x1) f(x2)ᵀ`` and NTK ``Θ = J(x1) J(x2)ᵀ`` of ``f``.

    Args:
        f: an ``nn.Module`` or a function ``f(params, x, **kwargs)``.
        trace_axes, diagonal_axes: output axes averaged away / reduced to their diagonal, in
            both kernels.
        vmap_axes, implementation, chunk_size, memory_limit, parameters, progress: of the
            NTK, as in :func:`empirical_ntk_fn` (the NNGP needs one forward pass per batch).

    Returns:
        ``kernel_fn(x1, x2=None, get=None, params=None, **apply_fn_kwargs)`` where ``x1``
        ``(N1, ...)`` and ``x2`` ``(N2, ...)`` (None: ``x1``) are batches of examples and
        ``get`` is ``"nngp"`` or ``"ntk"`` (that kernel, e.g. ``(N1, N2)`` for ``(N, O)``
        outputs with the default ``trace_axes``) or a tuple of them (a namedtuple
        ``EmpiricalKernel`` with those fields); None means ``("nngp", "ntk")``.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        >>> k = empirical_kernel_fn(net)(torch.randn(4, 3), None, ("nngp", "ntk"))
        >>> k.ntk.shape, k.nngp.shape
        (torch.Size([4, 4]), torch.Size([4, 4]))
    """
    fns = {
        "nngp": empirical_nngp_fn(f, trace_axes, diagonal_axes, memory_limit=memory_limit),
        "ntk": empirical_ntk_fn(f, trace_axes, diagonal_axes, vmap_axes, implementation, chunk_size, memory_limit,
                                parameters=parameters, progress=progress),
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
    f: ApplyFn, x1: PyTree, x2: PyTree | None = None, params: PyTree | None = None, *,
    parameters: Parameters = "trainable", memory_limit: int | None = None, **apply_fn_kwargs: Any
) -> Callable[[PyTree], PyTree]:
    """Returns ``ntk_vp(v) = Θ(x1, x2) v = J(x1) (J(x2)ᵀ v)`` without building the NTK.

    One reverse-mode product through ``f(x2)`` and one forward-mode product through ``f(x1)``
    per call: the cost of about three forward passes and the memory of one backward pass
    (estimated from one forward pass of each batch; ``MemoryError`` if it would not fit).

    Args:
        f, params, parameters, apply_fn_kwargs: as in :func:`empirical_ntk_fn`.
        x1: first batch; the result has the shape (and tree structure) of ``f(x1)``.
        x2: second batch (None: ``x1``); ``v`` has the shape of ``f(x2)``.
        memory_limit: bytes a product may use (default: 80 % of the memory available now).

    Returns:
        ``ntk_vp(v)``: for ``v`` shaped like ``f(x2)`` (e.g. ``(N2, O)``), ``Θ(x1, x2) v``
        shaped like ``f(x1)`` (``(N1, O)``), ``(Θ v)[i, o] = Σ_{j, p} Θ[i, j, o, p] v[j, p]``.

    Example:
        >>> net = torch.nn.Linear(3, 2)
        >>> x1, x2 = torch.randn(5, 3), torch.randn(4, 3)
        >>> empirical_ntk_vp_fn(net, x1, x2)(torch.randn(4, 2)).shape
        torch.Size([5, 2])
    """
    caller = "empirical_ntk_vp_fn"
    problem = make_problem(f, params, None, caller, parameters)
    kw1, kw2 = split_kwargs(apply_fn_kwargs, x2 is not None)
    x2_, kw2_ = (x1, kw1) if x2 is None else (x2, kw2)
    tensors = problem.tensors
    with computing():
        check_ntk_vp_memory(problem, tensors, (x1, kw1), None if x2 is None else (x2_, kw2_), memory_limit, caller)

    def f_of(x: PyTree, kw: dict[str, Any]) -> Callable[..., PyTree]:
        return lambda *t: problem.apply(problem.params_from(t), x, **kw)

    def ntk_vp(cotangents: PyTree) -> PyTree:
        with computing():
            _, pullback = vjp(f_of(x2_, kw2_), *tensors)
            tangents = pullback(cotangents)
            return jvp_any(f_of(x1, kw1), tensors, tuple(tangents))

    return ntk_vp
