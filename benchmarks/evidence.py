"""How long ``tangents evidence`` takes with its defaults (the README's "under 5 minutes").

No peer ships this (neural-tangents leaves it to notebooks), so tangents is timed alone: each
run is a fresh process (`_common.run_worker`) calling ``tangents.evidence.run`` with the
command's defaults (widths 100-10,000, 10 networks each, 200 steps) and ``threads`` torch
threads; it reports wall-clock and CPU seconds, the time of each stage, the peak resident
set, and the headline numbers (so a timing can be matched with its results). ``--repeats``
runs are made per thread count and the median is reported.

    .venv/bin/python benchmarks/evidence.py                 # about 1-2 minutes per run on 2 quiet cores
    .venv/bin/python benchmarks/evidence.py --small         # a reduced configuration, seconds: checks the script

Results go to ``benchmarks/results/evidence.json`` (``evidence_small.json`` with --small),
with the git revision measured and the load average.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import code_state, load_average, markdown_table, run_worker, thread_env  # noqa: E402

SMALL = {"widths": [64, 256, 1024], "circle_widths": [64, 1024], "seeds": [0, 1, 2, 3], "steps": 50}

WORKER = r"""
import json, resource, sys, time
from tangents import evidence
config = json.loads(sys.argv[1])
threads = config.pop("threads")
t0, c0 = time.perf_counter(), time.process_time()
report = evidence.run(progress=False, threads=threads, **config)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({
    "wall_s": wall, "cpu_s": cpu, "stages_s": report.timings,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "ntk_error_slope": report.ntk_error_fit.slope,
    "rmse_net_ntk_widest": float(report.rmse_net_ntk[-1].mean()),
}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="a reduced configuration (seconds), to check the script")
    parser.add_argument("--threads", default="1,2", help="torch thread counts to time, comma-separated (default: 1,2)")
    parser.add_argument("--repeats", type=int, default=1, help="fresh-process runs per thread count (default: 1)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before a run is abandoned")
    args = parser.parse_args()

    config = dict(SMALL) if args.small else {}
    rows, results = [], []
    load_before = load_average()
    for threads in (int(t) for t in args.threads.split(",")):
        runs = []
        for _ in range(args.repeats):
            out = run_worker([sys.executable, "-c", WORKER, json.dumps({**config, "threads": threads})],
                             args.timeout, env=thread_env(threads))
            runs.append(out)
            if "error" in out:
                print(f"threads {threads}: {out['error']}", file=sys.stderr)
                break
        ok = [r for r in runs if "error" not in r]
        entry = {"threads": threads, "runs": runs}
        if ok:
            entry["median_wall_s"] = statistics.median(r["wall_s"] for r in ok)
            entry["median_cpu_s"] = statistics.median(r["cpu_s"] for r in ok)
            rows.append([str(threads), f"{entry['median_wall_s']:.1f}", f"{entry['median_cpu_s']:.1f}",
                         f"{ok[0]['stages_s'].get('finite networks', float('nan')):.1f}", f"{ok[0]['peak_rss_mb']:.0f}",
                         f"{ok[0]['ntk_error_slope']:.3f}"])
        results.append(entry)

    print(markdown_table(["threads", "wall (s)", "CPU (s)", "finite networks (s)", "peak RSS (MiB)", "NTK slope"], rows))
    print(f"load average before: {load_before}, after: {load_average()}")
    record = {"benchmark": "evidence", "config": config or "defaults", "code": code_state(),
              "load_average_before": load_before, "load_average_after": load_average(), "results": results}
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / ("evidence_small.json" if args.small else "evidence.json")
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
