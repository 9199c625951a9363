"""What flows along the edges of a torch graph while it is lifted.

* `Value`: a tensor of the network (the output of a lifted node), with what the lift needs
  to know about it: its finite shape at the example input, which axes are channels, whether
  it is a zero-mean Gaussian at infinite width, and which random layers it depends on.
* `Static`: a Python value computed from shapes only (``x.size(0)``, ``C * H * W``).
* `Constant`: a parameter or buffer read with ``get_attr`` (the weights of ``F.linear``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Value:
    """A tensor of the lifted network.

    Attributes:
        index: the node producing it (``0``: the network's input).
        shape: its finite shape at the example input, batch first.
        channel: the axes that hold its channels: usually one; attention heads split the
            channels in two (``(N, H, L, d)``: axes 1 and 3).
        gaussian: whether it is a zero-mean Gaussian at infinite width (the output of an
            affine layer, or a sum of such).
        sources: the affine layers whose independent weights its randomness comes from;
            values with disjoint sources are independent at infinite width.
        root: the node it is a pure relayout (permute, split heads) of, else ``index``.
        flat: flattened to ``(N, F)`` for the finite network while its kernel stays spatial
            (see `DeferredFlatten`).
        kernel_channel: for ``flat`` values, the channel axis of the kernel's layout.
        kind: ``'tensor'``, or ``'logits'`` / ``'weights'`` for attention scores
            ``q kᵀ · scale`` before / after their softmax.
        query: for scores, the tied query (= key) value.
        scale: for scores, the logit scale.
        made_by: the torch op that produced it, for messages.
    """

    index: int
    shape: Shape
    channel: tuple[int, ...]
    gaussian: bool
    sources: frozenset[int]
    root: int
    flat: bool = False
    kernel_channel: int | None = None
    kind: str = "tensor"
    query: Value | None = None
    scale: float = 1.0
    made_by: str = ""

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def spatial(self) -> tuple[int, ...]:
        """The axes that are neither the batch (0) nor a channel axis, in order."""
        return tuple(a for a in range(1, self.ndim) if a not in self.channel)

    @property
    def channel_axis(self) -> int:
        """The (last) channel axis."""
        return self.channel[-1]


@dataclasses.dataclass(frozen=True)
class Static:
    """A value fixed by shapes alone (its value at the example input)."""

    value: Any


@dataclasses.dataclass(frozen=True)
class Constant:
    """A parameter or buffer of the model (``get_attr``)."""

    tensor: torch.Tensor
    name: str
    is_parameter: bool
