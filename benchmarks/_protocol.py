"""The timing protocol of `benchmarks/empirical.py`, for both sides (stdlib only: the
neural-tangents worker imports it from its own virtual environment)."""

from __future__ import annotations

from typing import Any, Callable

from _common import median_timing

__all__ = ["timed"]


def timed(call: Callable[[], Any], sync: Callable[[Any], Any] = lambda r: r, first_only: bool = False
          ) -> dict[str, Any]:
    """The first call apart, then the median of 3 calls (four calls in all; when the first
    took under 0.1 s, the median of 21 further calls instead): ``first_s``, ``median_s``,
    ``times_s``, ``cpu_s``, ``peak_mb`` (peak resident growth during the timed calls),
    ``calls`` and the last ``result`` (see ``_common.median_timing``).

    ``first_only``: the first call alone (``calls`` 0, no median): for a side too slow to be
    called four times, whose first call then bounds its median from above (it includes the
    one-time costs of the first call in a process)."""
    if first_only:
        out = median_timing(call, repeats=0, sync=sync)
        out["calls"] = 0
        return out
    out = median_timing(call, repeats=3, sync=sync)
    out["calls"] = 3
    if out["first_s"] < 0.1:
        first, first_peak = out["first_s"], out["first_peak_mb"]
        del out["result"]
        out = median_timing(call, repeats=21, sync=sync)
        out.update(first_s=first, first_peak_mb=first_peak, calls=21)
    return out
