"""Why neural-tangents' float32 CNN kernels are slower than its float64 ones (on a CPU).

Runs inside the neural-tangents venv (jax/jaxlib 0.4.23): ``/work/venv-nt/bin/python
benchmarks/nt_float32_conv.py``. NT computes a convolutional layer's kernel by convolving
the (N1·N2·H·W, 1, H', W')-shaped covariance with a single-channel 3×3 filter (once per
spatial pair of axes). This script times exactly that convolution, jitted, in both dtypes,
one thread, best of 5 after a warm-up, for the 16×16 images of ``benchmarks/kernels.py``:

* float32: XLA:CPU hands the convolution to Eigen's im2col + matrix-product path, which
  does a 9 × 1 product per output pixel for one input and one output channel;
* float64: Eigen's path does not take it, and XLA emits its own loop, about 3× faster here.

Seen in XLA's own output (``XLA_FLAGS=--xla_dump_to=DIR``, the optimised LLVM IR of this
jitted convolution): the float32 program calls ``__xla_cpu_runtime_EigenConv2DF32``; the
float64 one calls no convolution routine at all (its loops are emitted inline).

It also tries the XLA flags that could change the float32 path (``--xla_cpu_use_mkl_dnn``,
``--xla_cpu_enable_fast_math``), each in a fresh process, and prints one JSON line per run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
FLAGS = ["", "--xla_cpu_use_mkl_dnn=true", "--xla_cpu_use_mkl_dnn=false", "--xla_cpu_enable_fast_math=true"]


def measure(dtype: str) -> float:
    import jax

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((36 * 256, 1, 16, 16)), getattr(jnp, dtype))  # N1·N2·H·W = 6·6·16·16
    w = jnp.asarray(rng.standard_normal((1, 1, 3, 3)), getattr(jnp, dtype))
    conv = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME"))
    conv(x, w).block_until_ready()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        conv(x, w).block_until_ready()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    if len(sys.argv) == 3:  # worker: dtype, flag
        print(json.dumps({"dtype": sys.argv[1], "flag": sys.argv[2], "seconds": measure(sys.argv[1])}))
        return
    for dtype, flag in [("float64", "")] + [("float32", f) for f in FLAGS]:
        env = dict(os.environ, XLA_FLAGS=f"{ONE_THREAD} {flag}".strip(), TF_CPP_MIN_LOG_LEVEL="3")
        out = subprocess.run([sys.executable, __file__, dtype, flag], capture_output=True, text=True, env=env, timeout=600)
        print(out.stdout.strip().splitlines()[-1] if out.returncode == 0 else json.dumps({"dtype": dtype, "flag": flag, "error": out.stderr[-200:]}))


if __name__ == "__main__":
    main()
