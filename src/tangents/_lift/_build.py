"""The walk over a traced torch graph that builds a `LiftedNetwork`, node by node.

`Builder` keeps, for every fx node, what it became (`Value`, `Static` or `Constant`) and
offers the operations the module and function handlers (`_modules`, `_functions`) are
written in: adding a stax node, the checks that make a kernel exist (a nonlinearity needs
a Gaussian input, a sum needs independent Gaussian branches, ...), reshapes and
permutations, and reading ``W_std``/``b_std``. Every check that fails raises `LiftError`
naming the torch op, its module path and source line, why, and what to write instead.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .. import stax
from ..stax import Layer
from ._layers import DeferredFlatten, Permute, Reshape, Scale
from ._network import LiftedNetwork, Node
from ._stds import Std, given_std, read_bias_std, read_weight_std
from ._trace import LiftError, Traced
from ._values import Constant, Shape, Static, Value

#: Handler signatures: ``(builder, fx_node, args, kwargs) -> Value | Static``, and for
#: modules ``(builder, fx_node, module, args, kwargs)``.
FunctionHandler = Callable[["Builder", fx.Node, tuple, dict], Any]
ModuleHandler = Callable[["Builder", fx.Node, nn.Module, tuple, dict], Any]


class Builder:
    """Lifts one traced model; see the module docstring."""

    def __init__(
        self,
        traced: Traced,
        model: nn.Module,
        parameterization: str,
        stds: Mapping[str, Mapping[str, Any]] | None,
        input_channel_axis: int,
    ) -> None:
        self.traced = traced
        self.model = model
        self.parameterization = parameterization
        self.stds = {str(k): dict(v) for k, v in (stds or {}).items()}
        self.training = model.training
        self.input_channel_axis = input_channel_axis
        self.nodes: list[Node] = []
        self.env: dict[str, Any] = {}
        self.affine_paths: list[str] = []
        self._params_used: dict[int, str] = {}
        self._node: fx.Node | None = None
        self._op = ""

    # ------------------------------------------------------------------ context of the current node

    @property
    def path(self) -> str:
        return "" if self._node is None else self.traced.paths.get(self._node.name, "")

    def where(self) -> str:
        """```path` (file.py:12  code)`` of the node being lifted."""
        path = self.path or "<model>"
        line = "" if self._node is None else self.traced.lines.get(self._node.name, "")
        return f"`{path}`" + (f" ({line})" if line else "")

    def fail(self, why: str, fix: str, op: str | None = None) -> LiftError:
        """A `LiftError`: ``from_torch: <op> at `path` (line): <why> <fix>``."""
        return LiftError(f"from_torch: {op or self._op} at {self.where()}: {why} {fix}")

    def unsupported(self, why: str, alternative: str, op: str | None = None) -> LiftError:
        why = why.rstrip(".") + "."
        return self.fail(f"has no infinite-width kernel here: {why}", f"Nearest supported: {alternative}", op)

    # ------------------------------------------------------------------ nodes

    def add(
        self,
        layer: Layer,
        inputs: Sequence[Value],
        *,
        shape: Shape,
        channel: tuple[int, ...],
        gaussian: bool,
        sources: frozenset[int] | None = None,
        root: int | None = None,
        notes: Sequence[str] = (),
        flat: bool = False,
        kernel_channel: int | None = None,
        suffix: str = "",
    ) -> Value:
        """Appends a node applying ``layer`` to ``inputs`` and returns its output `Value`."""
        name = (self._node.name if self._node is not None else "node") + suffix
        self.nodes.append(Node(name, layer, tuple(v.index for v in inputs), self.path, self._op, tuple(notes)))
        index = len(self.nodes)
        return Value(
            index=index,
            shape=tuple(shape),
            channel=tuple(channel),
            gaussian=gaussian,
            sources=frozenset({index}) if sources is None else sources,
            root=index if root is None else root,
            flat=flat,
            kernel_channel=kernel_channel,
            made_by=f"{self._op} at `{self.path or '<model>'}`",
        )

    def tensor(self, value: Any, what: str = "its input") -> Value:
        """``value`` as a tensor `Value`, or a `LiftError` saying what it was instead."""
        if isinstance(value, Value):
            if value.kind != "tensor":
                raise self.fail(
                    f"{what} is attention scores (q @ k.transpose(-2, -1)), which only a scale, a softmax over "
                    f"the keys and a product with the values may use.",
                    "Write the attention as softmax(q @ q.transpose(-2, -1) * scale, dim=-1) @ v, or with "
                    "F.scaled_dot_product_attention(q, q, v, scale=...).",
                )
            return value
        if isinstance(value, Constant):
            raise self.fail(
                f"{what} is the parameter or buffer `{value.name}` used directly: a tensor of the model that is "
                f"not the weight of a Linear/Conv layer has no infinite-width counterpart here.",
                "Use it only as the weight or bias of F.linear / F.conv*d, or wrap it in an nn.Linear.",
            )
        raise self.fail(f"{what} is {type(value).__name__} {value!r}, not a tensor of the network.", "")

    def elementwise(self, x: Value, layer: Layer, notes: Sequence[str] = ()) -> Value:
        """A nonlinearity φ applied entrywise: its input must be a zero-mean Gaussian."""
        x = self.tensor(x)
        self.need_gaussian(x)
        return self.add(
            layer, [x], shape=x.shape, channel=x.channel, gaussian=False, sources=x.sources,
            flat=x.flat, kernel_channel=x.kernel_channel, notes=notes,
        )

    def need_gaussian(self, x: Value) -> None:
        if not x.gaussian:
            raise self.fail(
                f"its input (the output of {x.made_by or 'the model input'}) is not a zero-mean Gaussian at "
                f"infinite width, and the kernel of a nonlinearity (a normalisation) is a Gaussian "
                f"expectation E[φ(u) φ(v)].",
                "Put a Linear or Conv layer directly before it: two nonlinearities in a row, a nonlinearity on "
                "the raw input, on a torch.cat of branches, or on a sum with a non-Gaussian branch have no closed "
                "form here.",
            )

    def scale(self, x: Value, c: float) -> Value:
        """``c · x``."""
        x = self.tensor(x)
        if c == 1:
            return x
        return self.add(
            Scale(c), [x], shape=x.shape, channel=x.channel, gaussian=x.gaussian, sources=x.sources,
            flat=x.flat, kernel_channel=x.kernel_channel, suffix=".scale" if c != -1 else ".neg",
        )

    def materialize(self, x: Value) -> Value:
        """A deferred flatten made real on the kernel side (`stax.Flatten`): ``(N, F)`` features."""
        x = self.tensor(x)
        if not x.flat:
            return x
        return self.add(stax.Flatten(), [x], shape=x.shape, channel=(1,), gaussian=False, sources=x.sources,
                        suffix=".flatten")

    def single_channel(self, x: Value, what: str) -> None:
        if len(x.channel) != 1:
            raise self.fail(
                f"{what} gets a tensor whose channels are split over axes {x.channel} (attention heads).",
                "Merge the heads back first, e.g. x.transpose(1, 2).reshape(N, L, E).",
            )

    def same_layout(self, values: Sequence[Value], what: str) -> None:
        first = values[0]
        for v in values[1:]:
            if v.shape != first.shape or v.channel != first.channel or v.flat != first.flat:
                raise self.fail(
                    f"{what} gets tensors of different shapes or layouts: {[x.shape for x in values]} with channels on "
                    f"axes {[x.channel for x in values]}.",
                    "Make the branches' outputs the same shape (torch broadcasting across unequal shapes has no "
                    "stax counterpart).",
                )

    def independent(self, values: Sequence[Value], what: str) -> frozenset[int]:
        """The union of the values' sources; a `LiftError` if two share a random layer."""
        seen: dict[int, Value] = {}
        for v in values:
            for s in v.sources:
                if s in seen:
                    raise self.fail(
                        f"{what} combines branches that both depend on the same layer ({self.nodes[s - 1].torch_op} "
                        f"at `{self.nodes[s - 1].path or '<model>'}`) without a new Linear/Conv layer in between, so "
                        f"they are correlated at infinite width; stax fan-ins assume independent branches.",
                        "End each branch with its own Linear/Conv layer (as in x + conv(relu(conv(x))), where the "
                        "skip branch is the sum's own input).",
                    )
                seen[s] = v
        return frozenset(seen)

    # ------------------------------------------------------------------ reshapes

    def reshape(self, x: Value, target: Sequence[int]) -> Value:
        """``x.reshape(target)``: a `Reshape`, a `DeferredFlatten`, or the value itself."""
        x = self.tensor(x)
        new = _resolve_shape(tuple(target), x.shape)
        if new is None:
            raise self.fail(f"cannot reshape {x.shape} to {tuple(target)}.", "")
        if new == x.shape:
            return x
        if new[0] != x.shape[0]:
            raise self.fail(
                f"reshapes {x.shape} to {new}, which moves data across examples (the batch axis must stay first "
                f"and whole).", "Keep the batch axis: x.reshape(x.shape[0], ...).",
            )
        if x.flat:
            if len(new) == 2:
                return x
            raise self.fail("reshapes flattened features back into several axes.", "Reshape before flattening.")
        roles = ["C" if a in x.channel else "S" for a in range(1, x.ndim)]
        groups = _groups(x.shape[1:], new[1:])
        if groups is None:
            raise self.fail(f"cannot follow how {x.shape} is reshaped to {new}.", "")
        new_roles: list[str | None] = [None] * (len(new) - 1)
        mixed = False
        for old_axes, new_axes in groups:
            kinds = {roles[a] for a in old_axes}
            if not old_axes:  # new unit axes: spatial of size 1
                for a in new_axes:
                    new_roles[a] = "S"
                continue
            if len(kinds) > 1:
                mixed = True
                break
            kind = kinds.pop()
            if kind == "C" and not new_axes and any(x.shape[1 + a] != 1 for a in old_axes):
                mixed = True
                break
            for a in new_axes:
                new_roles[a] = kind
        if mixed or "C" not in new_roles:
            if len(new) == 2 and new[1] == math.prod(x.shape[1:]):
                if not x.sources and not x.gaussian and x.index == 0 and len(x.spatial) == 0:
                    return x
                return self.add(
                    DeferredFlatten(), [x], shape=new, channel=(1,), gaussian=x.gaussian, sources=x.sources,
                    flat=True, kernel_channel=x.channel_axis, root=x.root,
                )
            raise self.fail(
                f"reshapes {x.shape} (channels on axes {x.channel}) to {new}, mixing channels with spatial "
                f"positions other than by flattening everything to (N, features).",
                "Reshape only the channel axes (attention heads) or only the spatial axes, or flatten with "
                "x.flatten(1).",
            )
        if x.index == 0 or (not x.sources and not x.gaussian and x.root == 0):
            old_spatial = tuple(x.shape[a] for a in x.spatial)
            if roles.count("C") != new_roles.count("C") or old_spatial != tuple(
                new[1 + i] for i, r in enumerate(new_roles) if r == "S"
            ):
                raise self.fail(
                    "reshapes the raw input, whose kernel is computed before the reshape.",
                    "Reshape the data before calling the model (and lift the model with the reshaped example).",
                )
        channel = tuple(1 + i for i, r in enumerate(new_roles) if r == "C")
        spatial_out = tuple(new[1 + i] for i, r in enumerate(new_roles) if r == "S")
        layer = Reshape(new[1:], x.channel_axis, channel[-1], spatial_out)
        changes_spatial = spatial_out != tuple(x.shape[a] for a in x.spatial)
        return self.add(
            layer, [x], shape=new, channel=channel, gaussian=x.gaussian, sources=x.sources,
            root=None if changes_spatial else x.root,
        )

    def permute(self, x: Value, perm: Sequence[int]) -> Value:
        """``x.permute(perm)`` with the batch axis kept first."""
        x = self.tensor(x)
        perm = tuple(p % x.ndim for p in perm)
        if sorted(perm) != list(range(x.ndim)):
            raise self.fail(f"{perm} is not a permutation of the {x.ndim} axes.", "")
        if perm == tuple(range(x.ndim)):
            return x
        if perm[0] != 0:
            raise self.fail(
                f"moves the batch axis (permutation {perm}); lifted networks keep examples on axis 0.",
                "Keep the batch first (batch_first=True layouts).",
            )
        if x.flat:
            raise self.fail("permutes flattened features.", "Permute before flattening.")
        channel = tuple(perm.index(a) for a in x.channel)
        new_spatial = [perm[i] for i in range(x.ndim) if perm[i] in x.spatial]
        spatial_perm = tuple(x.spatial.index(a) for a in new_spatial)
        layer = Permute(perm, x.channel_axis, max(channel), spatial_perm)
        shape = tuple(x.shape[p] for p in perm)
        return self.add(layer, [x], shape=shape, channel=tuple(sorted(channel)), gaussian=x.gaussian,
                        sources=x.sources, root=x.root)

    # ------------------------------------------------------------------ constants

    def affine_stds(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        fan_in: float,
        weight_default_var: float | None,
        bias_default_var: float | None,
        path: str | None = None,
    ) -> tuple[float, float | None, tuple[str, ...]]:
        """``(W_std, b_std, notes)`` of an affine layer, read from its tensors or given (``stds=``)."""
        path = self.path if path is None else path
        key = path or "<model>"
        self.affine_paths.append(key)
        for tensor in (weight, bias):
            if tensor is not None:
                previous = self._params_used.get(id(tensor))
                if previous is not None:
                    raise self.fail(
                        f"reuses the weights of `{previous}` (the same parameters applied twice): stax layers "
                        f"each draw their own weights, so the lifted kernel would be that of an untied copy.",
                        "Give each call its own module (copy.deepcopy), or lift the shared part once.",
                    )
                self._params_used[id(tensor)] = key
        given = self.stds.get(key, {})
        unknown = set(given) - {"W_std", "b_std"}
        if unknown:
            raise LiftError(f"from_torch: stds[{key!r}] has unknown keys {sorted(unknown)}; use 'W_std' and 'b_std'.")
        where = f"`{key}`"
        W = given_std(given["W_std"], "W_std", key) if "W_std" in given else read_weight_std(
            weight, fan_in, where, weight_default_var)
        b = given_std(given["b_std"], "b_std", key) if "b_std" in given else read_bias_std(
            bias, where, bias_default_var)
        if b.value is not None and bias is None and "b_std" in given:
            raise LiftError(f"from_torch: stds[{key!r}] gives b_std={b.value}, but {where} has no bias.")
        return W.value, b.value, (W.describe("W_std"), b.describe("b_std"))  # type: ignore[return-value]

    def owner_module(self, qualified_name: str) -> nn.Module | None:
        """The module that holds the parameter ``qualified_name`` (``'block.fc.weight'``)."""
        owner, _, _ = qualified_name.rpartition(".")
        try:
            return self.model.get_submodule(owner) if owner else self.model
        except AttributeError:
            return None

    # ------------------------------------------------------------------ the walk

    def run(
        self, module_handlers: Mapping[type, ModuleHandler], function_handlers: Mapping[Any, FunctionHandler],
        method_handlers: Mapping[str, FunctionHandler], module_fallback: ModuleHandler,
        function_fallback: FunctionHandler,
    ) -> LiftedNetwork:
        graph = self.traced.graph
        output: Any = None
        placeholders = 0
        for node in graph.nodes:
            self._node, self._op = node, _op_name(node, self.traced)
            if node.op == "placeholder":
                value = self.traced.values.get(node.name)
                if placeholders == 0:
                    self.env[node.name] = Value(
                        index=0, shape=tuple(value.shape), channel=(self.input_channel_axis % value.ndim,),
                        gaussian=False, sources=frozenset(), root=0, made_by="the model input",
                    )
                elif value is None:
                    self.env[node.name] = Static(None)
                else:
                    raise LiftError(
                        f"from_torch: {type(self.model).__name__}.forward takes several tensor inputs ({node.name!r} "
                        f"is the second); lifted networks take one input tensor. Lift a model of one input "
                        f"(e.g. concatenate the inputs, or wrap the model with the others fixed)."
                    )
                placeholders += 1
                continue
            if node.op == "get_attr":
                tensor = self.traced.values[node.name]
                is_param = isinstance(tensor, nn.Parameter)
                self.env[node.name] = Constant(tensor, str(node.target), is_param)
                continue
            if node.op == "output":
                output = self._resolve(node.args[0])
                continue
            args = self._resolve(node.args)
            kwargs = self._resolve(node.kwargs)
            self._check_inplace(node)
            if node.op == "call_module":
                module = self.traced.module.get_submodule(str(node.target))
                handler = module_handlers.get(type(module), module_fallback)
                result = handler(self, node, module, args, kwargs)
            else:
                if self._all_static(args, kwargs):
                    result = Static(self.traced.values.get(node.name))
                elif node.op == "call_method":
                    result = method_handlers.get(str(node.target), function_fallback)(self, node, args, kwargs)
                else:
                    result = function_handlers.get(node.target, function_fallback)(self, node, args, kwargs)
            self.env[node.name] = result
        self._node, self._op = None, "the model's output"
        unknown = set(self.stds) - set(self.affine_paths)
        if unknown:
            raise LiftError(
                f"from_torch: stds names {sorted(unknown)}, which are not affine layers of the model; the affine "
                f"layers are {self.affine_paths}."
            )
        if not isinstance(output, Value):
            raise LiftError(
                f"from_torch: {type(self.model).__name__}.forward returns {type(output).__name__}, not one tensor; "
                f"lifted networks have one output. Lift a model that returns a single tensor."
            )
        output = self.materialize(self.tensor(output, "the output"))
        if output.index == 0:
            raise LiftError(f"from_torch: {type(self.model).__name__} returns its input unchanged; nothing to lift.")
        return self._network(output)

    def _network(self, output: Value) -> LiftedNetwork:
        """The nodes the output depends on, renumbered."""
        needed = {output.index}
        for i in range(len(self.nodes), 0, -1):
            if i in needed:
                needed.update(self.nodes[i - 1].inputs)
        keep = [i for i in range(1, len(self.nodes) + 1) if i in needed]
        renumber = {0: 0} | {old: new for new, old in enumerate(keep, start=1)}
        nodes = []
        for i in keep:
            node = self.nodes[i - 1]
            nodes.append(Node(node.name, node.layer, tuple(renumber[j] for j in node.inputs), node.path,
                              node.torch_op, node.notes))
        example = self.traced.values[next(iter(self.traced.graph.nodes)).name]
        return LiftedNetwork(
            nodes, renumber[output.index], self.parameterization, type(self.model).__name__,
            tuple(example.shape), self.input_channel_axis % example.ndim,
        )

    def _resolve(self, arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            return self.env[arg.name]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self._resolve(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self._resolve(v) for k, v in arg.items()}
        if isinstance(arg, slice):
            return slice(self._resolve(arg.start), self._resolve(arg.stop), self._resolve(arg.step))
        return arg

    def _all_static(self, args: Any, kwargs: Any) -> bool:
        """No tensor of the network (nor a model tensor) among the arguments: shape arithmetic."""

        def static(a: Any) -> bool:
            if isinstance(a, (Value, Constant)):
                return False
            if isinstance(a, (list, tuple)):
                return all(static(b) for b in a)
            if isinstance(a, dict):
                return all(static(b) for b in a.values())
            return True

        return static(args) and static(kwargs)

    def _check_inplace(self, node: fx.Node) -> None:
        """In-place ops whose input is read again later change values fx does not track."""
        inplace = (node.op == "call_method" and str(node.target).endswith("_") and not str(node.target).startswith("_"))
        inplace = inplace or node.kwargs.get("inplace") is True
        if node.op == "call_function" and getattr(node.target, "__name__", "").startswith("i") and \
                node.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv):
            inplace = True
        if node.op == "call_module":
            module = self.traced.module.get_submodule(str(node.target))
            inplace = inplace or getattr(module, "inplace", False) is True
        if not inplace or not node.args or not isinstance(node.args[0], fx.Node):
            return
        target = node.args[0]
        later = [u for u in target.users if u is not node and _after(u, node)]
        if later:
            raise self.fail(
                f"modifies its input in place, and the input is read again later ({later[0].name}); torch.fx records "
                f"the value before the change there, so the lifted network would differ from the model.",
                "Use the out-of-place form (x = F.relu(x), x = x + y) or rebind the result to the same name.",
            )


def _after(a: fx.Node, b: fx.Node) -> bool:
    """Whether node ``a`` comes after node ``b`` in the graph."""
    node = b.next
    while node.op != "root":
        if node is a:
            return True
        node = node.next
    return False


def _op_name(node: fx.Node, traced: Traced) -> str:
    """How the user wrote the op: ``nn.Conv2d(3, 16, ...)``, ``F.relu``, ``x.view``, ``+``."""
    if node.op == "call_module":
        module = traced.module.get_submodule(str(node.target))
        text = repr(module).splitlines()[0]
        if len(text) > 80:
            text = text[:77] + "..."
        name = type(module).__name__
        if text.endswith("("):  # a container-like repr over several lines
            text = name
        prefix = "nn." if type(module).__module__.startswith("torch.nn.") else ""
        return prefix + (text if text.startswith(name) else name)
    if node.op == "call_method":
        return f"x.{node.target}()"
    target = node.target
    symbols = {operator.add: "+", operator.iadd: "+=", operator.sub: "-", operator.isub: "-=",
               operator.mul: "*", operator.imul: "*=", operator.truediv: "/", operator.matmul: "@",
               operator.neg: "unary -", operator.getitem: "[] indexing", operator.pow: "**"}
    if target in symbols:
        return f"`{symbols[target]}`"
    module = getattr(target, "__module__", "") or ""
    name = getattr(target, "__name__", repr(target))
    if module.startswith("torch.nn.functional") or getattr(torch.nn.functional, name, None) is target:
        return f"F.{name}"
    if module.startswith("torch") or module == "":
        return f"torch.{name}"
    return f"{module}.{name}"


def _resolve_shape(target: Shape, old: Shape) -> Shape | None:
    """``target`` with one ``-1`` filled in from ``old``'s number of entries."""
    target = tuple(int(t) for t in target)
    total = math.prod(old)
    if target.count(-1) > 1:
        return None
    if -1 in target:
        rest = math.prod(t for t in target if t != -1)
        if rest == 0 or total % rest:
            return None
        target = tuple(total // rest if t == -1 else t for t in target)
    return target if math.prod(target) == total else None


def _groups(old: Shape, new: Shape) -> list[tuple[list[int], list[int]]] | None:
    """How a row-major reshape maps axes: groups ``(old axes, new axes)`` of equal size.

    Unit axes are their own groups (``([a], [])`` removed, ``([], [b])`` added).
    """
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(old) or j < len(new):
        if i < len(old) and old[i] == 1:
            groups.append(([i], []))
            i += 1
            continue
        if j < len(new) and new[j] == 1:
            groups.append(([], [j]))
            j += 1
            continue
        if i >= len(old) or j >= len(new):
            return None
        a, b = [i], [j]
        pa, pb = old[i], new[j]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                if i >= len(old):
                    return None
                pa *= old[i]
                a.append(i)
                i += 1
            else:
                if j >= len(new):
                    return None
                pb *= new[j]
                b.append(j)
                j += 1
        groups.append((a, b))
    return groups
