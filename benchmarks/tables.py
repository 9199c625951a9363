"""The README's benchmark tables, from the results files (median and the spread of the timed calls).

Every number printed comes from ``benchmarks/results/*.json``; the commit each file measured
is printed above its table. Usage::

    .venv/bin/python benchmarks/tables.py kernels [FILE]      # analytic kernels (kernels.py)
    .venv/bin/python benchmarks/tables.py predict [FILE]      # predictions (predict.py)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def spread(cell: dict[str, Any] | None, digits: int = 3) -> str:
    """``median (min–max)`` of a cell's timed calls, in seconds."""
    if not cell or "times_s" not in cell:
        return "–"
    times = cell["times_s"]
    f = lambda t: f"{t:.{digits}g}" if t < 1 else f"{t:.3g}"  # noqa: E731
    return f"{f(cell['median_s'])} ({f(min(times))}–{f(max(times))})"


def ratio(num: dict[str, Any] | None, den: dict[str, Any] | None) -> str:
    if not num or not den or "median_s" not in num or "median_s" not in den:
        return "–"
    return f"{num['median_s'] / den['median_s']:.2g}"


def mib(cell: dict[str, Any] | None) -> str:
    return "–" if not cell or "peak_mb" not in cell else f"{cell['peak_mb']:.0f}"


def kernels(path: Path) -> str:
    data = json.loads(path.read_text())
    lines = [f"commit {data['code']['commit'][:10]}, {data['threads']} threads, load {data['load_start_end']}", "",
             "| workload | N | dtype | tangents eager (s) | tangents compiled (s) | NT (s) | NT / eager | NT / compiled "
             "| first call: compiled / NT jitted (s) | peak MiB: eager / compiled / NT |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        t, c, nt = r.get("tangents"), r.get("compiled"), r.get("nt")
        first = f"{c['first_s']:.2g}" if c and "first_s" in c else "–"
        first += " / " + (f"{nt['first_s']:.2g}" if nt and "first_s" in nt else "–")
        lines.append(f"| {r['name']} | {r['n']} | {r['dtype']} | {spread(t)} | {spread(c)} | {spread(nt)} | "
                     f"{ratio(nt, t)} | {ratio(nt, c)} | {first} | {mib(t)} / {mib(c)} / {mib(nt)} |")
    fresh = data.get("fresh")
    if fresh:
        lines.append("")
        for who, f in fresh.items():
            lines.append(f"fresh process, {who}: " + ", ".join(f"{k} {v:.3g} s" for k, v in f.items() if k.endswith("_s")))
    return "\n".join(lines)


def predict(path: Path) -> str:
    data = json.loads(path.read_text())
    lines = [f"commit {data['code']['commit'][:10]}, {data['threads']} threads, load {data['load_start_end']}", "",
             "| dtype | side | total (s) | of which kernels (s) | NT total (s) | NT / tangents | peak MiB tangents / NT |",
             "|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        nt = r.get("nt", {})
        for side in (k for k in r if k.startswith("tangents")):
            t = r[side]
            lines.append(f"| {r['dtype']} | {side} | {spread(t.get('total'))} | {spread(t.get('kernels'))} | "
                         f"{spread(nt.get('total'))} | {ratio(nt.get('total'), t.get('total'))} | "
                         f"{mib(t.get('total'))} / {mib(nt.get('total'))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    kind = sys.argv[1]
    file = Path(sys.argv[2]) if len(sys.argv) > 2 else RESULTS / f"{kind}.json"
    print({"kernels": kernels, "predict": predict}[kind](file))
