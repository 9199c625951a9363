"""What a layer needs from the kernel it receives, and how needs combine across a network.

A covariance tensor can store every entry (full) or only the diagonal of an axis pair
(diagonal). Diagonal storage is far cheaper, so each layer states the least it needs and
the entry point computes no more than the whole architecture requires:

* ``diagonal_batch``: may ``cov1``/``cov2`` hold only per-example variances ``(N, ...)``
  rather than ``(N, N, ...)``? A layer that mixes examples says ``False``.
* ``diagonal_spatial``: a `Diagonal` — may the location–location covariances be kept
  diagonal at this layer's input (``input``), and does this layer make later layers
  indifferent to it (``output``)? Pooling needs the full covariance; a ``Flatten`` readout
  after convolutions needs only the diagonal.
"""

from __future__ import annotations

import dataclasses
import enum


class Bool(enum.IntEnum):
    """Three-valued logic: ``NO < MAYBE < YES``."""

    NO = 0
    MAYBE = 1
    YES = 2


@dataclasses.dataclass(frozen=True)
class Diagonal:
    """Whether a covariance may be stored diagonally (neural-tangents' semantics).

    Attributes:
        input: may this layer's *input* be diagonal? ``MAYBE`` means only if its
            off-diagonal entries are zero.
        output: may the outputs, from this layer to the network's end, be diagonal?
    """

    input: Bool = Bool.YES
    output: Bool = Bool.NO

    def __rshift__(self, other: Diagonal) -> Diagonal:
        """The requirement of the composition ``other(self(.))``."""
        if self.output == Bool.YES:
            return self
        if self.output > Bool.NO and other.input > Bool.NO:
            input = self.input
        elif self.output == Bool.NO and other.input < Bool.YES:
            input = Bool.NO
        else:
            input = min(self.input, other.input)
        return Diagonal(input=input, output=other.output)

    def __and__(self, other: Diagonal) -> Diagonal:
        """The requirement of two layers applied in parallel."""
        return Diagonal(input=min(self.input, other.input), output=min(self.output, other.output))

    def __bool__(self) -> bool:
        return self.input == Bool.YES and self.output > Bool.NO


@dataclasses.dataclass(frozen=True)
class Requirements:
    """A layer's (or a whole network's) needs from its input kernel.

    ``None`` means "no opinion"; `resolve` fills defaults.
    """

    diagonal_batch: bool | None = None
    diagonal_spatial: Diagonal | None = None
    batch_axis: int | None = None
    channel_axis: int | None = None

    def then(self, other: Requirements) -> Requirements:
        """Requirements of ``self`` followed by ``other`` (serial composition)."""
        return Requirements(
            diagonal_batch=_and_bool(self.diagonal_batch, other.diagonal_batch),
            diagonal_spatial=_fold(self.diagonal_spatial, other.diagonal_spatial, Diagonal.__rshift__),
            batch_axis=self.batch_axis if self.batch_axis is not None else other.batch_axis,
            channel_axis=self.channel_axis if self.channel_axis is not None else other.channel_axis,
        )

    def alongside(self, other: Requirements) -> Requirements:
        """Requirements of ``self`` and ``other`` side by side (parallel composition)."""
        return Requirements(
            diagonal_batch=_and_bool(self.diagonal_batch, other.diagonal_batch),
            diagonal_spatial=_fold(self.diagonal_spatial, other.diagonal_spatial, Diagonal.__and__),
            batch_axis=self.batch_axis if self.batch_axis is not None else other.batch_axis,
            channel_axis=self.channel_axis if self.channel_axis is not None else other.channel_axis,
        )

    def resolve(
        self, diagonal_batch: bool | None, diagonal_spatial: bool | None
    ) -> tuple[bool, bool, int, int]:
        """Merges the user's requests with the network's needs.

        Returns:
            ``(diagonal_batch, diagonal_spatial, batch_axis, channel_axis)`` for the inputs.

        Raises:
            ValueError: if the user asks for a diagonal layout the network cannot use.
        """
        for name, value in (("diagonal_batch", diagonal_batch), ("diagonal_spatial", diagonal_spatial)):
            if value is not None and not isinstance(value, bool):
                raise TypeError(f"kernel_fn: {name} must be None, True or False, got {value!r}.")
        needed_batch = True if self.diagonal_batch is None else self.diagonal_batch
        needed_spatial = Diagonal() if self.diagonal_spatial is None else self.diagonal_spatial
        if diagonal_batch is True and not needed_batch:
            raise ValueError(
                "kernel_fn: diagonal_batch=True was requested, but a layer of this network "
                "mixes different examples (for example an attention or batch-contracting "
                "layer) and needs the full covariance between examples. Call it with "
                "diagonal_batch=None (the default) or False."
            )
        if diagonal_spatial is True and needed_spatial.input == Bool.NO:
            raise ValueError(
                "kernel_fn: diagonal_spatial=True was requested, but a layer of this network "
                "(a pooling, attention, flattening-free readout or other layer that mixes "
                "spatial locations) needs the full location-location covariances. Call it "
                "with diagonal_spatial=None (the default) or False."
            )
        batch = needed_batch if diagonal_batch is None else bool(diagonal_batch)
        spatial = bool(needed_spatial) if diagonal_spatial is None else bool(diagonal_spatial)
        batch_axis = 0 if self.batch_axis is None else self.batch_axis
        channel_axis = -1 if self.channel_axis is None else self.channel_axis
        return batch, spatial, batch_axis, channel_axis


def _and_bool(a: bool | None, b: bool | None) -> bool | None:
    if a is None:
        return b
    if b is None:
        return a
    return a and b


def _fold(a: Diagonal | None, b: Diagonal | None, op) -> Diagonal | None:  # noqa: ANN001
    if a is None:
        return b
    if b is None:
        return a
    return op(a, b)
