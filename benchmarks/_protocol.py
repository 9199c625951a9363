"""The timing protocol of `benchmarks/empirical.py`, for both sides (stdlib only: the
neural-tangents worker imports it from its own virtual environment)."""

from __future__ import annotations

from typing import Any, Callable

from _common import median_timing

__all__ = ["timed"]


def timed(call: Callable[[], Any], sync: Callable[[Any], Any] = lambda r: r) -> dict[str, Any]:
    """The first call apart, then the median of 3 calls (21 when the first took under 0.1 s):
    ``first_s``, ``median_s``, ``times_s``, ``cpu_s``, ``peak_mb`` (peak resident growth during
    the timed calls), ``calls`` and the last ``result`` (see ``_common.median_timing``)."""
    first = median_timing(call, repeats=1, sync=sync)
    repeats = 21 if first["first_s"] < 0.1 else 3
    del first["result"]
    out = median_timing(call, repeats=repeats, sync=sync)
    out["first_s"] = first["first_s"]
    out["first_peak_mb"] = first["first_peak_mb"]
    out["calls"] = repeats
    return out
