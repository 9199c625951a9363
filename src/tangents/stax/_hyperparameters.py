"""A network's hyperparameters by name, and copies of it with other values.

A layer declares the numbers its kernel can be differentiated in by
`Layer.hyperparameter_names` (``Dense``: ``("W_std", "b_std")``, ``Erf``: ``("a", "b",
"c")``, ...). Across a network they are named by the path of child indices to the layer,
then the attribute: in ``serial(Dense(512, W_std=1.5), Relu(), Dense(1))`` the first
layer's weight standard deviation is ``"0.W_std"`` (a single layer's is ``"W_std"``). A
layer object used twice is one set of hyperparameters, named at its first place.

Both functions work on duck-typed layers (``children``, ``hyperparameter_names``), so
`_layer` can use them without an import circle.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from .._numerics import differentiable

__all__ = ["differentiated_hyperparameters", "hyperparameters", "with_hyperparameters"]


def _walk(layer: Any, path: str, seen: set[int]) -> Iterator[tuple[str, Any, str]]:
    """``(full name, layer, attribute)`` of every declared hyperparameter that is not ``None``."""
    if id(layer) in seen:
        return
    seen.add(id(layer))
    for attribute in getattr(layer, "hyperparameter_names", ()):
        if getattr(layer, attribute, None) is not None:
            yield f"{path}{attribute}", layer, attribute
    for i, child in enumerate(getattr(layer, "children", ())):
        yield from _walk(child, f"{path}{i}.", seen)


def hyperparameters(layer: Any) -> dict[str, float | torch.Tensor]:
    """Every hyperparameter of ``layer`` (and of the layers inside it) by its name.

    Args:
        layer: a `tangents.stax` layer or combinator.

    Returns:
        ``{name: value}`` in network order, e.g. ``{"0.W_std": 1.5, "0.b_std": 0.05,
        "2.W_std": 1.0}``; absent biases (``b_std=None``) are left out.

    Example:
        >>> hyperparameters(stax.serial(stax.Dense(8, W_std=1.5), stax.Erf()))
        {'0.W_std': 1.5, '1.a': 1.0, '1.b': 1.0, '1.c': 0.0}
    """
    return {name: getattr(owner, attribute) for name, owner, attribute in _walk(layer, "", set())}


def with_hyperparameters(layer: Any, values: Mapping[str, float | torch.Tensor]) -> Any:
    """A copy of ``layer`` with the hyperparameters named in ``values`` replaced.

    ``layer`` is unchanged; layers holding none of the replaced names are shared with it.
    Values are set as given (floats or 0-d tensors, e.g. tensors requiring grad), without
    the constructor's validation: the caller checks them.

    Raises:
        KeyError: a name that is not one of ``hyperparameters(layer)``, listing the valid ones.
    """
    targets: dict[int, dict[str, Any]] = {}
    for name, owner, attribute in _walk(layer, "", set()):
        if name in values:
            targets.setdefault(id(owner), {})[attribute] = values[name]
    unknown = set(values) - {name for name, _, _ in _walk(layer, "", set())}
    if unknown:
        valid = ", ".join(hyperparameters(layer)) or "none"
        raise KeyError(f"with_hyperparameters: unknown hyperparameter(s) {sorted(unknown)}; this network has {valid}.")
    return _copy(layer, targets, {})


def _copy(layer: Any, targets: dict[int, dict[str, Any]], memo: dict[int, Any]) -> Any:
    if id(layer) in memo:
        return memo[id(layer)]
    children = getattr(layer, "children", ())
    new_children = [_copy(child, targets, memo) for child in children]
    changed = id(layer) in targets or any(new is not old for new, old in zip(new_children, children))
    if not changed:
        memo[id(layer)] = layer
        return layer
    out = copy.copy(layer)
    mapping = {id(old): new for old, new in zip(children, new_children)}
    for key, value in vars(out).items():  # children and any other reference to them (repeat's)
        if isinstance(value, tuple) and any(id(v) in mapping for v in value):
            setattr(out, key, tuple(mapping.get(id(v), v) for v in value))
        elif id(value) in mapping:
            setattr(out, key, mapping[id(value)])
    for attribute, value in targets.get(id(layer), {}).items():
        setattr(out, attribute, value)
    memo[id(layer)] = out
    return out


def differentiated_hyperparameters(layer: Any) -> bool:
    """Whether any hyperparameter of ``layer`` is a tensor being differentiated (autograd,
    forward mode or a ``torch.func`` transform): kernels are then computed eagerly, one tile
    after another (compiled programs and worker threads would not carry the derivatives)."""
    values = [v for v in hyperparameters(layer).values() if isinstance(v, torch.Tensor)]
    return bool(values) and differentiable(*values)
