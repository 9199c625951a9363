"""Runaway work (issue #12): a tiled kernel that would take hours warns once, up front.

The estimate (`tangents.blocks._estimate.WorkEstimate`) is the fastest of the first tiles'
times, times the number of tiles, over the threads. The oracles: hand-computed products of
known per-tile times (the unit tests feed the times directly, no clock), and, for the real
`kernel_fn`, a threshold lowered so that any work exceeds it.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import tangents
from tangents import stax
from tangents.blocks import _estimate
from tangents.blocks._estimate import RunawayWorkWarning, WorkEstimate, format_duration


def test_the_issues_example_is_estimated_and_named():
    """The issue's CNN with pooling on 5,000 images of 64x64: 12.5 million tiles at 4.5 s
    each on one thread is 5.6e7 s = 1.8 years; the warning says so, with every remedy."""
    estimate = WorkEstimate(12_500_000, 1, 1, analytic=True)
    with pytest.warns(RunawayWorkWarning) as record:
        for _ in range(5):
            estimate.observe(4.5)
    assert len(record) == 1  # once, not per tile
    message = str(record[0].message)
    assert "kernel_fn: this kernel will take about 1.8 years: 12,500,000 tiles" in message
    assert "4.5 s each (the fastest of the first 3)" in message
    for remedy in ("fewer examples", "diagonal_spatial=True", "a GPU", "kernel store", "`tangents kernel`"):
        assert remedy in message, remedy


def test_the_estimate_is_the_fastest_timed_tile_times_tiles_per_thread():
    """The first tile of a compiled kernel includes compiling: the fastest of three counts.
    100,000 tiles at min(50, 0.2, 0.3) = 0.2 s on 2 threads: 1e4 s = 2.8 hours."""
    estimate = WorkEstimate(100_000, 2, 8, analytic=False)
    with pytest.warns(RunawayWorkWarning, match=r"this tiled kernel will take about 2\.8 hours: 100,000 tiles of up to 8 x 8"):
        for seconds in (50.0, 0.2, 0.3):
            estimate.observe(seconds)
    assert estimate.total() == pytest.approx(0.2 * 100_000 / 2)  # exact arithmetic, up to rounding


def test_short_work_is_decided_at_once_and_silent():
    """1,000 tiles at 0.01 s: 10 s, far below an hour. Decided after the first tile (no more
    clock reads); a compile-slowed first tile (10 s x 1,000 > 1 h) waits for the next ones."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quick = WorkEstimate(1_000, 1, 64, analytic=True)
        quick.observe(0.01)
        assert quick.decided
        slow_start = WorkEstimate(1_000, 1, 64, analytic=True)
        slow_start.observe(10.0)
        assert not slow_start.decided  # 1e4 s: not believed from one tile
        slow_start.observe(0.01)
        assert slow_start.decided  # 10 s: no warning


def test_a_single_tile_is_never_timed():
    """One tile: nothing to extrapolate, and nothing left to warn about before it runs."""
    assert WorkEstimate(1, 1, 100, analytic=True).decided


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5.0, "5 seconds"), (90.0, "1.5 minutes"), (3 * 3600.0, "3 hours"), (41 * 86400.0, "41 days"), (5.6e7, "1.8 years")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_kernel_fn_warns_once_and_still_returns_the_kernel(monkeypatch):
    """With the threshold at 0 s, a tiled kernel_fn warns exactly once (not per tile, even in
    parallel threads) and then computes the same kernel as without tiling (the warning does
    not stop the work)."""
    layer = stax.serial(stax.Dense(32, W_std=1.5, b_std=0.05), stax.Relu(), stax.Dense(1))
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(0))
    expected = layer.kernel_fn(x, None, "ntk")  # one tile: no estimate
    monkeypatch.setattr(_estimate, "RUNAWAY_SECONDS", 0.0)
    batched = tangents.batch(layer.kernel_fn, batch_size=3, progress=False)  # 10 tiles of 3 x 3
    with pytest.warns(RunawayWorkWarning, match=r"kernel_fn: this kernel will take about .*: 10 tiles of up to 3 x 3") as record:
        k = batched(x, None, "ntk")
    assert len(record) == 1
    # tiles and the whole kernel differ only by the rounding of different matrix products
    # (measured 5.6e-17 absolute on entries up to ~1, 1.2e-14 relative on a near-zero entry)
    torch.testing.assert_close(k, expected, rtol=1e-13, atol=1e-15 * float(expected.abs().max()))


def test_runaway_warning_is_public_and_a_runtime_warning():
    """Users filter it by class: ``warnings.simplefilter('error', tangents.RunawayWorkWarning)``
    turns runaway work into an exception raised after the first tiles."""
    assert tangents.RunawayWorkWarning is RunawayWorkWarning
    assert issubclass(RunawayWorkWarning, RuntimeWarning)
