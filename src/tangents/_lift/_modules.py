r"""``torch.nn`` modules as stax layers.

Affine layers read ``W_std``/``b_std`` from their tensors (`_stds`); torch's default
initialisation of ``nn.Linear`` and ``nn.Conv*`` is ``kaiming_uniform_(a=√5)`` for the
weight, U(−1/√fan_in, 1/√fan_in) with Var = 1/(3 fan_in), so W_std = √(fan_in · Var) = 1/√3,
and the same U(−1/√fan_in, 1/√fan_in) for the bias, so b_std = 1/√(3 fan_in).

``nn.ConvTranspose*`` weights are ``(in, out/groups, *k)``, and torch computes their
"fan_in" from the second axis: Var(W) = 1/(3 · out/groups · |k|). The kernel's fan-in is
the number of inputs each output sums over, in/groups · |k| (stax's ``ConvTranspose``
normalisation), so the default is W_std = √(in / (3 out)) (one group).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .. import stax
from . import _activations as act
from ._build import Builder
from ._layers import ChannelAffine, Scale
from ._values import Value

# ---------------------------------------------------------------------- helpers


def _single(args: tuple, kwargs: dict, name: str = "input") -> Any:
    if args:
        return args[0]
    if name in kwargs:
        return kwargs[name]
    return next(iter(kwargs.values()))


def _default_var(fan_in: int) -> float:
    """Var of torch's default U(−1/√fan_in, 1/√fan_in) (weights via kaiming_uniform_(a=√5), biases)."""
    return 1.0 / (3.0 * fan_in)


def dense(b: Builder, x: Value, out_features: int, weight: torch.Tensor, bias: torch.Tensor | None,
          default: bool, path: str | None = None) -> Value:
    """``x @ weightᵀ + bias`` on the last axis (``nn.Linear``, ``F.linear``)."""
    x = b.tensor(x)
    if x.flat:
        x = b.materialize(x)
    b.single_channel(x, "a Linear layer")
    if x.channel_axis != x.ndim - 1:
        raise b.fail(
            f"acts on the last axis of a {x.ndim}-D tensor {x.shape} whose channels are on axis {x.channel_axis} "
            f"(the output of {x.made_by}).",
            "Flatten first (x.flatten(1)), pool (x.mean((2, 3))), or move the channels last (x.transpose(1, -1)).",
        )
    fan_in = weight.shape[1]
    var = _default_var(fan_in) if default else None
    W_std, b_std, notes = b.affine_stds(weight, bias, fan_in, var, var, path)
    layer = stax.Dense(out_features, W_std=W_std, b_std=b_std, batch_axis=0, channel_axis=x.channel_axis,
                       parameterization=b.parameterization)
    shape = x.shape[:-1] + (out_features,)
    return b.add(layer, [x], shape=shape, channel=(x.ndim - 1,), gaussian=True, notes=notes)


def _pairs(padding: Any, n: int) -> tuple[tuple[int, int], ...]:
    p = (padding,) * n if isinstance(padding, int) else tuple(padding)
    return tuple((int(v), int(v)) for v in p)


def conv(b: Builder, x: Value, n: int, weight: torch.Tensor, bias: torch.Tensor | None, stride: Any,
         padding: Any, dilation: Any, groups: int, padding_mode: str, default: bool,
         path: str | None = None) -> Value:
    """A shared-weight ``n``-D convolution (``nn.Conv*d``, ``F.conv*d``), channels on axis 1."""
    x = b.tensor(x)
    kind = f"Conv{n}d"
    _conv_input(b, x, n, kind)
    out_chan, in_per_group = weight.shape[0], weight.shape[1]
    k = tuple(weight.shape[2:])
    stride = (stride,) * n if isinstance(stride, int) else tuple(stride)
    dilation = (dilation,) * n if isinstance(dilation, int) else tuple(dilation)
    in_chan = x.shape[1]
    if in_per_group * groups != in_chan:
        raise b.fail(f"expects {in_per_group * groups} input channels, got {in_chan}.", "")
    if groups > 1 and in_per_group == 1:
        raise b.unsupported(
            f"a depthwise convolution (groups={groups} = in_channels) gives each output channel one input "
            f"channel, so its outputs stay non-Gaussian however wide the network is.",
            "groups=1 (or groups that leave many channels per group).",
        )
    spans = [d * (kk - 1) + 1 for kk, d in zip(k, dilation)]
    if isinstance(padding, str):
        if padding == "same":
            pads: Any = "SAME"
        else:
            pads = "VALID"
    else:
        pads = _pairs(padding, n)
        if all(p == (0, 0) for p in pads):
            pads = "VALID"
    if padding_mode == "circular":
        sizes = x.shape[2:]
        from ..stax._spatial import same_pads

        same = tuple(same_pads(s, w, st) for s, w, st in zip(sizes, spans, stride))
        if pads not in ("SAME", same):
            raise b.unsupported(
                f"padding_mode='circular' with padding {padding} differs from the periodic 'SAME' padding "
                f"{same} that stax's CIRCULAR convolution uses.",
                f"padding={tuple(p[0] for p in same)} with padding_mode='circular', or padding_mode='zeros'.",
            )
        pads = "CIRCULAR"
    elif padding_mode != "zeros":
        raise b.unsupported(
            f"padding_mode={padding_mode!r} pads with copies of the input, which stax convolutions do not model.",
            "padding_mode='zeros' (or 'circular').",
        )
    fan_in = in_per_group * math.prod(k)
    var = _default_var(fan_in) if default else None
    W_std, b_std, notes = b.affine_stds(weight, bias, fan_in, var, var, path)
    extra = {"s": (groups, 1)} if groups > 1 and b.parameterization == "standard" else {}
    layer = stax.Conv(out_chan, k, strides=stride, padding=pads, W_std=W_std, b_std=b_std,
                      parameterization=b.parameterization, rhs_dilation=dilation, **extra)
    if groups > 1:
        notes = notes + (f"groups={groups}: at infinite width each group has infinitely many channels, and the "
                         f"kernel is that of groups=1 with fan_in = in_channels / groups * |k|",)
    shape = layer.output_shape(x.shape)
    return b.add(layer, [x], shape=shape, channel=(1,), gaussian=True, notes=notes)


def _conv_input(b: Builder, x: Value, n: int, kind: str) -> None:
    if x.flat:
        raise b.fail(f"gets flattened features {x.shape}.", f"Keep the (N, C, ...) layout for {kind}.")
    b.single_channel(x, kind)
    if x.ndim != n + 2 or x.channel_axis != 1:
        raise b.fail(
            f"expects (N, C{', L' if n == 1 else ', H, W' if n == 2 else ', D, H, W'}) inputs with channels on axis "
            f"1, got shape {x.shape} with channels on axis {x.channel_axis} (the output of {x.made_by}).",
            "Move the channels to axis 1 first (x.transpose(1, 2) for (N, L, C) sequences).",
        )


def conv_transpose(b: Builder, x: Value, n: int, module: nn.Module, output_size: Any) -> Value:
    x = b.tensor(x)
    _conv_input(b, x, n, f"ConvTranspose{n}d")
    if module.padding_mode != "zeros":
        raise b.unsupported(f"padding_mode={module.padding_mode!r}.", "padding_mode='zeros'.")
    weight, bias = module.weight, module.bias
    in_chan, out_per_group = weight.shape[0], weight.shape[1]
    groups = module.groups
    k = tuple(weight.shape[2:])
    stride, padding, dilation = tuple(module.stride), tuple(module.padding), tuple(module.dilation)
    out_pad = tuple(module.output_padding)
    if output_size is not None:
        raise b.fail("is called with output_size.", "Set output_padding on the module instead.")
    if isinstance(module.padding, str):
        raise b.fail(f"padding={module.padding!r}.", "Use integer padding.")
    pads = tuple(
        (d * (kk - 1) - p, d * (kk - 1) - p + op) for kk, p, d, op in zip(k, padding, dilation, out_pad)
    )
    if groups > 1 and in_chan // groups == 1:
        raise b.unsupported(
            f"a depthwise transposed convolution (groups={groups}) keeps outputs non-Gaussian.", "groups=1."
        )
    fan_in = in_chan // groups * math.prod(k)
    torch_fan_in = out_per_group * math.prod(k)
    var = _default_var(torch_fan_in)
    W_std, b_std, notes = b.affine_stds(weight, bias, fan_in, var, var)
    extra = {"s": (groups, 1)} if groups > 1 and b.parameterization == "standard" else {}
    layer = stax.ConvTranspose(out_per_group * groups, k, strides=stride, padding=pads, W_std=W_std, b_std=b_std,
                               parameterization=b.parameterization, rhs_dilation=dilation, **extra)
    notes = notes + (f"torch padding={padding}, output_padding={out_pad} = padding {pads} of the stride-dilated input",)
    shape = layer.output_shape(x.shape)
    return b.add(layer, [x], shape=shape, channel=(1,), gaussian=True, notes=notes)


def avg_pool(b: Builder, x: Value, n: int, kernel_size: Any, stride: Any, padding: Any, ceil_mode: bool,
             count_include_pad: bool, divisor_override: Any) -> Value:
    x = b.tensor(x)
    _conv_input(b, x, n, f"AvgPool{n}d")
    k = (kernel_size,) * n if isinstance(kernel_size, int) else tuple(kernel_size)
    stride = k if stride is None or stride == [] or stride == () else (
        (stride,) * n if isinstance(stride, int) else tuple(stride))
    pads = _pairs(padding, n)
    sizes = x.shape[2:]
    floor_out = [(s + 2 * p[0] - kk) // st + 1 for s, p, kk, st in zip(sizes, pads, k, stride)]
    if ceil_mode:
        ceil_out = [-(-(s + 2 * p[0] - kk) // st) + 1 for s, p, kk, st in zip(sizes, pads, k, stride)]
        ceil_out = [o - 1 if (o - 1) * st >= s + p[0] else o for o, st, s, p in zip(ceil_out, stride, sizes, pads)]
        if ceil_out != floor_out:
            raise b.unsupported(
                "ceil_mode=True adds partial windows at the end whose divisor torch computes from the clipped "
                "window.", "ceil_mode=False (or pad so that the windows tile the input).",
            )
    padding_arg: Any = "VALID" if all(p == (0, 0) for p in pads) else pads
    notes: tuple[str, ...] = ()
    if divisor_override:
        layer: Any = stax.serial(stax.SumPool(k, stride, padding_arg), Scale(1.0 / divisor_override))
        notes = (f"divisor_override={divisor_override}",)
    else:
        layer = stax.AvgPool(k, stride, padding_arg, normalize_edges=not count_include_pad and padding_arg != "VALID")
    shape = (x.shape[0], x.shape[1]) + tuple(floor_out)
    return b.add(layer, [x], shape=shape, channel=(1,), gaussian=x.gaussian, sources=x.sources, notes=notes)


def adaptive_avg_pool(b: Builder, x: Value, n: int, output_size: Any) -> Value:
    x = b.tensor(x)
    _conv_input(b, x, n, f"AdaptiveAvgPool{n}d")
    out = (output_size,) * n if isinstance(output_size, int) or output_size is None else tuple(output_size)
    sizes = x.shape[2:]
    out = tuple(s if o is None else int(o) for o, s in zip(out, sizes))
    if all(o == 1 for o in out):
        pooled = global_pool(b, x, average=True)
        return b.reshape(pooled, (x.shape[0], x.shape[1]) + (1,) * n)
    if any(s % o for s, o in zip(sizes, out)):
        raise b.unsupported(
            f"output_size {out} does not divide the input size {sizes}, so torch's windows overlap unevenly.",
            "an output size that divides the input (then it is AvgPool with kernel_size = stride = size / out), "
            "or 1 (global average pooling).",
        )
    k = tuple(s // o for s, o in zip(sizes, out))
    return avg_pool(b, x, n, k, k, 0, False, True, None)


def global_pool(b: Builder, x: Value, average: bool) -> Value:
    """Mean (sum) over all spatial axes: ``(N, C, *S) -> (N, C)``."""
    x = b.tensor(x)
    b.single_channel(x, "pooling")
    if x.flat:
        raise b.fail("pools flattened features.", "Pool before flattening.")
    layer = (stax.GlobalAvgPool if average else stax.GlobalSumPool)(batch_axis=0, channel_axis=x.channel_axis)
    shape = (x.shape[0], x.shape[x.channel_axis])
    return b.add(layer, [x], shape=shape, channel=(1,), gaussian=x.gaussian, sources=x.sources)


def layer_norm(b: Builder, x: Value, normalized_shape: Any, weight: torch.Tensor | None,
               bias: torch.Tensor | None, eps: float) -> Value:
    x = b.tensor(x)
    if x.flat:
        x = b.materialize(x)
    b.single_channel(x, "LayerNorm")
    dims = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    axes = tuple(range(x.ndim - len(dims), x.ndim))
    if x.channel_axis not in axes:
        raise b.unsupported(
            f"it normalises axes {axes} of {x.shape}, which do not include the channel axis {x.channel_axis}; only a "
            f"normalisation over the (infinitely many) channels converges to a deterministic kernel.",
            "normalise over the channels (LayerNorm(C) on (N, ..., C), or LayerNorm([C, H, W]) on (N, C, H, W)).",
        )
    b.need_gaussian(x)
    layer = stax.LayerNorm(axis=axes, eps=float(eps), batch_axis=0, channel_axis=x.channel_axis)
    out = b.add(layer, [x], shape=x.shape, channel=x.channel, gaussian=True, sources=x.sources)
    return _affine_after_norm(b, out, weight, bias, axes, "LayerNorm")


def _affine_after_norm(b: Builder, x: Value, weight: torch.Tensor | None, bias: torch.Tensor | None,
                       axes: tuple[int, ...], what: str) -> Value:
    if weight is None and bias is None:
        return x
    gamma = 1.0
    if weight is not None:
        w = weight.detach()
        gamma = float(w.reshape(-1)[0])
        if not bool((w == gamma).all()):
            raise b.unsupported(
                f"its weight (γ) differs across channels (trained, or re-initialised), so the channels are no "
                f"longer exchangeable and the infinite-width limit has no single per-channel kernel.",
                f"a {what} whose γ is the same for every channel (as initialised: ones), or elementwise_affine=False.",
            )
    if bias is not None and bool((bias.detach() != 0).any()):
        raise b.unsupported(
            f"its bias (β) is not zero: a constant shift of every unit changes the mean, and stax kernels are "
            f"those of zero-mean units.", f"a {what} with β = 0 (as initialised), or bias=False.",
        )
    spread = [a for a in axes if a != x.channel_axis]
    if spread:
        raise b.unsupported(
            f"its elementwise affine parameters have one entry per position of axes {axes}, not per channel; "
            f"their NTK contribution is not implemented.", f"elementwise_affine=False for a {what} over several axes.",
        )
    layer = ChannelAffine(gamma, weight is not None, bias is not None, x.channel_axis)
    note = f"γ = {gamma:g} for every channel, β = 0 (trainable: they add Σ and 1 to the NTK)"
    return b.add(layer, [x], shape=x.shape, channel=x.channel, gaussian=x.gaussian, sources=x.sources,
                 notes=(note,), suffix=".affine")


def batch_norm(b: Builder, x: Value, module: nn.modules.batchnorm._BatchNorm) -> Value:
    x = b.tensor(x)
    if module.training or not module.track_running_stats or module.running_mean is None:
        raise b.unsupported(
            "in training mode (or without running statistics) BatchNorm normalises with the statistics of the "
            "batch, which couples the examples of a batch, so the output for one input depends on the others.",
            "model.eval() with the initial running statistics, nn.LayerNorm, or no normalisation.",
        )
    mean, var = module.running_mean, module.running_var
    v0 = float(var.reshape(-1)[0])
    if bool((mean != 0).any()) or not bool((var == v0).all()):
        raise b.unsupported(
            "its running statistics differ across channels (they were updated by training), so channels are no "
            "longer exchangeable.", "a BatchNorm with its initial statistics (mean 0, var 1), or nn.LayerNorm.",
        )
    _conv_like = x.channel_axis == 1 and len(x.channel) == 1
    if not _conv_like:
        raise b.fail(f"expects channels on axis 1, got {x.shape}.", "")
    b.need_gaussian(x)
    scaled = b.scale(x, 1.0 / math.sqrt(v0 + module.eps))
    weight = module.weight if module.affine else None
    bias = module.bias if module.affine else None
    return _affine_after_norm(b, scaled, weight, bias, (1,), "BatchNorm")


def dropout(b: Builder, x: Value, p: float, training: bool) -> Value:
    x = b.tensor(x)
    if not training or p == 0:
        return x
    if p >= 1:
        raise b.fail(f"drops every unit (p={p}).", "Use 0 <= p < 1.")
    layer = stax.Dropout(1.0 - float(p), mode="train")
    if x.index == 0:
        raise b.unsupported("dropout on the raw input.", "dropout after a layer.")
    return b.add(layer, [x], shape=x.shape, channel=x.channel, gaussian=False, sources=x.sources, flat=x.flat,
                 kernel_channel=x.kernel_channel, notes=(f"train mode: keep probability {1 - p:g}",))


# ---------------------------------------------------------------------- module handlers


def _linear(b: Builder, node: Any, m: nn.Linear, args: tuple, kwargs: dict) -> Value:
    return dense(b, _single(args, kwargs), m.out_features, m.weight, m.bias, default=True)


def _conv(n: int):  # noqa: ANN202
    def handler(b: Builder, node: Any, m: nn.modules.conv._ConvNd, args: tuple, kwargs: dict) -> Value:
        return conv(b, _single(args, kwargs), n, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups,
                    m.padding_mode, default=True)

    return handler


def _conv_transpose(n: int):  # noqa: ANN202
    def handler(b: Builder, node: Any, m: nn.Module, args: tuple, kwargs: dict) -> Value:
        output_size = args[1] if len(args) > 1 else kwargs.get("output_size")
        return conv_transpose(b, _single(args, kwargs), n, m, output_size)

    return handler


def _avg_pool(n: int):  # noqa: ANN202
    def handler(b: Builder, node: Any, m: Any, args: tuple, kwargs: dict) -> Value:
        return avg_pool(b, _single(args, kwargs), n, m.kernel_size, m.stride, m.padding, m.ceil_mode,
                        m.count_include_pad, getattr(m, "divisor_override", None))

    return handler


def _adaptive(n: int):  # noqa: ANN202
    def handler(b: Builder, node: Any, m: Any, args: tuple, kwargs: dict) -> Value:
        return adaptive_avg_pool(b, _single(args, kwargs), n, m.output_size)

    return handler


def _activation(make):  # noqa: ANN001, ANN202
    def handler(b: Builder, node: Any, m: nn.Module, args: tuple, kwargs: dict) -> Value:
        layer, note = make(m)
        return b.elementwise(_single(args, kwargs), layer, (note,) if note else ())

    return handler


def _identity(b: Builder, node: Any, m: nn.Module, args: tuple, kwargs: dict) -> Value:
    return b.tensor(_single(args, kwargs))


def _flatten(b: Builder, node: Any, m: nn.Flatten, args: tuple, kwargs: dict) -> Value:
    x = b.tensor(_single(args, kwargs))
    return flatten(b, x, m.start_dim, m.end_dim)


def flatten(b: Builder, x: Value, start: int, end: int) -> Value:
    start, end = start % x.ndim, end % x.ndim
    if x.flat and start <= 1:
        return x
    shape = x.shape[:start] + (math.prod(x.shape[start:end + 1]),) + x.shape[end + 1:]
    return b.reshape(x, shape)


def _unflatten(b: Builder, node: Any, m: nn.Unflatten, args: tuple, kwargs: dict) -> Value:
    x = b.tensor(_single(args, kwargs))
    dim = m.dim % x.ndim
    sizes = tuple(m.unflattened_size)
    return b.reshape(x, x.shape[:dim] + sizes + x.shape[dim + 1:])


def _layer_norm(b: Builder, node: Any, m: nn.LayerNorm, args: tuple, kwargs: dict) -> Value:
    return layer_norm(b, _single(args, kwargs), m.normalized_shape, m.weight, m.bias, m.eps)


def _batch_norm(b: Builder, node: Any, m: Any, args: tuple, kwargs: dict) -> Value:
    return batch_norm(b, _single(args, kwargs), m)


def _dropout(b: Builder, node: Any, m: nn.Dropout, args: tuple, kwargs: dict) -> Value:
    return dropout(b, _single(args, kwargs), m.p, m.training)


def _channel_dropout(b: Builder, node: Any, m: Any, args: tuple, kwargs: dict) -> Value:
    x = b.tensor(_single(args, kwargs))
    if not m.training or m.p == 0:
        return x
    raise b.unsupported(
        f"{type(m).__name__} in train mode drops whole channels (or uses alpha-dropout's affine correction), "
        f"which stax's Dropout does not model.", "nn.Dropout, or model.eval().",
    )


MODULE_HANDLERS: dict[type, Any] = {
    nn.Linear: _linear,
    nn.Conv1d: _conv(1),
    nn.Conv2d: _conv(2),
    nn.Conv3d: _conv(3),
    nn.ConvTranspose1d: _conv_transpose(1),
    nn.ConvTranspose2d: _conv_transpose(2),
    nn.ConvTranspose3d: _conv_transpose(3),
    nn.AvgPool1d: _avg_pool(1),
    nn.AvgPool2d: _avg_pool(2),
    nn.AvgPool3d: _avg_pool(3),
    nn.AdaptiveAvgPool1d: _adaptive(1),
    nn.AdaptiveAvgPool2d: _adaptive(2),
    nn.AdaptiveAvgPool3d: _adaptive(3),
    nn.ReLU: _activation(lambda m: act.relu()),
    nn.LeakyReLU: _activation(lambda m: act.leaky_relu(m.negative_slope)),
    nn.GELU: _activation(lambda m: act.gelu(m.approximate)),
    nn.Tanh: _activation(lambda m: act.tanh()),
    nn.Sigmoid: _activation(lambda m: act.sigmoid()),
    nn.SiLU: _activation(lambda m: act.silu()),
    nn.ELU: _activation(lambda m: act.elu(m.alpha)),
    nn.SELU: _activation(lambda m: act.selu()),
    nn.CELU: _activation(lambda m: act.celu(m.alpha)),
    nn.Softplus: _activation(lambda m: act.softplus(m.beta, m.threshold)),
    nn.Hardtanh: _activation(lambda m: act.hardtanh(m.min_val, m.max_val)),
    nn.ReLU6: _activation(lambda m: act.relu6()),
    nn.Mish: _activation(lambda m: act.mish()),
    nn.Softsign: _activation(lambda m: act.softsign()),
    nn.Hardswish: _activation(lambda m: act.hardswish()),
    nn.Hardsigmoid: _activation(lambda m: act.hardsigmoid()),
    nn.Identity: _identity,
    nn.Flatten: _flatten,
    nn.Unflatten: _unflatten,
    nn.LayerNorm: _layer_norm,
    nn.BatchNorm1d: _batch_norm,
    nn.BatchNorm2d: _batch_norm,
    nn.BatchNorm3d: _batch_norm,
    nn.Dropout: _dropout,
    nn.Dropout1d: _channel_dropout,
    nn.Dropout2d: _channel_dropout,
    nn.Dropout3d: _channel_dropout,
    nn.AlphaDropout: _channel_dropout,
    nn.FeatureAlphaDropout: _channel_dropout,
}
