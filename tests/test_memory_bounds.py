"""Peak memory of tiled kernels: `tangents.batch` and automatic tiling keep it bounded.

Each measurement runs in a fresh Python process, so that the peak resident set is that of
the one call: the child imports tangents, warms up on a tiny input, resets the kernel's
high-water mark (``/proc/self/clear_refs``), computes the kernel and reports the growth
of ``VmHWM`` over the resident set before the call, in MB.

The network (Conv-Relu-Conv-Relu-AvgPool-Flatten-Dense) pools, so it needs full
location-location covariances ``(N1, N2, H, H', W, W')``: at 8 x 8, 8⁴ = 4096 entries, 32 KB
per pair in float64. Computing N = 32 images at once holds several (32, 32, 8, 8, 8, 8)
tensors (32 MB each); in 4 x 4 tiles a tile's tensors are 16 x 32 KB = 0.5 MB.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc (Linux)")

_CHILD = textwrap.dedent(
    """
    import json, sys
    import torch
    from tangents import stax
    import tangents

    def status(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    torch.set_num_threads(2)
    net = stax.serial(
        stax.Conv(8, (3, 3), padding="SAME", W_std=1.5, b_std=0.1), stax.Relu(),
        stax.Conv(8, (3, 3), padding="SAME", W_std=1.5, b_std=0.1), stax.Relu(),
        stax.AvgPool((2, 2), strides=(2, 2)), stax.Flatten(), stax.Dense(1),
    )
    n, size, mode, free_mb = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    if free_mb > 0:  # pretend that little memory is free, to make automatic tiling bite
        import tangents.stax._layer as layer_module
        layer_module.available_memory = lambda device: int(free_mb * 2**20)
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    if mode == "untiled":
        import tangents.stax._layer as layer_module
        layer_module._auto_tile_size = lambda *args: None
        fn = net.kernel_fn
    elif mode == "auto":
        fn = net.kernel_fn
    else:
        fn = tangents.batch(net.kernel_fn, batch_size=int(mode), progress=False)
    fn(x[:2], None, ("nngp", "ntk"))  # warm-up: first-call allocations, thread pools
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    k = fn(x, None, ("nngp", "ntk"))
    growth = status("VmHWM") - before
    torch.save({"nngp": k.nngp, "ntk": k.ntk}, sys.argv[5])
    print(json.dumps({"growth_mb": growth}))
    """
)


def _run(tmp_path, n: int, size: int, mode: str, free_mb: float = 0) -> tuple[float, dict]:  # noqa: ANN001
    import torch

    out = tmp_path / f"{mode}_{n}_{size}.pt"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(n), str(size), mode, str(free_mb), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "2", "TQDM_DISABLE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["growth_mb"], torch.load(out)


def _assert_same(a: dict, b: dict) -> None:
    import torch

    for name in ("nngp", "ntk"):
        torch.testing.assert_close(a[name], b[name], rtol=1e-12, atol=0)


#: Per pair of 8 x 8 images, one full covariance is 4096 float64 = 32 KB.
PAIR_MB = 8**4 * 8 / 2**20


@pytest.mark.slow
def test_batch_keeps_peak_memory_bounded(tmp_path):
    n = 32
    untiled, reference = _run(tmp_path, n, 8, "untiled")
    batched, result = _run(tmp_path, n, 8, "4")
    _assert_same(result, reference)
    # Bound: the (N, N) results (negligible: 2 x 32² x 8 B) plus, for each of the 2 worker
    # threads, one 4 x 4 tile's intermediates: at most _LIVE_TENSORS = 24 full covariances of
    # 16 pairs (24 x 16 x 32 KB = 12 MB), and 16 MB for the allocator's slack.
    result_mb = 2 * n * n * 8 / 2**20
    bound = result_mb + 2 * 24 * 16 * PAIR_MB + 16
    assert batched < bound, f"batched peak growth {batched:.1f} MB > bound {bound:.1f} MB (untiled {untiled:.1f} MB)"
    # The untiled call holds all 1024 pairs at once: several 32 MB tensors.
    assert untiled > 4 * 1024 * PAIR_MB, f"untiled peak growth {untiled:.1f} MB is implausibly small"
    assert batched < untiled / 4, (batched, untiled)


@pytest.mark.slow
def test_plain_kernel_fn_on_a_large_input_is_tiled_automatically(tmp_path):
    # 16 x 16 images: 16⁴ x 8 B = 0.5 MB per pair, 128 MB per (16, 16, 16, 16, 16, 16) tensor.
    # With 400 MB "free", _auto_tile_size budgets a quarter (100 MB) for a tile's 24 live
    # tensors: 12 MB per pair, so 2 x 2 tiles (4 pairs, 48 MB by its model). Tiles run in
    # parallel, one per thread (2 here), and the budget is per tile, not divided by the
    # threads: measured 132 MB, i.e. the model's 24 live tensors underestimate a tile by ~40%.
    # Bound: the per-tile budget for each of the 2 threads, plus 16 MB of allocator slack.
    n, pair_mb = 16, 16**4 * 8 / 2**20
    untiled, reference = _run(tmp_path, n, 16, "untiled")
    auto, result = _run(tmp_path, n, 16, "auto", free_mb=400)
    _assert_same(result, reference)
    bound = 2 * 400 / 4 + 16
    assert auto < bound, f"auto-tiled peak growth {auto:.1f} MB > bound {bound:.1f} MB (untiled {untiled:.1f} MB)"
    assert untiled > 4 * n * n * pair_mb, untiled
    assert auto < untiled / 4, (auto, untiled)
