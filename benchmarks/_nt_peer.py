"""Worker run by ``benchmarks/empirical.py`` inside the neural-tangents virtual environment.

Usage (normally invoked by the benchmark, not by hand)::

    /path/to/venv-nt/bin/python benchmarks/_nt_peer.py '<json config>'

The config names the network (``mlp`` or ``cnn``), the weights/inputs ``.npz`` written by
the benchmark (so both libraries differentiate the very same network), the
implementation (1, 2, 3), the dtype and an output ``.npy`` path for the kernel. It prints one
JSON line: ``compile_s`` (ahead-of-time compilation) and the timing of the compiled function
with the protocol of both sides (``_protocol.timed``: first call apart, median of 3 calls, or
of 21 when the first took under 0.1 s; ``peak_mb`` the growth of the process' peak resident
memory during them). Never imported by tangents.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import configure_xla_threads  # noqa: E402
from _protocol import timed  # noqa: E402

configure_xla_threads()  # one XLA thread unless the driver asked otherwise (BENCH_THREADS)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    import jax
    import numpy as np

    if cfg["dtype"] == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import neural_tangents as nt
    from neural_tangents import stax

    data = np.load(cfg["data"])
    dtype = jnp.float64 if cfg["dtype"] == "float64" else jnp.float32
    w_std, b_std = cfg["W_std"], cfg["b_std"]
    if cfg["net"] == "mlp":
        widths = cfg["widths"]
        layers = []
        for i, w in enumerate(widths[1:]):
            layers.append(stax.Dense(w, W_std=w_std, b_std=b_std))
            if i < len(widths) - 2:
                layers.append(stax.Relu())
        params = []
        for i in range(len(widths) - 1):
            params.append((jnp.asarray(data[f"W{i}"], dtype), jnp.asarray(data[f"b{i}"], dtype)))
            if i < len(widths) - 2:
                params.append(())
        x = jnp.asarray(data["x"], dtype)
    else:
        layers, params = [], []
        n_conv = cfg["n_conv"]
        for i in range(n_conv):
            layers += [stax.Conv(cfg["channels"], (3, 3), padding="SAME", W_std=w_std, b_std=b_std), stax.Relu()]
            # torch OIHW -> HWIO
            params += [(jnp.asarray(data[f"W{i}"].transpose(2, 3, 1, 0), dtype), jnp.asarray(data[f"b{i}"], dtype)), ()]
        layers += [stax.GlobalAvgPool(), stax.Dense(1, W_std=w_std, b_std=b_std)]
        params += [(), (jnp.asarray(data[f"W{n_conv}"], dtype), jnp.asarray(data[f"b{n_conv}"], dtype))]
        x = jnp.asarray(data["x"].transpose(0, 2, 3, 1), dtype)  # NCHW -> NHWC
    _, apply_fn, _ = stax.serial(*layers)
    params = tuple(params)
    ntk_fn = jax.jit(nt.empirical_ntk_fn(apply_fn, vmap_axes=0, implementation=cfg["implementation"]))
    t0 = time.perf_counter()
    compiled = ntk_fn.lower(x, None, params).compile()
    compile_s = time.perf_counter() - t0
    timing = timed(lambda: compiled(x, None, params), sync=lambda k: k.block_until_ready())
    np.save(cfg["out"], np.asarray(timing.pop("result")))
    print(json.dumps({**timing, "compile_s": compile_s}))


if __name__ == "__main__":
    main()
