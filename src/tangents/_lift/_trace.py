"""Tracing a ``torch.nn.Module`` with torch.fx, keeping every node's module path and example value.

`trace` returns the fx graph of the model's ``forward`` and, for every node, the module
path it came from (``layer2.0.downsample.1``), the user's source line, and its value on
the example input (shapes, and the integers that shape arithmetic produces), recorded by
running the graph once.

Leaf modules (recorded as one ``call_module`` node, never traced into) are every module
defined in ``torch.nn`` except the containers (``Sequential``, ``ModuleList``,
``ModuleDict``); the user's own modules are traced through, so their ``forward`` becomes
plain nodes. Python control flow on traced values stops the trace: `LiftError` then names
the module and the line.
"""

from __future__ import annotations

import dataclasses
import os
import traceback
from typing import Any

import torch
import torch.fx as fx
from torch import nn

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class LiftError(ValueError):
    """``from_torch`` could not lift a model: the message names the op, its module path, why,
    and what to write instead."""


@dataclasses.dataclass(frozen=True)
class Traced:
    """A traced model.

    Attributes:
        graph: the fx graph of ``forward``.
        module: the ``fx.GraphModule`` (submodules by qualified name).
        paths: node name -> module path of the innermost module it belongs to ('' = top).
        lines: node name -> the user's source line, e.g. ``model.py:42  x = x + self.f(x)``.
        values: node name -> the node's value on the example inputs (tensors, ints, tuples).
    """

    graph: fx.Graph
    module: fx.GraphModule
    paths: dict[str, str]
    lines: dict[str, str]
    values: dict[str, Any]


def _user_line(stack: list[traceback.FrameSummary] | traceback.StackSummary) -> str:
    """The innermost frame outside torch and tangents, as ``file.py:42  code``."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
    for frame in reversed(list(stack)):
        path = os.path.abspath(frame.filename)
        if path.startswith(torch_dir) or path.startswith(here) or frame.filename.startswith("<"):
            continue
        return f"{os.path.basename(frame.filename)}:{frame.lineno}  {(frame.line or '').strip()}"
    return ""


class _Tracer(fx.Tracer):
    """torch.nn modules are leaves (containers excepted); control flow errors name the module."""

    def __init__(self) -> None:
        super().__init__()
        #: node name -> the user's source line (torch's own stack traces import the compiler stack)
        self.lines: dict[str, str] = {}

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        if node.op not in ("placeholder", "output", "get_attr"):
            self.lines[node.name] = _user_line(traceback.extract_stack(limit=40))
        return node

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, _CONTAINERS):
            return False
        return type(m).__module__.startswith("torch.nn.")

    def _where(self) -> str:
        path = next(reversed(self.module_stack.values()))[0] if self.module_stack else ""
        line = _user_line(traceback.extract_stack())
        return f"module `{path or '<model>'}`" + (f", at {line}" if line else "")

    def to_bool(self, obj: fx.Proxy) -> bool:
        raise LiftError(
            f"from_torch: the forward pass branches on a traced tensor value ({self._where()}): "
            f"data-dependent control flow has no single stax network (the architecture would change "
            f"with the input). Write the branch without Python `if`/`while` on tensors (e.g. "
            f"torch.where), or lift the submodule that each branch uses on its own."
        )

    def iter(self, obj: fx.Proxy) -> Any:
        raise LiftError(
            f"from_torch: the forward pass iterates over a traced tensor ({self._where()}): torch.fx "
            f"cannot see how many iterations there are. Loop over a Python range or an nn.ModuleList "
            f"instead, or index the tensor explicitly."
        )


def trace(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Traced:
    """The fx graph of ``model.forward`` with module paths, source lines and example values.

    Raises:
        LiftError: the model cannot be traced (data-dependent control flow, iteration over
            a tensor, ...), naming the module and the line.
    """
    tracer = _Tracer()
    # a model that is itself a leaf (nn.TransformerEncoderLayer, ...) is traced as a call of it
    root = nn.Sequential(model) if tracer.is_leaf_module(model, "") else model
    try:
        graph = tracer.trace(root)
    except LiftError:
        raise
    except Exception as error:  # torch.fx raises many kinds; say where and why once
        where = tracer._where() if tracer.module_stack else "module `<model>`"
        raise LiftError(
            f"from_torch: torch.fx could not trace {type(model).__name__}.forward ({where}): "
            f"{type(error).__name__}: {error}. from_torch needs a forward pass without Python control "
            f"flow on tensors; rewrite that part, or lift a submodule without it."
        ) from error
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    for extra in placeholders[1:]:
        if not extra.args:  # no default value
            raise LiftError(
                f"from_torch: {type(model).__name__}.forward takes several tensor inputs ({extra.name!r} is the "
                f"second); lifted networks take one input tensor. Lift a model of one input (concatenate the "
                f"inputs, or wrap the model with the others fixed)."
            )
    module = fx.GraphModule(tracer.root, graph, type(model).__name__)
    paths: dict[str, str] = {}
    lines: dict[str, str] = {}
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        if node.op == "call_module":
            path = str(node.target)
        else:
            path = next(reversed(stack.values()))[0] if stack else ""
        if root is not model:  # the wrapper's "0" is the model itself
            path = path[2:] if path.startswith("0.") else ""
        paths[node.name] = path
        lines[node.name] = tracer.lines.get(node.name, "")
    values = _example_values(module, inputs)
    return Traced(graph=graph, module=module, paths=paths, lines=lines, values=values)


class _Recorder(fx.Interpreter):
    """Runs the graph once, keeping every node's output."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n.name] = out
        return out


def _example_values(module: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    recorder = _Recorder(module)
    try:
        with torch.no_grad():
            recorder.run(*inputs)
    except Exception as error:
        raise LiftError(
            f"from_torch: the model failed on example_input (shapes "
            f"{[tuple(x.shape) for x in inputs]}): {type(error).__name__}: {error}. Pass an input the model "
            f"accepts, e.g. a batch of two examples."
        ) from error
    return recorder.values
