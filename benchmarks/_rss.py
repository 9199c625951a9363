"""Peak resident memory of the current process, the same way for every library (stdlib only).

``reset_peak()`` clears the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``,
Linux >= 4.0) so that ``peak_mb() - rss_mb()`` measured around a call is the memory that call
added at its peak, whatever happened before (imports, JIT compilation, warm-up).
"""

from __future__ import annotations

import resource


def _status(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Current resident set size (MiB)."""
    return _status("VmRSS") or 0.0


def reset_peak() -> bool:
    """Resets the peak RSS to the current RSS; False if the platform cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_mb() -> float:
    """Peak resident set size since the last reset (MiB)."""
    hwm = _status("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
