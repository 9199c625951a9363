"""Prediction benchmark: infinite-ensemble MSE predictions, tangents against neural-tangents 0.6.5.

Workload: the ``fc`` network of ``kernels.py`` (``[Dense(512, W_std=1.5, b_std=0.05), Relu]
x 3, Dense(1)``), inputs (N, 100), 4000 training points with 10 targets each, 1000 test
points (``--quick``: 500 / 125), float32 and float64::

    gradient_descent_mse_ensemble(kernel_fn, x_train, y_train, diag_reg=1e-4)(
        x_test=x_test, get=("nngp", "ntk"), compute_cov=True)

Three timings per library (first call apart, median of up to 3 after it, peak RSS growth):

* ``kernels``: the kernels the ensemble needs (train-train and test-train NNGP+NTK,
  test-test NNGP), computed directly;
* ``predict``: the prediction with those kernels precomputed (``kernel_fn`` returns them);
* ``total``: the prediction from ``kernel_fn`` itself (kernels included).

tangents factors in ``solve_dtype=torch.float64`` by default even for float32 kernels; for
float32 the table has a second tangents row with ``solve_dtype=torch.float32`` (like
neural-tangents, which solves in the kernels' dtype). neural-tangents' ``kernel_fn`` is
``jax.jit``-ed. Threads, processes and the neural-tangents venv as in ``kernels.py``.

Run::

    /work/venv/bin/python benchmarks/predict.py --quick
    /work/venv/bin/python benchmarks/predict.py

It prints a markdown table and writes ``benchmarks/results/predict.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import (require_committed, NT_HOWTO, code_state, fmt_mb, fmt_s, load_average, markdown_table, median_timing,  # noqa: E402
                     nt_python, ratio, run_worker, thread_env)
from kernels import FC, build_ours  # noqa: E402

RESULTS = HERE / "results"
PHASES = ("kernels", "predict", "total")


def worker(cfg: dict) -> dict:
    import torch

    from tangents import predict

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    dtype = getattr(torch, cfg["dtype"])
    solve_dtype = getattr(torch, cfg["solve_dtype"])
    rng = np.random.default_rng(cfg["seed"])
    x_tr = torch.tensor(rng.standard_normal((cfg["n_train"], cfg["d_in"])), dtype=dtype)
    y_tr = torch.tensor(rng.standard_normal((cfg["n_train"], cfg["n_out"])), dtype=dtype)
    x_te = torch.tensor(rng.standard_normal((cfg["n_test"], cfg["d_in"])), dtype=dtype)
    kernel_fn = build_ours(cfg["arch"]).kernel_fn
    get = ("nngp", "ntk")

    def kernels():
        return kernel_fn(x_tr, None, get), kernel_fn(x_te, x_tr, get), kernel_fn(x_te, None, "nngp")

    out = {"kernels": median_timing(kernels, cfg["repeats"])}
    k_dd, k_td, k_tt = out["kernels"].pop("result")

    def cached(x1, x2, get, **kwargs):
        k = k_tt if x2 is None and x1 is x_te else (k_dd if x2 is None else k_td)
        if isinstance(get, str):
            return k if torch.is_tensor(k) else getattr(k, get)
        return k

    def run(fn):
        return lambda: predict.gradient_descent_mse_ensemble(fn, x_tr, y_tr, diag_reg=cfg["diag_reg"],
                                                             solve_dtype=solve_dtype)(
            x_test=x_te, get=get, compute_cov=True)

    out["predict"] = median_timing(run(cached), cfg["repeats"])
    out["predict"].pop("result")
    out["total"] = median_timing(run(kernel_fn), cfg["repeats"])
    pred = out["total"].pop("result")
    if cfg.get("out"):
        np.savez(cfg["out"], **{f"{g}_{w}": getattr(pred, g)[i][:64, :64].double().numpy()
                                for g in get for i, w in enumerate(("mean", "cov"))})
    return out


def _diff(a: Path, b: Path) -> float | None:
    if not (a.exists() and b.exists()):
        return None
    x, y = np.load(a), np.load(b)
    return max(float(np.abs(x[k] - y[k]).max() / np.abs(y[k]).max()) for k in y.files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 train / 125 test, under a minute")
    parser.add_argument("--dtypes", nargs="*", default=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=2, help="threads for both libraries (default 2)")
    parser.add_argument("--nt-python", default=None, help="python of the neural-tangents venv")
    parser.add_argument("--no-nt", action="store_true", help="tangents alone")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per process")
    parser.add_argument("--output", default=None, help="JSON path (default benchmarks/results/predict.json)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--allow-modified", action="store_true",
                        help="run on a tree with uncommitted changes (a trial: its results must not be reported)")
    args = parser.parse_args()
    require_committed(args.allow_modified)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    env = thread_env(args.threads)
    peer = None if args.no_nt else nt_python(args.nt_python)
    if peer is None and not args.no_nt:
        print(NT_HOWTO)
    n_train, n_test = (500, 125) if args.quick else (4000, 1000)
    loads = [load_average()]
    print(f"threads per library: {args.threads}; {n_train} train / {n_test} test; load average at start: {loads[0]}",
          flush=True)
    base = {"arch": FC, "n_train": n_train, "n_test": n_test, "d_in": 100, "n_out": 10, "diag_reg": 1e-4, "seed": 0,
            "repeats": 3}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dt in args.dtypes:
            cfg = {**base, "dtype": dt}
            row = {"dtype": dt, "n_train": n_train, "n_test": n_test, "load_before": load_average()}
            row["tangents"] = run_worker([sys.executable, __file__, "--worker", json.dumps(
                {**cfg, "solve_dtype": "float64", "out": f"{tmp}/ours_{dt}.npz"})], args.timeout, env)
            if dt == "float32" and not args.quick:
                row["tangents_solve32"] = run_worker([sys.executable, __file__, "--worker", json.dumps(
                    {**cfg, "solve_dtype": "float32", "out": f"{tmp}/ours32_{dt}.npz"})], args.timeout, env)
            if peer:
                row["nt"] = run_worker([peer, str(HERE / "_nt_predict.py"), json.dumps({**cfg, "out": f"{tmp}/nt_{dt}.npz"})],
                                       args.timeout, env)
                row["max_rel_diff"] = _diff(Path(f"{tmp}/ours_{dt}.npz"), Path(f"{tmp}/nt_{dt}.npz"))
            row["load_after"] = load_average()
            rows.append(row)
            print(f"{dt}: tangents {[fmt_s(row['tangents'].get(p)) for p in PHASES]}, "
                  f"NT {[fmt_s(row.get('nt', {}).get(p)) for p in PHASES]} (load {row['load_before']})", flush=True)
    loads.append(load_average())
    RESULTS.mkdir(exist_ok=True)
    out = Path(args.output) if args.output else RESULTS / "predict.json"
    out.write_text(json.dumps({"code": code_state(), "threads": args.threads, "quick": args.quick, "load_start_end": loads,
                               "nt_python": peer, "rows": rows}, indent=1))
    print()
    print(report(rows))
    print(f"\nload average at end: {loads[-1]}; written {out}")


def report(rows: list[dict]) -> str:
    head = ["workload", "dtype", "tangents (s)", "NT (s)", "NT/tangents", "CPU s tangents / NT", "tangents 1st (s)", "NT 1st (s)",
            "tangents peak (MiB)", "NT peak (MiB)", "load 1 min"]
    body = []
    for r in rows:
        variants = [("tangents", "")] + ([("tangents_solve32", " [tangents solve_dtype=float32]")]
                                         if "tangents_solve32" in r else [])
        for key, label in variants:
            for p in PHASES:
                ours, nt = (r.get(key) or {}).get(p), (r.get("nt") or {}).get(p)
                if "error" in (r.get(key) or {}):
                    ours = r[key]
                if "error" in (r.get("nt") or {}):
                    nt = r["nt"]
                body.append([f"{p} {r['n_train']}/{r['n_test']}{label}", r["dtype"], fmt_s(ours), fmt_s(nt),
                             ratio(nt, ours), f"{fmt_s(ours, 'cpu_s')} / {fmt_s(nt, 'cpu_s')}", fmt_s(ours, "first_s"), fmt_s(nt, "first_s"), fmt_mb(ours), fmt_mb(nt),
                             r["load_before"].split()[0]])
    text = markdown_table(head, body)
    diffs = [f"{r['dtype']}: {r['max_rel_diff']:.1e}" for r in rows if r.get("max_rel_diff") is not None]
    if diffs:
        text += "\n\nmax relative difference of the predictions (means, 64x64 covariance corner): " + ", ".join(diffs)
    return text


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        print(report(json.loads(Path(sys.argv[2]).read_text())["rows"]))
    else:
        main()
