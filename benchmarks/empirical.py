"""Empirical NTK benchmark: tangents against neural-tangents and against torch.func's recipes.

Two suites, each measurement in a fresh process with the same thread count for both sides
(``--threads``, default 1), the same protocol for both sides: the first call timed apart,
then the median of 3 calls (21 when the first took under 0.1 s), and the growth of the peak
resident set during those calls (``_rss.py``); every results file names the tangents commit
it measured (``_common.code_state``).

``--suite nt`` (neural-tangents 0.6.5, ``jax.jit``-ed; float32): an NTK-parameterized ReLU
MLP [100, 512, 512, 1] at N = 256 and 1024 and a small CNN (two 3x3 SAME convolutions with 16
channels, ReLU, global average pooling, Dense(1)) on 64 images of 16x16x3; ``x2=None``,
traced output (the default), ``vmap_axes=0``, implementations 1, 2, 3 on both sides, the
same weights (an ``.npz`` written once), the kernels compared.

``--suite torch`` (the real-sized models of ``models.py``; float32, ``trace_axes=()``: the
full ``N x N x 10 x 10`` kernel, ``x2=None``, ``vmap_axes=0``): ResNet-18 (torchvision's
layout, 11.2 M parameters, 3x32x32 images, 10 outputs) and a transformer encoder (4 layers,
d_model 256, 4 heads, sequence 64, mean-pooled, 10 outputs; 3.2 M parameters), N = 16 and 128
(``--n``). Each tangents implementation (1, 2, 3 and AUTO, the default) against torch.func's
two recipes (``_torchfunc_recipes.py``: vmap(jacrev) + einsum, and vmap over pairs of
vjp/jvp; made to fit in ``--memory-gb`` by ``vmap`` chunks and blocks of examples, as a user
would) on the same weights (seeded models: the same in every process). For every tangents
implementation the table also gives AUTO's prediction (seconds and peak memory of
``ntk_fn.plan``) next to the measurement, and the kernels' largest difference from the
first one computed. A side predicted to take more than a quarter of ``--timeout`` per call
is called once (its first call, which bounds its median from above; the table marks it), one
predicted to exceed ``--timeout / 1.5`` is not run (the table says so), nor a recipe whose
Jacobians alone exceed ``--memory-gb``; ``--once`` calls every side once, whatever its
prediction (the recipes' predictions can be far off: they are costed as written, not as
``vmap`` batches them).

Run (the machine should be otherwise idle)::

    .venv/bin/python benchmarks/empirical.py --suite nt            # ~5 min (needs the NT venv)
    .venv/bin/python benchmarks/empirical.py --suite torch --n 16  # ~15 min
    .venv/bin/python benchmarks/empirical.py --suite torch         # N = 16 and 128: hours
    .venv/bin/python benchmarks/empirical.py --suite torch --small # a minute: validates the script

``--small`` runs the same code on small models (ResNet width 8, a 1-layer transformer with
d_model 32, sequence 8) at N = 4. Results go to ``benchmarks/results/empirical.json`` (nt)
and ``benchmarks/results/empirical_models.json`` (torch; ``_small`` for ``--small``, ``_once`` for ``--once``).

The peer. neural-tangents runs in its own virtual environment (never a dependency of
tangents). Create it once with::

    python3 -m venv .venv-nt
    .venv-nt/bin/pip install "jax==0.4.23" "jaxlib==0.4.23" "numpy<2" "scipy<1.13" neural-tangents==0.6.5

and point ``--nt-python`` (default: ``$NT_PYTHON``, else ``/work/venv-nt/bin/python``, else
``.venv-nt/bin/python``) at its interpreter. Without it, the nt suite reports tangents alone.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import NT_HOWTO, code_state, load_average, markdown_table, nt_python, run_worker, thread_env  # noqa: E402
from _protocol import timed  # noqa: E402

IMPLEMENTATIONS = {1: "JACOBIAN_CONTRACTION", 2: "NTK_VECTOR_PRODUCTS", 3: "STRUCTURED_DERIVATIVES"}
W_STD, B_STD = 1.5, 0.05

CASES = {
    "mlp_n256": {"net": "mlp", "widths": [100, 512, 512, 1], "n": 256},
    "mlp_n1024": {"net": "mlp", "widths": [100, 512, 512, 1], "n": 1024},
    "cnn_n64": {"net": "cnn", "n_conv": 2, "channels": 16, "image": [3, 16, 16], "n": 64},
}


# ----------------------------------------------------------------------------- data
def make_data(case: dict, path: Path, seed: int = 0) -> None:
    """Weights and inputs (torch layout: Dense W (in, out); Conv W OIHW; x NCHW)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    if case["net"] == "mlp":
        w = case["widths"]
        for i in range(len(w) - 1):
            arrays[f"W{i}"] = rng.standard_normal((w[i], w[i + 1]))
            arrays[f"b{i}"] = rng.standard_normal(w[i + 1])
        arrays["x"] = rng.standard_normal((case["n"], w[0]))
    else:
        c_in, c = case["image"][0], case["channels"]
        for i in range(case["n_conv"]):
            arrays[f"W{i}"] = rng.standard_normal((c, c_in if i == 0 else c, 3, 3))
            arrays[f"b{i}"] = rng.standard_normal(c)
        arrays[f"W{case['n_conv']}"] = rng.standard_normal((c, 1))
        arrays[f"b{case['n_conv']}"] = rng.standard_normal(1)
        arrays["x"] = rng.standard_normal((case["n"], *case["image"]))
    np.savez(path, **arrays)


# ----------------------------------------------------------------------------- torch worker
def torch_worker(cfg: dict) -> dict:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(HERE))
    from _rss import peak_mb, reset_peak, rss_mb

    import tangents

    torch.set_num_threads(cfg.get("threads", 1))
    dtype = getattr(torch, cfg["dtype"])
    data = {k: torch.tensor(v, dtype=dtype) for k, v in np.load(cfg["data"]).items()}

    class Net(torch.nn.Module):
        """NT's NTK parameterization: y = W_std / sqrt(fan_in) * x W + b_std * b."""

        def __init__(self) -> None:
            super().__init__()
            n = len([k for k in data if k.startswith("W")])
            for i in range(n):
                w = data[f"W{i}"]
                # Dense: F.linear wants (out, in)
                self.register_parameter(f"W{i}", torch.nn.Parameter(w.T.contiguous() if w.ndim == 2 else w))
                self.register_parameter(f"b{i}", torch.nn.Parameter(data[f"b{i}"]))
            self.n = n

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for i in range(self.n):
                w, b = getattr(self, f"W{i}"), getattr(self, f"b{i}")
                fan_in = math.prod(w.shape[1:])
                if w.ndim == 4:
                    x = F.conv2d(x, w, padding=1) * (W_STD / math.sqrt(fan_in)) + B_STD * b[:, None, None]
                else:
                    if x.ndim == 4:
                        x = x.mean((2, 3))
                    x = F.linear(x, w) * (W_STD / math.sqrt(fan_in)) + B_STD * b
                if i < self.n - 1:
                    x = torch.relu(x)
            return x

    net = Net()
    x = data["x"]
    fn = tangents.empirical_ntk_fn(net, vmap_axes=0, implementation=cfg["implementation"])
    fn(x[:8])  # warm-up: first use of torch.func transforms
    timing = timed(lambda: fn(x))
    np.save(cfg["out"], timing.pop("result").detach().numpy())
    return timing


# ----------------------------------------------------------------------------- models suite
MODELS = {
    "resnet18": {"model": "resnet18", "kwargs": {}, "shape": [3, 32, 32]},
    "transformer": {"model": "transformer", "kwargs": {}, "shape": [64, 256]},
}
SMALL_MODELS = {
    "resnet18": {"model": "resnet18", "kwargs": {"width": 8}, "shape": [3, 32, 32]},
    "transformer": {"model": "transformer", "kwargs": {"d_model": 32, "nhead": 2, "depth": 1}, "shape": [8, 32]},
}
SIDES = ["AUTO", "JACOBIAN_CONTRACTION", "NTK_VECTOR_PRODUCTS", "STRUCTURED_DERIVATIVES",
         "torch.func jacobian contraction", "torch.func ntk-vector products"]


def models_worker(cfg: dict) -> dict:
    """One measurement of the models suite (see the module docstring)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    sys.path.insert(0, str(HERE))
    import models
    from _torchfunc_recipes import (jacobian_contraction, jacobian_contraction_bytes, ntk_vector_products,
                                    single_example_fn)

    import tangents

    torch.set_num_threads(cfg["threads"])
    model = getattr(models, cfg["model"])(**cfg["kwargs"])
    x = torch.randn(cfg["n"], *cfg["shape"], generator=torch.Generator().manual_seed(1))
    side = cfg["side"]
    budget = int(cfg["memory_gb"] * 2**30)
    out: dict = {}
    if side.startswith("torch.func"):
        torch.backends.mha.set_fastpath_enabled(False)  # the fused layer has no vmap/jvp rules (tangents too)
        f, params = single_example_fn(model)
        outputs = f(params, x[0]).numel()
        if "jacobian" in side:
            per_example = jacobian_contraction_bytes(params, 1, outputs, x.element_size())
            block = max(1, min(cfg["n"], budget // (2 * per_example)))
            out["block"] = None if block >= cfg["n"] else block

            def call() -> torch.Tensor:
                return jacobian_contraction(f, params, x, x, out["block"])
        else:
            per_pair = outputs * sum(p.numel() for p in params.values()) * x.element_size() * 3
            chunk = max(1, min(cfg["n"], budget // per_pair))
            out["chunk"] = chunk

            def call() -> torch.Tensor:
                # the fused CPU attention has no forward-mode rule: the composite one has
                with sdpa_kernel([SDPBackend.MATH]):
                    return ntk_vector_products(f, params, x, x, chunk)
    else:
        impl = getattr(tangents.NtkImplementation, side)
        fn = tangents.empirical_ntk_fn(model, trace_axes=(), vmap_axes=0, implementation=impl,
                                       memory_limit=budget, progress=False)

        def call() -> torch.Tensor:
            return fn(x)

    timing = timed(call, first_only=cfg.get("first_only", False))
    kernel = timing.pop("result")
    if not side.startswith("torch.func"):
        plan = fn.plan
        out["chosen"] = plan.implementation.name
        out["chunk_size"] = plan.chunk_size
        out["predicted"] = {i.name: {"seconds": e.seconds, "peak_mb": e.memory / 2**20, "gflop": e.flops / 1e9,
                                     "traffic_gb": e.traffic / 2**30, "chunk_size": e.chunk_size}
                            for i, e in plan.estimates.items()}
    if side == "AUTO":
        out["predicted"].update(recipe_predictions(model, x, cfg["memory_gb"]))
    np.save(cfg["out"], kernel.detach().numpy())
    return {**out, **timing}


def recipe_predictions(model, x, memory_gb: float) -> dict:  # noqa: ANN001
    """torch.func's recipes costed with tangents' time model (``_empirical/_memory.py``: one
    forward pass on one example; FLOPs of matrix products at ``FLOP_RATE``, bytes through
    memory at ``BYTE_RATE``): used to skip what would exceed ``--timeout``, and shown next to
    the measurement. Jacobian contraction: ``vmap(jacrev)`` on both batches (weight gradients
    for every output) and ``2 N² S² P`` for the einsums; NTK-vector products: per pair of
    examples, ``S`` reverse and ``S`` forward products (about ``(2 + 4 S) F``) and ``5 S P``
    floats through memory."""
    from tangents._empirical._function import make_problem
    from tangents._empirical._memory import BYTE_RATE, FLOP_RATE, profile

    problem = make_problem(model, None, 0, "benchmark")
    tensors = problem.tensors
    xb, kw, n = problem.to_batch_first(x, {})
    prof = profile(problem, tensors, xb, kw)
    f, p, s = prof.flops, sum(t.numel() for t in tensors), int(np.prod(prof.outputs[0][1:]))
    size = x.element_size()
    jc_flops = 2 * n * f * (1 + 2 * s) + 2 * n * n * s * s * p
    jc_traffic = 4 * n * s * p * size
    vp_flops = n * n * f * (2 + 4 * s)
    vp_traffic = 5 * n * n * s * p * size
    return {
        "torch.func jacobian contraction": {"seconds": jc_flops / FLOP_RATE + jc_traffic / BYTE_RATE,
                                            "gflop": jc_flops / 1e9, "traffic_gb": jc_traffic / 2**30},
        "torch.func ntk-vector products": {"seconds": vp_flops / FLOP_RATE + vp_traffic / BYTE_RATE,
                                           "gflop": vp_flops / 1e9, "traffic_gb": vp_traffic / 2**30},
    }


def run_models(args: argparse.Namespace) -> None:
    table = SMALL_MODELS if args.small else MODELS
    ns = [4] if args.small else args.n
    out_path = HERE / "results" / ("empirical_models_small.json" if args.small else
                                   "empirical_models_once.json" if args.once else "empirical_models.json")
    rows: list[dict] = []
    record = {"code": code_state(), "threads": args.threads, "dtype": "float32", "trace_axes": [],
              "memory_gb": args.memory_gb, "timeout_s": args.timeout, "protocol":
              "first call apart, then median of 3 calls (of 21 more if the first took < 0.1 s), fresh process per "
              "row; a side predicted over --timeout / 4 per call: its first call alone (calls 0)",
              "load_before": load_average(), "rows": rows}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            spec = table[name]
            for n in ns:
                predictions: dict = {}
                reference = None
                for side in args.sides:
                    row = {"model": name, "n": n, "side": side, "load_before": load_average()}
                    guess = predictions.get(side)
                    first_only = args.once or (guess is not None and 4 * guess["seconds"] > args.timeout)
                    if first_only and not args.once and 1.5 * guess["seconds"] > args.timeout:
                        row["skipped"] = f"predicted {guess['seconds']:.0f} s per call > --timeout / 1.5"
                        rows.append(row)
                        print(_models_line(row), flush=True)
                        continue
                    path = Path(tmp) / f"{name}_{n}_{SIDES.index(side)}.npy"
                    cfg = {**spec, "n": n, "side": side, "threads": args.threads, "memory_gb": args.memory_gb,
                           "out": str(path), "first_only": first_only}
                    row.update(run([sys.executable, __file__, "--models-worker", json.dumps(cfg)], args.timeout,
                                   args.threads))
                    if "predicted" in row and not predictions:
                        predictions = dict(row["predicted"])
                    if side in predictions:
                        row["prediction"] = predictions[side]
                    if path.exists():
                        k = np.load(path)
                        if reference is None:
                            reference, row["reference"] = k, True
                        else:
                            row["max_rel_diff"] = float(np.abs(k - reference).max() / np.abs(reference).max())
                        path.unlink()
                    row["load_after"] = load_average()
                    rows.append(row)
                    print(_models_line(row), flush=True)
                    out_path.write_text(json.dumps(record, indent=1))
    record["load_after"] = load_average()
    out_path.write_text(json.dumps(record, indent=1))
    print()
    print(models_table(rows))
    print(f"\nwritten {out_path}")


def _models_line(row: dict) -> str:
    seconds = _seconds(row)
    what = row.get("skipped") or row.get("error") or (
        f"{seconds:.3f} s" + (" (first call only)" if row.get("calls") == 0 else ""))
    return f"{row['model']:<12} N={row['n']:<4} {row['side']:<32} {what}"


def _seconds(row: dict) -> float | None:
    """A row's time: the median, or for a side called once (``calls`` 0) its first call,
    which includes the first call's one-time costs (an upper bound of its median)."""
    return row.get("median_s", row.get("first_s") if row.get("calls") == 0 else None)


def models_table(rows: list[dict]) -> str:
    """Markdown: per model and N, every side's median time and peak memory, tangents'
    prediction, and each against the best torch.func recipe."""
    out = []
    for (model, n) in dict.fromkeys((r["model"], r["n"]) for r in rows):
        group = [r for r in rows if r["model"] == model and r["n"] == n]
        recipes = [r for r in group if r["side"].startswith("torch.func") and _seconds(r) is not None]
        best_row = min(recipes, key=_seconds) if recipes else None
        best = _seconds(best_row) if best_row else None
        lines = []
        for r in group:
            t = (f"{_seconds(r):.3f}" + (" (one call)" if r.get("calls") == 0 else "") if _seconds(r) is not None
                 else (r.get("skipped") or r.get("error", "-"))[:60])
            # a ratio involving a single (first) call is marked: that call bounds the median from above
            mark = "*" if r.get("calls") == 0 or (best_row and best_row.get("calls") == 0) else ""
            pred = r.get("prediction") or {}
            lines.append([
                r["side"] + (f" -> {r['chosen']}" if r["side"] == "AUTO" and "chosen" in r else ""),
                t,
                f"{r['first_s']:.2f}" if "first_s" in r else "-",
                f"{pred['seconds']:.3f}" if "seconds" in pred else "-",
                f"{r['peak_mb']:.0f}" if "peak_mb" in r else "-",
                f"{pred['peak_mb']:.0f}" if "peak_mb" in pred else "-",
                f"{best / _seconds(r):.2f}{mark}" if best and _seconds(r) else "-",
                f"{r['max_rel_diff']:.1e}" if "max_rel_diff" in r else ("ref." if r.get("reference") else "-"),
                str(r.get("chunk_size") or r.get("block") or r.get("chunk") or "-"),
            ])
        out.append(f"**{model}, N = {n}**\n\n" + markdown_table(
            ["side", "median (s)", "first call (s)", "predicted (s)", "peak MiB", "predicted peak MiB",
             "best torch.func / this", "max rel. diff", "block"], lines))
    if any(r.get("calls") == 0 for r in rows):
        out.append("(one call): too slow for four calls within --timeout, called once; that first call "
                   "includes one-time costs, so it bounds the median from above. *: a ratio involving one.")
    return "\n\n".join(out)


# ----------------------------------------------------------------------------- driver
def run(cmd: list[str], timeout: float, threads: int = 1) -> dict:
    """One measurement in a fresh process (see ``_common.run_worker``)."""
    return run_worker(cmd, timeout, thread_env(threads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=["nt", "torch"], default="nt", help="against neural-tangents or torch.func")
    parser.add_argument("--quick", action="store_true", help="nt suite: skip the N = 1024 case")
    parser.add_argument("--cases", nargs="*", default=None, help=f"nt suite: subset of {list(CASES)}")
    parser.add_argument("--nt-python", default=None, help="python of the neural-tangents venv")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--models", nargs="*", default=list(MODELS), help="torch suite: subset of the models")
    parser.add_argument("--n", nargs="*", type=int, default=[16, 128], help="torch suite: numbers of examples")
    parser.add_argument("--sides", nargs="*", default=SIDES, help=f"torch suite: subset of {SIDES}")
    parser.add_argument("--small", action="store_true", help="torch suite: small models at N = 4 (validation)")
    parser.add_argument("--memory-gb", type=float, default=8.0, help="torch suite: memory each side may use")
    parser.add_argument("--threads", type=int, default=1, help="compute threads of every side")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per measurement")
    parser.add_argument("--once", action="store_true",
                        help="torch suite: call every side once (its first call), whatever its prediction")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--models-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(torch_worker(json.loads(args.worker))))
        return
    if args.models_worker:
        print(json.dumps(models_worker(json.loads(args.models_worker))))
        return
    if args.suite == "torch":
        run_models(args)
        return

    peer = nt_python(args.nt_python)
    if peer is None:
        print(NT_HOWTO)
    names = args.cases or [c for c in CASES if not (args.quick and c == "mlp_n1024")]
    rows = []
    record = {"code": code_state(), "dtype": args.dtype, "threads": args.threads, "protocol":
              "first call apart, then median of 3 calls (of 21 more if the first took < 0.1 s), fresh process "
              "per row", "load_before": load_average(), "rows": rows}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            case = CASES[name]
            data = Path(tmp) / f"{name}.npz"
            make_data(case, data)
            for impl in IMPLEMENTATIONS:
                row = {"case": name, "implementation": impl}
                base_cfg = {**case, "data": str(data), "dtype": args.dtype, "implementation": impl,
                            "W_std": W_STD, "b_std": B_STD, "threads": args.threads}
                ours_out, nt_out = Path(tmp) / f"ours_{name}_{impl}.npy", Path(tmp) / f"nt_{name}_{impl}.npy"
                row["tangents"] = run([sys.executable, __file__, "--worker",
                                       json.dumps({**base_cfg, "out": str(ours_out)})], args.timeout, args.threads)
                if peer:
                    row["nt"] = run([peer, str(HERE / "_nt_peer.py"), json.dumps({**base_cfg, "out": str(nt_out)})],
                                    args.timeout, args.threads)
                    if ours_out.exists() and nt_out.exists():
                        a, b = np.load(ours_out), np.load(nt_out)
                        row["max_rel_diff"] = float(np.abs(a - b).max() / np.abs(b).max())
                rows.append(row)
                print(_format_row(row), flush=True)
    record["load_after"] = load_average()
    out = HERE / "results" / "empirical.json"
    out.write_text(json.dumps(record, indent=1))
    print()
    print(table(rows))
    print(f"\nwritten {out}")


def _fmt_time(r: dict | None, key: str = "median_s") -> str:
    if not r:
        return "-"
    return r.get("error", "err")[:30] if key not in r else f"{r[key]:.3f}"


def _format_row(row: dict) -> str:
    return f"{row['case']:<10} impl {row['implementation']}: tangents {_fmt_time(row.get('tangents'))} s, NT {_fmt_time(row.get('nt'))} s"


def table(rows: list[dict]) -> str:
    head = ("| case | implementation | NT median (s) | tangents median (s) | speed-up | NT peak (MiB) | "
            "tangents peak (MiB) | max rel. diff |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        ours, nt = r.get("tangents", {}), r.get("nt", {})
        speed = f"{nt['median_s'] / ours['median_s']:.1f}x" if "median_s" in ours and "median_s" in nt else "-"
        mem = lambda d: f"{d['peak_mb']:.0f}" if "peak_mb" in d else "-"
        diff = f"{r['max_rel_diff']:.1e}" if "max_rel_diff" in r else "-"
        lines.append(f"| {r['case']} | {r['implementation']} {IMPLEMENTATIONS[r['implementation']]} | {_fmt_time(nt)} | "
                     f"{_fmt_time(ours)} | {speed} | {mem(nt)} | {mem(ours)} | {diff} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
