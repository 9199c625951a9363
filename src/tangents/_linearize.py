"""Linearized and Taylor-expanded networks, computed by forward-mode products.

For a network ``f(θ, x)`` expanded around ``θ0``, with ``δ = θ − θ0``:

    f_lin(θ, x)  = f(θ0, x) + J(θ0, x) δ                     (linearize)
    f_tayl(θ, x) = Σ_{k=0}^{degree} (1/k!) ∂_t^k f(θ0 + t δ, x) |_{t=0}   (taylor_expand)

``J δ`` is one Jacobian-vector product (``torch.func.jvp``): the Jacobian is never
materialised, so the cost is about that of two forward passes. The returned object is an
``nn.Module`` whose parameters are ``θ`` (initialised at ``θ0``), trainable by any optimizer;
it is also callable functionally as ``model.apply_fn(params, x)`` like neural-tangents'
``f_lin(params, x)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import jvp
from ._torch_private import tree_flatten, tree_unflatten

from ._empirical._function import Parameters, module_apply_fn

__all__ = ["TaylorExpandedModel", "linearize", "taylor_expand"]

PyTree = Any


class TaylorExpandedModel(nn.Module):
    """``f`` expanded to order ``degree`` in its parameters around ``θ0`` (see module docstring).

    Called as ``model(x)`` (at its own trainable parameters ``θ``) or, like neural-tangents'
    ``f_lin(params, x)``, as ``model(params, x)`` (the same as ``model.apply_fn(params, x)``).

    Attributes:
        params: the trainable ``θ`` (an ``nn.ParameterList`` of the tensor leaves of the
            parameter tree), initialised at ``θ0``.
        degree: the order of the expansion (1 for :func:`linearize`).
    """

    def __init__(self, f: Callable | nn.Module, params: PyTree | None, degree: int, caller: str,
                 parameters: Parameters = "trainable") -> None:
        super().__init__()
        if not isinstance(degree, int) or isinstance(degree, bool) or degree < 0:
            raise ValueError(f"{caller}: degree must be an int >= 0, got {degree!r}.")
        if isinstance(f, nn.Module):
            apply, params = module_apply_fn(f, params, parameters, caller)
            # Keep the module out of our submodules: its parameters are not ours to train.
            object.__setattr__(self, "_module", f)
        elif callable(f):
            if params is None:
                raise ValueError(f"{caller}: params is required when f is a function f(params, x); pass params=...")
            apply = f
        else:
            raise TypeError(f"{caller}: f must be an nn.Module or a callable f(params, x), got {type(f).__name__}.")
        leaves, self._spec = tree_flatten(params)
        self._leaves = leaves
        self._tensor_idx = [i for i, l in enumerate(leaves) if isinstance(l, torch.Tensor)]
        if not self._tensor_idx:
            raise ValueError(f"{caller}: params has no tensor leaves, got {params!r}.")
        self._apply = apply
        self.degree = degree
        for j, i in enumerate(self._tensor_idx):
            self.register_buffer(f"theta0_{j}", leaves[i].detach().clone())
        self.params = nn.ParameterList([nn.Parameter(leaves[i].detach().clone()) for i in self._tensor_idx])

    @property
    def theta0(self) -> tuple[torch.Tensor, ...]:
        """The expansion point ``θ0`` (flat tensor leaves)."""
        return tuple(getattr(self, f"theta0_{j}") for j in range(len(self._tensor_idx)))

    def _tree(self, tensors: tuple[torch.Tensor, ...]) -> PyTree:
        leaves = list(self._leaves)
        for i, t in zip(self._tensor_idx, tensors):
            leaves[i] = t
        return tree_unflatten(leaves, self._spec)

    def _flat(self, params: PyTree) -> tuple[torch.Tensor, ...]:
        leaves, spec = tree_flatten(params)
        if spec != self._spec:
            raise ValueError(f"params has structure {spec}, expected the structure of θ0: {self._spec}.")
        return tuple(leaves[i] for i in self._tensor_idx)

    def expand(self, theta: tuple[torch.Tensor, ...], x: PyTree, **kwargs: Any) -> PyTree:
        """The expansion evaluated at the flat parameters ``theta``."""
        theta0 = self.theta0
        delta = tuple(t - t0 for t, t0 in zip(theta, theta0))

        def f0(*tensors: torch.Tensor) -> PyTree:
            return self._apply(self._tree(tensors), x, **kwargs)

        if self.degree == 0:
            return f0(*theta0)
        if self.degree == 1:
            out, tangent = jvp(f0, theta0, delta)
            return _tree_add(out, tangent)

        def along_line(t: torch.Tensor) -> PyTree:
            return f0(*(t0 + t * d for t0, d in zip(theta0, delta)))

        derivatives = [along_line]
        for _ in range(self.degree):
            prev = derivatives[-1]
            derivatives.append(lambda t, prev=prev: jvp(prev, (t,), (torch.ones_like(t),))[1])
        t0 = torch.zeros((), dtype=theta0[0].dtype, device=theta0[0].device)
        total = None
        for k, dk in enumerate(derivatives):
            term = _tree_scale(dk(t0), 1.0 / math.factorial(k))
            total = term if total is None else _tree_add(total, term)
        return total

    def forward(self, *args: PyTree, **kwargs: Any) -> PyTree:
        """``model(x)``: the expansion at the module's own parameters ``θ``; ``model(params, x)``:
        at ``params`` (neural-tangents' ``f_lin(params, x)``, as :meth:`apply_fn`)."""
        if len(args) == 1:
            return self.expand(tuple(self.params), args[0], **kwargs)
        if len(args) == 2:
            return self.apply_fn(args[0], args[1], **kwargs)
        raise TypeError(
            f"{type(self).__name__}: call model(x) (at its own parameters) or model(params, x) "
            f"(neural-tangents' f_lin(params, x)); got {len(args)} positional arguments."
        )

    def apply_fn(self, params: PyTree, x: PyTree, **kwargs: Any) -> PyTree:
        """The expansion at ``params`` (a tree shaped like ``θ0``; a name->tensor dict for modules)."""
        return self.expand(self._flat(params), x, **kwargs)


def _tree_add(a: PyTree, b: PyTree) -> PyTree:
    la, spec = tree_flatten(a)
    lb, _ = tree_flatten(b)
    return tree_unflatten([x + y for x, y in zip(la, lb)], spec)


def _tree_scale(a: PyTree, c: float) -> PyTree:
    la, spec = tree_flatten(a)
    return tree_unflatten([x * c for x in la], spec)


def linearize(f: Callable | nn.Module, params: PyTree | None = None, *,
              parameters: Parameters = "trainable") -> TaylorExpandedModel:
    """The first-order Taylor expansion of ``f`` in its parameters around ``params`` (``θ0``).

    ``f_lin(θ, x) = f(θ0, x) + J(θ0, x)(θ − θ0)``, by one forward-mode product per call;
    for ``x`` of shape ``(N, ...)`` the output has the shape of ``f(x)``, e.g. ``(N, O)``.

    Args:
        f: an ``nn.Module`` or a function ``f(params, x, **kwargs)``.
        params: ``θ0``: for a function, a tree of tensors (None leaves allowed); for a module,
            None (the parameters ``parameters`` selects, at their current values) or a dict of
            some of them (it is linearized in those only).
        parameters: for a module, which parameters are expanded (the others stay fixed):
            ``"trainable"`` (default: those with ``requires_grad=True``), ``"all"``, a name
            filter ``name -> bool``, a list of names, or a dict ``name -> tensor``.

    Returns:
        A :class:`TaylorExpandedModel`: ``model(x)`` evaluates at its trainable parameters
        (initially ``θ0``, so ``model(x) == f(x)``); ``model(params, x)`` (or
        ``model.apply_fn(params, x)``) at others, like neural-tangents' ``f_lin(params, x)``.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
        >>> lin = linearize(net)
        >>> x = torch.randn(8, 3)
        >>> torch.allclose(lin(x), net(x))
        True
        >>> opt = torch.optim.SGD(lin.parameters(), lr=0.1)  # train it like any module
    """
    return TaylorExpandedModel(f, params, 1, "linearize", parameters)


def taylor_expand(f: Callable | nn.Module, params: PyTree | None, degree: int, *,
                  parameters: Parameters = "trainable") -> TaylorExpandedModel:
    """The Taylor expansion of ``f`` in its parameters around ``params`` to order ``degree``.

    ``f_tayl(θ, x) = Σ_{k≤degree} (1/k!) ∂_t^k f(θ0 + t(θ − θ0), x)|_{t=0}``, by nested
    forward-mode products along the line from ``θ0`` to ``θ`` (degree 0 is ``f(θ0)``,
    degree 1 is :func:`linearize`): ``degree`` forward-mode passes per call.

    Args:
        f: an ``nn.Module`` or a function ``f(params, x, **kwargs)``.
        params: ``θ0``, as in :func:`linearize` (None for a module: its selected parameters).
        degree: the order of the expansion, an int ``>= 0``.
        parameters: for a module, which parameters are expanded (see :func:`linearize`).

    Returns:
        A :class:`TaylorExpandedModel` (an ``nn.Module``): ``model(x)`` at its trainable
        parameters ``θ`` (initially ``θ0``), ``model(params, x)`` at ``params``; outputs shaped
        like ``f(x)``, e.g. ``(N, O)`` for ``x`` of shape ``(N, ...)``.

    Example:
        >>> f = lambda p, x: torch.sin(x @ p)
        >>> f2 = taylor_expand(f, torch.randn(3, 2), degree=2)
        >>> f2(torch.randn(4, 3)).shape
        torch.Size([4, 2])
    """
    return TaylorExpandedModel(f, params, degree, "taylor_expand", parameters)
