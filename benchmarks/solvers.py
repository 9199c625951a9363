"""Solvers for large training sets: CG against Cholesky, Nyström against the exact solve.

Workload: NTK regression with the ``fc`` network of ``kernels.py`` (``[Dense(512, W_std=1.5,
b_std=0.05), Relu] x 3, Dense(1)``) on a 10-class problem anyone can regenerate::

    sklearn.datasets.make_classification(n_samples=POOL + 10_000, n_features=16,
        n_informative=8, n_redundant=0, n_classes=10, n_clusters_per_class=1,
        class_sep=1.0, random_state=0)

standardized with the training statistics, float32, targets one-hot minus 1/10; the
training set is the first ``N`` rows of the pool, the test set its last 10,000 rows (the
same for every ``N``; ``--quick``: 2,000); accuracy is the argmax of the 10 outputs.
Kernels are float32, solves float64 (the defaults).

Parts (``--parts``, all by default):

* ``cg``: ``N = 20,000`` (quick 2,000), ``gp_inference(k_train_train, y, diag_reg)`` with
  ``solver="cholesky"`` and ``solver="cg"`` (default ``tol=1e-6``) on the same precomputed
  kernels, each in its own process: kernel time, solve time, CG iterations, peak RSS, and the
  largest difference between the two predictions (relative to their largest entry);
* ``nystrom``: ``N = 200,000`` (quick 20,000), ``predict.nystrom`` with ``M`` = 2,000, 5,000,
  10,000, 20,000 (quick 250, 500, 1,000) uniform centres (``--nystrom-centers
  uniform,leverage`` adds leverage-score centres: one more pass each): time (fit and test
  predictions), peak RSS (the worker's whole resident set, kept under ``--memory-gb`` by
  limiting the blocks of ``K(X, centres)`` kept in memory between CG iterations; the others
  are written once to a temporary ``cache_dir`` and read back at every iteration), CG
  iterations, test accuracy;
* ``gap``: ``N = 20,000`` (quick 4,000; ``--gap-n``): the exact solve's test accuracy, and
  Nyström's (uniform and leverage centres) at ``M`` = 1,000, 2,000, 5,000, 10,000 (quick 250,
  500, 1,000, 2,000; ``--gap-m``): the gap in points;
* ``scaling``: Nyström at fixed ``M = 1,000`` (quick 250) for ``N`` = 10⁴, 3·10⁴, 10⁵,
  3·10⁵, 10⁶ (quick 2,500 … 40,000): time against ``N`` and the fitted exponent of
  ``time ∝ N^p`` (linear: ``p ≈ 1``).

Every measurement runs in a fresh process (``run_worker``: clean heap, its own peak RSS)
with ``--threads`` threads (default 2), after a small warm-up call of the same path.

Run (on a quiet machine; the full run takes about 1.5 hours, ``--quick`` about 3 minutes)::

    .venv/bin/python benchmarks/solvers.py --quick
    .venv/bin/python benchmarks/solvers.py
    .venv/bin/python benchmarks/solvers.py --parts nystrom --nystrom-m 2000 5000

It prints markdown tables and writes ``benchmarks/results/solvers.json`` (with the git
revision measured).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import code_state, load_average, markdown_table, run_worker, thread_env  # noqa: E402
from kernels import FC, build_ours  # noqa: E402

RESULTS = HERE / "results"
CLASSES = 10
DIAG_REG = 1e-3
GiB = 2**30


# ----------------------------------------------------------------------------- worker side


def dataset(n_train: int, pool: int, n_test: int, seed: int = 0):
    """``(x_train, y_train, x_test, labels_test)`` as torch float32 tensors (see module doc)."""
    import torch
    from sklearn.datasets import make_classification

    x, labels = make_classification(n_samples=pool + n_test, n_features=16, n_informative=8, n_redundant=0,
                                    n_classes=CLASSES, n_clusters_per_class=1, class_sep=1.0, random_state=seed)
    train, test = slice(0, n_train), slice(pool, pool + n_test)
    mean, std = x[train].mean(0), x[train].std(0)
    x = ((x - mean) / std).astype(np.float32)
    y = np.eye(CLASSES, dtype=np.float32)[labels] - 1.0 / CLASSES
    return (torch.from_numpy(x[train].copy()), torch.from_numpy(y[train].copy()), torch.from_numpy(x[test].copy()),
            torch.from_numpy(labels[test].copy()))


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def _accuracy(pred, labels) -> float:
    return float((pred.argmax(1) == labels).float().mean())


def worker(cfg: dict) -> dict:
    import torch

    from tangents import predict
    from tangents._predict import _solvers

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    kernel_fn = build_ours(FC).kernel_fn
    x, y, xt, labels = dataset(cfg["n"], cfg["pool"], cfg["n_test"])
    iterations = []
    original = _solvers.conjugate_gradients

    def counted(*args, **kwargs):
        out = original(*args, **kwargs)
        iterations.append(out[1])
        return out

    _solvers.conjugate_gradients = counted
    import tangents._predict._nystrom as nystrom_module
    from tangents._predict import _nystrom_blocks

    nystrom_module.conjugate_gradients = counted
    passes: dict[str, list[float]] = {}  # seconds of each pass over the blocks, by kind
    reduce = _nystrom_blocks.LocalBlocks.reduce

    def timed_reduce(self, fn, *a, desc="", **k):
        t0 = time.perf_counter()
        res = reduce(self, fn, *a, desc=desc, **k)
        passes.setdefault(desc.split(": ")[-1], []).append(time.perf_counter() - t0)
        return res

    _nystrom_blocks.LocalBlocks.reduce = timed_reduce
    out: dict = {}
    if cfg["kind"] == "exact":
        # warm-up: the same path on 200 points
        predict.gp_inference(kernel_fn(x[:200], None, "ntk"), y[:200], diag_reg=DIAG_REG, solver=cfg["solver"])(
            "ntk", kernel_fn(xt[:10], x[:200], "ntk"))
        iterations.clear()
        t0 = time.perf_counter()
        k_dd = kernel_fn(x, None, "ntk")
        k_td = kernel_fn(xt, x, "ntk")
        t1 = time.perf_counter()
        pred = predict.gp_inference(k_dd, y, diag_reg=DIAG_REG, solver=cfg["solver"], tol=cfg.get("tol", 1e-6),
                                    progress=False)("ntk", k_td)
        t2 = time.perf_counter()
        out.update(kernel_s=t1 - t0, solve_s=t2 - t1)
    else:
        predict.nystrom(kernel_fn, x[:200], y[:200], n_centers=20, diag_reg=DIAG_REG, seed=0)(x_test=xt[:10], get="ntk")
        iterations.clear()
        m = cfg["m"]
        # keep the worker under the memory target: the M x M factors while they are built
        # (K_MM in float32 and its float64 copy: 12 M² bytes), the inputs, torch itself and the
        # temporaries of the kernel blocks (~2.5 GiB) first, then as many blocks of
        # K(X, centres) as fit; the others go to disk (cache_dir), read at every pass
        cache = int(max(0.0, cfg["memory_gb"] * GiB - 12 * m * m - 2.5 * GiB))
        spill = tempfile.mkdtemp(prefix="solvers-spill-")
        t0 = time.perf_counter()
        try:
            fn = predict.nystrom(kernel_fn, x, y, n_centers=m, diag_reg=DIAG_REG, centers=cfg.get("centers", "uniform"),
                                 seed=0, cache_bytes=cache, cache_dir=spill, progress=False)
            pred = fn(x_test=xt, get="ntk")
        finally:
            shutil.rmtree(spill, ignore_errors=True)
        out.update(total_s=time.perf_counter() - t0, cache_gb=cache / GiB,
                   on_disk_gb=max(0.0, cfg["n"] * m * 4 - cache) / GiB,
                   kernel_nm_gb=cfg["n"] * m * 4 / GiB, passes_s={k: sum(v) for k, v in passes.items()},
                   cg_pass_s=float(np.median(passes["CG pass"])) if passes.get("CG pass") else None)
    out.update(accuracy=_accuracy(pred, labels), iterations=iterations, peak_rss_gb=_peak_rss_gb())
    if cfg.get("save"):
        np.save(cfg["save"], pred.double().numpy())
    return out


# ----------------------------------------------------------------------------- driver side


def _run(cfg: dict, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(cfg)]
    t0 = time.perf_counter()
    res = run_worker(cmd, args.timeout, thread_env(args.threads))
    res["wall_s"] = time.perf_counter() - t0
    res["load"] = load_average()
    res["cfg"] = cfg
    return res


def fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def part_cg(args, base: dict, tmp: str) -> dict:
    n = 2_000 if args.quick else 20_000
    rows = {}
    for solver in ("cholesky", "cg"):
        rows[solver] = _run({**base, "kind": "exact", "n": n, "solver": solver, "save": f"{tmp}/{solver}.npy"}, args)
        print(f"  cg part: {solver} done ({fmt(rows[solver].get('wall_s'))} s)", flush=True)
    diff = None
    if all(os.path.exists(f"{tmp}/{s}.npy") for s in rows):
        a, b = np.load(f"{tmp}/cholesky.npy"), np.load(f"{tmp}/cg.npy")
        diff = float(np.abs(a - b).max() / np.abs(a).max())
    return {"n": n, "rows": rows, "max_rel_diff": diff}


def part_nystrom(args, base: dict) -> dict:
    n = 20_000 if args.quick else 200_000
    ms = args.nystrom_m or ([250, 500, 1000] if args.quick else [2000, 5000, 10000, 20000])
    rows = []
    for centers in args.nystrom_centers.split(","):
        for m in ms:
            rows.append(_run({**base, "kind": "nystrom", "n": n, "m": m, "centers": centers,
                              "memory_gb": args.memory_gb}, args))
            print(f"  nystrom part: M={m} {centers} done ({fmt(rows[-1].get('wall_s'))} s)", flush=True)
    return {"n": n, "rows": rows}


def part_gap(args, base: dict) -> dict:
    n = args.gap_n or (4_000 if args.quick else 20_000)
    ms = args.gap_m or ([250, 500, 1000, 2000] if args.quick else [1000, 2000, 5000, 10000])
    exact = _run({**base, "kind": "exact", "n": n, "solver": args.exact_solver, "tol": 1e-9}, args)
    rows = []
    for m in ms:
        for centers in ("uniform", "leverage"):
            rows.append(_run({**base, "kind": "nystrom", "n": n, "m": m, "centers": centers, "memory_gb": args.memory_gb}, args))
        print(f"  gap part: M={m} done", flush=True)
    return {"n": n, "exact": exact, "rows": rows}


def part_scaling(args, base: dict) -> dict:
    ns = [2_500, 5_000, 10_000, 20_000, 40_000] if args.quick else [10_000, 30_000, 100_000, 300_000, 1_000_000]
    m = 250 if args.quick else 1000
    rows = []
    for n in ns:
        rows.append(_run({**base, "kind": "nystrom", "n": n, "m": m, "memory_gb": args.memory_gb}, args))
        print(f"  scaling part: N={n} done ({fmt(rows[-1].get('wall_s'))} s)", flush=True)
    def exponent(key: str):
        ok = [(r["cfg"]["n"], r[key]) for r in rows if r.get(key)]
        if len(ok) < 2:
            return None
        return float(np.polyfit(np.log([a for a, _ in ok]), np.log([b for _, b in ok]), 1)[0])

    return {"m": m, "rows": rows, "exponent": exponent("total_s"), "exponent_pass": exponent("cg_pass_s")}


def report(res: dict) -> str:
    out = []
    if "cg" in res:
        r = res["cg"]
        rows = []
        for s in ("cholesky", "cg"):
            w = r["rows"][s]
            rows.append([s, r["n"], fmt(w.get("kernel_s")), fmt(w.get("solve_s"), ".2f"),
                         ",".join(map(str, w.get("iterations", []))) or "-", fmt(w.get("peak_rss_gb"), ".2f"),
                         fmt(w.get("accuracy"), ".4f"), w.get("error", "")])
        out.append(f"CG against Cholesky (gp_inference, NTK, N = {r['n']}, diag_reg = {DIAG_REG}):\n\n"
                   + markdown_table(["solver", "N", "kernels (s)", "solve (s)", "CG iterations", "peak RSS (GiB)",
                                     "test accuracy", "error"], rows)
                   + f"\n\nlargest difference of the predictions (relative): {fmt(r.get('max_rel_diff'), '.1e')}")
    if "nystrom" in res:
        r = res["nystrom"]
        rows = [[w["cfg"]["m"], w["cfg"].get("centers", "uniform"), fmt(w.get("total_s")), fmt(w.get("peak_rss_gb"), ".2f"), fmt(w.get("kernel_nm_gb"), ".1f"),
                 fmt(w.get("cache_gb"), ".1f"), ",".join(map(str, w.get("iterations", []))) or "-",
                 fmt(w.get("accuracy"), ".4f"), w.get("error", "")] for w in r["rows"]]
        out.append(f"Nyström, N = {r['n']:,}:\n\n"
                   + markdown_table(["M", "centres", "time (s)", "peak RSS (GiB)", "K(X,C) float32 (GiB)", "blocks kept (GiB)",
                                     "CG iterations", "test accuracy", "error"], rows))
    if "gap" in res:
        r = res["gap"]
        exact = r["exact"].get("accuracy")
        rows = [[w["cfg"]["m"], w["cfg"]["centers"], fmt(w.get("accuracy"), ".4f"),
                 fmt(None if exact is None or "accuracy" not in w else 100 * (exact - w["accuracy"]), ".2f"),
                 fmt(w.get("total_s"))] for w in r["rows"]]
        out.append(f"Accuracy gap to the exact solve, N = {r['n']:,} (exact: {fmt(exact, '.4f')}, "
                   f"{fmt(r['exact'].get('kernel_s'))} s kernels + {fmt(r['exact'].get('solve_s'))} s "
                   f"{r['exact'].get('cfg', {}).get('solver', '?')}):\n\n"
                   + markdown_table(["M", "centres", "test accuracy", "gap (points)", "time (s)"], rows))
    if "scaling" in res:
        r = res["scaling"]
        rows = [[f"{w['cfg']['n']:,}", fmt(w.get("total_s")), fmt((w.get("passes_s") or {}).get("K(X, centres)")),
                 fmt(w.get("cg_pass_s"), ".2f"), ",".join(map(str, w.get("iterations", []))) or "-",
                 fmt(w.get("peak_rss_gb"), ".2f"), fmt(w.get("accuracy"), ".4f"), w.get("error", "")]
                for w in r["rows"]]
        out.append(f"Nyström time against N at M = {r['m']:,}: total time ∝ N^{fmt(r.get('exponent'), '.2f')}, "
                   f"one CG pass ∝ N^{fmt(r.get('exponent_pass'), '.2f')}\n\n"
                   + markdown_table(["N", "total (s)", "first pass: K(X,C) (s)", "one CG pass (s)", "CG iterations",
                                     "peak RSS (GiB)", "test accuracy", "error"], rows))
    return "\n\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about 3 minutes")
    parser.add_argument("--parts", default="cg,nystrom,gap,scaling", help="comma-separated: cg,nystrom,gap,scaling")
    parser.add_argument("--nystrom-m", type=int, nargs="*", default=None, help="M values of the nystrom part")
    parser.add_argument("--nystrom-centers", default="uniform",
                        help="centres of the nystrom part: uniform, leverage or uniform,leverage")
    parser.add_argument("--gap-n", type=int, default=None, help="N of the gap part (default 20,000; quick 4,000)")
    parser.add_argument("--gap-m", type=int, nargs="*", default=None, help="M values of the gap part")
    parser.add_argument("--memory-gb", type=float, default=7.5, help="resident memory target of a Nyström worker")
    parser.add_argument("--exact-solver", default="cholesky", choices=["cholesky", "cg"],
                        help="the exact solve of the gap part (cg: tol=1e-9, a quarter of Cholesky's memory)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per worker (default 2)")
    parser.add_argument("--timeout", type=float, default=4 * 3600.0, help="seconds per worker process")
    parser.add_argument("--output", default=None, help="JSON path (default benchmarks/results/solvers.json)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"cg", "nystrom", "gap", "scaling"}
    if unknown:
        parser.error(f"--parts: unknown part(s) {sorted(unknown)}; choose from cg, nystrom, gap, scaling")
    base = {"pool": 100_000 if args.quick else 1_000_000, "n_test": 2_000 if args.quick else 10_000}
    print(f"threads {args.threads}; parts {parts}; load average at start: {load_average()}", flush=True)
    res: dict = {"code": code_state(), "threads": args.threads, "quick": args.quick, "diag_reg": DIAG_REG,
                 "load_start": load_average(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    with tempfile.TemporaryDirectory() as tmp:
        if "cg" in parts:
            res["cg"] = part_cg(args, base, tmp)
        if "nystrom" in parts:
            res["nystrom"] = part_nystrom(args, base)
        if "gap" in parts:
            res["gap"] = part_gap(args, base)
        if "scaling" in parts:
            res["scaling"] = part_scaling(args, base)
    res["load_end"] = load_average()
    RESULTS.mkdir(exist_ok=True)
    path = Path(args.output) if args.output else RESULTS / ("solvers_quick.json" if args.quick else "solvers.json")
    path.write_text(json.dumps(res, indent=1))
    print()
    print(report(res))
    print(f"\nload average at end: {res['load_end']}; written {path}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        print(report(json.loads(Path(sys.argv[2]).read_text())))
    else:
        main()
