"""Turning ``f`` (an ``nn.Module`` or a function ``f(params, x)``) into a flat, batch-first function.

Every implementation works on a :class:`Problem`: a function ``per_batch(tensors, xb, kw)``
of the flat tuple of differentiable parameter tensors (the tensor leaves of ``params``; None
and other non-tensor leaves stay constant) and a batch of inputs ``xb`` whose example axis
is 0, returning the list of output leaves with their example axis at 0.

Without ``vmap_axes`` nothing is assumed about the batch: the whole batch is one "example"
(the example axis is a dummy axis of size 1 added in front), so the kernels are exact for
any ``f`` (BatchNorm in training mode, attention across the batch, ...). With ``vmap_axes``
the batch elements are declared independent and per-example quantities are computed by
``torch.func.vmap`` over single examples, as in neural-tangents.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from .._torch_private import tree_flatten, tree_unflatten

PyTree = Any


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def module_apply_fn(module: nn.Module, params: PyTree | None) -> tuple[Callable, PyTree]:
    """``apply(params, x, **kw)`` running ``module`` with ``params`` swapped in, and the params.

    ``params`` defaults to the module's own parameters (detached); a dict naming a subset of
    them differentiates only those (the others stay fixed). Buffers are the module's own, so
    a BatchNorm in eval mode uses its running statistics.
    """
    own = {k: v.detach() for k, v in module.named_parameters()}
    buffers = dict(module.named_buffers())
    if params is None:
        params = own
    elif not isinstance(params, dict):
        raise TypeError(
            f"params for an nn.Module must be a dict name -> tensor like "
            f"dict(module.named_parameters()), got {type(params).__name__}."
        )
    else:
        unknown = sorted(set(params) - set(own))
        if unknown:
            raise ValueError(
                f"params names {unknown} are not parameters of {type(module).__name__}; "
                f"known names: {sorted(own)}."
            )

    def apply(p: dict[str, torch.Tensor], x: PyTree, **kwargs: Any) -> PyTree:
        state = {**own, **buffers, **p}
        return functional_call(module, state, (x,), kwargs)

    return apply, params


@dataclass
class Problem:
    """A flat, batch-first view of ``f`` at fixed parameters (see the module docstring)."""

    apply: Callable  # apply(params, x, **kw) -> output pytree, user layout
    leaves: list[Any]
    spec: Any
    tensor_idx: list[int]
    independent: bool
    in_axes: Any = 0
    out_axes: Any = 0
    kwargs_axes: dict[str, int] = field(default_factory=dict)
    out_spec: Any = None  # tree structure of the outputs, set by per_batch
    out_batch_axes: list[int | None] | None = None  # the output leaves' example axes

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.leaves[i] for i in self.tensor_idx)

    def params_from(self, tensors: tuple[torch.Tensor, ...]) -> PyTree:
        leaves = list(self.leaves)
        for i, t in zip(self.tensor_idx, tensors):
            leaves[i] = t
        return tree_unflatten(leaves, self.spec)

    # ------------------------------------------------------------ batch handling
    def to_batch_first(self, x: PyTree, kwargs: dict[str, Any]) -> tuple[PyTree, dict[str, Any], int]:
        """Moves the example axes of ``x`` (and batched kwargs) to 0; returns the batch size."""
        if not self.independent:
            return x, kwargs, 1
        leaves, spec = tree_flatten(x)
        axes = _broadcast_axes(self.in_axes, x, "in_axes")
        moved, sizes = [], set()
        for leaf, ax in zip(leaves, axes):
            if _is_tensor(leaf) and ax is not None:
                leaf = leaf.movedim(ax, 0)
                sizes.add(leaf.shape[0])
            moved.append(leaf)
        kw = dict(kwargs)
        for k, ax in self.kwargs_axes.items():
            if k in kw and _is_tensor(kw[k]):
                kw[k] = kw[k].movedim(ax, 0)
                sizes.add(kw[k].shape[0])
        if len(sizes) != 1:
            raise ValueError(
                f"vmap_axes: the batched inputs must share one batch size along in_axes, got "
                f"sizes {sorted(sizes)}."
            )
        return tree_unflatten(moved, spec), kw, sizes.pop()

    def per_batch(self, tensors: tuple[torch.Tensor, ...], xb: PyTree, kw: dict[str, Any]) -> list[torch.Tensor]:
        """Output leaves, example axis first, of ``f`` on a batch ``xb`` (example axis first)."""
        if not self.independent:
            out = self.apply(self.params_from(tensors), xb, **kw)
            leaves, self.out_spec = tree_flatten(out)
            self.out_batch_axes = [None] * len(leaves)
            return [leaf.unsqueeze(0) for leaf in leaves]
        x = _move_back(xb, _broadcast_axes(self.in_axes, xb, "in_axes"))
        kw = {k: (v.movedim(0, self.kwargs_axes[k]) if k in self.kwargs_axes and _is_tensor(v) else v)
              for k, v in kw.items()}
        out = self.apply(self.params_from(tensors), x, **kw)
        leaves, self.out_spec = tree_flatten(out)
        axes = _broadcast_axes(self.out_axes, out, "out_axes")
        self.out_batch_axes = [a % leaf.ndim for leaf, a in zip(leaves, axes)]
        return [leaf.movedim(ax, 0) for leaf, ax in zip(leaves, axes)]

    def per_example(self, tensors: tuple[torch.Tensor, ...], xe: PyTree, kw: dict[str, Any]) -> list[torch.Tensor]:
        """Output leaves (without example axis) of one example ``xe`` (without example axis).

        With independent batch elements, ``f`` sees a batch of one; otherwise ``xe`` is the
        whole batch and this is ``f`` itself.
        """
        if not self.independent:
            leaves, _ = tree_flatten(self.apply(self.params_from(tensors), xe, **kw))
            return leaves
        xb = _map_tensors(lambda t: t.unsqueeze(0), xe)
        kwb = {k: (v.unsqueeze(0) if k in self.kwargs_axes and _is_tensor(v) else v) for k, v in kw.items()}
        return [leaf.squeeze(0) for leaf in self.per_batch(tensors, xb, kwb)]

    def kw_in_dims(self, kw: dict[str, Any]) -> dict[str, int | None]:
        """``vmap`` in_dims for batch-first kwargs."""
        return {k: (0 if (self.independent and k in self.kwargs_axes and _is_tensor(v)) else None)
                for k, v in kw.items()}

    def batch_size(self, xb: PyTree, kw: dict[str, Any]) -> int:
        """Examples in a batch-first batch (1 without ``vmap_axes``: the batch is one example)."""
        if not self.independent:
            return 1
        for leaf, ax in zip(tree_flatten(xb)[0], _broadcast_axes(self.in_axes, xb, "in_axes")):
            if _is_tensor(leaf) and ax is not None:
                return leaf.shape[0]
        return next((kw[k].shape[0] for k in self.kwargs_axes if _is_tensor(kw.get(k))), 1)

    def signature(self, tensors: tuple[torch.Tensor, ...], xb: PyTree, kw: dict[str, Any]) -> tuple:
        """What the layers ``f`` calls and the shapes it makes depend on: the parameters' and
        the (per-example) inputs' shapes, dtypes and devices, and the other arguments.

        Results derived from one forward pass (recorded layer calls, output shapes, sizes)
        are reused for calls of the same signature: a network whose calls or shapes depend
        on the values of its inputs is not supported by those reuses.
        """

        def sig(t: Any) -> Any:
            if isinstance(t, torch.Tensor):
                shape = tuple(t.shape[1:]) if self.independent else tuple(t.shape)
                return (shape, t.dtype, t.device)
            return repr(t)

        leaves = tree_flatten((xb, kw))[0]
        return (self.independent, tuple(sig(t) for t in tensors), tuple(sig(leaf) for leaf in leaves))

    def slice(self, xb: PyTree, kw: dict[str, Any], start: int, stop: int) -> tuple[PyTree, dict[str, Any]]:
        """Examples ``start:stop`` of a batch-first batch (kwargs with batch axes sliced too)."""
        xs = _map_tensors(lambda t: t[start:stop], xb)
        ks = {k: (v[start:stop] if k in self.kwargs_axes and _is_tensor(v) else v) for k, v in kw.items()}
        return xs, ks


    def first_outputs(self, tensors: tuple[torch.Tensor, ...], xb: PyTree, kw: dict[str, Any]) -> list[torch.Tensor]:
        """Output leaves (example axis first) of ``f`` on the first example of ``xb`` (the
        whole batch without ``vmap_axes``), without gradients: where shapes and sizes are read."""
        with torch.no_grad():
            if self.independent:
                xb, kw = self.slice(xb, kw, 0, 1)
            return self.per_batch(tensors, xb, kw)

    def take(self, xb: PyTree, kw: dict[str, Any], indices: list[int]) -> tuple[PyTree, dict[str, Any]]:
        """The examples ``indices`` of a batch-first batch, in that order (kwargs too)."""
        where = torch.as_tensor(indices)
        xs = _map_tensors(lambda t: t[where.to(t.device)], xb)
        ks = {k: (v[where.to(v.device)] if k in self.kwargs_axes and _is_tensor(v) else v) for k, v in kw.items()}
        return xs, ks


def _map_tensors(fn: Callable, tree: PyTree) -> PyTree:
    leaves, spec = tree_flatten(tree)
    return tree_unflatten([fn(l) if _is_tensor(l) else l for l in leaves], spec)


def _broadcast_axes(axes: Any, tree: PyTree, name: str) -> list[int | None]:
    leaves, spec = tree_flatten(tree)
    if axes is None or isinstance(axes, int):
        return [axes] * len(leaves)
    ax_leaves, ax_spec = tree_flatten(axes)
    if len(ax_leaves) != len(leaves):
        raise ValueError(
            f"vmap_axes: {name}={axes!r} does not match the structure of the tree it applies to "
            f"({len(leaves)} leaves); pass one int or a tree of ints with the same structure."
        )
    return ax_leaves


def _move_back(xb: PyTree, axes: list[int | None]) -> PyTree:
    leaves, spec = tree_flatten(xb)
    out = [l.movedim(0, a) if (_is_tensor(l) and a is not None) else l for l, a in zip(leaves, axes)]
    return tree_unflatten(out, spec)


def make_problem(f: Callable | nn.Module, params: PyTree | None, vmap_axes: Any, caller: str) -> Problem:
    """Validates ``f``, ``params`` and ``vmap_axes`` and builds the :class:`Problem`."""
    if isinstance(f, nn.Module):
        apply, params = module_apply_fn(f, params)
    elif callable(f):
        if params is None:
            raise ValueError(
                f"{caller}: params is required when f is a function f(params, x); pass "
                "params=... (or pass an nn.Module, whose own parameters are the default)."
            )
        apply = f
    else:
        raise TypeError(f"{caller}: f must be an nn.Module or a callable f(params, x), got {type(f).__name__}.")
    leaves, spec = tree_flatten(params)
    tensor_idx = [i for i, l in enumerate(leaves) if _is_tensor(l)]
    if not tensor_idx:
        raise ValueError(f"{caller}: params has no tensor leaves to differentiate, got {params!r}.")
    if vmap_axes is None:
        return Problem(apply, leaves, spec, tensor_idx, independent=False)
    if isinstance(vmap_axes, int):
        in_axes, out_axes, kwargs_axes = vmap_axes, vmap_axes, {}
    elif isinstance(vmap_axes, (tuple, list)) and len(vmap_axes) == 3:
        in_axes, out_axes, kwargs_axes = vmap_axes
        kwargs_axes = dict(kwargs_axes or {})
    else:
        raise ValueError(
            f"{caller}: vmap_axes must be None, an int, or a triple (in_axes, out_axes, kwargs_axes), "
            f"got {vmap_axes!r}."
        )
    if in_axes is None or out_axes is None:
        raise ValueError(f"{caller}: vmap_axes needs in_axes and out_axes that are not None, got {vmap_axes!r}.")
    return Problem(apply, leaves, spec, tensor_idx, True, in_axes, out_axes, kwargs_axes)


def split_kwargs(kwargs: dict[str, Any], x2_given: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """neural-tangents' rule: a kwarg that is a pair ``(v1, v2)`` goes to f(x1) and f(x2)."""
    kw1, kw2 = {}, {}
    for k, v in kwargs.items():
        if isinstance(v, tuple) and len(v) == 2:
            kw1[k], kw2[k] = v
        else:
            kw1[k] = kw2[k] = v
    return kw1, kw2
