"""Kernels larger than memory: the store's overhead, Dask's speed-up, a CIFAR-10-sized run.

Three parts (``all`` runs them in turn):

* ``overhead``: ``compute_kernel`` into a zarr store (``durable=True``; the default block
  size, planned by the first call and reused by the timed ones) against the in-memory
  ``kernel_fn(x, None, ("nngp", "ntk"))`` for the same inputs: FC
  (``fc`` preset: ``[Dense(512, 1.5, 0.05), Relu] x 3, Dense(1)``, x (N, 100), N = 8000) and
  CNN (``cnn`` preset: ``[Conv(128, 3x3, SAME), Relu] x 3, GlobalAvgPool, Dense(1)``, 16x16x3
  images, N = 50), float32. Each side in its own fresh process with the same threads, first
  call (warm-up) apart, median of ``--repeats`` calls; every store call writes a new store,
  the previous one deleted before it, untimed (as the in-memory side's previous kernel is
  freed untimed).
  Target: time ratio store / in-memory <= 1.15.
* ``dask``: the same store computed on a Dask ``LocalCluster`` of 1 and of 2 worker processes
  (one thread each), the compute-bound CNN above (N = 64, blocks of 8: 36 tasks of 64
  pairs, ~6 s of work), each cluster warmed up on a small store first, median of
  ``--repeats``. Target: 2 workers against 1, speed-up >= 1.7 on a 2-core machine.
* ``cifar``: ``tangents kernel --arch fc`` on 60,000 inputs of 3,072 features (float32, nngp
  and ntk: 2 x 14.4 GB as matrices, about 14.4 GB of upper blocks on disk), killed
  (SIGKILL) when half of the blocks are done, then the same command again: total time, peak
  resident set of each run, blocks done at the kill, blocks the resume computed, and the
  blocks caught writing at the kill (a chunk on disk, no manifest entry). The work lost is
  those plus the blocks being computed (at most one per thread): every other block the
  resume computes had not been started.
  It checks the free disk space first and deletes every file it wrote.

Each part prints a markdown table and writes ``benchmarks/results/scale_<part>.json`` with the
git revision measured (``code_state``) and the load average. Timings are only meaningful on a
quiet machine.

Run::

    .venv/bin/python benchmarks/scale.py all                       # ~15-20 minutes on 2 cores
    .venv/bin/python benchmarks/scale.py overhead --fc-n 2000 --cnn-n 12 --repeats 1   # quick check
    .venv/bin/python benchmarks/scale.py cifar --n 6000            # a smaller kill-and-resume
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import code_state, fmt_mb, fmt_s, load_average, markdown_table, median_timing, run_worker, thread_env  # noqa: E402

RESULTS = HERE / "results"
GET = ("nngp", "ntk")


# ---------------------------------------------------------------------- workers (fresh processes)


def _inputs(preset: str, n: int, dtype: str, seed: int = 0) -> Any:
    import torch

    shape = (100,) if preset == "fc" else (3, 16, 16)
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=getattr(torch, dtype))


def worker_overhead(cfg: dict) -> dict:
    """One side of the overhead comparison, timed in this (fresh) process."""
    import torch

    from tangents import stax
    from tangents.store import compute_kernel

    torch.set_num_threads(cfg["threads"])
    x = _inputs(cfg["preset"], cfg["n"], cfg["dtype"])
    net = stax.preset(cfg["preset"], tuple(x.shape[1:]))
    if cfg["side"] == "memory":
        r = median_timing(lambda: net.kernel_fn(x, None, GET), cfg["repeats"])
        r.pop("result")
        return r
    root = Path(cfg["dir"])
    calls: list[Path] = []
    block = [cfg.get("block")]

    def call() -> Any:
        path = root / f"store_{len(calls)}.zarr"
        calls.append(path)
        # The first (warm-up) call plans the block size (timing a few examples); the timed
        # calls reuse it, as a resumed store does. Every call writes a store of its own; the
        # previous one is deleted before it, untimed (0.07 s for FC N = 8000's 385 MB), as
        # median_timing frees the in-memory side's previous kernel untimed. (Keeping them all
        # instead makes every store land in never-used page cache, whose first touch costs
        # this VM ~1 s of system time per GB: it measured the VM, not the store.)
        store = compute_kernel(net, x, None, GET, path=path, block_size=block[0], progress=False)
        block[0] = store.block_size
        return store

    def delete_previous() -> None:
        if calls:
            shutil.rmtree(calls[-1], ignore_errors=True)

    r = median_timing(call, cfg["repeats"], before=delete_previous)
    store = r.pop("result")
    r["block_size"] = store.block_size
    r["blocks"] = len(store.plan)
    shutil.rmtree(root, ignore_errors=True)
    return r


def worker_dask(cfg: dict) -> dict:
    """The CNN store on a LocalCluster of ``workers`` processes (warm-up, then the median)."""
    from tangents import stax
    from tangents.distributed import local_client
    from tangents.store import compute_kernel

    x = _inputs("cnn", cfg["n"], cfg["dtype"])
    net = stax.preset("cnn", tuple(x.shape[1:]))
    root = Path(cfg["dir"])
    times = []
    with local_client(cfg["workers"]) as client:
        compute_kernel(net, x[: 2 * cfg["block"]], path=root / "warm.zarr", block_size=cfg["block"], client=client,
                       progress=False)  # imports and first calls on every worker
        for i in range(cfg["repeats"]):
            start = time.perf_counter()
            store = compute_kernel(net, x, path=root / f"run_{i}.zarr", block_size=cfg["block"], client=client,
                                   progress=False)
            times.append(time.perf_counter() - start)
    shutil.rmtree(root, ignore_errors=True)
    return {"times_s": times, "median_s": statistics.median(times), "blocks": len(store.plan)}


WORKERS = {"overhead": worker_overhead, "dask": worker_dask}


# ---------------------------------------------------------------------- the parts


def part_overhead(args: argparse.Namespace, me: list[str]) -> dict:
    rows = []
    for preset, n in (("fc", args.fc_n), ("cnn", args.cnn_n)):
        row: dict[str, Any] = {"workload": preset, "n": n, "dtype": args.dtype}
        for side in ("memory", "store"):
            cfg = {"mode": "overhead", "side": side, "preset": preset, "n": n, "dtype": args.dtype, "threads": args.threads,
                   "repeats": args.repeats, "dir": tempfile.mkdtemp(prefix="scale_", dir=args.tmp)}
            row[side] = run_worker(me + [json.dumps(cfg)], args.timeout, thread_env(args.threads))
            shutil.rmtree(cfg["dir"], ignore_errors=True)
        m, s = row["memory"].get("median_s"), row["store"].get("median_s")
        row["ratio"] = s / m if m and s else None
        rows.append(row)
        print(f"  {preset} N={n}: in memory {fmt_s(row['memory'])} s, store {fmt_s(row['store'])} s", flush=True)
    table = markdown_table(
        ["workload", "N", "dtype", "in memory (s)", "store (s)", "store / memory", "block", "peak MiB: memory / store"],
        [[r["workload"], r["n"], r["dtype"], fmt_s(r["memory"]), fmt_s(r["store"]),
          f"{r['ratio']:.2f}" if r["ratio"] else "-", r["store"].get("block_size", "-"),
          f"{fmt_mb(r['memory'])} / {fmt_mb(r['store'])}"] for r in rows])
    return {"rows": rows, "table": table}


def part_dask(args: argparse.Namespace, me: list[str]) -> dict:
    rows = []
    for workers in (1, 2):
        cfg = {"mode": "dask", "workers": workers, "n": args.dask_n, "block": args.dask_block, "dtype": args.dtype,
               "repeats": args.repeats, "dir": tempfile.mkdtemp(prefix="scale_", dir=args.tmp)}
        r = run_worker(me + [json.dumps(cfg)], args.timeout, thread_env(1))
        shutil.rmtree(cfg["dir"], ignore_errors=True)
        rows.append({"workers": workers, **r})
        print(f"  {workers} worker(s): {fmt_s(r)} s", flush=True)
    one, two = rows[0].get("median_s"), rows[1].get("median_s")
    speedup = one / two if one and two else None
    table = markdown_table(
        ["workload", "N", "block", "tasks", "1 worker (s)", "2 workers (s)", "speed-up"],
        [["CNN 16x16", args.dask_n, args.dask_block, rows[0].get("blocks", "-"), fmt_s(rows[0]), fmt_s(rows[1]),
          f"{speedup:.2f}" if speedup else "-"]])
    return {"rows": rows, "speedup": speedup, "table": table}


def _hwm_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _done(store: Path) -> int:
    manifest = store / "manifest"
    return len(list(manifest.glob("*.json"))) if manifest.is_dir() else 0


def _run_cli(command: list[str], timeout: float) -> dict:
    """Runs ``tangents kernel`` as a child to the end: seconds, peak resident set (VmHWM, polled)
    and its JSON summary."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env=dict(os.environ, TQDM_DISABLE="1"))
    peak = 0.0
    try:
        while child.poll() is None:
            peak = max(peak, _hwm_mb(child.pid) or 0.0)
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"{command} did not finish within {timeout:.0f} s")
            time.sleep(0.05)
        out = child.communicate(timeout=60)[0]
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=60)
    if child.returncode != 0:
        raise RuntimeError(f"{command} failed with status {child.returncode}")
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak, "summary": json.loads(out.strip().splitlines()[-1])}


def part_cifar(args: argparse.Namespace, me: list[str]) -> dict:
    import numpy as np

    n, d = args.n, 3072
    blocks_bytes = 2 * 4 * n * n  # two float32 kernels as full matrices: the upper blocks take about half
    root = Path(tempfile.mkdtemp(prefix="scale_cifar_", dir=args.tmp))
    try:
        free = shutil.disk_usage(root).free
        needed = blocks_bytes * 0.6 + n * d * 4
        if needed > free:
            raise SystemExit(f"scale.py cifar: needs about {needed / 2**30:.1f} GiB free at {root}, {free / 2**30:.1f} GiB are; "
                             f"pass --tmp DIR on a larger disk or a smaller --n.")
        x = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
        np.save(root / "x.npy", x)
        del x
        store = root / "k.zarr"
        command = [sys.executable, "-m", "tangents", "kernel", "--arch", "fc", "--x1", str(root / "x.npy"), "--out",
                   str(store), "--dtype", "float32", "--json", "--quiet"]
        if args.block:
            command += ["--block", str(args.block)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        # First run, to learn the number of blocks: start it, read the plan when created, kill half-way.
        first = _run_cli_until_half(command, store, args.timeout)
        in_flight = _written_not_done(store)
        second = _run_cli(command, args.timeout)
        summary = second.get("summary", {})
        row = {
            "n": n, "features": d, "dtype": "float32", "block_size": summary.get("block_size"),
            "blocks": summary.get("blocks"), "done_at_kill": first.get("done_at_kill"),
            "in_flight_at_kill": in_flight, "computed_on_resume": summary.get("computed"),
            "skipped_on_resume": summary.get("skipped"), "damaged": summary.get("damaged"),
            "first_s": first["seconds"], "resume_s": second["seconds"], "total_s": first["seconds"] + second["seconds"],
            "peak_rss_mb_first": first["peak_rss_mb"], "peak_rss_mb_resume": second["peak_rss_mb"],
            "store_gib": sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**30,
            "complete": summary.get("complete"),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = markdown_table(
        ["N x features", "block", "blocks", "done at kill", "caught writing at kill", "computed on resume", "total (s)",
         "peak RSS MiB (run / resume)", "store GiB"],
        [[f"{n} x {d}", row["block_size"], row["blocks"], row["done_at_kill"], row["in_flight_at_kill"],
          row["computed_on_resume"], f"{row['total_s']:.0f}", f"{row['peak_rss_mb_first']:.0f} / {row['peak_rss_mb_resume']:.0f}",
          f"{row['store_gib']:.1f}"]])
    return {"rows": [row], "table": table}


def _run_cli_until_half(command: list[str], store: Path, timeout: float) -> dict:
    """The first run, killed once half of its blocks (known from the store's metadata) are done."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=dict(os.environ, TQDM_DISABLE="1"))
    peak, total = 0.0, None
    try:
        while child.poll() is None:
            peak = max(peak, _hwm_mb(child.pid) or 0.0)
            if total is None and (store / "zarr.json").exists():
                try:
                    meta = json.loads((store / "zarr.json").read_text())["attributes"]["tangents_kernel_store"]
                    g = -(-meta["shape"][0] // meta["block_size"])
                    total = g * (g + 1) // 2
                except (KeyError, ValueError):
                    pass
            if total is not None and _done(store) >= total // 2:
                done = _done(store)
                os.kill(child.pid, signal.SIGKILL)
                child.wait(timeout=60)
                return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak, "done_at_kill": done, "blocks": total}
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"the first run did not reach half of its blocks within {timeout:.0f} s")
            time.sleep(0.05)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=60)
    raise RuntimeError(f"the first run ended (status {child.returncode}) before half of its blocks were done")


def _written_not_done(store: Path) -> int:
    """Blocks with a chunk written (or being written) but no manifest entry: in flight at the kill."""
    done = {p.stem for p in (store / "manifest").glob("*.json")}
    written = set()
    for name in GET:
        base = store / name / "c"
        if base.is_dir():
            for row in base.iterdir():
                for col in row.iterdir():
                    written.add(f"{row.name}.{col.name}")
    return len(written - done)


PARTS = {"overhead": part_overhead, "dask": part_dask, "cifar": part_cifar}


def main() -> None:
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):  # a worker process
        cfg = json.loads(sys.argv[1])
        print(json.dumps(WORKERS[cfg["mode"]](cfg)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=(*PARTS, "all"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process (default: 2 = the cores)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--fc-n", type=int, default=8000)
    parser.add_argument("--cnn-n", type=int, default=50)
    parser.add_argument("--dask-n", type=int, default=64)
    parser.add_argument("--dask-block", type=int, default=8)
    parser.add_argument("--n", type=int, default=60000, help="cifar: number of inputs")
    parser.add_argument("--block", type=int, default=None, help="cifar: block size (default: tangents' choice)")
    parser.add_argument("--tmp", default=None, help="directory for the stores (default: the system's temporary directory)")
    parser.add_argument("--timeout", type=float, default=7200.0)
    args = parser.parse_args()
    me = [sys.executable, str(Path(__file__).resolve())]
    RESULTS.mkdir(exist_ok=True)
    for part in PARTS if args.part == "all" else (args.part,):
        print(f"{part} (load average {load_average()})", flush=True)
        before = load_average()
        result = PARTS[part](args, me)
        result.update({"code": code_state(), "load_average": [before, load_average()], "args": vars(args)})
        (RESULTS / f"scale_{part}.json").write_text(json.dumps(result, indent=1, default=str))
        print(result["table"], flush=True)


if __name__ == "__main__":
    main()
