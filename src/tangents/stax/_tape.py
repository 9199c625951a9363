"""Self-covariances computed once per example and replayed by every tile.

A kernel computed in ``r × c`` tiles (`tangents.blocks.tiled`) propagates, in every
tile and through every layer, the cross-covariance ``nngp`` of the tile's ``r · c`` pairs
*and* the self-covariances ``cov1`` (its ``r`` rows) and ``cov2`` (its ``c`` columns). For
spatial covariances ``(N, H, H', W, W')`` a self-covariance costs as much per example as
a cross-covariance per pair, so the small, cache-sized tiles of a CNN kernel (2 × 2)
spend as much time on ``cov1``/``cov2`` as on the kernel itself, every row block's
covariances being recomputed once per tile of its row.

Instead, the tiles of a block of examples with itself (computed first) **record** the
``cov1`` that every layer outputs, and every other tile **replays** them: a layer whose
``nngp``/``ntk`` do not depend on the covariances it outputs (`Layer.replays_covariances`:
convolutions, pooling windows, elementwise nonlinearities) skips computing them
(`skipping_covariances`) and `Layer.transform` puts the recorded ones in their place. Other
layers compute theirs as usual (the recorded ones replace them, equal). Each
self-covariance is then computed once per example and layer, as in an untiled call.

The tape is per thread (tiles run in parallel threads) and keyed by the order in which
leaf layers are called, checked against the layer objects themselves.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from .._kernel import Kernel

if TYPE_CHECKING:
    from ._layer import Layer

_state = threading.local()


class CovarianceTape:
    """The ``cov1`` output by each leaf layer call, in call order, for one block of examples
    (``None`` for layers that do not replay: they recompute theirs, cheaply)."""

    def __init__(self) -> None:
        self.layers: list[Layer] = []
        self.covs: list[torch.Tensor | None] = []

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.covs if t is not None)


class _Replay:
    def __init__(self, rows: CovarianceTape, cols: CovarianceTape) -> None:
        self.rows, self.cols, self.position = rows, cols, 0


class CovarianceTapes:
    """The tape hooks `tangents.blocks.tiled` takes (``tape=COVARIANCE_TAPES``)."""

    @staticmethod
    def recording() -> contextlib.AbstractContextManager[CovarianceTape]:
        return recording()

    @staticmethod
    def replaying(rows: CovarianceTape, cols: CovarianceTape) -> contextlib.AbstractContextManager[None]:
        return replaying(rows, cols)


COVARIANCE_TAPES = CovarianceTapes()


@contextlib.contextmanager
def recording() -> Iterator[CovarianceTape]:
    """Records, in this thread, the ``cov1`` of every leaf layer's output kernel."""
    tape = CovarianceTape()
    previous, _state.active = getattr(_state, "active", None), tape
    try:
        yield tape
    finally:
        _state.active = previous


@contextlib.contextmanager
def replaying(rows: CovarianceTape, cols: CovarianceTape) -> Iterator[None]:
    """Replays ``rows`` as ``cov1`` and ``cols`` as ``cov2`` of every leaf layer's output."""
    replay = _Replay(rows, cols)
    previous, _state.active = getattr(_state, "active", None), replay
    try:
        yield
    finally:
        _state.active = previous
    if replay.position != len(rows.covs):
        raise RuntimeError(
            f"tangents internal error: a tile called {replay.position} layers where its covariance tape "
            f"recorded {len(rows.covs)}; please report this network."
        )


def skipping_covariances() -> bool:
    """Whether the layer being run may leave its output's ``cov1``/``cov2`` as ``None``
    (they are replaced by recorded ones); read by `map_covariances` and activations."""
    return getattr(_state, "skip", False)


def transform_with_tape(layer: Layer, k: Any, run: Any) -> Any:
    """``run(k)`` (the layer's own transform) under this thread's tape, if any."""
    active = None if torch.compiler.is_compiling() else getattr(_state, "active", None)
    if active is None or layer.children:
        return run(k)
    if isinstance(active, CovarianceTape):
        out = run(k)
        active.layers.append(layer)  # (other layers recompute theirs from replayed inputs)
        active.covs.append(out.cov1 if isinstance(out, Kernel) and layer.replays_covariances else None)
        return out
    i = active.position
    if i >= len(active.rows.layers) or active.rows.layers[i] is not layer:
        raise RuntimeError(
            f"tangents internal error: layer call {i} ({layer.name}) does not match the covariance tape; "
            f"please report this network."
        )
    active.position += 1
    cov1, cov2 = active.rows.covs[i], active.cols.covs[i]
    if cov1 is None or cov2 is None:
        return run(k)
    skip = layer.replays_covariances and isinstance(k, Kernel) and not k.x1_is_x2
    _state.skip = skip
    try:
        out = run(k)
    finally:
        _state.skip = False
    if not isinstance(out, Kernel):
        return out
    return out.replace(cov1=cov1, cov2=cov2)
