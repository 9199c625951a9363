"""Generates ``conv_extra_nt.npz``: extra convolution/pooling cases computed by neural-tangents.

They complement the shared reference cases with what those do not cover: non-square
images, asymmetric and even filters, unequal strides, CIRCULAR transposed convolutions,
ConvLocal in the standard parameterization, pooling on diagonal covariances with
``normalize_edges``, non-default ``dimension_numbers`` and mixed storage orders in a
residual block. Run with neural-tangents 0.6.5 / JAX 0.4.23 (not a tangents dependency):

    TF_CPP_MIN_LOG_LEVEL=3 .venv-nt/bin/python tests/reference/conv_extra_nt.py

Stored per case ``<name>``: ``<name>/spec`` (the architecture, JSON, NT's arguments),
``x1`` (3, ...), ``x2`` (2, ...), ``nngp``, ``ntk`` and, where NT allows
``diagonal_spatial=True``, ``nngp_diag``, ``ntk_diag``; and ``<name>/prefix_nngp``,
``<name>/prefix_ntk`` for the network without its last two layers on ``x1[:1]``, ``x2[:1]``
(in NT's storage order); ``<name>/param_<j>``, the leaves of NT's ``init_fn(PRNGKey(1))``
parameters in order (``None`` biases are not leaves), and ``<name>/fx1`` = ``apply_fn(params, x1)``.
"""

import json
import os
import pathlib

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def C(kind, out_chan, filter_shape, **kw):
    return dict(type=kind, out_chan=out_chan, filter_shape=filter_shape, **kw)


def S(*layers):
    return dict(type="serial", layers=list(layers))


def pool(kind, **kw):
    return dict(type=kind, channel_axis=-1, **kw)


R = dict(type="Relu")
D = dict(type="Dense", out_dim=1, W_std=1.3, b_std=0.1)
GAP = pool("GlobalAvgPool")
FL = dict(type="Flatten")

SPECS = {
    "even_same_circ": (S(C("Conv", 8, (2, 4), strides=(2, 1), padding="SAME", W_std=1.4, b_std=0.2), R,
                         C("Conv", 8, (3, 2), strides=(1, 2), padding="CIRCULAR", W_std=1.2, b_std=0.1), R, GAP, D),
                       (7, 6, 3)),
    "tr_circ": (S(C("ConvTranspose", 8, (3, 3), strides=(2, 2), padding="CIRCULAR", W_std=1.4, b_std=0.2), R,
                  C("Conv", 8, (2, 3), padding="SAME", W_std=1.1), R, FL, D), (5, 4, 2)),
    "tr_circ_asym": (S(C("ConvTranspose", 8, (2, 3), strides=(3, 2), padding="CIRCULAR", W_std=1.4, b_std=0.2), R,
                       FL, D), (3, 4, 2)),
    "tr_same_42": (S(C("ConvTranspose", 8, (4, 2), strides=(3, 1), padding="SAME", W_std=1.4, b_std=0.2), R, GAP, D),
                   (4, 3, 2)),
    "tr_valid_std": (S(C("ConvTranspose", 8, (2, 3), strides=(1, 2), padding="VALID", W_std=1.4, b_std=0.2,
                         parameterization="standard", s=(2, 3)), R, GAP, D), (4, 3, 2)),
    "local_std": (S(C("ConvLocal", 8, (2, 3), strides=(1, 2), padding="SAME", W_std=1.4, b_std=0.2,
                      parameterization="standard", s=(2, 1)), R,
                    C("ConvLocal", 6, (3, 3), padding="VALID", W_std=1.1, b_std=0.3, parameterization="standard"),
                    R, FL, D), (7, 6, 3)),
    "local_circ": (S(C("ConvLocal", 8, (3, 2), strides=(2, 1), padding="CIRCULAR", W_std=1.4, b_std=0.2), R, FL, D),
                   (5, 6, 2)),
    "pool_edges_raw": (S(pool("AvgPool", window_shape=(3, 2), strides=(2, 1), padding="SAME", normalize_edges=True),
                         FL, D), (7, 6, 3)),
    "pool_edges0_raw": (S(pool("AvgPool", window_shape=(2, 3), strides=(1, 2), padding="SAME", normalize_edges=False),
                          FL, D), (7, 6, 3)),
    "sumpool_circ_raw": (S(pool("SumPool", window_shape=(3, 2), strides=(2, 2), padding="CIRCULAR"), FL, D),
                         (7, 6, 3)),
    "reversed_pool": (S(C("Conv", 8, (3, 2), padding="SAME", W_std=1.4, b_std=0.2), R,
                        pool("AvgPool", window_shape=(3, 2), strides=(2, 1), padding="SAME", normalize_edges=True),
                        C("Conv", 8, (2, 3), padding="SAME", W_std=1.2), R,
                        pool("SumPool", window_shape=(2, 1), padding="CIRCULAR"), pool("GlobalSumPool"), D),
                      (7, 6, 3)),
    "reversed_flatten": (S(C("Conv", 8, (3, 2), strides=(2, 1), padding="VALID", W_std=1.4, b_std=0.2), R, FL, D),
                         (7, 6, 3)),
    "weird_spec": (S(C("Conv", 8, (3, 2), strides=(2, 1), padding="SAME", W_std=1.4, b_std=0.2,
                       dimension_numbers=("NWHC", "HWIO", "NHWC")), R,
                     C("Conv", 8, (2, 2), padding="VALID", W_std=1.2, dimension_numbers=("NHWC", "OIWH", "NCWH")), R,
                     dict(type="GlobalAvgPool", channel_axis=1), D), (6, 7, 3)),
    "resnet_mixed": (S(C("Conv", 8, (3, 2), padding="SAME", W_std=1.4, b_std=0.2), dict(type="FanOut", num=3),
                       dict(type="parallel", layers=[S(R, C("Conv", 8, (2, 3), padding="SAME")), dict(type="Identity"),
                                                     S(R, C("Conv", 8, (3, 3), padding="SAME"), R,
                                                       C("Conv", 8, (1, 2), padding="SAME"))]),
                       dict(type="FanInSum"), R, GAP, D), (7, 6, 3)),
    "conv1d": (S(C("Conv", 8, (4,), strides=(2,), padding="SAME", W_std=1.4, b_std=0.2), R,
                 C("ConvTranspose", 8, (3,), strides=(2,), padding="VALID"), R, GAP, D), (9, 2)),
    "conv3d": (S(C("Conv", 8, (2, 3, 1), strides=(1, 2, 1), padding="SAME", W_std=1.4, b_std=0.2), R,
                 C("ConvTranspose", 8, (2, 1, 2), strides=(2, 1, 1), padding="SAME"), R,
                 pool("AvgPool", window_shape=(2, 2, 2), padding="VALID"), GAP, D), (4, 5, 3, 2)),
    "std_conv_s": (S(C("Conv", 8, (3, 3), padding="SAME", W_std=1.4, b_std=0.0, parameterization="standard", s=(2, 3)),
                     R, C("Conv", 6, (2, 2), padding="SAME", W_std=1.2, b_std=None, parameterization="standard",
                          s=(3, 1)), R, GAP,
                     dict(type="Dense", out_dim=1, W_std=1.3, b_std=0.1, parameterization="standard")), (5, 4, 3)),
}


def main() -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    from neural_tangents import stax

    def build(spec):
        spec = dict(spec)
        kind = spec.pop("type")
        if kind in ("serial", "parallel"):
            return getattr(stax, kind)(*[build(s) for s in spec["layers"]])
        for key in ("filter_shape", "strides", "window_shape", "s"):
            if key in spec:
                spec[key] = tuple(spec[key])
        return getattr(stax, kind)(**spec)

    out = {}
    for i, (name, (spec, shape)) in enumerate(SPECS.items()):
        rng = np.random.default_rng(2000 + i)
        x1, x2 = rng.standard_normal((3,) + shape), rng.standard_normal((2,) + shape)
        init_fn, apply_fn, kernel_fn = build(spec)
        out[f"{name}/spec"] = np.array(json.dumps(spec))
        out[f"{name}/x1"], out[f"{name}/x2"] = x1, x2
        k = kernel_fn(x1, x2, ("nngp", "ntk"))
        out[f"{name}/nngp"], out[f"{name}/ntk"] = np.asarray(k.nngp), np.asarray(k.ntk)
        try:
            k = kernel_fn(x1, x2, ("nngp", "ntk"), diagonal_spatial=True)
            out[f"{name}/nngp_diag"], out[f"{name}/ntk_diag"] = np.asarray(k.nngp), np.asarray(k.ntk)
        except ValueError:
            pass
        if len(spec["layers"]) > 2:
            k = build(S(*spec["layers"][:-2]))[2](x1[:1], x2[:1], ("nngp", "ntk"))
            out[f"{name}/prefix_nngp"], out[f"{name}/prefix_ntk"] = np.asarray(k.nngp), np.asarray(k.ntk)
        _, params = init_fn(jax.random.PRNGKey(1), x1.shape)
        for j, leaf in enumerate(jax.tree_util.tree_leaves(params)):
            out[f"{name}/param_{j}"] = np.asarray(leaf)
        out[f"{name}/fx1"] = np.asarray(apply_fn(params, x1))
    np.savez_compressed(pathlib.Path(__file__).with_suffix(".npz"), **out)


if __name__ == "__main__":
    main()
