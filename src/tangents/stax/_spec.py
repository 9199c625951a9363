"""Networks as JSON data: `layer_spec` (a layer tree -> JSON) and `from_spec` (JSON -> layers).

The form is the one of the ``arch`` entries of neural-tangents reference manifests::

    {"type": "serial", "layers": [
        {"type": "Dense", "out_dim": 512, "W_std": 1.5, "b_std": 0.05, "batch_axis": 0,
         "channel_axis": -1, "parameterization": "ntk", "s": [1, 1]},
        {"type": "ABRelu", "a": 0.0, "b": 1.0, "do_stabilize": false},
        ...]}

``{"type": "serial" | "parallel", "layers": [...]}``, ``{"type": "repeat", "layer": ..., "n":
3}``, or ``{"type": <a tangents.stax layer name>, <its arguments>}``. `layer_spec` writes
every argument (defaults filled in) from the layer's own attributes, so two networks that
compute the same kernel the same way have the same spec: ``stax.Relu()`` is written as the
``ABRelu(a=0, b=1)`` it builds, ``Conv(dimension_numbers=None)`` with its channels-first
layout spelled out. That is what a kernel store fingerprints (`tangents.store`) and what
``tangents kernel --arch FILE`` reads.

Functions (``ElementwiseNumerical``'s ``fn``, ``Aggregate``'s ``to_dense``, ...) are written
by name (`FUNCTIONS`: ``"tanh"``, ``"softplus"``, ``"swish"``, ...). Tuples become lists,
enums their names, slices ``{"slice": [start, stop, step]}``, ``...`` ``"..."``, constant
tensors nested lists.

`PRESETS` are named networks for the command line: ``fc``, ``cnn``, ``myrtle5``,
``myrtle7``, ``myrtle10`` and ``resnet`` (see `preset`).
"""

from __future__ import annotations

import difflib
import enum
import functools
import hashlib
import importlib
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._activations import Relu
from ._branching import FanInSum, FanOut, Identity
from ._combinators import _Parallel, _Repeat, _Serial, parallel, repeat, serial
from ._conv import Conv
from ._custom import ElementwiseNumerical, SiLU, Sigmoid, Softplus, Tanh
from ._dense import Dense
from ._graph import _identity
from ._layer import Layer
from ._linear_ops import DotGeneral
from ._pooling import AvgPool, Flatten, GlobalAvgPool

__all__ = ["FUNCTIONS", "PRESETS", "describe_function", "from_spec", "layer_spec", "preset"]

Spec = dict[str, Any]


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


#: Functions a spec may name (neural-tangents' manifest names ``tanh``, ``softplus``, ``swish``).
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "tanh": torch.tanh,
    "softplus": F.softplus,
    "sigmoid": torch.sigmoid,
    "swish": _swish,
    "silu": F.silu,
    "erf": torch.erf,
    "relu": torch.relu,
    "sin": torch.sin,
    "cos": torch.cos,
    "exp": torch.exp,
    "identity": _identity,
}

#: Arguments whose value is a function (written by name).
_FUNCTION_ARGS = {"fn", "df", "nngp_fn", "d_nngp_fn", "to_dense", "pos_emb_decay_fn"}
#: Keys of a manifest entry that describe rather than configure.
_DESCRIPTIVE_KEYS = {"note", "equivalent", "fn_definition"}
#: ElementwiseNumerical layers made by a named constructor, written by that name.
_NAMED_NUMERICAL: dict[str, Callable[[int], ElementwiseNumerical]] = {
    "Tanh": Tanh, "Softplus": Softplus, "Sigmoid": Sigmoid, "SiLU": SiLU,
}
_MISSING = object()


# ---------------------------------------------------------------------- layer -> JSON


def layer_spec(layer: Layer, *, describe_functions: bool = False) -> Spec:
    """The JSON form of a network: its layer tree with every argument.

    Args:
        layer: a `tangents.stax` layer or combinator.
        describe_functions: functions not in `FUNCTIONS` (a user's ``Elementwise``) are
            written as ``{"function": "module.name", "sha256": <hash of its code>}`` — enough
            to fingerprint a network, not to rebuild it. ``False`` (default) raises instead.

    Returns:
        A dict of JSON values (``json.dumps`` writes it).

    Raises:
        TypeError: a layer or an argument without a JSON form.

    Example:
        >>> layer_spec(stax.serial(stax.Dense(8), stax.Relu()))["layers"][1]
        {'type': 'ABRelu', 'a': 0.0, 'b': 1.0, 'do_stabilize': False}
    """
    if not isinstance(layer, Layer):
        raise TypeError(f"Layer.spec: expected a tangents.stax layer, got {type(layer).__name__}.")
    if isinstance(layer, _Serial):
        return {"type": "serial", "layers": [layer_spec(c, describe_functions=describe_functions) for c in layer.children]}
    if isinstance(layer, _Parallel):
        return {"type": "parallel", "layers": [layer_spec(c, describe_functions=describe_functions) for c in layer.children]}
    if isinstance(layer, _Repeat):
        return {"type": "repeat", "layer": layer_spec(layer.layer, describe_functions=describe_functions), "n": layer.n}
    if isinstance(layer, ElementwiseNumerical):
        for name, constructor in _NAMED_NUMERICAL.items():
            made = constructor(layer.deg)
            if made._fn is layer._fn and made.df is layer.df:
                return {"type": name, "deg": layer.deg}
    cls = type(layer)
    name = cls.__name__
    if _public_names().get(name) is not cls:
        if not describe_functions:
            raise TypeError(
                f"Layer.spec: {cls.__module__}.{cls.__qualname__} is not a tangents.stax layer, so it has no "
                f"JSON form; build the network from tangents.stax layers."
            )
        name = f"{cls.__module__}.{cls.__qualname__}"
    spec: Spec = {"type": name}
    for arg, parameter in list(inspect.signature(cls.__init__).parameters.items())[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        value = _argument(layer, arg)
        if value is _MISSING:
            if not describe_functions:
                raise TypeError(
                    f"Layer.spec: {name} does not keep its argument {arg!r}, so it has no JSON form."
                )
            value = repr(layer)
        spec[arg] = _to_json(value, f"{name}.{arg}", describe_functions)
    return spec


def _argument(layer: Layer, arg: str) -> Any:
    """The value a layer was built with: its attribute of that name (or ``_name``)."""
    if isinstance(layer, DotGeneral) and arg in ("lhs", "rhs"):
        return layer.other if (arg == "lhs") == layer.is_lhs else None
    attributes = vars(layer)
    if arg in attributes:
        return attributes[arg]
    if "_" + arg in attributes:
        return attributes["_" + arg]
    return getattr(layer, arg, _MISSING)


def _to_json(value: Any, where: str, describe_functions: bool) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise TypeError(f"Layer.spec: {where} is {value}, which JSON cannot hold.")
        return float(value)
    if isinstance(value, enum.Enum):
        return value.name
    if value is Ellipsis:
        return "..."
    if isinstance(value, slice):
        return {"slice": [value.start, value.stop, value.step]}
    if isinstance(value, (tuple, list)):
        return [_to_json(v, where, describe_functions) for v in value]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().tolist()
    if isinstance(value, np.ndarray):
        return value.astype(np.float64).tolist()
    if callable(value):
        for name, fn in FUNCTIONS.items():
            if value is fn:
                return name
        if describe_functions:
            return describe_function(value)
        raise TypeError(
            f"Layer.spec: {where} is the function {_function_label(value)}, which has no JSON form; "
            f"use one of {', '.join(FUNCTIONS)} or a layer with a closed form."
        )
    raise TypeError(f"Layer.spec: {where} is a {type(value).__name__}, which has no JSON form.")


def _function_label(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return f"{module}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def describe_function(fn: Any) -> dict[str, Any]:
    """A function's name and a hash of its code (and of constants it closes over), so that a
    changed function body changes a fingerprint."""
    if isinstance(fn, functools.partial):
        return {"partial": describe_function(fn.func), "args": repr(fn.args), "keywords": repr(sorted(fn.keywords.items()))}
    digest = hashlib.sha256()
    code = getattr(fn, "__code__", None)
    if code is not None:
        _hash_code(code, digest)
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                digest.update(repr(cell.cell_contents).encode())
            except ValueError:  # an empty cell
                pass
        digest.update(repr(getattr(fn, "__defaults__", None)).encode())
    return {"function": _function_label(fn), "sha256": digest.hexdigest() if code is not None else None}


def _hash_code(code: Any, digest: Any) -> None:
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if inspect.iscode(const):
            _hash_code(const, digest)
        else:
            digest.update(repr(const).encode())


# ---------------------------------------------------------------------- JSON -> layer


def from_spec(spec: Spec, *, nt_layout: bool = False) -> Layer:
    """Builds the network a JSON spec describes (the inverse of `Layer.spec`).

    Args:
        spec: ``{"type": "serial" | "parallel", "layers": [...]}``, ``{"type": "repeat",
            "layer": ..., "n": n}`` or ``{"type": <stax layer name>, <arguments>}``; the
            arguments are the layer's (missing ones take their defaults). Lists become tuples;
            functions are names from `FUNCTIONS` (a text whose first word is a name, or
            ``"None"``, also works, as in neural-tangents manifests); the keys ``note``,
            ``equivalent`` and ``fn_definition`` are descriptions and are skipped.
        nt_layout: read a convolution's ``"dimension_numbers": null`` as neural-tangents
            does (channels-last, ``NHWC``), for ``arch`` entries copied from neural-tangents;
            by default ``null`` means tangents' channels-first ``NCHW``.

    Returns:
        The `Layer`.

    Raises:
        ValueError: an unknown layer type, argument or function name, or a malformed spec.

    Example:
        >>> net = from_spec({"type": "serial", "layers": [
        ...     {"type": "Dense", "out_dim": 512, "W_std": 1.5}, {"type": "Relu"},
        ...     {"type": "Dense", "out_dim": 1}]})
    """
    return _build(spec, nt_layout, "spec")


def _build(spec: Any, nt_layout: bool, where: str) -> Layer:
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise ValueError(
            f"from_spec: {where} must be an object with a \"type\" (a stax layer name, \"serial\", "
            f"\"parallel\" or \"repeat\"), got {_short(spec)}."
        )
    kind = spec["type"]
    if kind in ("serial", "parallel"):
        layers = spec.get("layers")
        if not isinstance(layers, list):
            raise ValueError(f"from_spec: {where} ({kind}) needs a list \"layers\", got {_short(layers)}.")
        built = [_build(s, nt_layout, f"{where}.layers[{i}]") for i, s in enumerate(layers)]
        return serial(*built) if kind == "serial" else parallel(*built)
    if kind == "repeat":
        if "layer" not in spec or "n" not in spec:
            raise ValueError(f"from_spec: {where} (repeat) needs \"layer\" and \"n\", got keys {sorted(spec)}.")
        return repeat(_build(spec["layer"], nt_layout, f"{where}.layer"), spec["n"])
    constructor = _constructor(kind, where)
    args = {}
    for key, value in spec.items():
        if key == "type" or key in _DESCRIPTIVE_KEYS:
            continue
        if key in _FUNCTION_ARGS:
            value = _function(value, f"{where}.{key}")
        else:
            value = _from_json(value)
        args[key] = value
    if kind in ("Conv", "ConvTranspose", "ConvLocal") and nt_layout and args.get("dimension_numbers") is None:
        letters = "HWD"[: len(args.get("filter_shape", (0, 0)))]
        args["dimension_numbers"] = ("N" + letters + "C", letters + "IO", "N" + letters + "C")
    try:
        parameters = inspect.signature(constructor).parameters
    except (TypeError, ValueError):  # pragma: no cover - every stax constructor has a signature
        parameters = {}
    unknown = [k for k in args if k not in parameters] if parameters and not any(
        p.kind is p.VAR_KEYWORD for p in parameters.values()
    ) else []
    if unknown:
        raise ValueError(
            f"from_spec: {where} ({kind}) has unknown argument(s) {', '.join(map(repr, unknown))}; "
            f"{kind} takes {', '.join(p for p in parameters)}."
        )
    return constructor(**args)


def _constructor(kind: str, where: str) -> Callable[..., Layer]:
    stax_names = _public_names()
    value = stax_names.get(kind)
    if kind.startswith("_") or not _is_layer_constructor(value):
        names = sorted(n for n, v in stax_names.items() if not n.startswith("_") and _is_layer_constructor(v))
        close = difflib.get_close_matches(kind, names, n=3)
        hint = f" Did you mean {' or '.join(close)}?" if close else f" Known layers: {', '.join(names)}."
        raise ValueError(f"from_spec: {where} has the unknown layer type {kind!r}.{hint}")
    return value


def _public_names() -> dict[str, Any]:
    """The names `tangents.stax` exports (read when called: the package imports this module)."""
    return vars(importlib.import_module(__package__))


def _is_layer_constructor(value: Any) -> bool:
    """A layer class (``Dense``) or a capitalised constructor function (``Relu``, ``Tanh``)."""
    if isinstance(value, type):
        return issubclass(value, Layer) and value is not Layer
    return inspect.isfunction(value) and value.__name__[:1].isupper()


def _function(value: Any, where: str) -> Any:
    if value is None or callable(value):
        return value
    if isinstance(value, str):
        word = value.strip().split()[0].strip("(),").lower() if value.strip() else ""
        if word == "none":
            return None
        if word in FUNCTIONS:
            return FUNCTIONS[word]
    raise ValueError(
        f"from_spec: {where} must name a function ({', '.join(FUNCTIONS)}) or be null, got {_short(value)}."
    )


def _from_json(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_from_json(v) for v in value)
    if value == "...":
        return Ellipsis
    if isinstance(value, dict) and set(value) == {"slice"} and isinstance(value["slice"], list):
        return slice(*value["slice"])
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------- presets


def _fc(example_shape: Sequence[int] | None) -> Layer:
    """``[Dense(512, W_std=1.5, b_std=0.05), Relu] x 3, Dense(1)`` (the README's benchmark FC)."""
    if example_shape is not None and len(example_shape) != 1:
        raise ValueError(
            f"preset 'fc': takes inputs (N, features), got examples of shape {tuple(example_shape)}; flatten "
            f"them (x.reshape(len(x), -1)) or choose an image preset (cnn, myrtle5, resnet)."
        )
    hidden = [Dense(512, W_std=1.5, b_std=0.05), Relu()]
    return serial(*hidden * 3, Dense(1, W_std=1.5, b_std=0.05))


def _image_sides(name: str, example_shape: Sequence[int] | None) -> tuple[int, int]:
    if example_shape is None:
        return 32, 32
    if len(example_shape) != 3:
        raise ValueError(
            f"preset {name!r}: takes images (N, C, H, W) (channels first), got examples of shape "
            f"{tuple(example_shape)}; for (N, features) inputs choose 'fc'."
        )
    return int(example_shape[1]), int(example_shape[2])


def _cnn(example_shape: Sequence[int] | None) -> Layer:
    """``[Conv(128, (3, 3), SAME, W_std=1.5, b_std=0.05), Relu] x 3, GlobalAvgPool, Dense(1)``."""
    _image_sides("cnn", example_shape)
    hidden = [Conv(128, (3, 3), padding="SAME", W_std=1.5, b_std=0.05), Relu()]
    return serial(*hidden * 3, GlobalAvgPool(), Dense(1, W_std=1.5, b_std=0.05))


def _myrtle(depth: int) -> Callable[[Sequence[int] | None], Layer]:
    def build(example_shape: Sequence[int] | None) -> Layer:
        """neural-tangents' ``MyrtleNetwork(depth)`` (Shankar et al. 2020)."""
        h, w = _image_sides(f"myrtle{depth}", example_shape)
        side = min(h, w)
        if side < 8:
            raise ValueError(
                f"preset 'myrtle{depth}': needs images of at least 8 x 8 pixels (three 2x2 poolings), got {h} x {w}."
            )
        factors = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}[depth]
        W_std, b_std = math.sqrt(2.0), 0.0

        def block(n: int) -> list[Layer]:
            return [Conv(1, (3, 3), W_std=W_std, b_std=b_std, padding="SAME"), Relu()] * n

        pool = AvgPool((2, 2), strides=(2, 2))
        final_pools = int(math.log2(side)) - 2  # 32 x 32: 4 -> 2 -> 1 after the third block
        layers = block(factors[0]) + [pool] + block(factors[1]) + [pool] + block(factors[2]) + [pool] * final_pools
        return serial(*layers, Flatten(), Dense(10, W_std, b_std))

    return build


def _resnet(example_shape: Sequence[int] | None) -> Layer:
    """neural-tangents' README ``WideResnet(block_size=1, k=1, num_classes=10)``, with a
    global average pool for any image size."""
    _image_sides("resnet", example_shape)

    def block(channels: int, strides: tuple[int, int], mismatch: bool) -> Layer:
        main = serial(
            Relu(), Conv(channels, (3, 3), strides, padding="SAME"), Relu(), Conv(channels, (3, 3), padding="SAME")
        )
        shortcut = Conv(channels, (3, 3), strides, padding="SAME") if mismatch else Identity()
        return serial(FanOut(2), parallel(main, shortcut), FanInSum())

    return serial(
        Conv(16, (3, 3), padding="SAME"),
        block(16, (1, 1), True),
        block(32, (2, 2), True),
        block(64, (2, 2), True),
        GlobalAvgPool(),
        Dense(10, 1.0, 0.0),
    )


#: Named networks: name -> (builder of the network for examples of a shape, description).
PRESETS: dict[str, tuple[Callable[[Sequence[int] | None], Layer], str]] = {
    "fc": (_fc, "[Dense(512, W_std=1.5, b_std=0.05), Relu] x 3, Dense(1); inputs (N, features)"),
    "cnn": (_cnn, "[Conv(128, 3x3, SAME, W_std=1.5, b_std=0.05), Relu] x 3, GlobalAvgPool, Dense(1); images (N, C, H, W)"),
    "myrtle5": (_myrtle(5), "Myrtle-5 (Shankar et al. 2020, neural-tangents' MyrtleNetwork); images (N, C, H, W)"),
    "myrtle7": (_myrtle(7), "Myrtle-7; images (N, C, H, W)"),
    "myrtle10": (_myrtle(10), "Myrtle-10; images (N, C, H, W)"),
    "resnet": (_resnet, "WideResNet with one block per group (16, 32, 64 channels), GlobalAvgPool, Dense(10); images"),
}


def preset(name: str, example_shape: Sequence[int] | None = None) -> Layer:
    """A named network of `PRESETS`.

    Args:
        name: ``fc``, ``cnn``, ``myrtle5``, ``myrtle7``, ``myrtle10`` or ``resnet``.
        example_shape: the shape of one input example, ``(features,)`` or ``(C, H, W)``
            (channels first): checked against the network, and it sets the number of final
            poolings of the Myrtle networks (default: 32 x 32 images).

    Returns:
        The `Layer`.

    Example:
        >>> net = preset("myrtle5", (3, 32, 32))
    """
    if name not in PRESETS:
        close = difflib.get_close_matches(str(name), list(PRESETS), n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ValueError(f"preset: unknown network {name!r}{hint}; the presets are {', '.join(PRESETS)}.")
    return PRESETS[name][0](example_shape)

