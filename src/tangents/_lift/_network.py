"""`LiftedNetwork`: a stax layer whose sublayers form the directed acyclic graph of a torch model.

Each node applies one stax layer to the outputs of earlier nodes (one input, or a list of
them for fan-ins such as `stax.FanInSum`), exactly as ``stax.serial``/``stax.parallel``
compose layers, but in the order of the torch graph, so skip connections and branches need
no rewriting. The network is a `tangents.stax.Layer`: ``kernel_fn``, ``init_fn``,
``apply_fn`` and ``to_module`` work as for any stax network.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import torch

from ..stax import Layer
from ..stax._requirements import Requirements

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Node:
    """One layer of a lifted network.

    Attributes:
        name: the torch.fx node's name (unique).
        layer: the stax layer applied.
        inputs: indices of the nodes it reads (``0`` is the network's input); one index
            passes a single value, several pass a list.
        path: the torch module path it came from (``'layer2.0.downsample.1'``; ``''`` for
            the model's own ``forward``).
        torch_op: the torch operation, as written (``'nn.Conv2d(3, 16, ...)'``, ``'F.relu'``).
        notes: how constants were read (``W_std``, ``b_std``, ...), for ``print``.
    """

    name: str
    layer: Layer
    inputs: tuple[int, ...]
    path: str
    torch_op: str
    notes: tuple[str, ...] = ()


class LiftedNetwork(Layer):
    """The stax network lifted from a torch model by `tangents.from_torch`.

    Attributes:
        nodes: the layers in topological order (node ``i + 1`` is ``nodes[i]``; node 0 is the
            input).
        output: the index of the node whose value the network returns.
        parameterization: ``'standard'`` or ``'ntk'``.
        model_name: the torch model's class name.
        input_channel_axis: the channel axis of the network's inputs.
    """

    def __init__(
        self,
        nodes: Sequence[Node],
        output: int,
        parameterization: str,
        model_name: str,
        input_shape: Shape,
        input_channel_axis: int,
    ) -> None:
        self.nodes = tuple(nodes)
        self.output = output
        self.parameterization = parameterization
        self.model_name = model_name
        self.input_shape = tuple(input_shape)
        self.input_channel_axis = input_channel_axis
        self.children = tuple(node.layer for node in self.nodes)
        self.display_name = f"from_torch({model_name})"

    # ------------------------------------------------------------------ composition

    def _inputs(self, values: list[Any], node: Node) -> Any:
        if len(node.inputs) == 1:
            return values[node.inputs[0]]
        return [values[i] for i in node.inputs]

    @property
    def requirements(self) -> Requirements:
        reqs: list[Requirements] = [Requirements(batch_axis=0, channel_axis=self.input_channel_axis)]
        for node in self.nodes:
            incoming = None
            for i in node.inputs:
                incoming = reqs[i] if incoming is None else incoming.alongside(reqs[i])
            reqs.append(incoming.then(node.layer.requirements))
        # every node's requirement reaches the output through the nodes that read it; a node
        # no path leads from to the output still shapes the input kernel (it is computed)
        total = reqs[self.output]
        for i, req in enumerate(reqs):
            if i != self.output:
                total = total.alongside(req)
        return total

    def output_shape(self, input_shape: Any) -> Any:
        shapes: list[Any] = [input_shape]
        for node in self.nodes:
            shapes.append(node.layer.output_shape(self._inputs(shapes, node)))
        return shapes[self.output]

    def init_params(self, generator, input_shape, dtype, device):  # noqa: ANN001, ANN201
        shapes: list[Any] = [input_shape]
        params = []
        for node in self.nodes:
            shape_in = self._inputs(shapes, node)
            params.append(node.layer.init_params(generator, shape_in, dtype, device))
            shapes.append(node.layer.output_shape(shape_in))
        return tuple(params)

    def apply(self, params: Any, x: Any, **kwargs: Any) -> Any:
        if kwargs.get("mask") is not None:
            raise ValueError(
                f"{self.name}: masked inputs (mask_constant) are not supported by lifted networks."
            )
        kwargs.pop("mask", None)
        values: list[Any] = [x]
        for node, p in zip(self.nodes, params):
            values.append(node.layer.apply(p, self._inputs(values, node), **kwargs))
        return values[self.output]

    def propagate(self, k: Any, **kwargs: Any) -> Any:
        if getattr(k, "mask1", None) is not None or getattr(k, "mask2", None) is not None:
            raise ValueError(f"{self.name}: masked inputs (mask_constant) are not supported by lifted networks.")
        values: list[Any] = [k]
        for node in self.nodes:
            try:
                values.append(node.layer.transform(self._inputs(values, node), **kwargs))
            except (ValueError, TypeError) as error:
                raise type(error)(f"{self.name}: {describe(node)}: {error}") from error
        return values[self.output]

    # ------------------------------------------------------------------ printing

    def __repr__(self) -> str:
        lines = [
            f"from_torch({self.model_name}), parameterization={self.parameterization!r}: {len(self.nodes)} layers "
            f"(W_std, b_std as read from the model at its widths)",
            f"  [0] input {_shape(self.input_shape)}, channels on axis {self.input_channel_axis}",
        ]
        for i, node in enumerate(self.nodes, start=1):
            args = ", ".join(f"[{j}]" for j in node.inputs)
            lines.append(f"  [{i}] {_compact(repr(node.layer))}  <- {args}")
            lines.append(f"        from {node.torch_op}" + (f" at `{node.path}`" if node.path else ""))
            for note in node.notes:
                lines.append(f"        {note}")
        lines.append(f"  output: [{self.output}]")
        return "\n".join(lines)


def _compact(text: str) -> str:
    """A layer's repr with default layouts dropped and floats to 6 significant digits."""
    text = text.replace("dimension_numbers=('NCHW', 'OIHW', 'NCHW'), ", "")
    text = text.replace("dimension_numbers=('NCH', 'OIH', 'NCH'), ", "")
    text = text.replace("dimension_numbers=('NCHWD', 'OIHWD', 'NCHWD'), ", "")
    return re.sub(r"\d+\.\d+(e-?\d+)?", lambda m: f"{float(m.group(0)):.6g}", text)


def describe(node: Node) -> str:
    """``'node conv1 (nn.Conv2d at `features.0`)'`` for messages."""
    return f"node {node.name} ({node.torch_op}" + (f" at `{node.path}`)" if node.path else ")")


def _shape(shape: Shape) -> str:
    return "(N, " + ", ".join(map(str, shape[1:])) + ")" if len(shape) > 1 else "(N,)"


def first_tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else first_tensor(x[0])
