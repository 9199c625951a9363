"""`from_torch`: the entry point (validation, tracing, layout of the input, the walk)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ._build import Builder
from ._functions import FUNCTION_HANDLERS, METHOD_HANDLERS, function_fallback
from ._modules import MODULE_HANDLERS
from ._network import LiftedNetwork
from ._trace import LiftError, Traced, trace
from ._unsupported import MODULES, TRANSFORMERS, transformer

_PARAMETERIZATIONS = ("standard", "ntk")


def module_fallback(b: Builder, node: fx.Node, module: nn.Module, args: tuple, kwargs: dict) -> Any:
    """Modules without a handler of their own type: a handler of a base class, or a clear error."""
    kind = type(module)
    if kind in MODULES:
        why, alternative = MODULES[kind]
        raise b.unsupported(why, alternative)
    if isinstance(module, TRANSFORMERS):
        raise b.unsupported(*transformer(kind.__name__))
    for base in kind.__mro__[1:]:
        if base in MODULE_HANDLERS:
            return MODULE_HANDLERS[base](b, node, module, args, kwargs)
    raise b.unsupported(
        f"from_torch knows no infinite-width kernel for {kind.__module__}.{kind.__name__}.",
        "see tangents.from_torch's docstring for the supported modules; write the module's forward with "
        "supported torch operations (from_torch traces through your own modules).",
    )


_CHANNELS_FIRST = (
    nn.modules.conv._ConvNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd, nn.modules.batchnorm._BatchNorm,
)
_CHANNELS_LAST = (nn.Linear, nn.LayerNorm, nn.MultiheadAttention, nn.TransformerEncoderLayer)
_FIRST_FUNCTIONS = {F.conv1d, F.conv2d, F.conv3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
                    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d}
_LAST_FUNCTIONS = {F.linear, F.layer_norm}


def _demand(node: fx.Node, traced: Traced, ndim: int) -> int | None:
    """The input axis ``node`` treats as channels, if it says."""
    if node.op == "call_module":
        module = traced.module.get_submodule(str(node.target))
        if isinstance(module, _CHANNELS_FIRST):
            return 1
        if isinstance(module, _CHANNELS_LAST):
            return ndim - 1
    if node.op == "call_function":
        if node.target in _FIRST_FUNCTIONS:
            return 1
        if node.target in _LAST_FUNCTIONS:
            return ndim - 1
    return None


def input_channel_axis(traced: Traced, ndim: int) -> int:
    """The channel axis of the model's input: where the first layer that cares puts it.

    Followed through elementwise ops and permutations (``x.transpose(1, 2)`` before a
    ``Conv1d`` makes the input channels-last); default axis 1 (channels-first).
    """
    start = next(iter(traced.graph.nodes))
    frontier = [(start, list(range(ndim)))]
    seen = {start.name}
    while frontier:
        node, axes = frontier.pop(0)
        for user in node.users:
            demanded = _demand(user, traced, len(axes))
            if demanded is not None:
                return axes[demanded]
            if user.name in seen:
                continue
            seen.add(user.name)
            value = traced.values.get(user.name)
            if not isinstance(value, torch.Tensor) or value.ndim != len(axes):
                continue
            if user.op == "call_method" and user.target in ("permute", "transpose") or user.op == "call_function" \
                    and user.target in (torch.permute, torch.transpose):
                perm = _permutation(user, traced, len(axes))
                if perm is None:
                    continue
                frontier.append((user, [axes[p] for p in perm]))
            elif user.op in ("call_method", "call_function", "call_module"):
                if user.op == "call_method" and user.target in ("view", "reshape", "flatten"):
                    continue
                frontier.append((user, axes))
    return 1 if ndim > 1 else 0


def _permutation(node: fx.Node, traced: Traced, ndim: int) -> list[int] | None:
    def static(a: Any) -> Any:
        return traced.values.get(a.name) if isinstance(a, fx.Node) else a

    args = [static(a) for a in node.args[1:]]
    name = node.target if isinstance(node.target, str) else node.target.__name__
    if name == "transpose" and len(args) >= 2:
        perm = list(range(ndim))
        d0, d1 = int(args[0]) % ndim, int(args[1]) % ndim
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return perm
    if name == "permute" and args:
        dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        return [int(d) % ndim for d in dims]
    return None


def from_torch(
    model: nn.Module,
    example_input: torch.Tensor,
    parameterization: str = "standard",
    *,
    stds: Mapping[str, Mapping[str, float | None]] | None = None,
) -> LiftedNetwork:
    r"""The infinite-width network of a ``torch.nn`` model, as a stax layer.

    Traces ``model.forward`` with torch.fx and maps every module, function and operator onto
    stax layers, so that ``kernel_fn`` is the NNGP / NTK of the model's architecture as every
    width (channels, features, heads' dimension) goes to infinity. See ``tangents.lift`` for
    what is supported, the conventions, and the errors.

    Args:
        model: the torch model (its mode matters: ``model.eval()`` makes Dropout the
            identity; BatchNorm is only lifted in eval mode).
        example_input: a batch of inputs the model accepts, ``(N, ...)`` (e.g. ``(2, 3, 32,
            32)``): it fixes the shapes and the input layout. Images are channels-first
            ``(N, C, H, W)``, as torch's; sequences for attention ``(N, L, C)``.
        parameterization: ``"standard"`` (the model as torch initialises it: ``z = W x + b``
            with the W_std, b_std read from its tensors; the NTK grows with the width) or
            ``"ntk"`` (the same graph and W_std, b_std in NTK parameterization,
            ``z = W_std/√n · W x + b_std · b`` with W, b ~ N(0, 1): the same NNGP, an NTK that
            stays O(1)).
        stds: exact values for chosen affine layers, by module path, e.g.
            ``{"fc1": {"W_std": 1.0, "b_std": 0.0}}`` (otherwise read from the tensors).

    Returns:
        A `LiftedNetwork` (a `tangents.stax.Layer`): ``init_fn, apply_fn, kernel_fn =
        lifted``, ``lifted.kernel_fn(x1, x2, "ntk")``, ``lifted.to_module(input_shape)``;
        ``print(lifted)`` lists its layers, where each came from and the W_std/b_std read.

    Raises:
        LiftError: (a ValueError) an op with no infinite-width kernel here, naming it, its
            module path and source line, why, and the nearest supported alternative.
        TypeError: ``model`` is not an ``nn.Module`` or ``example_input`` not a tensor.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
        >>> lifted = tangents.from_torch(model, torch.randn(2, 4))
        >>> lifted.kernel_fn(torch.randn(3, 4), None, "ntk").shape
        torch.Size([3, 3])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"from_torch: model must be a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(
            f"from_torch: example_input must be a torch.Tensor batch the model accepts, e.g. torch.randn(2, 3, 32, 32), "
            f"got {type(example_input).__name__}."
        )
    if example_input.ndim < 2 or example_input.shape[0] < 1 or 0 in example_input.shape:
        raise ValueError(
            f"from_torch: example_input must be a non-empty batch (N, ...) with a feature axis, e.g. (2, 784) or "
            f"(2, 3, 32, 32), got shape {tuple(example_input.shape)}. Add the batch axis: x.unsqueeze(0)."
        )
    if not example_input.is_floating_point():
        raise TypeError(f"from_torch: example_input must be floating point, got {example_input.dtype}.")
    if not bool(torch.isfinite(example_input).all()):
        raise ValueError("from_torch: example_input has NaN or infinite entries; pass finite inputs.")
    if not isinstance(parameterization, str) or parameterization.lower() not in _PARAMETERIZATIONS:
        raise ValueError(
            f"from_torch: parameterization must be 'standard' (the model as torch initialises it) or 'ntk', got "
            f"{parameterization!r}."
        )
    if stds is not None and not isinstance(stds, Mapping):
        raise TypeError(f"from_torch: stds must be a mapping {{module path: {{'W_std': ..., 'b_std': ...}}}}, got "
                        f"{type(stds).__name__}.")
    for key, value in (stds or {}).items():
        if not isinstance(value, Mapping):
            raise TypeError(f"from_torch: stds[{key!r}] must be a mapping like {{'W_std': 1.0, 'b_std': 0.1}}, got "
                            f"{type(value).__name__}.")
    traced = trace(model, (example_input,))
    channel = input_channel_axis(traced, example_input.ndim)
    builder = Builder(traced, model, parameterization.lower(), stds, channel)
    lifted = builder.run(MODULE_HANDLERS, FUNCTION_HANDLERS, METHOD_HANDLERS, module_fallback, function_fallback)
    _check_shapes(lifted, traced, example_input)
    return lifted


def _check_shapes(lifted: LiftedNetwork, traced: Traced, example_input: torch.Tensor) -> None:
    """The lifted network's output shape must be the model's (a check on the lift itself)."""
    output = [n for n in traced.graph.nodes if n.op == "output"][0]
    expected = traced.values.get(output.args[0].name) if isinstance(output.args[0], fx.Node) else None
    got = lifted.output_shape(tuple(example_input.shape))
    if isinstance(expected, torch.Tensor) and tuple(expected.shape) != tuple(got):
        raise LiftError(
            f"from_torch: the lifted network's output shape {tuple(got)} differs from the model's "
            f"{tuple(expected.shape)}; this is a bug in from_torch, please report the model.\n{lifted!r}"
        )
