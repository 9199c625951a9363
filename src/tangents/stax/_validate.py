"""The user's call, checked once at each entry point of a `stax` network.

``kernel_fn``, ``apply_fn``, ``init_fn`` and the forward pass of ``to_module`` validate what
they are given here, before any layer runs, so that a mistake in the call is reported as
such: which argument, what was expected, what was received, and how to fix it. Layers
then compute without checking the user's input again (they still check their own
structure, e.g. a `Dense` layer's weights against its input's width).

* kernel inputs ``x1``, ``x2``: tensors or numpy arrays of float32/float64, on a real
  device (not ``meta``), at least 2-D, not empty, finite, and of one shape apart from the
  batch axis (`as_input_tensors`);
* finite-network inputs: of the parameters' dtype and device, not ``meta`` unless the
  parameters are, finite; parameters in the tree structure of the network and of the
  shapes that ``init_fn`` gives for inputs of ``x``'s shape (`check_apply_call`, once per
  shape);
* per-call keyword arguments: only those documented and those that a layer of the network
  declares it takes (`check_call_kwargs`): a typo is a ``TypeError`` naming it;
* ``init_fn``'s seed, input shape, dtype and device (`check_init_call`).

Checks of values (NaN, ``meta``) are skipped for tensors that ``torch.func`` transforms are
tracing (``vmap``, ``grad``), which carry no values to inspect and whose shapes are those of
one example.
"""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._torch_private import is_functorch_wrapped

if TYPE_CHECKING:
    from ._layer import Layer

_KERNEL_DTYPES = (torch.float32, torch.float64)

#: Keyword arguments every ``kernel_fn`` takes, besides those its layers declare.
KERNEL_FN_KEYWORDS = ("get", "diagonal_batch", "diagonal_spatial", "compile", "mask_constant")
#: Keyword arguments every ``apply_fn`` takes (neural-tangents' conventions: ``rng`` for
#: stochastic layers, ``mode`` 'train'/'test'), besides those its layers declare.
APPLY_FN_KEYWORDS = ("mask_constant", "rng", "mode")


# ---------------------------------------------------------------------- kernel_fn inputs


def _describe_dtype(x: torch.Tensor) -> str:
    if x.dtype == torch.bool:
        return "boolean"
    if x.is_complex():
        return "complex"
    if not x.is_floating_point():
        return "integer"
    return "low-precision"


def _as_kernel_tensor(x: Any, name: str) -> torch.Tensor:
    """``x`` as a tensor, validated for `as_input_tensors`."""
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise TypeError(f"kernel_fn: {name} must be a numeric array, got a numpy array of dtype object.")
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise TypeError(f"kernel_fn: {name} must be a torch.Tensor or a numpy array, got {type(x).__name__}.")
    if x.dtype not in _KERNEL_DTYPES:
        raise TypeError(
            f"kernel_fn: {name} must be float32 or float64, got {_describe_dtype(x)} dtype {x.dtype}; "
            f"convert it first, e.g. {name}.double()."
        )
    if x.device.type == "meta":
        raise ValueError(
            f"kernel_fn: {name} is on the 'meta' device, which holds shapes but no values, and a "
            f"kernel needs the values; create it on a real device, e.g. torch.randn(..., device='cpu')."
        )
    if x.ndim < 2:
        raise ValueError(
            f"kernel_fn: {name} must be at least 2-D (a batch axis and a feature axis), "
            f"got shape {tuple(x.shape)}; for a single example use {name}[None]."
        )
    if x.numel() == 0:
        raise ValueError(f"kernel_fn: {name} is empty (shape {tuple(x.shape)}); every axis needs at least one entry.")
    if not is_functorch_wrapped(x):
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(
                f"kernel_fn: {name} contains {bad} NaN or infinite value(s) (shape {tuple(x.shape)}); "
                f"kernels of such inputs are undefined. Remove or impute them, or pass "
                f"mask_constant=float('nan') to treat NaN entries as absent (variable-length inputs)."
            )
    return x


def as_input_tensors(x1: Any, x2: Any) -> tuple[Any, Any]:
    """Validates and converts ``kernel_fn``'s inputs (tensors, numpy arrays, or lists of them).

    Returns:
        ``(x1, x2)`` as tensors of one floating dtype (the wider of the two) and device;
        ``x2`` stays ``None`` when not given.

    Raises:
        TypeError: not a tensor/array, or not float32/float64.
        ValueError: on the ``meta`` device, fewer than 2 axes, empty, NaN/inf, x1/x2 on
            different devices or of shapes that disagree apart from the batch axis.
    """
    if isinstance(x1, (list, tuple)):
        if x2 is not None and (not isinstance(x2, (list, tuple)) or len(x2) != len(x1)):
            raise ValueError("kernel_fn: x1 is a list of inputs, so x2 must be None or a list of the same length.")
        if not x1:
            raise ValueError("kernel_fn: x1 is an empty list; pass a tensor, or one tensor per input of the network.")
        pairs = [as_input_tensors(a, None if x2 is None else b) for a, b in zip(x1, x2 or [None] * len(x1))]
        return type(x1)(p[0] for p in pairs), (None if x2 is None else type(x1)(p[1] for p in pairs))

    x1 = _as_kernel_tensor(x1, "x1")
    if x2 is None:
        return x1, None
    x2 = _as_kernel_tensor(x2, "x2")
    if x1.device != x2.device:
        raise ValueError(f"kernel_fn: x1 is on {x1.device} but x2 is on {x2.device}; move them to one device.")
    if x1.shape[1:] != x2.shape[1:] or x1.ndim != x2.ndim:
        raise ValueError(
            "kernel_fn: x1 and x2 must have the same shape apart from the batch axis, "
            f"got {tuple(x1.shape)} and {tuple(x2.shape)}."
        )
    dtype = torch.promote_types(x1.dtype, x2.dtype)
    return x1.to(dtype), x2.to(dtype)


# ---------------------------------------------------------------------- keyword arguments


def declared_kwargs(layer: Layer, kind: str) -> dict[str, list[str]]:
    """``{keyword: [names of the layers that take it]}`` over ``layer``'s tree, for
    ``kind`` = ``"kernel"`` (``Layer.kernel_kwargs``) or ``"apply"`` (``Layer.apply_kwargs``)."""
    out: dict[str, list[str]] = {}

    def visit(node: Layer) -> None:
        for key in getattr(node, f"{kind}_kwargs"):
            names = out.setdefault(key, [])
            if node.name not in names:
                names.append(node.name)
        for child in node.children:
            visit(child)

    visit(layer)
    return out


def _join(words: Sequence[str]) -> str:
    words = list(words)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def check_call_kwargs(layer: Layer, kwargs: Iterable[str], caller: str) -> None:
    """Raises a ``TypeError`` for a keyword argument of ``kernel_fn``/``apply_fn`` that
    neither the entry point documents nor any layer of the network declares.

    Args:
        layer: the network.
        kwargs: the names of the keyword arguments given (besides the documented ones).
        caller: ``"kernel_fn"`` or ``"apply_fn"``.
    """
    kind = "kernel" if caller == "kernel_fn" else "apply"
    declared = declared_kwargs(layer, kind)
    documented = KERNEL_FN_KEYWORDS if kind == "kernel" else APPLY_FN_KEYWORDS
    for key in kwargs:
        if key in declared or key in documented:
            continue
        anywhere = _keywords_of_all_layers(kind, layer)
        close = difflib.get_close_matches(key, list(documented) + sorted(declared) + sorted(anywhere), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        if declared:
            layers = "; ".join(f"{k} (for {_join(v)})" for k, v in sorted(declared.items()))
            extra = f", and the keywords its layers declare: {layers}"
        else:
            extra = ", and no layer of this network declares another one"
        elsewhere = anywhere.get(key)
        why = (
            f"{key!r} is taken by {_join(elsewhere)}, which this network does not contain"
            if elsewhere
            else "no layer would use it"
        )
        raise TypeError(
            f"{caller}: unexpected keyword argument {key!r}{hint}. {caller} takes {_join(documented)}"
            f"{extra}. Remove {key!r} or correct its name: {why}."
        )


def _keywords_of_all_layers(kind: str, layer: Layer) -> dict[str, list[str]]:
    """``{keyword: [layer classes]}`` over every `Layer` class defined (for error hints);
    ``layer`` is any layer: its topmost class that declares ``{kind}_kwargs`` is `Layer`."""
    root = next(c for c in reversed(type(layer).__mro__) if hasattr(c, f"{kind}_kwargs"))
    out: dict[str, list[str]] = {}
    stack = list(root.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        for key in getattr(cls, f"{kind}_kwargs", ()):
            names = out.setdefault(key, [])
            if cls.__name__ not in names and not cls.__name__.startswith("_"):
                names.append(cls.__name__)
    return {k: sorted(v) for k, v in out.items() if v}


def check_mask_constant(mask_constant: Any, caller: str) -> None:
    """``mask_constant`` is ``None`` or a real number (NaN and ±inf allowed)."""
    if mask_constant is None:
        return
    if isinstance(mask_constant, bool) or not isinstance(mask_constant, (int, float, np.integer, np.floating)):
        raise TypeError(
            f"{caller}: mask_constant must be None or a number (NaN and inf allowed), got {mask_constant!r}; "
            f"entries of the inputs equal to it are treated as absent, e.g. mask_constant=float('nan')."
        )


# ---------------------------------------------------------------------- init_fn


def check_init_call(dtype: Any, device: Any) -> tuple[torch.dtype, torch.device]:
    """``init_fn``'s ``dtype`` and ``device``, validated (``None``: torch's default dtype, CPU).

    Raises:
        TypeError: ``dtype`` is not a floating ``torch.dtype``.
        ValueError: ``device`` is not a device name torch knows.
    """
    if dtype is None:
        dtype = torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(
            f"init_fn: dtype must be a floating torch.dtype such as torch.float32 or torch.float64 "
            f"(parameters are sampled from a Gaussian), got {dtype!r}."
        )
    if device is None:
        return dtype, torch.device("cpu")
    if isinstance(device, torch.device):
        return dtype, device
    try:
        return dtype, torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"init_fn: device must be a torch.device or a name such as 'cpu' or 'cuda:0', got {device!r} "
            f"({str(error).splitlines()[0][:120]})."
        ) from None


def check_input_shape(shape: Any, caller: str = "init_fn") -> None:
    """Every size in ``shape`` (a tuple of ints, or a list of such) is positive or ``-1``."""
    if isinstance(shape, (list, tuple)) and shape and all(isinstance(s, (list, tuple)) for s in shape):
        for s in shape:
            check_input_shape(s, caller)
        return
    bad = [s for s in shape if s < 1 and s != -1]
    if bad:
        raise ValueError(
            f"{caller}: input_shape {tuple(shape)} has size {bad[0]}; every axis needs a positive size, "
            f"or -1 for 'any size' (usually the batch axis), e.g. (-1, 784)."
        )


# ---------------------------------------------------------------------- apply_fn


def _tensors(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (list, tuple)):
        return [t for item in tree for t in _tensors(item)]
    return []


def _children_for_params(layer: Layer) -> Sequence[Layer]:
    return getattr(layer, "param_children", layer.children)


def check_params_structure(layer: Layer, params: Any, caller: str, path: str = "params") -> None:
    """``params`` has the nested-tuple structure of ``layer``'s parameters (as `init_fn`
    returns them): one entry per child of a combinator, one per ``param_names`` of a layer."""
    children = _children_for_params(layer) if layer.children else ()
    if layer.children:
        if not isinstance(params, (list, tuple)) or len(params) != len(children):
            raise ValueError(
                f"{caller}: {path} must be the parameters of {layer.name}: a tuple of {len(children)} "
                f"entries (one per layer, as init_fn returns them), got {_describe(params)}. Pass the "
                f"params of this network's own init_fn (or model.params() of its to_module)."
            )
        for i, (child, p) in enumerate(zip(children, params)):
            check_params_structure(child, p, caller, f"{path}[{i}]")
        return
    expected = len(layer.param_names)
    if expected == 0:
        if params is None or (isinstance(params, (list, tuple)) and len(_tensors(params)) == 0):
            return
        raise ValueError(
            f"{caller}: {path} belongs to {layer.name}, which has no parameters, so it must be (), got "
            f"{_describe(params)}; the params do not match this network (pass those of its init_fn)."
        )
    if not isinstance(params, (list, tuple)) or len(params) != expected:
        raise ValueError(
            f"{caller}: {path} must be the parameters of {layer.name}: a tuple "
            f"({', '.join(layer.param_names)}), got {_describe(params)}. Pass the params of this "
            f"network's own init_fn (or model.params() of its to_module)."
        )
    for name, p in zip(layer.param_names, params):
        if p is not None and not isinstance(p, torch.Tensor):
            raise TypeError(
                f"{caller}: {path} ({layer.name}'s {name}) must be a torch.Tensor or None, got {type(p).__name__}."
            )


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} entries"
    return repr(value) if value is None else type(value).__name__


def check_apply_call(layer: Layer, params: Any, x: Any, caller: str) -> Any:
    """Validates a finite-network call ``apply_fn(params, x)`` (or ``model(x)``).

    Returns:
        ``x`` (numpy arrays become tensors).

    Raises:
        TypeError: ``x`` is not a tensor (or a list of them for a multi-input network) or not
            floating; parameters and inputs of different dtypes.
        ValueError: parameters not in the network's structure; ``x`` on another device than
            the parameters, on ``meta`` without them, with NaN or infinite values, or of a
            shape the network's layers reject or its parameters were not made for.
    """
    check_params_structure(layer, params, caller)
    x = _as_apply_inputs(x, caller)
    leaves = _tensors(x)
    weights = _tensors(params)
    for t in leaves:
        _check_apply_tensor(t, weights, caller)
    if any(is_functorch_wrapped(t) for t in leaves + weights):
        return x  # traced by torch.func: shapes of one example, nothing to compare
    key = (_shapes(x), tuple(None if p is None else tuple(p.shape) for p in _leaves(params)))
    seen = _FITTING_SHAPES.setdefault(layer, set())
    if key in seen:
        return x
    try:  # the layers' own shape rules (ranks, layouts, fan-in widths, ...)
        layer.output_shape(_shapes(x))
    except ValueError as error:
        raise ValueError(f"{caller}: the network cannot run on x of shape {_shapes(x)}: {error}") from error
    why = _params_misfit(layer, params, x, caller)
    if why is not None:
        hint = _layer_says(layer, params, x)
        raise ValueError(why if hint is None else f"{why} The layer says: {hint}")
    if len(seen) < _MAX_FITTING_SHAPES:
        seen.add(key)
    return x


def _on_meta(tree: Any) -> Any:
    """``tree`` with every tensor replaced by an empty one of its shape on ``meta``."""
    if isinstance(tree, torch.Tensor):
        return torch.empty(tree.shape, dtype=tree.dtype, device="meta")
    if isinstance(tree, (list, tuple)):
        return type(tree)(_on_meta(t) for t in tree)
    return tree


def _layer_says(layer: Layer, params: Any, x: Any) -> str | None:
    """The layer's own explanation of a misfit (e.g. a layout hint: channels first), from
    running the network on ``meta`` copies of ``params`` and ``x`` (shapes only, no
    arithmetic); ``None`` when it gives none. Called on the error path only."""
    try:
        layer.apply(_on_meta(params), _on_meta(x))
    except ValueError as error:
        return str(error)
    except Exception:  # noqa: BLE001 - a raw error from inside torch explains nothing more
        return None
    return None


#: Input and parameter shapes already found to fit each network (checked once per shape).
_FITTING_SHAPES: weakref.WeakKeyDictionary[Layer, set] = weakref.WeakKeyDictionary()
_MAX_FITTING_SHAPES = 64


def _leaves(tree: Any) -> list[torch.Tensor | None]:
    """Tensors and ``None``s of a parameter tree, in order."""
    if tree is None or isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (list, tuple)):
        return [leaf for item in tree for leaf in _leaves(item)]
    return []


def _as_apply_inputs(x: Any, caller: str) -> Any:
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise TypeError(f"{caller}: x must be a numeric array, got a numpy array of dtype object.")
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, (list, tuple)) and x and all(isinstance(t, (torch.Tensor, np.ndarray, list, tuple)) for t in x):
        if all(isinstance(t, (torch.Tensor, np.ndarray)) for t in x):
            return type(x)(_as_apply_inputs(t, caller) for t in x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{caller}: x must be a torch.Tensor (or a numpy array, or a list of them for a network "
            f"with several inputs), got {type(x).__name__}."
        )
    return x


def _shapes(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return type(x)(_shapes(t) for t in x)
    return tuple(x.shape)


def _check_apply_tensor(x: torch.Tensor, weights: list[torch.Tensor], caller: str) -> None:
    fix = "model.to(x.dtype)" if caller.startswith("model") else "init_fn(..., dtype=x.dtype)"
    if not (x.is_floating_point()):
        raise TypeError(
            f"{caller}: x must be a floating tensor, got {_describe_dtype(x)} dtype {x.dtype}; convert it "
            f"first, e.g. x.to({weights[0].dtype if weights else torch.get_default_dtype()})."
        )
    meta_params = bool(weights) and weights[0].device.type == "meta"
    if x.device.type == "meta" and not meta_params and not is_functorch_wrapped(x):
        raise ValueError(
            f"{caller}: x is on the 'meta' device, which holds shapes but no values; create it on "
            f"a real device (or put the parameters on 'meta' too, for shapes only)."
        )
    if weights:
        w = weights[0]
        if x.dtype != w.dtype:
            raise TypeError(
                f"{caller}: x is {x.dtype} but the parameters are {w.dtype}; use one dtype for both: "
                f"x.to({w.dtype}), or parameters in {x.dtype} ({fix})."
            )
        if x.device != w.device:
            where = "model.to(x.device)" if caller.startswith("model") else "init_fn(..., device=x.device)"
            raise ValueError(
                f"{caller}: x is on {x.device} but the parameters are on {w.device}; move one of them: "
                f"x.to({str(w.device)!r}), or parameters on {x.device} ({where})."
            )
        mixed = {(t.dtype, t.device) for t in weights}
        if len(mixed) > 1:
            raise TypeError(
                f"{caller}: the parameters mix dtypes/devices {sorted(str(m) for m in mixed)}; "
                f"sample them with one init_fn(..., dtype=..., device=...) call (or model.to(...))."
            )
    if is_functorch_wrapped(x):
        return  # traced by torch.func: no values, and the shape of one example
    if x.device.type != "meta" and x.numel() and not bool(torch.isfinite(x.detach()).all()):
        bad = int((~torch.isfinite(x.detach())).sum())
        raise ValueError(
            f"{caller}: x contains {bad} NaN or infinite value(s) (shape {tuple(x.shape)}), so the "
            f"outputs would be NaN; remove or impute them, or pass mask_constant=float('nan') to "
            f"treat NaN entries as absent (variable-length inputs)."
        )


def _params_misfit(layer: Layer, params: Any, x: Any, caller: str) -> str | None:
    """Why the parameters do not fit inputs of ``x``'s shape, or ``None`` if they do: the
    parameter shapes ``init_fn`` gives for that shape (on the ``meta`` device: no data, no
    random numbers drawn) compared with those given."""
    weights = _tensors(params)
    if not weights:
        return None
    try:
        expected = layer.init_params(None, _shapes(x), weights[0].dtype, torch.device("meta"))
    except Exception:  # noqa: BLE001 - no diagnosis possible: the layers' own checks stand
        return None
    for path, owner, want, got in _pairs(layer, expected, params, "params"):
        if (want is None) != (got is None) or (want is not None and tuple(want.shape) != tuple(got.shape)):
            have = None if got is None else tuple(got.shape)
            need = None if want is None else tuple(want.shape)
            return (
                f"{caller}: x has shape {_shapes(x)}, but the parameters were made for inputs of another "
                f"shape: {path} ({owner}) has shape {have} where inputs of shape {_shapes(x)} need "
                f"{need}. Pass inputs of the shape given to init_fn (or to_module), or initialise for "
                f"this shape: init_fn(rng, (-1, *x.shape[1:]))."
            )
    return None


def _pairs(layer: Layer, expected: Any, given: Any, path: str) -> Iterable[tuple[str, str, Any, Any]]:
    """``(path, "W of Dense(...)", expected, given)`` for each parameter of ``layer``'s tree."""
    if layer.children:
        if isinstance(expected, (list, tuple)) and isinstance(given, (list, tuple)):
            for i, (child, e, g) in enumerate(zip(_children_for_params(layer), expected, given)):
                yield from _pairs(child, e, g, f"{path}[{i}]")
        return
    if not (isinstance(expected, (list, tuple)) and isinstance(given, (list, tuple))):
        return
    names = list(layer.param_names) + [str(i) for i in range(len(layer.param_names), len(expected))]
    for i, (name, e, g) in enumerate(zip(names, expected, given)):
        if e is None or isinstance(e, torch.Tensor):
            yield f"{path}[{i}]", f"{name} of {layer!r}", e, g
