"""Myrtle-5 kernel (Shankar et al. 2020, "Neural Kernels Without Tangents") on CIFAR-sized inputs.

The architecture is neural-tangents' ``MyrtleNetwork(depth=5)`` (the manifest entry
``myrtle5_8x8`` spells the 8x8 variant): ``[Conv(3x3, SAME, W_std=√2, b_std=0), Relu] x 2,
AvgPool(2, 2), [Conv, Relu], AvgPool(2, 2), [Conv, Relu], AvgPool(2, 2) x 3, Flatten,
Dense(W_std=√2, b_std=0)``, channels-first inputs ``(N, 3, size, size)``. Pooling needs full
location–location covariances ``(N1, N2, H, H', W, W')``: 32⁴ = 1M entries per pair of
images at 32x32, 8 MB in float64, so ``kernel_fn`` tiles the pairs automatically.

Prints the wall time and the peak resident memory (growth over the process's resident
set before the call, and the absolute high-water mark) of ``kernel_fn(x, None, ('nngp',
'ntk'))``, and the load average, as one JSON line last.

Usage::

    python benchmarks/myrtle.py --n 20 --size 32 --dtype float64
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import code_state, require_committed  # noqa: E402
from _rss import peak_mb, reset_peak, rss_mb  # noqa: E402

import torch  # noqa: E402

from tangents import stax  # noqa: E402


def myrtle(depth: int = 5, size: int = 32, width: int = 1) -> stax.Layer:
    """neural-tangents' Myrtle network; the final pools shrink ``size / 8`` to 1."""
    factors = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}[depth]
    W_std, b_std = math.sqrt(2.0), 0.0

    def block(n: int) -> list[stax.Layer]:
        return [stax.Conv(width, (3, 3), W_std=W_std, b_std=b_std, padding="SAME"), stax.Relu()] * n

    final_pools = int(round(math.log2(size))) - 2  # 32 -> 16 -> 8 -> 4 -> 2 -> 1: 3 final pools
    pool = stax.AvgPool((2, 2), strides=(2, 2))
    layers = block(factors[0]) + [pool] + block(factors[1]) + [pool] + block(factors[2]) + [pool] * final_pools
    return stax.serial(*layers, stax.Flatten(), stax.Dense(10, W_std, b_std))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20, help="number of images (x2=None: N x N kernels)")
    parser.add_argument("--size", type=int, default=32, help="image side (a power of 2, >= 8)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    parser.add_argument("--depth", type=int, choices=(5, 7, 10), default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="print a torch profiler table")
    parser.add_argument("--allow-modified", action="store_true",
                        help="run on a tree with uncommitted changes (a trial: its results must not be reported)")
    args = parser.parse_args()
    require_committed(args.allow_modified)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    x = torch.randn(args.n, 3, args.size, args.size, generator=torch.Generator().manual_seed(0), dtype=dtype)
    net = myrtle(args.depth, args.size)

    load_before = os.getloadavg()
    base = rss_mb()
    reset_peak()
    start = time.perf_counter()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            k = net.kernel_fn(x, None, ("nngp", "ntk"))
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))
    else:
        k = net.kernel_fn(x, None, ("nngp", "ntk"))
    seconds = time.perf_counter() - start
    peak = peak_mb()
    result = {
        "benchmark": "myrtle",
        "code": code_state(),
        "depth": args.depth,
        "n": args.n,
        "size": args.size,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "seconds": round(seconds, 2),
        "peak_rss_growth_mb": round(peak - base, 1),
        "peak_rss_mb": round(peak, 1),
        "result_mb": round(2 * k.nngp.numel() * k.nngp.element_size() / 2**20, 3),
        "finite": bool(torch.isfinite(k.nngp).all() and torch.isfinite(k.ntk).all()),
        "nngp_diag_mean": float(torch.diagonal(k.nngp).mean()),
        "ntk_diag_mean": float(torch.diagonal(k.ntk).mean()),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
    }
    print(f"Myrtle-{args.depth}, N={args.n}, {args.size}x{args.size}x3, {args.dtype}: {seconds:.1f} s, "
          f"peak RSS +{peak - base:.0f} MB ({peak:.0f} MB total), load {load_before[0]:.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
