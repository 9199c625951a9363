"""Worker run by ``benchmarks/kernels.py`` (and ``predict.py``) inside the neural-tangents venv.

Usage (normally invoked by the benchmarks, not by hand)::

    /path/to/venv-nt/bin/python benchmarks/_nt_kernels.py '<json config>'

Config: ``mode`` (``"kernel"`` or ``"fresh"``), ``arch`` (a list of ``[layer name, kwargs]``
in neural-tangents' names, e.g. ``[["Dense", {"out_dim": 512}], ["Relu", {}]]``), ``shape``
(one input's shape, channels-last), ``n``, ``dtype``, ``seed``, ``repeats``, ``out`` (an
``.npz`` for a corner of the kernels, or null). Inputs are
``numpy.random.default_rng(seed).standard_normal((n, *shape))``, the same numbers the
tangents worker transposes to channels-first. ``kernel_fn`` is ``jax.jit``-ed (``get``
static), as neural-tangents recommends; the first call (tracing + XLA compilation + run) is
reported apart from the median of the timed calls. Prints one JSON line. Never imported by
tangents.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import configure_xla_threads, median_timing  # noqa: E402

configure_xla_threads()

GET = ("nngp", "ntk")


def build(arch: list) -> tuple:
    """``stax.serial`` of the listed neural-tangents layers (lists become tuples)."""
    from neural_tangents import stax

    layers = []
    for name, kwargs in arch:
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        layers.append(getattr(stax, name)(**kwargs))
    return stax.serial(*layers)


def inputs(cfg: dict, n: int | None = None, seed: int | None = None):
    import numpy as np

    rng = np.random.default_rng(cfg.get("seed", 0) if seed is None else seed)
    return rng.standard_normal((cfg["n"] if n is None else n, *cfg["shape"]))


def kernel_mode(cfg: dict) -> dict:
    import jax
    import numpy as np

    if cfg["dtype"] == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    dtype = jnp.float64 if cfg["dtype"] == "float64" else jnp.float32
    _, _, kernel_fn = build(cfg["arch"])
    kernel_fn = jax.jit(kernel_fn, static_argnames="get")
    x = jnp.asarray(inputs(cfg), dtype)
    r = median_timing(lambda: kernel_fn(x, None, GET), cfg.get("repeats", 3), jax.block_until_ready)
    k = r.pop("result")
    if cfg.get("out"):
        m = cfg.get("corner", 64)
        np.savez(cfg["out"], nngp=np.asarray(k.nngp[:m, :m]), ntk=np.asarray(k.ntk[:m, :m]))
    return r


def fresh_mode(cfg: dict) -> dict:
    """Import time, then the first call of the plain (un-jitted) and of the jitted kernel_fn."""
    t0 = time.perf_counter()
    import jax
    import jax.numpy as jnp
    import neural_tangents  # noqa: F401

    import_s = time.perf_counter() - t0
    _, _, kernel_fn = build(cfg["arch"])
    x = jnp.asarray(inputs(cfg), jnp.float32)
    t0 = time.perf_counter()
    jax.block_until_ready(kernel_fn(x, None, GET))
    first = time.perf_counter() - t0
    jitted = jax.jit(kernel_fn, static_argnames="get")
    t0 = time.perf_counter()
    jax.block_until_ready(jitted(x, None, GET))
    first_jit = time.perf_counter() - t0
    return {"import_s": import_s, "first_call_s": first, "first_jit_call_s": first_jit}


def main() -> None:
    cfg = json.loads(sys.argv[1])
    out = {"kernel": kernel_mode, "fresh": fresh_mode}[cfg["mode"]](cfg)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
