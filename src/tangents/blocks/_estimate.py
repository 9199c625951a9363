"""Runaway work: how long a tiled kernel will take, measured on its first tiles.

A kernel computed in tiles (`tiled`) costs about the same per tile, so the time of the
first few tiles, times the number of tiles, over the threads that share them, estimates
the whole computation before most of it has run. When the estimate is far beyond what a
caller can mean (`RUNAWAY_SECONDS`, an hour), one `RunawayWorkWarning` says so, with the
estimate and what to do instead. The computation itself goes on (interrupt it to stop).

The estimate takes the fastest of the first ``min(3, tiles)`` tiles: the first calls of a
compiled kernel include compiling (seconds), and diagonal tiles of a spatial kernel record
self-covariances that the others replay. Timing stops as soon as the estimate is below the
threshold, so ordinary calls pay two clock reads per tile for one or three tiles.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

#: Estimated seconds of work beyond which a tiled kernel warns (one hour).
RUNAWAY_SECONDS = 3600.0
#: Tiles timed before an estimate above the threshold is believed.
TILES_TIMED = 3


class RunawayWorkWarning(RuntimeWarning):
    """A kernel was estimated to take far longer (hours) than a caller can mean."""


def format_duration(seconds: float) -> str:
    """``3.2 hours``, ``41 days``, ``1.8 years``."""
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.2g} {unit}"
    return f"{seconds:.2g} seconds"


class WorkEstimate:
    """Times tiles until it knows whether ``n_tiles`` tiles on ``workers`` threads stay
    under `RUNAWAY_SECONDS`; warns once (`RunawayWorkWarning`) if they do not.

    Args:
        n_tiles: the tiles the kernel will compute.
        workers: the threads that compute them at once (1 when in turn).
        tile: the tile size (examples per side), for the message.
        analytic: whether the kernel is an infinite-width one (``stax``'s ``kernel_fn``),
            for the remedies in the message.
    """

    def __init__(self, n_tiles: int, workers: int, tile: int, analytic: bool) -> None:
        self.n_tiles, self.workers, self.tile, self.analytic = n_tiles, max(1, workers), tile, analytic
        self.seconds: list[float] = []
        self.decided = n_tiles <= 1
        self.lock = threading.Lock()

    def timed(self, fn: Callable[[Any], None]) -> Callable[[Any], None]:
        """``fn`` (one tile), timed until the estimate is decided."""

        def run(item: Any) -> None:
            if self.decided:
                fn(item)
                return
            start = time.perf_counter()
            fn(item)
            self.observe(time.perf_counter() - start)

        return run

    def total(self) -> float:
        """Estimated seconds for all tiles: the fastest timed tile, times the tiles per thread."""
        return min(self.seconds) * self.n_tiles / self.workers

    def observe(self, seconds: float) -> None:
        with self.lock:
            if self.decided:
                return
            self.seconds.append(seconds)
            if self.total() < RUNAWAY_SECONDS:
                self.decided = True
                return
            if len(self.seconds) < min(TILES_TIMED, self.n_tiles):
                return
            self.decided = True
        warnings.warn(self.message(), RunawayWorkWarning, stacklevel=3)

    def message(self) -> str:
        per_tile = min(self.seconds)
        what = "this kernel" if self.analytic else "this tiled kernel"
        if self.analytic:
            remedies = (
                "fewer examples (the work grows with N1 x N2; spatial kernels also with the square "
                "of the number of pixels); diagonal_spatial=True, where the network allows it (no "
                "pooling or attention: a Flatten readout); a GPU (kernel_fn runs on the inputs' "
                "device); or the kernel computed in blocks into a kernel store, on a cluster "
                "(the `tangents kernel` command)"
            )
        else:
            remedies = (
                "fewer examples (the work grows with N1 x N2); a GPU; or the kernel computed in "
                "blocks into a kernel store, on a cluster (the `tangents kernel` command)"
            )
        return (
            f"kernel_fn: {what} will take about {format_duration(self.total())}: {self.n_tiles:,} tiles "
            f"of up to {self.tile} x {self.tile} pairs of examples at {per_tile:.3g} s each (the fastest of "
            f"the first {len(self.seconds)}), on {self.workers} thread(s). It goes on; interrupt it "
            f"to stop. Instead, consider: {remedies}."
        )
