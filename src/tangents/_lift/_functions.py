"""torch functions, tensor methods and operators as stax layers.

Arithmetic follows the independence rules of stax's fan-ins: ``x + y`` is `stax.FanInSum`
of independent zero-mean Gaussians (each branch ends in its own affine layer, the skip
branch of a residual block being the block's input), ``x * y`` is `stax.FanInProd` of
independent branches (``x * x`` is ``stax.Monomial(2)``), ``c * x`` and ``x / c`` scale the
kernel by c². Attention is recognised in two spellings, both with tied queries and keys and
an explicit logit scale: ``F.scaled_dot_product_attention(q, q, v, scale=s)`` and
``softmax(q @ q.transpose(-2, -1) * s, dim=-1) @ v``.
"""

from __future__ import annotations

import builtins
import dataclasses
import math
import operator
from typing import Any

import torch
import torch.nn.functional as F

from .. import stax
from . import _activations as act
from . import _modules as mod
from ._build import Builder
from ._layers import Attend
from ._unsupported import FUNCTIONS
from ._values import Constant, Static, Value


def _value(x: Any) -> Any:
    """Python values out of `Static` wrappers (recursively)."""
    if isinstance(x, Static):
        return _value(x.value)
    if isinstance(x, (list, tuple)):
        return type(x)(_value(v) for v in x)
    return x


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    if len(args) > i:
        return _value(args[i])
    return _value(kwargs.get(name, default))


def _number(x: Any) -> float | None:
    x = _value(x)
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x)
    if isinstance(x, torch.Tensor) and x.ndim == 0 and not isinstance(x, torch.nn.Parameter):
        return float(x)
    return None


# ---------------------------------------------------------------------- activations


def _activation(make, *params: tuple[int, str, Any]):  # noqa: ANN001, ANN202
    """A handler calling ``make(*values)`` with arguments read at ``(position, name, default)``."""

    def handler(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
        values = [_arg(args, kwargs, i, name, default) for i, name, default in params]
        layer, note = make(*values)
        return b.elementwise(args[0] if args else kwargs["input"], layer, (note,) if note else ())

    return handler


# ---------------------------------------------------------------------- arithmetic


def add_values(b: Builder, values: list[Value]) -> Value:
    """The sum of independent zero-mean Gaussian branches (`stax.FanInSum`)."""
    values = [b.tensor(v) for v in values]
    if any(v.flat for v in values) and not all(v.flat for v in values):
        values = [b.materialize(v) for v in values]
    b.same_layout(values, "the sum")
    for v in values:
        if not v.gaussian:
            raise b.fail(
                f"adds a branch that is not a zero-mean Gaussian at infinite width (the output of "
                f"{v.made_by or 'the model input'}); the kernel of a sum adds the branches' covariances only for "
                f"independent zero-mean Gaussians, which a nonlinearity's output (mean > 0 for ReLU) or the raw "
                f"input is not.",
                "Make every branch end in a Linear/Conv layer: pre-activation residual blocks "
                "x + conv(relu(conv(relu(x)))) with x itself the output of a conv (or a sum of such), or a 1x1 "
                "conv on the skip branch.",
            )
    sources = b.independent(values, "the sum")
    first = values[0]
    return b.add(stax.FanInSum(), values, shape=first.shape, channel=first.channel, gaussian=True, sources=sources,
                 flat=first.flat, kernel_channel=first.kernel_channel)


def _constant_term(b: Builder, x: Any, what: str) -> None:
    if isinstance(x, Constant):
        raise b.fail(
            f"{what} the model tensor `{x.name}` (a learned embedding or bias outside a layer); a parameter added to "
            f"activations has no counterpart among stax layers here.",
            "Use a Linear/Conv layer's bias, or remove it.",
        )
    c = _number(x)
    if c is None:
        raise b.fail(f"{what} {type(x).__name__}, which is neither a tensor of the network nor a number.", "")
    if c != 0:
        raise b.fail(
            f"{what} the constant {c:g}: a constant shifts the mean of every unit alike, and stax kernels are those "
            f"of zero-mean units.", "Remove the constant (or use a layer's bias).",
        )


def _add(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    x, y = args[0], args[1] if len(args) > 1 else kwargs["other"]
    alpha = _number(kwargs.get("alpha", 1.0))
    return _sum2(b, x, y, 1.0 if alpha is None else alpha)


def _sum2(b: Builder, x: Any, y: Any, alpha: float) -> Value:
    if isinstance(x, Value) and isinstance(y, Value):
        if alpha != 1:
            y = b.scale(b.tensor(y), alpha)
        return add_values(b, [x, y])
    value, other = (x, y) if isinstance(x, Value) else (y, x)
    if not isinstance(value, Value):
        raise b.fail("adds no tensor of the network.", "")
    _constant_term(b, other, "adds")
    return b.tensor(value)


def _sub(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    x, y = args[0], args[1] if len(args) > 1 else kwargs["other"]
    if isinstance(x, Value) and not isinstance(y, Value):
        _constant_term(b, y, "subtracts")
        return b.tensor(x)
    if isinstance(y, Value) and not isinstance(x, Value):
        _constant_term(b, x, "subtracts from")
        return b.scale(b.tensor(y), -1.0)
    alpha = _number(kwargs.get("alpha", 1.0)) or 1.0
    return _sum2(b, x, y, -alpha)


def _neg(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    return b.scale(b.tensor(args[0]), -1.0)


def _pos(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    return b.tensor(args[0])


def _scale_scores(b: Builder, x: Value, c: float) -> Value:
    return dataclasses.replace(x, scale=x.scale * c)


def _mul(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    x, y = args[0], args[1] if len(args) > 1 else kwargs["other"]
    if not isinstance(x, Value):
        x, y = y, x
    if not isinstance(x, Value):
        raise b.fail("multiplies no tensor of the network.", "")
    c = _number(y)
    if c is not None:
        if x.kind == "logits":
            return _scale_scores(b, x, c)
        return b.scale(b.tensor(x), c)
    if isinstance(y, Value):
        x, y = b.tensor(x), b.tensor(y)
        if x.index == y.index:
            layer, _ = act.monomial(2)
            return b.elementwise(x, layer)
        values = [x, y]
        if x.flat != y.flat:
            values = [b.materialize(v) for v in values]
        b.same_layout(values, "the product")
        sources = b.independent(values, "the product")
        first = values[0]
        return b.add(stax.FanInProd(), values, shape=first.shape, channel=first.channel, gaussian=False,
                     sources=sources, flat=first.flat, kernel_channel=first.kernel_channel)
    _constant_term(b, y, "multiplies by")
    raise AssertionError("unreachable")


def _div(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    x, y = args[0], args[1] if len(args) > 1 else kwargs["other"]
    c = _number(y)
    if isinstance(x, Value) and c is not None and c != 0:
        if x.kind == "logits":
            return _scale_scores(b, x, 1.0 / c)
        return b.scale(b.tensor(x), 1.0 / c)
    raise b.fail(
        "divides by something other than a non-zero number (a tensor, or a tensor divided into a number), which "
        "has no stax layer.", "Divide by numbers only.",
    )


def _pow(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    x, k = args[0], _number(args[1] if len(args) > 1 else kwargs.get("exponent"))
    if not isinstance(x, Value) or k is None or k != int(k) or k < 1:
        raise b.fail("raises to a power that is not a positive integer.", "Use x ** k with an integer k >= 1.")
    if k == 1:
        return b.tensor(x)
    layer, _ = act.monomial(int(k))
    return b.elementwise(x, layer)


def _square(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    layer, _ = act.monomial(2)
    return b.elementwise(args[0], layer)


def _cat(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    tensors = list(args[0] if args else kwargs["tensors"])
    dim = _arg(args, kwargs, 1, "dim", 0)
    values = [b.tensor(v, "a concatenated tensor") for v in tensors]
    if len(values) == 1:
        return values[0]
    if any(v.flat for v in values):
        values = [b.materialize(v) for v in values]
    first = values[0]
    dim = dim % first.ndim
    for v in values:
        b.single_channel(v, "torch.cat")
        if v.channel_axis != first.channel_axis or v.ndim != first.ndim or any(
                v.shape[a] != first.shape[a] for a in range(v.ndim) if a != dim):
            raise b.fail(f"concatenates tensors of layouts {[x.shape for x in values]} that differ off dim {dim}.", "")
    if dim != first.channel_axis:
        raise b.unsupported(
            f"it concatenates along axis {dim}, not the channel axis {first.channel_axis}: joining along the batch or "
            f"a spatial axis is not a stax fan-in.", f"torch.cat(..., dim={first.channel_axis}) (channels).",
        )
    shape = list(first.shape)
    shape[dim] = sum(v.shape[dim] for v in values)
    widths = ", ".join(str(v.shape[dim]) for v in values)
    return b.add(stax.FanInConcat(axis=dim), values, shape=tuple(shape), channel=first.channel, gaussian=False,
                 sources=frozenset().union(*(v.sources for v in values)),
                 notes=(f"channel widths {widths}: Σ = the width-weighted mean of the branches' kernels",))


# ---------------------------------------------------------------------- attention


def _sequence_layout(b: Builder, x: Value, what: str) -> None:
    if x.flat or x.ndim < 3 or x.spatial != (x.ndim - 2,) or x.ndim - 1 not in x.channel:
        raise b.fail(
            f"needs {what} laid out as (N, [heads,] L, d), sequence on axis -2 and channels last, got {x.shape} with "
            f"channels on axes {x.channel} (the output of {x.made_by}).",
            "Put the sequence on axis -2 (x.transpose(1, 2), x.flatten(2).transpose(1, 2) for images).",
        )


def _attend(b: Builder, q: Value, v: Value, scale: float) -> Value:
    _sequence_layout(b, q, "queries")
    _sequence_layout(b, v, "values")
    if v.shape[:-1] != q.shape[:-1]:
        raise b.fail(f"attends with queries {q.shape} over values {v.shape} of another sequence or heads.", "")
    c = scale * q.shape[-1]
    note = (f"logit scale {scale:g} = c / d with d = {q.shape[-1]} channels per head, c = {c:g} held fixed as the "
            f"width grows (Hron et al. 2020: G = softmax(c Σ_q))")
    return b.add(Attend(scale, c), [q, v], shape=v.shape, channel=v.channel, gaussian=v.gaussian, sources=v.sources,
                 notes=(note,))


def _tied(b: Builder, q: Value, k: Value, transposed: bool) -> None:
    expected = q.shape[:-2] + (q.shape[-1], q.shape[-2]) if transposed else q.shape
    if k.root != q.root or k.shape != expected:
        raise b.unsupported(
            "its queries and keys come from different projections: with 1/head_dim scaling the logits then vanish "
            "at infinite width (uniform attention), and with 1/√head_dim they stay random, with no closed-form "
            "kernel either way.",
            "tied queries and keys, q = k = self.qk(x) (neural-tangents' GlobalSelfAttention with "
            "linear_scaling=True): F.scaled_dot_product_attention(q, q, v, scale=c / head_dim).",
        )


def _matmul(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    x, y = args[0], args[1] if len(args) > 1 else kwargs["other"]
    if isinstance(x, Value) and x.kind == "weights":
        return _attend(b, x.query, b.tensor(y, "the values"), x.scale)
    if isinstance(x, Value) and isinstance(y, Value) and x.kind == "tensor" and y.kind == "tensor":
        _sequence_layout(b, x, "queries")
        _tied(b, x, y, transposed=True)
        return dataclasses.replace(x, kind="logits", query=x, scale=1.0, shape=x.shape[:-1] + (x.shape[-2],))
    raise b.unsupported(
        "a matrix product of activations is only lifted as attention (scores q @ q.transpose(-2, -1), then their "
        "softmax @ v)", "nn.Linear for products with weights; the attention pattern otherwise.",
    )


def _softmax(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    x = args[0]
    dim = _arg(args, kwargs, 1, "dim", None)
    if isinstance(x, Value) and x.kind == "logits":
        if dim is None or dim % len(x.shape) != len(x.shape) - 1:
            raise b.fail(f"takes the softmax of attention scores over dim={dim}, not over the keys (-1).", "")
        return dataclasses.replace(x, kind="weights")
    why, alternative = FUNCTIONS.get("softmax", (
        "a softmax across the (infinitely many) channels sends every output to 0",
        "a softmax only over attention scores (softmax(q @ q.transpose(-2, -1) * scale, dim=-1)), or none."))
    raise b.unsupported(why, alternative)


def _sdpa(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    q, k, v = (args[i] if len(args) > i else kwargs[n] for i, n in enumerate(("query", "key", "value")))
    attn_mask = _arg(args, kwargs, 3, "attn_mask", None)
    dropout_p = _arg(args, kwargs, 4, "dropout_p", 0.0)
    is_causal = _arg(args, kwargs, 5, "is_causal", False)
    scale = _arg(args, kwargs, 6, "scale", None)
    q, k, v = (b.tensor(t) for t in (q, k, v))
    if attn_mask is not None or is_causal:
        raise b.unsupported("attention masks (attn_mask, is_causal) are not implemented for lifted attention.",
                            "unmasked self-attention.")
    if dropout_p:
        raise b.unsupported("dropout on the attention weights.", "dropout_p=0 (or model.eval()).")
    if scale is None:
        raise b.unsupported(
            "its default logit scale 1/√head_dim keeps the logits random at infinite width (no deterministic "
            "attention weights, no closed-form kernel).",
            "scale=c / head_dim with tied queries and keys: F.scaled_dot_product_attention(q, q, v, scale=c / d).",
        )
    _sequence_layout(b, q, "queries")
    _tied(b, q, k, transposed=False)
    return _attend(b, q, v, float(scale))


# ---------------------------------------------------------------------- layout


def _shape_args(args: tuple) -> tuple[int, ...]:
    rest = [_value(a) for a in args[1:]]
    if len(rest) == 1 and isinstance(rest[0], (list, tuple, torch.Size)):
        rest = list(rest[0])
    return tuple(int(r) for r in rest)


def _view(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    if len(args) == 1 and "shape" in kwargs:
        args = (args[0], kwargs["shape"])
    x = b.tensor(args[0])
    return b.reshape(x, _shape_args(args))


def _flatten_fn(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    x = b.tensor(args[0])
    start = _arg(args, kwargs, 1, "start_dim", 0)
    end = _arg(args, kwargs, 2, "end_dim", -1)
    return mod.flatten(b, x, start, end)


def _unflatten(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    x = b.tensor(args[0])
    dim = _arg(args, kwargs, 1, "dim") % x.ndim
    sizes = tuple(_arg(args, kwargs, 2, "sizes"))
    return b.reshape(x, x.shape[:dim] + sizes + x.shape[dim + 1:])


def _squeeze(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    x = b.tensor(args[0])
    dim = _arg(args, kwargs, 1, "dim", None)
    dims = range(x.ndim) if dim is None else ([dim] if isinstance(dim, int) else list(dim))
    dims = {d % x.ndim for d in dims if x.shape[d % x.ndim] == 1 and d % x.ndim != 0}
    return b.reshape(x, tuple(s for a, s in enumerate(x.shape) if a not in dims))


def _unsqueeze(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    x = b.tensor(args[0])
    dim = _arg(args, kwargs, 1, "dim") % (x.ndim + 1)
    return b.reshape(x, x.shape[:dim] + (1,) + x.shape[dim:])


def _permute(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    x = b.tensor(args[0])
    if len(args) == 1:
        dims = kwargs["dims"]
    else:
        dims = _shape_args(args)
    return b.permute(x, tuple(_value(dims)))


def _transpose(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    x = b.tensor(args[0]) if not (isinstance(args[0], Value) and args[0].kind != "tensor") else args[0]
    d0 = _arg(args, kwargs, 1, "dim0") % x.ndim
    d1 = _arg(args, kwargs, 2, "dim1") % x.ndim
    perm = list(range(x.ndim))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return b.permute(x, perm)


def _identity(b: Builder, node: Any, args: tuple, kwargs: dict) -> Any:
    x = args[0]
    return x if isinstance(x, Value) else b.tensor(x)


def _static(b: Builder, node: Any, args: tuple, kwargs: dict) -> Static:
    return Static(b.traced.values.get(node.name))


def _getattr(b: Builder, node: Any, args: tuple, kwargs: dict) -> Any:
    if _value(args[1]) in ("shape", "dtype", "device", "ndim", "is_cuda"):
        return Static(b.traced.values.get(node.name))
    raise b.fail(f"reads the attribute {args[1]!r} of an activation.", "")


def _reduce(average: bool):  # noqa: ANN202
    def handler(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
        x = b.tensor(args[0])
        dim = _arg(args, kwargs, 1, "dim", None)
        keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
        if x.flat:
            raise b.fail("reduces flattened features.", "Pool before flattening.")
        dims = set(range(1, x.ndim)) | {0} if dim is None else {d % x.ndim for d in (
            [dim] if isinstance(dim, int) else dim)}
        if 0 in dims or dims & set(x.channel):
            raise b.unsupported(
                f"it {'averages' if average else 'sums'} over axes {sorted(dims)}, which include the batch or the "
                f"channel axis; an average over infinitely many channels is deterministic (the kernel of nothing "
                f"random) and a sum diverges.", "a Linear readout over the channels, or pooling over the spatial axes.",
            )
        if dims != set(x.spatial):
            raise b.unsupported(
                f"it pools over axes {sorted(dims)} but not all spatial axes {x.spatial}.",
                "pool over all spatial axes (x.mean((2, 3))) or use nn.AvgPool2d with the window you need.",
            )
        pooled = mod.global_pool(b, x, average)
        if keepdim:
            return b.reshape(pooled, tuple(1 if a in dims else s for a, s in enumerate(x.shape)))
        return pooled

    return handler


def _avg_pool_fn(n: int):  # noqa: ANN202
    def handler(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
        names = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
        defaults = (None, None, None, 0, False, True, None)
        vals = [_arg(args, kwargs, i, name, d) for i, (name, d) in enumerate(zip(names, defaults))]
        return mod.avg_pool(b, args[0], n, *vals[1:])

    return handler


def _adaptive_fn(n: int):  # noqa: ANN202
    def handler(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
        return mod.adaptive_avg_pool(b, args[0], n, _arg(args, kwargs, 1, "output_size"))

    return handler


def _weight(b: Builder, w: Any, what: str) -> Any:
    if w is None or isinstance(w, Constant):
        return w
    raise b.fail(
        f"takes its {what} from {getattr(w, 'made_by', type(w).__name__)}, not from a parameter of the model; "
        f"weights computed from activations have no stax counterpart.", "Use an nn.Parameter (or nn.Linear).",
    )


def _linear_fn(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    w = _weight(b, args[1] if len(args) > 1 else kwargs["weight"], "weight")
    bias = _weight(b, args[2] if len(args) > 2 else kwargs.get("bias"), "bias")
    owner = b.owner_module(w.name)
    default = isinstance(owner, torch.nn.Linear) and owner.weight is w.tensor
    return mod.dense(b, args[0], w.tensor.shape[0], w.tensor, None if bias is None else bias.tensor, default,
                     path=w.name.rpartition(".")[0] or w.name)


def _conv_fn(n: int):  # noqa: ANN202
    def handler(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
        w = _weight(b, args[1] if len(args) > 1 else kwargs["weight"], "weight")
        bias = _weight(b, args[2] if len(args) > 2 else kwargs.get("bias"), "bias")
        stride = _arg(args, kwargs, 3, "stride", 1)
        padding = _arg(args, kwargs, 4, "padding", 0)
        dilation = _arg(args, kwargs, 5, "dilation", 1)
        groups = _arg(args, kwargs, 6, "groups", 1)
        owner = b.owner_module(w.name)
        default = isinstance(owner, torch.nn.modules.conv._ConvNd) and owner.weight is w.tensor
        return mod.conv(b, args[0], n, w.tensor, None if bias is None else bias.tensor, stride, padding, dilation,
                        groups, "zeros", default, path=w.name.rpartition(".")[0] or w.name)

    return handler


def _layer_norm_fn(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    shape = _arg(args, kwargs, 1, "normalized_shape")
    w = _weight(b, args[2] if len(args) > 2 else kwargs.get("weight"), "weight")
    bias = _weight(b, args[3] if len(args) > 3 else kwargs.get("bias"), "bias")
    eps = _arg(args, kwargs, 4, "eps", 1e-5)
    return mod.layer_norm(b, args[0], shape, None if w is None else w.tensor, None if bias is None else bias.tensor,
                          eps)


def _dropout_fn(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    x = args[0]
    p = _arg(args, kwargs, 1, "p", 0.5)
    training = _arg(args, kwargs, 2, "training", True)
    if isinstance(x, Value) and x.kind != "tensor":
        if training and p:
            raise b.unsupported("dropout on the attention weights.", "no attention dropout (or model.eval()).")
        return x
    return mod.dropout(b, x, p, training)


def _channel_dropout_fn(b: Builder, node: Any, args: tuple, kwargs: dict) -> Value:
    x = b.tensor(args[0])
    p = _arg(args, kwargs, 1, "p", 0.5)
    if not _arg(args, kwargs, 2, "training", True) or not p:
        return x
    raise b.unsupported("channel dropout (or alpha dropout) in train mode.", "F.dropout, or model.eval().")


# ---------------------------------------------------------------------- tables

_RELU = _activation(act.relu)
_TANH = _activation(act.tanh)
_SIGMOID = _activation(act.sigmoid)

FUNCTION_HANDLERS: dict[Any, Any] = {
    F.relu: _RELU, torch.relu: _RELU, F.relu_: _RELU, torch.relu_: _RELU,
    F.leaky_relu: _activation(act.leaky_relu, (1, "negative_slope", 0.01)),
    F.gelu: _activation(act.gelu, (1, "approximate", "none")),
    torch.tanh: _TANH, F.tanh: _TANH,
    torch.sigmoid: _SIGMOID, F.sigmoid: _SIGMOID,
    F.silu: _activation(act.silu),
    F.elu: _activation(act.elu, (1, "alpha", 1.0)),
    F.selu: _activation(act.selu),
    torch.selu: _activation(act.selu),
    F.celu: _activation(act.celu, (1, "alpha", 1.0)),
    F.softplus: _activation(act.softplus, (1, "beta", 1.0), (2, "threshold", 20.0)),
    F.hardtanh: _activation(act.hardtanh, (1, "min_val", -1.0), (2, "max_val", 1.0)),
    F.relu6: _activation(act.relu6),
    F.mish: _activation(act.mish),
    F.softsign: _activation(act.softsign),
    F.hardswish: _activation(act.hardswish),
    F.hardsigmoid: _activation(act.hardsigmoid),
    torch.abs: _activation(act.abs_),
    torch.sin: _activation(act.sin),
    torch.cos: _activation(act.cos),
    torch.exp: _activation(act.exp),
    torch.erf: _activation(act.erf),
    torch.special.erf: _activation(act.erf),
    torch.sign: _activation(act.sign),
    torch.square: _square,
    operator.pow: _pow, torch.pow: _pow,
    operator.add: _add, operator.iadd: _add, torch.add: _add,
    operator.sub: _sub, operator.isub: _sub, torch.sub: _sub, torch.subtract: _sub,
    operator.neg: _neg, torch.neg: _neg, operator.pos: _pos,
    operator.mul: _mul, operator.imul: _mul, torch.mul: _mul, torch.multiply: _mul,
    operator.truediv: _div, operator.itruediv: _div, torch.div: _div, torch.true_divide: _div,
    torch.cat: _cat, torch.concat: _cat, torch.concatenate: _cat,
    operator.matmul: _matmul, torch.matmul: _matmul, torch.bmm: _matmul,
    torch.softmax: _softmax, F.softmax: _softmax,
    F.scaled_dot_product_attention: _sdpa,
    torch.reshape: _view,
    torch.flatten: _flatten_fn,
    torch.unflatten: _unflatten,
    torch.squeeze: _squeeze,
    torch.unsqueeze: _unsqueeze,
    torch.permute: _permute,
    torch.transpose: _transpose,
    torch.swapaxes: _transpose,
    torch.mean: _reduce(True),
    torch.sum: _reduce(False),
    F.avg_pool1d: _avg_pool_fn(1),
    F.avg_pool2d: _avg_pool_fn(2),
    F.avg_pool3d: _avg_pool_fn(3),
    F.adaptive_avg_pool1d: _adaptive_fn(1),
    F.adaptive_avg_pool2d: _adaptive_fn(2),
    F.adaptive_avg_pool3d: _adaptive_fn(3),
    F.linear: _linear_fn,
    F.conv1d: _conv_fn(1),
    F.conv2d: _conv_fn(2),
    F.conv3d: _conv_fn(3),
    F.layer_norm: _layer_norm_fn,
    F.dropout: _dropout_fn,
    F.dropout1d: _channel_dropout_fn,
    F.dropout2d: _channel_dropout_fn,
    F.dropout3d: _channel_dropout_fn,
    F.alpha_dropout: _channel_dropout_fn,
    builtins.getattr: _getattr,
}

METHOD_HANDLERS: dict[str, Any] = {
    "relu": _RELU, "relu_": _RELU, "tanh": _TANH, "tanh_": _TANH, "sigmoid": _SIGMOID, "sigmoid_": _SIGMOID,
    "abs": _activation(act.abs_), "sin": _activation(act.sin), "cos": _activation(act.cos),
    "exp": _activation(act.exp), "erf": _activation(act.erf), "sign": _activation(act.sign),
    "square": _square, "pow": _pow,
    "add": _add, "add_": _add, "sub": _sub, "sub_": _sub, "mul": _mul, "mul_": _mul, "div": _div, "div_": _div,
    "neg": _neg, "matmul": _matmul, "bmm": _matmul, "softmax": _softmax,
    "view": _view, "reshape": _view, "flatten": _flatten_fn, "unflatten": _unflatten,
    "squeeze": _squeeze, "unsqueeze": _unsqueeze, "permute": _permute, "transpose": _transpose,
    "swapaxes": _transpose,
    "contiguous": _identity, "clone": _identity, "to": _identity, "float": _identity, "double": _identity,
    "type_as": _identity,
    "size": _static, "dim": _static, "numel": _static, "nelement": _static,
    "mean": _reduce(True), "sum": _reduce(False),
}


def function_fallback(b: Builder, node: Any, args: tuple, kwargs: dict) -> Any:
    """Unknown or unsupported functions and methods: the reason, if known."""
    name = str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))
    if name == "getitem" and args and isinstance(args[0], Value):
        raise b.unsupported(
            "indexing or slicing an activation selects some of its positions or channels, which is not mapped "
            "(stax.Index) yet.", "pooling (x.mean(1)) instead of picking one position.",
        )
    if name in FUNCTIONS:
        why, alternative = FUNCTIONS[name]
        raise b.unsupported(why, alternative)
    raise b.unsupported(
        "from_torch does not know this function.",
        "see tangents.from_torch's docstring for the supported modules, functions and tensor methods.",
    )
