"""Shared plumbing of the side-by-side benchmarks (tangents against neural-tangents 0.6.5).

Standard library only: the neural-tangents workers import it too, from their own virtual
environment. It provides

* `nt_python` — the interpreter of the neural-tangents venv (``--nt-python``, ``$NT_PYTHON``,
  ``/work/venv-nt/bin/python``, ``.venv-nt/bin/python``) and `NT_HOWTO`, how to create it;
* `thread_env` / `configure_xla_threads` — the same thread count for both libraries
  (torch: ``torch.set_num_threads(n)`` in the worker; XLA: its default Eigen pool, which
  uses every core, or ``--xla_cpu_multi_thread_eigen=false`` for one thread);
* `run_worker` — runs one measurement in a fresh process and parses the JSON line it prints
  last (so every measurement starts from a clean heap and a cold cache);
* `median_timing` — first call timed separately, then the median of the timed calls and the
  growth of the peak resident set during them (see ``_rss.py``);
* `load_average`, `markdown_table`, `fmt_s`, `fmt_mb`, `ratio` — reporting.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _rss import peak_mb, reset_peak, rss_mb  # noqa: E402

NT_HOWTO = """neural-tangents venv not found: reporting tangents alone. Create it once with

    python3 -m venv .venv-nt
    .venv-nt/bin/pip install "jax==0.4.23" "jaxlib==0.4.23" "numpy<2" "scipy<1.13" neural-tangents==0.6.5

and pass --nt-python .venv-nt/bin/python (or set NT_PYTHON)."""


def nt_python(arg: str | None = None) -> str | None:
    """The python of the neural-tangents venv, or None if none of the candidates exists."""
    candidates = [arg, os.environ.get("NT_PYTHON"), "/work/venv-nt/bin/python", str(HERE.parent / ".venv-nt/bin/python")]
    for c in candidates:
        if c and Path(c).exists():
            return c
    return None


def thread_env(threads: int) -> dict[str, str]:
    """Environment of a worker process with ``threads`` compute threads for either library."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TF_CPP_MIN_LOG_LEVEL="3",
               TQDM_DISABLE="1", BENCH_THREADS=str(threads))
    if threads == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    else:
        env.pop("XLA_FLAGS", None)  # XLA's default: an Eigen pool over all cores
    return env


def configure_xla_threads() -> None:
    """In a JAX worker, before importing jax: one thread if asked (``BENCH_THREADS=1``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if os.environ.get("BENCH_THREADS", "1") == "1":
        os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")


def run_worker(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs ``cmd`` and returns the JSON object on its last stdout line (or ``{"error": ...}``)."""
    if env is None:
        env = thread_env(1)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": "no JSON output: " + proc.stdout[-200:]}
    out.setdefault("process_s", time.perf_counter() - t0)
    return out


def median_timing(call: Callable[[], Any], repeats: int = 3, sync: Callable[[Any], Any] = lambda r: r,
                  before: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Times ``call()``: the first (warm-up) call separately, then the median of ``repeats`` calls.

    ``sync(result)`` must block until the result is computed (JAX: ``block_until_ready``).
    ``before()``, if given, runs untimed before every call (e.g. deleting the previous call's
    files, as the previous result is freed untimed here).
    Both libraries go through this very function, so they get the same protocol: always
    exactly ``repeats`` timed calls (never fewer because a call is slow).
    ``repeats=0`` times the first call alone (``median_s``, ``cpu_s`` and ``peak_mb`` absent).
    Returns ``first_s``, ``first_peak_mb`` (peak RSS growth of the first call), ``times_s``,
    ``median_s``, ``cpu_s`` (median process CPU time of a timed call, all threads: less
    sensitive than wall time to other users of a shared machine), ``peak_mb`` (peak RSS growth during the timed calls) and the last result.
    """
    reset_peak()
    base = rss_mb()
    if before is not None:
        before()
    t0 = time.perf_counter()
    result = sync(call())
    first = time.perf_counter() - t0
    first_peak = peak_mb() - base
    n = repeats
    times, cpu = [], []
    if n:
        del result
    reset_peak()
    base = rss_mb()
    for i in range(n):
        if before is not None:
            before()
        t0, c0 = time.perf_counter(), time.process_time()
        result = sync(call())
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if i < n - 1:
            del result
    if not times:  # repeats=0: the first call alone
        return {"first_s": first, "first_peak_mb": max(first_peak, 0.0), "times_s": [], "result": result}
    return {"first_s": first, "first_peak_mb": max(first_peak, 0.0), "times_s": times,
            "median_s": statistics.median(times),
            "cpu_s": statistics.median(cpu), "peak_mb": max(peak_mb() - base, 0.0), "result": result}


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. ``'0.52 1.10 2.30'``."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def fmt_s(r: dict | None, key: str = "median_s") -> str:
    if not r:
        return "-"
    if key not in r:
        return r["error"][:40] if "error" in r else "-"
    v = r[key]
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def fmt_mb(r: dict | None, key: str = "peak_mb") -> str:
    return f"{r[key]:.0f}" if r and key in r else "-"


def ratio(nt: dict | None, ours: dict | None, key: str = "median_s") -> str:
    """NT time / tangents time (> 1: tangents is faster)."""
    if nt and ours and key in nt and key in ours and ours[key] > 0:
        return f"{nt[key] / ours[key]:.2f}"
    return "-"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def require_committed(allow_modified: bool = False) -> None:
    """Stops a benchmark run on a tree whose ``src/`` or ``benchmarks/`` differ from the commit:
    every number reported must come from a committed revision that the results file names."""
    state = code_state()
    if state["modified"] and not allow_modified:
        raise SystemExit(
            "benchmark refused: src/ or benchmarks/ have uncommitted changes, so the results could not name "
            "the revision they measure:\n  " + "\n  ".join(state["modified"]) + "\ncommit them first "
            "(or pass --allow-modified for a trial run whose results must not be reported)."
        )


def code_state() -> dict[str, Any]:
    """The tangents commit measured and the source files modified on top of it (git, read-only)."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(HERE.parent), *a], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"
    return {"commit": git("rev-parse", "HEAD"), "modified": git("status", "--porcelain", "src", "benchmarks/*.py").splitlines()}
