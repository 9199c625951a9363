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

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import nn
from torch.func import functional_call
from .._torch_private import BATCH_NORMS, DROPOUTS, tree_flatten, tree_unflatten

PyTree = Any


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


#: What ``parameters=`` may be (see :func:`select_parameters`).
Parameters = Union[str, Callable[[str], bool], Iterable[str], Mapping[str, torch.Tensor]]

_PARAMETERS_HELP = ('"trainable" (those with requires_grad=True, the default), "all", a name filter '
                    '(a function name -> bool), a list of names, or a dict name -> tensor')


def select_parameters(module: nn.Module, parameters: Parameters, caller: str) -> dict[str, torch.Tensor]:
    """The parameters of ``module`` to differentiate, by name (detached).

    ``parameters`` is ``"trainable"`` (those with ``requires_grad=True``: what an optimizer
    trains, so frozen layers are constants, as in fine-tuning), ``"all"``, a name filter
    ``name -> bool``, an iterable of names, or a dict ``name -> tensor`` of values to
    differentiate at (the others keep the module's values).
    """
    named = dict(module.named_parameters())
    kind = type(module).__name__
    if isinstance(parameters, str):
        if parameters == "trainable":
            chosen = {k: v for k, v in named.items() if v.requires_grad}
            if not chosen and named:
                raise ValueError(
                    f"{caller}: all {len(named)} parameters of {kind} are frozen (requires_grad=False), and "
                    "parameters='trainable' (the default) differentiates only the others; pass "
                    "parameters='all' to differentiate them all, or unfreeze some."
                )
        elif parameters == "all":
            chosen = named
        else:
            raise ValueError(f"{caller}: parameters={parameters!r} is not a choice; pass {_PARAMETERS_HELP}.")
    elif isinstance(parameters, Mapping):
        unknown = sorted(set(parameters) - set(named))
        if unknown:
            raise ValueError(
                f"{caller}: parameters names {unknown} are not parameters of {kind}; known names: {sorted(named)}."
            )
        bad = sorted(k for k, v in parameters.items() if not isinstance(v, torch.Tensor))
        if bad:
            raise TypeError(f"{caller}: parameters must map names to tensors; {bad} are not tensors.")
        chosen = dict(parameters)
    elif callable(parameters):
        chosen = {k: v for k, v in named.items() if parameters(k)}
    elif isinstance(parameters, Iterable):
        names = list(parameters)
        unknown = sorted(set(names) - set(named))
        if unknown or not all(isinstance(n, str) for n in names):
            raise ValueError(
                f"{caller}: parameters names {unknown or names} are not parameters of {kind}; known names: "
                f"{sorted(named)}."
            )
        chosen = {k: named[k] for k in names}
    else:
        raise TypeError(f"{caller}: parameters must be {_PARAMETERS_HELP}; got {type(parameters).__name__}.")
    if not chosen:
        raise ValueError(
            f"{caller}: parameters={parameters!r} selects no parameter of {kind}; known names: {sorted(named)}."
        )
    return {k: v.detach() for k, v in chosen.items()}


def _batch_statistics_free(module: nn.Module) -> dict[str, None]:
    """Buffer overrides that keep a BatchNorm in training mode from updating its running
    statistics (a side effect no kernel should have, and an in-place update that torch.func
    refuses): running mean, variance and count given as None, the batch statistics used."""
    out: dict[str, None] = {}
    for name, m in module.named_modules():
        if isinstance(m, BATCH_NORMS) and m.training and m.track_running_stats:
            prefix = f"{name}." if name else ""
            for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                if getattr(m, buffer, None) is not None:
                    out[prefix + buffer] = None
    return out


def check_module(module: nn.Module, independent: bool, caller: str) -> None:
    """Refuses modules whose training-mode layers would make the kernel wrong: dropout (a
    random function: every pass another mask) and, with ``vmap_axes``, BatchNorm (examples
    normalised together are not independent)."""
    for name, m in module.named_modules():
        label = f"{type(m).__name__} {name!r}" if name else type(m).__name__
        dropout = isinstance(m, DROPOUTS) and m.p > 0
        dropout = dropout or (isinstance(m, nn.MultiheadAttention) and m.dropout > 0)
        if m.training and dropout:
            raise ValueError(
                f"{caller}: {label} is in training mode with dropout: every forward pass draws another "
                "mask, so the derivatives of different passes would not belong to one function. Call "
                "module.eval() (dropout off, the network as it predicts) before computing the kernel."
            )
        uses_batch = isinstance(m, BATCH_NORMS) and (m.training or not m.track_running_stats)
        if independent and uses_batch:
            raise ValueError(
                f"{caller}: {label} is in training mode: it normalises every example by statistics of "
                "the whole batch, so the examples are not independent and vmap_axes does not apply. "
                "Call module.eval() (its running statistics: the network as it predicts), or pass "
                "vmap_axes=None for the kernel of the batch-normalised network as it trains."
            )


def module_apply_fn(module: nn.Module, params: PyTree | None, parameters: Parameters = "trainable",
                    caller: str = "empirical_ntk_fn") -> tuple[Callable, PyTree]:
    """``apply(params, x, **kw)`` running ``module`` with ``params`` swapped in, and the params.

    ``params`` defaults to the parameters ``parameters`` selects (:func:`select_parameters`);
    a dict naming some parameters differentiates exactly those (the others stay fixed).
    Buffers are the module's own, so a BatchNorm in eval mode uses its running statistics;
    one in training mode uses the batch's statistics and leaves its running ones untouched.
    """
    own = {k: v.detach() for k, v in module.named_parameters()}
    buffers = {**dict(module.named_buffers()), **_batch_statistics_free(module)}
    if params is None:
        params = select_parameters(module, parameters, caller)
    elif not isinstance(params, dict):
        raise TypeError(
            f"{caller}: params for an nn.Module must be a dict name -> tensor like "
            f"dict(module.named_parameters()), got {type(params).__name__}."
        )
    else:
        unknown = sorted(set(params) - set(own))
        if unknown:
            raise ValueError(
                f"{caller}: params names {unknown} are not parameters of {type(module).__name__}; "
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
    def to_batch_first(self, x: PyTree, kwargs: dict[str, Any], name: str = "x1", caller: str = "empirical_ntk_fn"
                       ) -> tuple[PyTree, dict[str, Any], int]:
        """Moves the example axes of ``x`` (and batched kwargs) to 0; returns the batch size.

        Raises:
            ValueError: an axis of ``vmap_axes`` is out of range for its input, or the batched
                inputs disagree on the number of examples.
        """
        check_finite(x, name, caller)
        if not self.independent:
            return x, kwargs, 1
        leaves, spec = tree_flatten(x)
        axes = _broadcast_axes(self.in_axes, x, "in_axes")
        moved, sizes = [], set()

        def move(t: torch.Tensor, ax: int, what: str) -> torch.Tensor:
            if not -t.ndim <= ax < t.ndim:
                raise ValueError(
                    f"{caller}: vmap_axes gives {what} the example axis {ax}, out of range for its shape "
                    f"{tuple(t.shape)}; name the axis that holds the examples (0 for (N, ...) inputs)."
                )
            return t.movedim(ax, 0)

        for leaf, ax in zip(leaves, axes):
            if _is_tensor(leaf) and ax is not None:
                leaf = move(leaf, ax, name)
                sizes.add(leaf.shape[0])
            moved.append(leaf)
        kw = dict(kwargs)
        for k, ax in self.kwargs_axes.items():
            if k in kw and _is_tensor(kw[k]):
                kw[k] = move(kw[k], ax, f"the keyword argument {k!r}")
                sizes.add(kw[k].shape[0])
        if len(sizes) != 1:
            raise ValueError(
                f"{caller}: vmap_axes: the batched inputs of {name} must share one number of examples along "
                f"in_axes, got {sorted(sizes) or 'no batched tensor'}."
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
        for leaf, a in zip(leaves, axes):
            if not _is_tensor(leaf) or not -leaf.ndim <= a < leaf.ndim:
                shape = tuple(leaf.shape) if _is_tensor(leaf) else type(leaf).__name__
                raise ValueError(
                    f"vmap_axes: out_axes={a} is out of range for an output of f of shape {shape}; name the "
                    "axis of f's output that holds the examples."
                )
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


def check_finite(x: PyTree, name: str, caller: str) -> None:
    """Refuses inputs with NaN or inf entries (their kernel entries would be NaN)."""
    for leaf in tree_flatten(x)[0]:
        if _is_tensor(leaf) and leaf.device.type == "meta":
            raise ValueError(f"{caller}: {name} is on the meta device (shapes without data); pass real tensors.")
        if _is_tensor(leaf) and leaf.is_floating_point() and leaf.numel() and not bool(torch.isfinite(leaf).all()):
            raise ValueError(
                f"{caller}: {name} has NaN or inf entries (shape {tuple(leaf.shape)}); their kernel entries "
                "would be NaN. Remove or impute them first."
            )


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


def make_problem(f: Callable | nn.Module, params: PyTree | None, vmap_axes: Any, caller: str,
                 parameters: Parameters = "trainable") -> Problem:
    """Validates ``f``, ``params``, ``parameters`` and ``vmap_axes`` and builds the :class:`Problem`."""
    independent = vmap_axes is not None
    if isinstance(f, nn.Module):
        check_module(f, independent, caller)
        apply, params = module_apply_fn(f, params, parameters, caller)
    elif callable(f):
        if not (isinstance(parameters, str) and parameters in ("trainable", "all")):
            raise ValueError(
                f"{caller}: parameters={parameters!r} selects parameters of an nn.Module by name; for a "
                "function f(params, x) every tensor of params is differentiated: pass only those as params "
                "(and close over the others)."
            )
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
    floating = [leaves[i] for i in tensor_idx if leaves[i].is_floating_point()]
    if len(floating) != len(tensor_idx):
        raise TypeError(
            f"{caller}: parameters must be floating-point tensors to be differentiated; got dtypes "
            f"{sorted({str(leaves[i].dtype) for i in tensor_idx})}."
        )
    if len({(t.dtype, t.device) for t in floating}) > 1:
        raise ValueError(
            f"{caller}: the parameters mix dtypes or devices "
            f"({sorted({f'{t.dtype} on {t.device}' for t in floating})}); cast them to one (module.to(...))."
        )
    with torch.no_grad():
        bad = [t for t in floating if not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"{caller}: {len(bad)} parameter tensor(s) have NaN or inf entries: the kernel would be NaN.")
    if vmap_axes is None:
        return Problem(apply, leaves, spec, tensor_idx, independent=False)
    if isinstance(vmap_axes, int) and not isinstance(vmap_axes, bool):
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
