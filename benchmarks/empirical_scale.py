"""The empirical NTK of ResNet-18 on N = 1,000 examples, in bounded memory, with a progress bar.

``benchmarks/models.py``'s ResNet-18 (11.2 M parameters, 3x32x32 images, 10 outputs, eval
mode, float32) and ``tangents.empirical_ntk_fn(model, vmap_axes=0)`` with its defaults
(``implementation=AUTO``, the trainable parameters, ``trace_axes=(-1,)``: a 1000 x 1000
kernel; ``--full``: ``trace_axes=()``, 1000 x 1000 x 10 x 10) under ``memory_limit=--memory-gb``
and ``progress=True``: the blocks of examples go through the block engine of the analytic
kernels (``tangents.blocks.tiled``), whose tqdm bar is written to stderr.

One call in a fresh process (``--threads``, default 2) records: the wall time, the peak
resident set of the process against the limit, AUTO's choice, block size and predicted
seconds and memory (``ntk_fn.plan``), the progress bar's last line, and three checks of the
result that could fail:

* **an independent reference**: ``torch.func.jacrev`` of the model on 6 examples spread over
  different blocks, one example at a time (Jacobians held whole: 6 x 10 x 11.2 M floats),
  contracted in float64 parameter by parameter, against the same 6 x 6 entries of the kernel (relative to the largest; float32 rounding
  of sums over 11.2 M products, a few 1e-7 expected, see ``empirical_agreement.py``; a traced
  kernel is the mean over the output pair, as in neural-tangents);
* **symmetry** of the assembled kernel (blocks below the diagonal are mirror images);
* **positive semi-definiteness**: its smallest eigenvalue against its trace.

Run (the machine otherwise idle; ~5 min on 2 cores, ``--full`` ~20 min)::

    .venv/bin/python benchmarks/empirical_scale.py [--full] [--n 1000] [--memory-gb 4]

Results: ``benchmarks/results/empirical_scale.json`` (``_full`` with ``--full``), naming the
tangents commit measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import code_state, load_average, thread_env  # noqa: E402

REFERENCE_EXAMPLES = 6


def worker(cfg: dict) -> dict:
    import numpy as np
    import torch
    from torch.func import functional_call, jacrev

    import models
    from _rss import peak_mb, reset_peak, rss_mb

    import tangents

    torch.set_num_threads(cfg["threads"])
    model = models.resnet18()
    n = cfg["n"]
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    trace_axes = () if cfg["full"] else (-1,)
    limit = int(cfg["memory_gb"] * 2**30)
    fn = tangents.empirical_ntk_fn(model, vmap_axes=0, trace_axes=trace_axes, memory_limit=limit, progress=True)
    reset_peak()
    base = rss_mb()
    t0 = time.perf_counter()
    kernel = fn(x)
    seconds = time.perf_counter() - t0
    out: dict = {"seconds": seconds, "peak_rss_mb": peak_mb(), "peak_growth_mb": peak_mb() - base,
                 "baseline_rss_mb": base, "shape": list(kernel.shape), "memory_limit_mb": limit / 2**20}
    plan = fn.plan
    out["chosen"] = plan.implementation.name
    out["chunk_size"] = plan.chunk_size
    out["predicted"] = {i.name: {"seconds": e.seconds, "peak_mb": e.memory / 2**20, "chunk_size": e.chunk_size}
                        for i, e in plan.estimates.items()}

    # Independent reference: torch.func.jacrev, one example at a time, on examples spread over
    # the blocks; contracted parameter by parameter in float64.
    pick = torch.linspace(0, n - 1, REFERENCE_EXAMPLES).round().long()
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = dict(model.named_buffers())
    t0 = time.perf_counter()
    jacs = [jacrev(lambda p, xs: functional_call(model, {**p, **buffers}, (xs,)))(params, x[i : i + 1])
            for i in pick.tolist()]
    m = REFERENCE_EXAMPLES
    ref = torch.zeros(m, m, 10, 10, dtype=torch.float64)
    for name in params:
        j = torch.stack([jac[name].reshape(10, -1) for jac in jacs]).double()  # (m, 10, P_name)
        ref += torch.einsum("iap,jbp->ijab", j, j)
    del jacs, j
    ref = ref if cfg["full"] else torch.diagonal(ref, dim1=2, dim2=3).mean(-1)  # traced: the mean, as in NT
    out["reference_seconds"] = time.perf_counter() - t0
    mine = kernel[pick][:, pick].double()
    out["reference_examples"] = pick.tolist()
    out["reference_max_rel_diff"] = float((mine - ref).abs().max() / ref.abs().max())
    k = kernel.double()
    flat = k if not cfg["full"] else k.permute(0, 2, 1, 3).reshape(n * 10, n * 10)
    out["symmetry_max_rel_diff"] = float((flat - flat.T).abs().max() / flat.abs().max())
    eig = np.linalg.eigvalsh(((flat + flat.T) / 2).numpy())
    out["min_eigenvalue_over_trace"] = float(eig[0] / eig.sum())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="examples")
    parser.add_argument("--full", action="store_true", help="trace_axes=(): the N x N x 10 x 10 kernel")
    parser.add_argument("--memory-gb", type=float, default=4.0, help="memory_limit of the call")
    parser.add_argument("--threads", type=int, default=2, help="compute threads")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    cfg = {"n": args.n, "full": args.full, "memory_gb": args.memory_gb, "threads": args.threads}
    record = {"code": code_state(), "config": cfg, "load_before": load_average()}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True,
                          timeout=args.timeout, env=thread_env(args.threads))
    record["process_s"] = time.perf_counter() - t0
    record["load_after"] = load_average()
    bar = [line for line in proc.stderr.replace("\r", "\n").splitlines() if "%" in line]
    record["progress_bar_first"] = bar[0] if bar else None
    record["progress_bar_last"] = bar[-1] if bar else None
    record["progress_bar_updates"] = len(bar)
    if proc.returncode != 0:
        record["error"] = proc.stderr.strip().splitlines()[-5:]
    else:
        record.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    name = "empirical_scale_full.json" if args.full else "empirical_scale.json"
    out = HERE / "results" / name
    out.write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
