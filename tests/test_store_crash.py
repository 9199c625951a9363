"""Kernel stores under crashes and memory limits, in child processes of the test.

* A driver killed with SIGKILL (by its pid) after some blocks: the rerun computes exactly
  the blocks not done (counted) and the store is bit-identical to one never interrupted.
* Peak memory is bounded by the block size: a kernel whose store is several times the memory
  the test allows is computed within it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from tangents import stax
from tangents.store import KernelStore, compute_kernel

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and POSIX signals")

_NET = """
from tangents import stax
net = stax.serial(stax.Dense(64, W_std=1.5, b_std=0.05), stax.Relu(), stax.Dense(64, W_std=1.5, b_std=0.05),
                  stax.Erf(), stax.Dense(1, W_std=1.5, b_std=0.05))
"""


def _net() -> stax.Layer:
    namespace: dict = {}
    exec(_NET, namespace)
    return namespace["net"]


def _env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "2", "TQDM_DISABLE": "1"}


_SLOW_DRIVER = _NET + textwrap.dedent(
    """
    import functools, sys, time
    import torch
    from tangents.store import compute_kernel

    path, n, block = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    x = torch.randn(n, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    @functools.wraps(net.kernel_fn)  # the same network (and fingerprint), slower blocks
    def slow(*args, **kwargs):
        time.sleep(0.15)
        return net.kernel_fn(*args, **kwargs)

    compute_kernel(slow, x, path=path, block_size=block, progress=False)
    """
)


def test_driver_killed_by_sigkill_resumes_only_the_missing_blocks(tmp_path):
    n, block = 30, 5  # 6 x 6 grid of blocks: 21 on and above the diagonal, ~0.15 s each
    path = tmp_path / "k.zarr"
    log = tmp_path / "child.log"
    with open(log, "w") as stderr:
        child = subprocess.Popen([sys.executable, "-c", _SLOW_DRIVER, str(path), str(n), str(block)], env=_env(),
                                 stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 120
        while len(list((path / "manifest").glob("*.json"))) < 5:
            assert child.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the child wrote no 5 blocks within 120 s"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    killed = KernelStore.open(path)
    missing = len(killed.missing_blocks())
    assert 0 < missing <= 21 - 5
    x = torch.randn(n, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    net = _net()
    resumed = compute_kernel(net, x, path=path, progress=False)
    assert resumed.last_run["computed"] == missing and resumed.last_run["skipped"] == 21 - missing
    assert resumed.last_run["damaged"] == 0  # nothing marked done was damaged by the kill
    reference = compute_kernel(net, x, path=tmp_path / "reference.zarr", block_size=block, durable=False, progress=False)
    for name in ("nngp", "ntk"):
        assert resumed[name][...].tobytes() == reference[name][...].tobytes()


_MEASURED_DRIVER = _NET + textwrap.dedent(
    """
    import json, sys
    import torch
    from tangents.store import compute_kernel

    def status(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024

    path, n, block = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    x = torch.randn(n, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # warm-up: imports, thread pools and first-call allocations, on a small store
    compute_kernel(net, x[: 2 * block], path=path + ".warm", block_size=block, progress=False, durable=False)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    store = compute_kernel(net, x, path=path, block_size=block, progress=False, durable=False)
    print(json.dumps({"growth_mb": status("VmHWM") - before, "blocks": store.last_run["computed"]}))
    """
)


def test_peak_memory_is_bounded_by_the_block_not_the_kernel(tmp_path):
    """N = 6000 in float64: nngp and ntk are 2 x 275 MiB (549 MiB as matrices; 298 MiB of
    upper blocks on disk). Blocks of 500: 2 x 1.9 MiB of results each. Allowed: 60 MiB of
    resident growth (measured 32-38 MiB), a ninth of the kernel."""
    n, block = 6000, 500
    path = tmp_path / "big.zarr"
    proc = subprocess.run([sys.executable, "-c", _MEASURED_DRIVER, str(path), str(n), str(block)], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    kernel_mb = 2 * n * n * 8 / 2**20
    on_disk_mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
    assert result["blocks"] == 12 * 13 // 2
    assert on_disk_mb > 290, on_disk_mb  # the 78 upper blocks really were written: 297.6 MiB
    # Budget: two blocks computed at once (one thread each; a kernel_fn call holds ~24 live
    # tensors of a 256 x 256 tile, 12.6 MiB, and its 3.8 MiB of results), two blocks waiting
    # to be written and one being written (3.8 MiB each), the inputs (2.3 MiB): ~50 MiB by
    # this count, measured 32-38 MiB, so 60 MiB leaves room for allocator slack.
    assert result["growth_mb"] < 60, f"peak growth {result['growth_mb']:.0f} MiB (kernel {kernel_mb:.0f} MiB)"
    assert kernel_mb > 9 * 60
