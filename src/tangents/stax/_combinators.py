"""Combinators: `serial`, `parallel`, `repeat`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._layer import KernelTree, Layer, Params, ShapeTree, _tree_shapes
from ._requirements import Requirements


def _check_layers(caller: str, layers: Sequence[Any]) -> tuple[Layer, ...]:
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(
                f"{caller}: argument {i} must be a tangents.stax layer (e.g. stax.Dense(512)), "
                f"got {type(layer).__name__}. Pass the layer object itself, not an "
                f"(init_fn, apply_fn, kernel_fn) tuple unpacked from it."
            )
    return tuple(layers)


class _Serial(Layer):
    display_name = "serial"

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.children = _check_layers("serial", layers)

    def __repr__(self) -> str:
        return f"serial({', '.join(map(repr, self.children))})"

    @property
    def requirements(self) -> Requirements:
        req = Requirements()
        for layer in self.children:
            req = req.then(layer.requirements)
        return req

    def output_shape(self, input_shape: ShapeTree) -> ShapeTree:
        for layer in self.children:
            input_shape = layer.output_shape(input_shape)
        return input_shape

    def init_params(self, generator, input_shape, dtype, device) -> Params:  # noqa: ANN001
        params = []
        for layer in self.children:
            params.append(layer.init_params(generator, input_shape, dtype, device))
            input_shape = layer.output_shape(input_shape)
        return tuple(params)

    def apply(self, params: Params, x: Any, **kwargs: Any) -> Any:
        for layer, p in zip(self.children, params):
            x = layer.apply(p, x, **kwargs)
        return x

    def apply_with_masks(self, params: Params, x: Any, mask: Any, **kwargs: Any) -> tuple[Any, Any]:
        for child, p in zip(self.children, params):
            x, mask = child.apply_with_masks(p, x, mask, **kwargs)
        return x, mask

    def propagate(self, k: KernelTree, **kwargs: Any) -> KernelTree:
        for layer in self.children:
            k = layer.transform(k, **kwargs)
        return k


def serial(*layers: Layer) -> Layer:
    """Composes layers in sequence: ``serial(f, g)(x) = g(f(x))``.

    The kernel is propagated through each layer in turn.

    Example:
        >>> init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(512), stax.Relu(), stax.Dense(1))
    """
    return _Serial(layers)


class _Parallel(Layer):
    display_name = "parallel"

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.children = _check_layers("parallel", layers)

    def __repr__(self) -> str:
        return f"parallel({', '.join(map(repr, self.children))})"

    @property
    def requirements(self) -> Requirements:
        req: Requirements | None = None
        for layer in self.children:
            req = layer.requirements if req is None else req.alongside(layer.requirements)
        return req or Requirements()

    def _check_arity(self, xs: Any, what: str) -> None:
        if not isinstance(xs, (list, tuple)) or len(xs) != len(self.children):
            got = f"a list of {len(xs)}" if isinstance(xs, (list, tuple)) else type(xs).__name__
            raise ValueError(
                f"parallel: expected a list of {len(self.children)} {what} (one per branch; "
                f"use stax.FanOut({len(self.children)}) before it), got {got}."
            )

    def output_shape(self, input_shape: ShapeTree) -> ShapeTree:
        self._check_arity(input_shape, "input shapes")
        return type(input_shape)(layer.output_shape(s) for layer, s in zip(self.children, input_shape))

    def init_params(self, generator, input_shape, dtype, device) -> Params:  # noqa: ANN001
        self._check_arity(input_shape, "input shapes")
        return tuple(
            layer.init_params(generator, s, dtype, device) for layer, s in zip(self.children, input_shape)
        )

    def apply(self, params: Params, x: Any, **kwargs: Any) -> Any:
        self._check_arity(x, "inputs")
        return type(x)(layer.apply(p, xi, **kwargs) for layer, p, xi in zip(self.children, params, x))

    def apply_with_masks(self, params: Params, x: Any, mask: Any, **kwargs: Any) -> tuple[Any, Any]:
        masks = mask if isinstance(mask, (list, tuple)) else [mask] * len(x)
        pairs = [c.apply_with_masks(p, xi, mi, **kwargs) for c, p, xi, mi in zip(self.children, params, x, masks)]
        return type(x)(q[0] for q in pairs), type(x)(q[1] for q in pairs)

    def propagate(self, k: KernelTree, **kwargs: Any) -> KernelTree:
        self._check_arity(k, "kernels")
        return type(k)(layer.transform(ki, **kwargs) for layer, ki in zip(self.children, k))


def parallel(*layers: Layer) -> Layer:
    """Applies layers side by side to a list of inputs, returning a list of outputs.

    Usually between `FanOut` and a fan-in (`FanInSum`, `FanInConcat`, `FanInProd`).

    Example:
        >>> block = stax.serial(stax.FanOut(2), stax.parallel(stax.Dense(64), stax.Identity()),
        ...                     stax.FanInSum())
    """
    return _Parallel(layers)


class _Repeat(Layer):
    display_name = "repeat"

    def __init__(self, layer: Layer, n: int) -> None:
        (layer,) = _check_layers("repeat", [layer])
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"repeat: n must be a non-negative integer, got {n!r}.")
        self.layer, self.n = layer, n
        self.children = (layer,)
        self.param_children = (layer,) * n

    def __repr__(self) -> str:
        return f"repeat({self.layer!r}, {self.n})"

    @property
    def requirements(self) -> Requirements:
        req = Requirements()
        for _ in range(min(self.n, 2)):
            req = req.then(self.layer.requirements)
        return req

    def output_shape(self, input_shape: ShapeTree) -> ShapeTree:
        if self.n == 0:
            return input_shape
        out = self.layer.output_shape(input_shape)
        if out != input_shape:
            raise ValueError(
                f"repeat: the repeated layer maps shape {input_shape} to {out}, but repeat "
                f"needs it to keep the shape; use stax.serial(*[layer] * n) instead."
            )
        return out

    def init_params(self, generator, input_shape, dtype, device) -> Params:  # noqa: ANN001
        self.output_shape(input_shape)
        return tuple(self.layer.init_params(generator, input_shape, dtype, device) for _ in range(self.n))

    def apply(self, params: Params, x: Any, **kwargs: Any) -> Any:
        for p in params:
            x = self.layer.apply(p, x, **kwargs)
        return x

    def apply_with_masks(self, params: Params, x: Any, mask: Any, **kwargs: Any) -> tuple[Any, Any]:
        for p in params:
            x, mask = self.layer.apply_with_masks(p, x, mask, **kwargs)
        return x, mask

    def propagate(self, k: KernelTree, **kwargs: Any) -> KernelTree:
        self.output_shape(_tree_shapes(k, "shape1"))  # the repeated layer must keep the shape
        for _ in range(self.n):
            k = self.layer.transform(k, **kwargs)
        return k


def repeat(layer: Layer, n: int) -> Layer:
    """``layer`` applied ``n`` times in sequence, each time with its own parameters.

    Same as ``serial(*[layer] * n)``; the layer must keep its input's shape.
    """
    return _Repeat(layer, n)
