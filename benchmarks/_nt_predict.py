"""Worker run by ``benchmarks/predict.py`` inside the neural-tangents venv.

Usage (normally invoked by the benchmark)::

    /path/to/venv-nt/bin/python benchmarks/_nt_predict.py '<json config>'

Config: ``arch`` (neural-tangents layer names, see ``_nt_kernels.py``), ``n_train``,
``n_test``, ``d_in``, ``n_out``, ``dtype``, ``diag_reg``, ``seed``, ``repeats``, ``out``.
Measures, with the ``jax.jit``-ed ``kernel_fn`` (``get`` static):

* ``kernels``: the three kernels the ensemble needs (train-train and test-train NNGP+NTK,
  test-test NNGP);
* ``predict``: ``gradient_descent_mse_ensemble(k, x_train, y_train, diag_reg)(x_test=...,
  get=("nngp", "ntk"), compute_cov=True)`` with ``k`` returning those kernels precomputed;
* ``total``: the same with the ``kernel_fn`` itself (kernels included).

Each as in ``_common.median_timing``. Prints one JSON line. Never imported by tangents.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import configure_xla_threads, median_timing  # noqa: E402

configure_xla_threads()


def main() -> None:
    cfg = json.loads(sys.argv[1])
    import jax
    import numpy as np

    if cfg["dtype"] == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from _nt_kernels import build
    from neural_tangents import predict

    dtype = jnp.float64 if cfg["dtype"] == "float64" else jnp.float32
    rng = np.random.default_rng(cfg["seed"])
    x_tr = jnp.asarray(rng.standard_normal((cfg["n_train"], cfg["d_in"])), dtype)
    y_tr = jnp.asarray(rng.standard_normal((cfg["n_train"], cfg["n_out"])), dtype)
    x_te = jnp.asarray(rng.standard_normal((cfg["n_test"], cfg["d_in"])), dtype)
    _, _, kernel_fn = build(cfg["arch"])
    kernel_fn = jax.jit(kernel_fn, static_argnames="get")
    get = ("nngp", "ntk")

    def kernels():
        return kernel_fn(x_tr, None, get), kernel_fn(x_te, x_tr, get), kernel_fn(x_te, None, "nngp")

    out = {"kernels": median_timing(kernels, cfg["repeats"], jax.block_until_ready)}
    k_dd, k_td, k_tt = out["kernels"].pop("result")

    def cached(x1, x2, get, **kwargs):
        k = k_tt if x2 is None and x1 is x_te else (k_dd if x2 is None else k_td)
        if isinstance(get, str):
            return k if isinstance(k, jnp.ndarray) else getattr(k, get)
        return k

    def run(fn):
        return lambda: predict.gradient_descent_mse_ensemble(fn, x_tr, y_tr, diag_reg=cfg["diag_reg"])(
            x_test=x_te, get=get, compute_cov=True)

    out["predict"] = median_timing(run(cached), cfg["repeats"], jax.block_until_ready)
    out["predict"].pop("result")
    out["total"] = median_timing(run(kernel_fn), cfg["repeats"], jax.block_until_ready)
    pred = out["total"].pop("result")
    if cfg.get("out"):
        np.savez(cfg["out"], **{f"{g}_{w}": np.asarray(getattr(pred, g)[i])[:64, :64]
                                for g in get for i, w in enumerate(("mean", "cov"))})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
