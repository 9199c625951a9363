"""Adds ``prefix_*_self`` arrays (the prefix kernel of ``x1[:n]`` with itself, ``x2=None``) to the
shipped reference cases, computed with neural-tangents 0.6.5 (float64); not collected by pytest.

Run with the NT venv: ``/work/venv-nt/bin/python tests/reference/prefix_self_nt.py``.
For every case with a ``prefix``, the first ``prefix`` top-level layers of the manifest's
``arch`` are rebuilt in NT (its own names and arguments, channels-last) and called on the
first ``n`` examples of ``x1`` (``n`` = the shipped ``prefix_nngp``'s first axis) with
``x2=None``; spatial axes are subsampled by ``prefix_step`` where the case stores one, as its
``prefix_*`` arrays are. ``*_diagspatial`` variants are stored where NT allows them.
"""

import json
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from neural_tangents import stax  # noqa: E402

HERE = pathlib.Path(__file__).parent
MANIFEST = json.loads((HERE / "manifest.json").read_text())
DESCRIPTIVE = {"type", "note", "equivalent", "fn_definition", "df", "to_dense", "precision"}
FNS = {"tanh": jnp.tanh, "softplus": jax.nn.softplus, "swish": lambda x: x * jax.nn.sigmoid(x)}


def build(spec):
    kind = spec["type"]
    if kind in ("serial", "parallel"):
        return getattr(stax, kind)(*(build(s) for s in spec["layers"]))
    if kind == "repeat":
        return stax.repeat(build(spec["layer"]), spec["n"])
    args = {k: v for k, v in spec.items() if k not in DESCRIPTIVE}
    if kind == "ElementwiseNumerical":
        args["fn"] = FNS[args["fn"]]
    for key in ("s", "filter_shape", "strides", "window_shape", "shape"):
        if isinstance(args.get(key), list):
            args[key] = tuple(args[key])
    return getattr(stax, kind)(**args)


def main():
    for case in MANIFEST["cases"]:
        if "prefix" not in case:
            continue
        path = HERE / case["file"]
        with np.load(path) as f:
            data = {k: f[k] for k in f.files}
        n = data["prefix_nngp"].shape[0]
        step = int(data.get("prefix_step", 1))
        _, _, kernel_fn = stax.serial(*(build(layer) for layer in case["arch"]["layers"][: case["prefix"]]))
        x = jnp.asarray(data["x1"][:n])

        def sub(t):
            t = np.asarray(t)
            return t[(slice(None), slice(None)) + (slice(None, None, step),) * (t.ndim - 2)]

        k = kernel_fn(x, None, ("nngp", "ntk"))
        data["prefix_nngp_self"], data["prefix_ntk_self"] = sub(k[0]), sub(k[1])
        if "prefix_nngp_diagspatial" in data:
            k = kernel_fn(x, None, ("nngp", "ntk"), diagonal_spatial=True)
            data["prefix_nngp_diagspatial_self"], data["prefix_ntk_diagspatial_self"] = sub(k[0]), sub(k[1])
        np.savez_compressed(path, **data)
        print(case["id"], data["prefix_nngp_self"].shape, flush=True)


if __name__ == "__main__":
    main()
