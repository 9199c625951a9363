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

#: What every child starts with: ``status(field)`` reads a /proc/self/status entry in MB.
_PRELUDE = textwrap.dedent(
    """
    import json, sys
    import torch

    def status(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    torch.set_num_threads(2)
    """
)

_CHILD = _PRELUDE + textwrap.dedent(
    """
    from tangents import stax
    import tangents
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


_NTK_VP_CHILD = _PRELUDE + textwrap.dedent(
    """
    import tangents
    import tangents._empirical._memory as memory
    import tangents._empirical._ntk_vp as ntk_vp
    from tangents import NtkImplementation
    n, mode = int(sys.argv[1]), sys.argv[2]
    # A panel budget 8x smaller than the default keeps the test fast: panels of 6 examples.
    memory.PANEL_TENSOR_BYTES = 4 << 20
    if mode == "whole":  # as before the panels: one example's rows through all of x1[0:b] at once
        ntk_vp.forward_passes_for = lambda *args: memory.ForwardPasses(1, 10**9, 10**9)
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    x = torch.randn(n, 1, 64, 64)
    fn = tangents.empirical_ntk_fn(net, (), (), 0, NtkImplementation.NTK_VECTOR_PRODUCTS)
    fn(x[:3])  # warm-up: first-call allocations, thread pools
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    k = fn(x)
    growth = status("VmHWM") - before
    predicted = fn.plan.estimates[NtkImplementation.NTK_VECTOR_PRODUCTS].memory / 2**20
    torch.save(k, sys.argv[3])
    print(json.dumps({"growth_mb": growth, "predicted_mb": predicted}))
    """
)


def _run_ntk_vp(tmp_path, n: int, mode: str) -> tuple[float, float, "object"]:  # noqa: ANN001
    import torch

    out = tmp_path / f"ntk_vp_{mode}_{n}.pt"
    proc = subprocess.run(
        [sys.executable, "-c", _NTK_VP_CHILD, str(n), mode, str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "2", "TQDM_DISABLE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report["growth_mb"], report["predicted_mb"], torch.load(out)


@pytest.mark.slow
def test_ntk_vector_products_stay_within_their_predicted_memory(tmp_path):
    """NTK_VECTOR_PRODUCTS pushes one example's 10 rows through fixed-size panels of x1, so
    its tangents stay within the panel budget however many examples; before the panels they
    went through all of x1[0:b] at once (10 x 64 images x 64 KiB per tangent at the last
    chunk), beyond what the memory model predicts (measured on ResNet-18: 3.8 GB against 0.5
    GB predicted at N = 128)."""
    import torch

    n = 64
    panels, predicted, result = _run_ntk_vp(tmp_path, n, "panels")
    whole, _, reference = _run_ntk_vp(tmp_path, n, "whole")
    torch.testing.assert_close(result, reference, rtol=1e-4, atol=1e-6)  # float32, the same products
    # Bound: the prediction (51.5 MB: the kernel, one example's rows, and one pass of 6
    # examples: its intermediates plus 8 tangents the size of its largest) plus 4 MB of slack.
    # Measured: 0.8 MB with the panels (the warm-up's blocks reused), 280-292 MB without.
    assert panels < predicted + 4, f"peak growth {panels:.1f} MB > predicted {predicted:.1f} MB + 4 MB"
    assert whole > 2 * (predicted + 4), f"whole-x1 passes used only {whole:.1f} MB: the test shows nothing"
