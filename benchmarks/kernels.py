"""Analytic kernel benchmark: tangents against neural-tangents 0.6.5, same networks, same run.

Workloads (``kernel_fn(x, None, ("nngp", "ntk"))``, float32 and float64):

* ``fc``: ``[Dense(512, W_std=1.5, b_std=0.05), Relu] x 3, Dense(1)`` on x (N, 100),
  N = 1000, 2000, 4000, 8000;
* ``cnn16``: ``[Conv(128, (3, 3), SAME, W_std=1.5, b_std=0.05), Relu] x 3, GlobalAvgPool,
  Dense(1)`` on 16x16x3 images, N = 20, 50;
* with ``--large``: ``cnn32``, the same CNN on 32x32x3 images at N = 20, and ``myrtle5``
  (Shankar et al. 2020, as in neural-tangents' ``examples/myrtle_kernel.py``:
  ``[Conv-Relu] x 2, AvgPool 2, Conv-Relu, AvgPool 2, Conv-Relu, AvgPool 2 x 3, Flatten,
  Dense(1)``, ``W_std = sqrt 2``, ``b_std = 0``) on 32x32x3 at N = 20 (neural-tangents in
  float32 only there: its float64 run needs more memory than the machine has to spare).

Both libraries see the same numbers (NHWC for neural-tangents, transposed to NCHW for
tangents). Each measurement runs in a fresh process, one at a time, with the same thread
count for both libraries (``--threads``, default 2 = the number of cores: torch's default
and XLA's default Eigen pool; 1 sets ``torch.set_num_threads(1)`` and
``--xla_cpu_multi_thread_eigen=false``). neural-tangents' ``kernel_fn`` is ``jax.jit``-ed.
Reported: the first call (for JAX: tracing and compilation) apart, the median of 3 calls
after it, the growth of the peak resident set during those calls (``_rss.py``) and the
largest relative difference of a 64x64 corner of the two kernels. For ``fc`` it also times a
lower bound: ``x @ x.T`` plus the whole 3-layer ReLU recursion as one ``torch.compile``-d
elementwise function (``ref``), and for both libraries the import time and the first call of
a 100x100 FC kernel in a fresh process.

Run::

    /work/venv/bin/python benchmarks/kernels.py --quick     # < 1 minute
    /work/venv/bin/python benchmarks/kernels.py             # FC and 16x16 CNN
    /work/venv/bin/python benchmarks/kernels.py --large     # + 32x32 CNN and Myrtle-5
    /work/venv/bin/python benchmarks/kernels.py --profile   # where tangents' time goes

It prints a markdown table and writes ``benchmarks/results/kernels.json``. Without the
neural-tangents venv (``--nt-python``, ``$NT_PYTHON``, ``/work/venv-nt/bin/python``) it
reports tangents alone and says how to create it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import (require_committed, NT_HOWTO, code_state, fmt_mb, fmt_s, load_average, markdown_table, median_timing,  # noqa: E402
                     nt_python, ratio, run_worker, thread_env)

RESULTS = HERE / "results"
GET = ("nngp", "ntk")
SQRT2 = math.sqrt(2.0)

FC = [["Dense", {"out_dim": 512, "W_std": 1.5, "b_std": 0.05}], ["Relu", {}]] * 3 + [["Dense", {"out_dim": 1}]]
CNN = ([["Conv", {"out_chan": 128, "filter_shape": [3, 3], "padding": "SAME", "W_std": 1.5, "b_std": 0.05}],
        ["Relu", {}]] * 3 + [["GlobalAvgPool", {}], ["Dense", {"out_dim": 1}]])
_MYRTLE_CONV = [["Conv", {"out_chan": 128, "filter_shape": [3, 3], "padding": "SAME", "W_std": SQRT2, "b_std": 0.0}],
                ["Relu", {}]]
_POOL = [["AvgPool", {"window_shape": [2, 2], "strides": [2, 2]}]]
MYRTLE5 = (_MYRTLE_CONV * 2 + _POOL + _MYRTLE_CONV + _POOL + _MYRTLE_CONV + _POOL * 3
           + [["Flatten", {}], ["Dense", {"out_dim": 1, "W_std": SQRT2, "b_std": 0.0}]])
NETS = {"fc": (FC, [100]), "cnn16": (CNN, [16, 16, 3]), "cnn32": (CNN, [32, 32, 3]), "myrtle5": (MYRTLE5, [32, 32, 3])}


# ----------------------------------------------------------------------------- tangents side
def build_ours(arch: list):
    """``tangents.stax.serial`` of the listed layers (neural-tangents' names; channels-first)."""
    from tangents import stax

    layers = []
    for name, kwargs in arch:
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        layers.append(getattr(stax, name)(**kwargs))
    return stax.serial(*layers)


def ours_inputs(cfg: dict, dtype, n: int | None = None, seed: int | None = None):
    """The neural-tangents worker's inputs, channels-first."""
    import torch

    x = np.random.default_rng(cfg.get("seed", 0) if seed is None else seed).standard_normal(
        (cfg["n"] if n is None else n, *cfg["shape"]))
    if x.ndim == 4:
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    return torch.tensor(np.ascontiguousarray(x), dtype=dtype)


def _torch_setup(cfg: dict):
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    return torch, getattr(torch, cfg.get("dtype", "float32"))


def worker_kernel(cfg: dict) -> dict:
    torch, dtype = _torch_setup(cfg)
    net = build_ours(cfg["arch"])
    x = ours_inputs(cfg, dtype)
    compile_mode = cfg.get("compile")  # None: tangents' default (compiles only very large work)
    r = median_timing(lambda: net.kernel_fn(x, None, GET, compile=compile_mode), cfg.get("repeats", 3))
    k = r.pop("result")
    if cfg.get("out"):
        m = cfg.get("corner", 64)
        np.savez(cfg["out"], nngp=k.nngp[:m, :m].double().numpy(), ntk=k.ntk[:m, :m].double().numpy())
    return r


def fc_recursion(g, var0, w_std: float = 1.5, b_std: float = 0.05, depth: int = 3):
    """NNGP and NTK of the ``fc`` network from the Gram matrix, as plain elementwise math.

    g: (N, N) = x x^T / d_in; var0: (N,) its diagonal. The diagonal recursion is O(N) and done
    here with the rest; under ``torch.compile`` the (N, N) part becomes one fused loop.
    """
    import torch

    w2, b2 = w_std**2, b_std**2
    nngp = w2 * g + b2
    ntk = nngp
    var = w2 * var0 + b2
    for layer in range(depth):
        last = layer == depth - 1
        wl2, bl2 = (1.0, 0.0) if last else (w2, b2)  # readout Dense(1): W_std 1, b_std 0
        prod = torch.sqrt(var[:, None] * var[None, :])
        cos = torch.clamp(nngp / prod, -1.0, 1.0)
        theta = torch.acos(cos)
        t = prod * (torch.sqrt(1.0 - cos * cos) + (math.pi - theta) * cos) * (0.5 / math.pi)
        tdot = (math.pi - theta) * (0.5 / math.pi)
        nngp = wl2 * t + bl2
        ntk = wl2 * tdot * ntk + nngp
        var = wl2 * 0.5 * var + bl2
    return nngp, ntk


def worker_reference(cfg: dict) -> dict:
    """``x @ x.T`` plus the compiled elementwise recursion (the speed-of-light for ``fc``)."""
    torch, dtype = _torch_setup(cfg)
    x = ours_inputs(cfg, dtype)
    fused = torch.compile(fc_recursion, dynamic=False)

    def call():
        g = (x @ x.T) / x.shape[1]
        return fused(g, torch.diagonal(g).contiguous())

    r = median_timing(call, cfg.get("repeats", 3))
    nngp, ntk = r.pop("result")
    g = (x @ x.T) / x.shape[1]
    t0 = time.perf_counter()
    g = (x @ x.T) / x.shape[1]
    r["gemm_s"] = time.perf_counter() - t0
    if cfg.get("out"):
        m = cfg.get("corner", 64)
        np.savez(cfg["out"], nngp=nngp[:m, :m].double().numpy(), ntk=ntk[:m, :m].double().numpy())
    return r


def worker_fresh(cfg: dict) -> dict:
    t0 = time.perf_counter()
    import torch

    import tangents  # noqa: F401
    from tangents import stax  # noqa: F401

    import_s = time.perf_counter() - t0
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    net = build_ours(cfg["arch"])
    x = ours_inputs(cfg, torch.float32)
    t0 = time.perf_counter()
    net.kernel_fn(x, None, GET)
    return {"import_s": import_s, "first_call_s": time.perf_counter() - t0}


def worker_profile(cfg: dict) -> dict:
    """cProfile and torch.profiler tables of one call after a warm-up, written to ``cfg['out']``."""
    import cProfile
    import io
    import pstats

    torch, dtype = _torch_setup(cfg)
    net = build_ours(cfg["arch"])
    x = ours_inputs(cfg, dtype)
    net.kernel_fn(x, None, GET)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    net.kernel_fn(x, None, GET)
    prof.disable()
    wall = time.perf_counter() - t0
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
    cprof = s.getvalue()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(30)
    cum = s.getvalue()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as tp:
        net.kernel_fn(x, None, GET)
    ops = tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    ops_shapes = tp.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=15)
    text = (f"# {cfg['name']} N={cfg['n']} {cfg['dtype']} threads={os.environ.get('BENCH_THREADS')}: "
            f"one call {wall:.3f} s under cProfile\n\n## cProfile by tottime\n{cprof}\n## cProfile by cumulative\n"
            f"{cum}\n## torch.profiler, by self CPU time\n{ops}\n\n## torch.profiler by input shape\n{ops_shapes}\n")
    Path(cfg["out"]).write_text(text)
    return {"wall_s": wall}


WORKERS = {"kernel": worker_kernel, "reference": worker_reference, "fresh": worker_fresh, "profile": worker_profile}


# ----------------------------------------------------------------------------- driver
def plan(args: argparse.Namespace) -> list[dict]:
    """The (workload, N, dtype) cells to measure, in order."""
    dtypes = args.dtypes
    if args.quick:
        cells = [("fc", 1000), ("cnn16", 8)]
    else:
        cells = [("fc", n) for n in (1000, 2000, 4000, 8000)] + [("cnn16", 20), ("cnn16", 50)]
        if args.large:
            cells += [("cnn32", 20), ("myrtle5", 20)]
    if args.only:
        cells = [c for c in cells if c[0] in args.only]
    if args.sizes:
        cells = [(name, n) for name in (args.only or ["fc"]) for n in args.sizes]
    jobs = []
    for name, n in cells:
        for dt in dtypes:
            if args.quick and name == "cnn16" and dt == "float64":
                continue
            nt = not (name in ("cnn32", "myrtle5") and dt == "float64")
            jobs.append({"name": name, "n": n, "dtype": dt, "nt": nt})
    return jobs


def _corner_diff(a: Path, b: Path) -> float | None:
    if not (a.exists() and b.exists()):
        return None
    x, y = np.load(a), np.load(b)
    return max(float(np.abs(x[k] - y[k]).max() / np.abs(y[k]).max()) for k in ("nngp", "ntk"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--large", action="store_true", help="add the 32x32 CNN and Myrtle-5 (minutes, ~14 GB)")
    parser.add_argument("--only", nargs="*", default=None, help=f"subset of {list(NETS)}")
    parser.add_argument("--sizes", nargs="*", type=int, default=None, help="N values for the --only workloads")
    parser.add_argument("--no-ref", action="store_true", help="skip the fused-elementwise reference")
    parser.add_argument("--no-compile", action="store_true", help="skip tangents' kernel_fn(..., compile=True)")
    parser.add_argument("--dtypes", nargs="*", default=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=2, help="threads for both libraries (default 2)")
    parser.add_argument("--nt-python", default=None, help="python of the neural-tangents venv")
    parser.add_argument("--no-nt", action="store_true", help="tangents alone")
    parser.add_argument("--no-fresh", action="store_true", help="skip the fresh-process 100x100 check")
    parser.add_argument("--profile", action="store_true", help="profile tangents on fc N=4000 and 1000 and cnn16 N=20 (cProfile sees only the main thread: use --threads 1 for it)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per process")
    parser.add_argument("--output", default=None, help="JSON path (default benchmarks/results/kernels.json)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--allow-modified", action="store_true",
                        help="run on a tree with uncommitted changes (a trial: its results must not be reported)")
    args = parser.parse_args()
    require_committed(args.allow_modified)
    if args.worker:
        cfg = json.loads(args.worker)
        print(json.dumps(WORKERS[cfg["mode"]](cfg)))
        return

    env = thread_env(args.threads)
    RESULTS.mkdir(exist_ok=True)
    me = [sys.executable, __file__, "--worker"]
    if args.profile:
        for name, n, dt in (("fc", 4000, "float32"), ("fc", 4000, "float64"), ("fc", 1000, "float32"),
                            ("cnn16", 20, "float32")):
            out = RESULTS / f"profile_{name}_n{n}_{dt}_threads{args.threads}.txt"
            arch, shape = NETS[name]
            r = run_worker(me + [json.dumps({"mode": "profile", "name": name, "arch": arch, "shape": shape, "n": n,
                                             "dtype": dt, "out": str(out)})], args.timeout, env)
            print(f"{name} N={n} {dt}: {r} -> {out}")
        return

    peer = None if args.no_nt else nt_python(args.nt_python)
    if peer is None and not args.no_nt:
        print(NT_HOWTO)
    loads = [load_average()]
    print(f"threads per library: {args.threads}; load average (1/5/15 min) at start: {loads[0]}", flush=True)
    rows: list[dict] = []
    out = Path(args.output) if args.output else RESULTS / "kernels.json"

    def save(rows: list[dict], fresh: dict | None, loads: list[str]) -> None:
        """Written after every cell, so that an interrupted run keeps what it measured."""
        out.write_text(json.dumps({"code": code_state(), "threads": args.threads, "quick": args.quick,
                                   "large": args.large, "load_start_end": loads, "nt_python": peer, "rows": rows,
                                   "fresh": fresh}, indent=1))

    with tempfile.TemporaryDirectory() as tmp:
        for job in plan(args):
            arch, shape = NETS[job["name"]]
            cfg = {"mode": "kernel", "arch": arch, "shape": shape, "n": job["n"], "dtype": job["dtype"], "seed": 0,
                   "repeats": 3}
            tag = f"{job['name']}_{job['n']}_{job['dtype']}"
            row = {**job, "load_before": load_average()}
            row["tangents"] = run_worker(me + [json.dumps({**cfg, "out": f"{tmp}/ours_{tag}.npz"})], args.timeout, env)
            if not args.no_compile:
                row["compiled"] = run_worker(me + [json.dumps({**cfg, "compile": True, "out": f"{tmp}/comp_{tag}.npz"})],
                                             args.timeout, env)
                row["compiled_rel_diff"] = _corner_diff(Path(f"{tmp}/comp_{tag}.npz"), Path(f"{tmp}/ours_{tag}.npz"))
            if peer and job["nt"]:
                row["nt"] = run_worker([peer, str(HERE / "_nt_kernels.py"), json.dumps({**cfg, "out": f"{tmp}/nt_{tag}.npz"})],
                                       args.timeout, env)
                row["max_rel_diff"] = _corner_diff(Path(f"{tmp}/ours_{tag}.npz"), Path(f"{tmp}/nt_{tag}.npz"))
            if job["name"] == "fc" and not args.no_ref and not (args.quick and job["dtype"] == "float64"):
                row["ref"] = run_worker(me + [json.dumps({**cfg, "mode": "reference", "out": f"{tmp}/ref_{tag}.npz"})],
                                        args.timeout, env)
                row["ref_rel_diff"] = _corner_diff(Path(f"{tmp}/ref_{tag}.npz"), Path(f"{tmp}/ours_{tag}.npz"))
            row["load_after"] = load_average()
            rows.append(row)
            save(rows, None, loads)
            print(_line(row), flush=True)
        fresh = None
        if not args.no_fresh:
            fresh_cfg = {"mode": "fresh", "arch": FC, "shape": [100], "n": 100, "seed": 0}
            fresh = {"tangents": run_worker(me + [json.dumps(fresh_cfg)], args.timeout, env)}
            if peer:
                fresh["nt"] = run_worker([peer, str(HERE / "_nt_kernels.py"), json.dumps(fresh_cfg)], args.timeout, env)
    loads.append(load_average())
    save(rows, fresh, loads)
    print()
    print(report(rows, fresh))
    print(f"\nload average at end: {loads[-1]}; written {out}")


def _line(r: dict) -> str:
    s = (f"{r['name']:<8} N={r['n']:<5} {r['dtype']}: tangents {fmt_s(r['tangents'])} s, compiled "
         f"{fmt_s(r.get('compiled'))} s (first {fmt_s(r.get('compiled'), 'first_s')} s), NT {fmt_s(r.get('nt'))} s "
         f"(load {r['load_before']})")
    if "ref" in r:
        s += f", ref {fmt_s(r['ref'])} s"
    return s


def report(rows: list[dict], fresh: dict | None = None) -> str:
    """Markdown tables of a results list (also used by ``--table FILE``)."""
    head = ["workload", "N", "dtype", "tangents (s)", "compiled (s)", "NT (s)", "NT/tangents", "NT/compiled",
            "1st call: tangents / compiled / NT (s)", "peak MiB: tangents / compiled / NT", "rel. diff vs NT",
            "load 1 min"]
    body = []
    for r in rows:
        ours, comp, nt = r.get("tangents"), r.get("compiled"), r.get("nt")
        diff = f"{r['max_rel_diff']:.1e}" if r.get("max_rel_diff") is not None else "-"
        first = f"{fmt_s(ours, 'first_s')} / {fmt_s(comp, 'first_s')} / {fmt_s(nt, 'first_s')}"
        peak = f"{fmt_mb(ours)} / {fmt_mb(comp)} / {fmt_mb(nt)}"
        body.append([r["name"], r["n"], r["dtype"], fmt_s(ours), fmt_s(comp), fmt_s(nt), ratio(nt, ours), ratio(nt, comp),
                     first, peak, diff, r["load_before"].split()[0]])
    text = markdown_table(head, body)
    fc = [r for r in rows if "ref" in r]
    if fc:
        head = ["N", "dtype", "GEMM alone (s)", "GEMM + fused elementwise (s)", "its compile (s)", "tangents (s)",
                "tangents/ref", "compiled (s)", "compiled/ref (target <= 1.3)", "NT/ref", "ref vs tangents rel. diff"]
        body = []
        for r in fc:
            ref = r["ref"]
            rt = fmt_s(ref, "gemm_s")
            tr = ratio(r["tangents"], ref)
            nr = ratio(r.get("nt"), ref)
            d = f"{r['ref_rel_diff']:.1e}" if r.get("ref_rel_diff") is not None else "-"
            body.append([r["n"], r["dtype"], rt, fmt_s(ref), fmt_s(ref, "first_s"), fmt_s(r["tangents"]), tr,
                         fmt_s(r.get("compiled")), ratio(r.get("compiled"), ref), nr, d])
        text += "\n\nFC reference (x @ x.T + one torch.compile'd elementwise pass):\n\n" + markdown_table(head, body)
    if fresh:
        body = []
        for who in ("tangents", "nt"):
            f = fresh.get(who)
            if f:
                body.append([who, fmt_s(f, "import_s"), fmt_s(f, "first_call_s"), fmt_s(f, "first_jit_call_s"),
                             fmt_s(f, "process_s")])
        text += ("\n\nFresh process, 100x100 FC kernel (float32; target: under 0.5 s after import):\n\n"
                 + markdown_table(["library", "import (s)", "first call (s)", "first jitted call (s)",
                                   "whole process incl. interpreter (s)"], body))
    return text


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        data = json.loads(Path(sys.argv[2]).read_text())
        print(report(data["rows"], data.get("fresh")))
    else:
        main()
