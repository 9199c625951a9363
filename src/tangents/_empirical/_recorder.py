"""Finding where each parameter enters the forward pass, and the derivatives there.

A :class:`Recorder` (a ``TorchFunctionMode``) watches every torch call made while ``f``
runs. A call that receives a parameter tensor directly and returns one floating tensor ``y``
is a *use* of that parameter. In the probing pass, ``y`` is replaced by ``y + probe`` with
a zero ``probe`` that is an input of the differentiated function, so reverse mode yields
``G = ∂f/∂y`` for every use at once, and the call's other tensor inputs (``x`` of
``y = x Wᵀ``) are returned alongside. By the chain rule

    ∂f/∂p = Σ_{uses of p} (∂y/∂p)ᵀ G,

which the structured rules (``_rules.py``) evaluate without forming ``∂f/∂p`` when the use
is a linear or convolutional layer. The discovery pass checks this identity on one example
against plain autograd; parameters for which it fails (used in ways the recorder cannot
see) are flagged and handled by whole-network Jacobians instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from .._torch_private import tree_flatten, tree_unflatten


@dataclass
class Use:
    """One call that consumed parameters: ``func(*args, **kwargs)`` with parameter leaves.

    Attributes:
        func: the torch function called.
        spec: tree structure of ``(args, kwargs)``.
        consts: the flattened leaves, with tensors replaced by None.
        params: ``{leaf position: parameter index}`` for the parameter leaves.
        inputs: leaf positions of the other tensors (recorded per example as ``aux``).
        out_shape: shape of the output (per example).
        arg_shapes: shapes of the positional tensor arguments (None for non-tensors).
    """

    func: Any
    spec: Any
    consts: list[Any]
    params: dict[int, int]
    inputs: list[int]
    out_shape: tuple[int, ...]
    arg_shapes: tuple[tuple[int, ...] | None, ...] = ()

    def call(self, tensors: tuple[torch.Tensor, ...], inputs: list[torch.Tensor]) -> torch.Tensor:
        """Re-evaluates the call with the given parameter tensors and recorded inputs."""
        leaves = list(self.consts)
        for pos, idx in self.params.items():
            leaves[pos] = tensors[idx]
        for pos, t in zip(self.inputs, inputs):
            leaves[pos] = t
        args, kwargs = tree_unflatten(leaves, self.spec)
        return self.func(*args, **kwargs)

    def arg(self, position: int, name: str, inputs: list[torch.Tensor] | None = None) -> Any:
        """The value of positional ``position`` / keyword ``name`` (tensors from ``inputs``)."""
        leaves = list(self.consts)
        for pos, t in zip(self.inputs, inputs or [None] * len(self.inputs)):
            leaves[pos] = t
        for pos, idx in self.params.items():
            leaves[pos] = ("param", idx)
        args, kwargs = tree_unflatten(leaves, self.spec)
        if len(args) > position:
            return args[position]
        return kwargs.get(name, None)


class Recorder(TorchFunctionMode):
    """Records parameter uses (``probes=None``) or adds probes and collects inputs.

    ``probes`` is a tuple (use ``k``'s output becomes ``y + probes[k]``) or a function
    ``(k, y) -> y'`` that attaches the probe itself.
    """

    def __init__(self, tensors: tuple[torch.Tensor, ...],
                 probes: tuple[torch.Tensor, ...] | Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.ids = {id(t): i for i, t in enumerate(tensors)}
        self.probes = probes
        self.uses: list[Use] = []
        self.aux: list[list[torch.Tensor]] = []
        self.opaque: set[int] = set()  # parameters used by calls that return no single tensor

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if not any(id(a) in self.ids or isinstance(a, (list, tuple, dict)) for a in (*args, *kwargs.values())):
            return func(*args, **kwargs)  # fast path: no parameter among the (top-level) arguments
        leaves, spec = tree_flatten((args, kwargs))
        params = {pos: self.ids[id(l)] for pos, l in enumerate(leaves) if isinstance(l, torch.Tensor) and id(l) in self.ids}
        out = func(*args, **kwargs)
        if not params:
            return out
        if not (isinstance(out, torch.Tensor) and out.is_floating_point()):
            if isinstance(out, (tuple, list)) and any(isinstance(o, torch.Tensor) for o in out):
                self.opaque.update(params.values())
            return out
        if self.probes is None:
            inputs = [pos for pos, l in enumerate(leaves) if isinstance(l, torch.Tensor) and pos not in params]
            consts = [None if isinstance(l, torch.Tensor) else l for l in leaves]
            shapes = tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else None for a in args)
            self.uses.append(Use(func, spec, consts, params, inputs, tuple(out.shape), shapes))
            return out
        k = len(self.aux)
        self.aux.append([leaves[pos] for pos in _inputs_of(leaves, params)])
        return self.probes(k, out) if callable(self.probes) else out + self.probes[k]


def _inputs_of(leaves: list[Any], params: dict[int, int]) -> list[int]:
    return [pos for pos, l in enumerate(leaves) if isinstance(l, torch.Tensor) and pos not in params]
