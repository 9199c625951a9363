"""Empirical NTK benchmark: tangents against neural-tangents, same networks, same run.

Cases: an NTK-parameterized ReLU MLP [100, 512, 512, 1] at N = 256 and N = 1024, and a
small CNN (two 3x3 SAME convolutions with 16 channels, ReLU, global average pooling,
Dense(1)) on 64 images of 16x16x3; the NTK of all pairs of x with itself (``x2=None``),
traced over the output (the default), ``vmap_axes=0``, float32, for the three
implementations (1 JACOBIAN_CONTRACTION, 2 NTK_VECTOR_PRODUCTS, 3 STRUCTURED_DERIVATIVES).

Both libraries differentiate the very same weights (written once to an ``.npz``) and their
kernels are compared. Every measurement runs in a fresh process, single-threaded (torch:
``torch.set_num_threads(1)``; XLA: ``intra_op_parallelism_threads=1``): the time is the best
of at least 3 calls after a warm-up, and of up to 100 while they take under a second in all
(JAX: after ahead-of-time compilation, reported separately), the memory is the growth of the process' peak resident set during the timed
calls (see ``_rss.py``).

Run::

    /work/venv/bin/python benchmarks/empirical.py            # all cases
    /work/venv/bin/python benchmarks/empirical.py --quick    # skip N = 1024

It prints a table and writes ``benchmarks/results/empirical.json``.

The peer. neural-tangents runs in its own virtual environment (never a dependency of
tangents). Create it once with::

    python3 -m venv .venv-nt
    .venv-nt/bin/pip install "jax==0.4.23" "jaxlib==0.4.23" "numpy<2" "scipy<1.13" neural-tangents==0.6.5

and point ``--nt-python`` (default: ``$NT_PYTHON``, else ``/work/venv-nt/bin/python``, else
``.venv-nt/bin/python``) at its interpreter. Without it, the benchmark says so and reports
tangents alone.
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
from _common import NT_HOWTO, nt_python, run_worker, thread_env  # noqa: E402

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

    torch.set_num_threads(1)
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
    reset_peak()
    base = rss_mb()
    best, spent, calls = float("inf"), 0.0, 0
    while calls < 3 or (spent < 1.0 and calls < 100):  # short calls: more of them (as for NT)
        t0 = time.perf_counter()
        k = fn(x)
        took = time.perf_counter() - t0
        best, spent, calls = min(best, took), spent + took, calls + 1
        if best > 5:
            break
    peak = peak_mb() - base
    np.save(cfg["out"], k.detach().numpy())
    return {"time_s": best, "peak_mb": max(peak, 0.0)}


# ----------------------------------------------------------------------------- driver
def run(cmd: list[str], timeout: float) -> dict:
    """One measurement in a fresh single-threaded process (see ``_common.run_worker``)."""
    return run_worker(cmd, timeout, thread_env(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the N = 1024 case")
    parser.add_argument("--cases", nargs="*", default=None, help=f"subset of {list(CASES)}")
    parser.add_argument("--nt-python", default=None, help="python of the neural-tangents venv")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(torch_worker(json.loads(args.worker))))
        return

    peer = nt_python(args.nt_python)
    if peer is None:
        print(NT_HOWTO)
    names = args.cases or [c for c in CASES if not (args.quick and c == "mlp_n1024")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            case = CASES[name]
            data = Path(tmp) / f"{name}.npz"
            make_data(case, data)
            for impl in IMPLEMENTATIONS:
                row = {"case": name, "implementation": impl}
                base_cfg = {**case, "data": str(data), "dtype": args.dtype, "implementation": impl,
                            "W_std": W_STD, "b_std": B_STD, "repeats": 3}
                ours_out, nt_out = Path(tmp) / f"ours_{name}_{impl}.npy", Path(tmp) / f"nt_{name}_{impl}.npy"
                row["tangents"] = run([sys.executable, __file__, "--worker",
                                       json.dumps({**base_cfg, "out": str(ours_out)})], args.timeout)
                if peer:
                    row["nt"] = run([peer, str(HERE / "_nt_peer.py"), json.dumps({**base_cfg, "out": str(nt_out)})],
                                    args.timeout)
                    if ours_out.exists() and nt_out.exists():
                        a, b = np.load(ours_out), np.load(nt_out)
                        row["max_rel_diff"] = float(np.abs(a - b).max() / np.abs(b).max())
                rows.append(row)
                print(_format_row(row), flush=True)
    out = HERE / "results" / "empirical.json"
    out.write_text(json.dumps({"dtype": args.dtype, "threads": 1, "rows": rows}, indent=1))
    print()
    print(table(rows))
    print(f"\nwritten {out}")


def _fmt_time(r: dict | None) -> str:
    if not r:
        return "-"
    return r.get("error", "err")[:30] if "time_s" not in r else f"{r['time_s']:.3f}"


def _format_row(row: dict) -> str:
    return f"{row['case']:<10} impl {row['implementation']}: tangents {_fmt_time(row.get('tangents'))} s, NT {_fmt_time(row.get('nt'))} s"


def table(rows: list[dict]) -> str:
    head = ("| case | implementation | NT time (s) | tangents time (s) | speed-up | NT peak (MiB) | "
            "tangents peak (MiB) | max rel. diff |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        ours, nt = r.get("tangents", {}), r.get("nt", {})
        speed = f"{nt['time_s'] / ours['time_s']:.1f}x" if "time_s" in ours and "time_s" in nt else "-"
        mem = lambda d: f"{d['peak_mb']:.0f}" if "peak_mb" in d else "-"
        diff = f"{r['max_rel_diff']:.1e}" if "max_rel_diff" in r else "-"
        lines.append(f"| {r['case']} | {r['implementation']} {IMPLEMENTATIONS[r['implementation']]} | {_fmt_time(nt)} | "
                     f"{_fmt_time(ours)} | {speed} | {mem(nt)} | {mem(ours)} | {diff} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
