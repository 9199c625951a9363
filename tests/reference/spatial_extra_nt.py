"""Generates ``spatial_extra_nt.npz`` with neural-tangents 0.6.5 (float64); not collected by pytest.

Run with the NT venv: ``/work/venv-nt/bin/python tests/reference/spatial_extra_nt.py``.
Every case is a channels-last NT network; the tests rebuild it channels-first in tangents
(inputs transposed) or with channel_axis=-1. Keys: ``<case>_<array>``.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import warnings

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from neural_tangents import stax  # noqa: E402

rng = np.random.default_rng(2024)
out = {}


def store(name, net, x1, x2, **kw):
    print(name, flush=True)
    _, _, kernel_fn = net
    kw2 = dict(kw)
    kw_self = dict(kw)
    if "pattern" in kw:
        kw_self["pattern"] = (kw["pattern"][0], kw["pattern"][0])
    nngp, ntk = kernel_fn(x1, x2, ("nngp", "ntk"), **kw2)
    nngp_s, ntk_s = kernel_fn(x1, None, ("nngp", "ntk"), **kw_self)
    out[f"{name}_x1"], out[f"{name}_x2"] = np.asarray(x1), np.asarray(x2)
    out[f"{name}_nngp"], out[f"{name}_ntk"] = np.asarray(nngp), np.asarray(ntk)
    out[f"{name}_nngp_self"], out[f"{name}_ntk_self"] = np.asarray(nngp_s), np.asarray(ntk_s)


def head(*layers, channel_axis=-1):
    return stax.serial(*layers, stax.Dense(1, 1.5, 0.05, channel_axis=channel_axis))


# --- Aggregate: SPARSE edge lists on graphs (N, V, C), K = 1, with padding edges
V, E = 6, 9
x1, x2 = rng.standard_normal((3, V, 4)), rng.standard_normal((2, V, 4))
e1 = rng.integers(0, V, (3, E, 2))
e2 = rng.integers(0, V, (2, E, 2))
e1[0, -2:, 1] = -1  # padding edges (negative head)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    gnn_sparse = head(stax.Dense(8, 1.5, 0.05), stax.Relu(), stax.Aggregate(implementation="SPARSE"),
                      stax.Dense(8, 1.5, 0.05), stax.Relu(), stax.GlobalAvgPool())
store("agg_sparse", gnn_sparse, x1, x2, pattern=(e1, e2))
out["agg_sparse_pattern1"], out["agg_sparse_pattern2"] = e1, e2

# --- Aggregate on 2-D images (N, H, W, C) with an (N, H, W, H, W) weighted adjacency, after a conv
H, W = 3, 4
x1, x2 = rng.standard_normal((2, H, W, 3)), rng.standard_normal((2, H, W, 3))
a1 = rng.random((2, H, W, H, W)) * (rng.random((2, H, W, H, W)) < 0.4)
a2 = rng.random((2, H, W, H, W)) * (rng.random((2, H, W, H, W)) < 0.4)
img_agg = head(stax.Conv(8, (2, 2), padding="SAME", W_std=1.5, b_std=0.05),
               stax.Aggregate(aggregate_axis=(1, 2)), stax.Relu(), stax.GlobalAvgPool())
store("agg_image", img_agg, x1, x2, pattern=(a1, a2))
out["agg_image_pattern1"], out["agg_image_pattern2"] = a1, a2
# aggregate over the W axis only: (N, W, W) patterns
b1 = rng.random((2, W, W)) * (rng.random((2, W, W)) < 0.6)
b2 = rng.random((2, W, W)) * (rng.random((2, W, W)) < 0.6)
row_agg = head(stax.Conv(8, (2, 2), padding="SAME", W_std=1.5, b_std=0.05),
               stax.Aggregate(aggregate_axis=2), stax.Relu(), stax.GlobalAvgPool())
store("agg_rows", row_agg, x1, x2, pattern=(b1, b2))
out["agg_rows_pattern1"], out["agg_rows_pattern2"] = b1, b2

# --- DotGeneral (NT's docstring examples) on (N, 2, L, C) two stacked series
x1, x2 = rng.standard_normal((3, 2, 7, 3)), rng.standard_normal((2, 2, 7, 3))
base = (stax.Conv(16, (1, 3), W_std=1.5, b_std=0.05), stax.Relu())
store("dot_scalar", head(*base, stax.DotGeneral(rhs=2.0), stax.GlobalAvgPool()), x1, x2)
store("dot_rhs", head(*base, stax.DotGeneral(rhs=jnp.array([1.0, -1.0]), dimension_numbers=(((1,), (0,)), ((), ()))),
                      stax.GlobalAvgPool()), x1, x2)
store("dot_lhs", head(*base, stax.DotGeneral(lhs=jnp.array([[0.0, 1.0], [1.0, 0.5]]), dimension_numbers=(((1,), (1,)), ((), ()))),
                      stax.GlobalAvgPool(batch_axis=1)), x1, x2)  # outputs (2, N, L, C)
M = rng.standard_normal((5, 4))
store("dot_rhs_matrix", head(base[0], stax.DotGeneral(rhs=M, dimension_numbers=(((2,), (0,)), ((), ()))),
                             stax.Relu(), stax.GlobalAvgPool(channel_axis=2)), x1, x2)  # outputs (N, 2, C, 4)
out["dot_rhs_matrix_M"] = M

# --- Index on spatial axes
x1, x2 = rng.standard_normal((3, 6, 5, 3)), rng.standard_normal((2, 6, 5, 3))
cnn = (stax.Conv(16, (2, 2), padding="SAME", W_std=1.5, b_std=0.05), stax.Relu())
store("index_crop", head(*cnn, stax.Index(idx=stax.Slice[:, 1:5, ::-2, :]), stax.Conv(16, (2, 2), W_std=1.5), stax.Relu(),
                         stax.GlobalAvgPool()), x1, x2)
store("index_row", head(*cnn, stax.Index(idx=stax.Slice[:, 2, ...]), stax.Conv(16, (2,), W_std=1.5), stax.Relu(),
                        stax.GlobalAvgPool()), x1, x2)

# --- ImageResize: each method and shape
for name, shape, method, aa in [
    ("resize_up_linear", (-1, 9, 7, -1), "linear", True),
    ("resize_down_linear_noaa", (-1, 4, 3, -1), "linear", False),
    ("resize_down_linear_aa", (-1, 4, 3, -1), "bilinear", True),
    ("resize_nearest_mixed", (-1, 3, 8, -1), "nearest", True),
]:
    store(name, head(*cnn, stax.ImageResize(shape, method, antialias=aa), stax.Conv(16, (2, 2), W_std=1.5), stax.Relu(),
                     stax.GlobalAvgPool()), x1, x2)

# resize after a Dense layer: the kernel is not reversed, so unequal targets are exact
store("resize_dense_nonsquare", head(stax.Dense(16, 1.5, 0.05), stax.ImageResize((-1, 9, 4, -1), "linear"), stax.Relu(),
                                     stax.GlobalAvgPool()), x1, x2)

# finite-width resizes (apply_fn) of every jax.image method
img = rng.standard_normal((2, 6, 5, 3))
out["resize_apply_x"] = img
for method in ("nearest", "linear", "cubic", "lanczos3", "lanczos5"):
    for tag, shape in (("up", (2, 9, 7, 3)), ("down", (2, 4, 3, 3))):
        for aa in (True, False):
            y = jax.image.resize(img, shape, method, antialias=aa)
            out[f"resize_apply_{method}_{tag}_{int(aa)}"] = np.asarray(y)

# finite-width Aggregate (apply_fn) with the SPARSE edge lists and with a dense 2-D pattern
xa = rng.standard_normal((3, V, 4))
out["agg_apply_x"] = xa
out["agg_apply_sparse"] = np.asarray(gnn_sparse[1]  # noqa
                                     and stax.Aggregate(implementation="SPARSE")[1]((), xa, pattern=e1))
xi = rng.standard_normal((2, H, W, 3))
out["agg_apply_image_x"] = xi
out["agg_apply_image"] = np.asarray(stax.Aggregate(aggregate_axis=(1, 2))[1]((), xi, pattern=a1))

# --- masking: variable-length sequences (N, L, C), padded with mask_constant
L = 8
x1, x2 = rng.standard_normal((3, L, 4)), rng.standard_normal((2, L, 4))
x1[0, 5:], x1[1, 3:], x2[1, 6:] = -100.0, -100.0, -100.0
fc_mask = head(stax.Dense(16, 1.5, 0.05), stax.Relu(), stax.Dense(16, 1.5, 0.05), stax.Relu(), stax.GlobalAvgPool())
store("mask_fc", fc_mask, x1, x2, mask_constant=-100.0)
conv_mask = head(stax.Conv(16, (3,), padding="SAME", W_std=1.5, b_std=0.05), stax.Relu(),
                 stax.AvgPool((2,), strides=(2,)), stax.Conv(16, (2,), padding="SAME", W_std=1.5, b_std=0.05),
                 stax.Erf(), stax.GlobalAvgPool())
store("mask_conv", conv_mask, x1, x2, mask_constant=-100.0)
flat_mask = head(stax.Conv(16, (3,), padding="VALID", W_std=1.5, b_std=0.05), stax.Relu(), stax.Flatten())
store("mask_flatten", flat_mask, x1, x2, mask_constant=-100.0)
gauss_mask = head(stax.Dense(16, 1.5, 0.05), stax.Gaussian(), stax.Dense(16, 1.5, 0.05), stax.Exp(),
                  stax.GlobalAvgPool())  # activations that are nonzero at zero variance: remasked
store("mask_gauss", gauss_mask, x1, x2, mask_constant=-100.0)
res_mask = head(stax.Conv(16, (3,), strides=(2,), padding="SAME", W_std=1.5, b_std=0.05), stax.FanOut(2),
                stax.parallel(stax.serial(stax.Relu(), stax.Conv(16, (3,), padding="SAME", W_std=1.5)), stax.Identity()),
                stax.FanInSum(), stax.Relu(), stax.SumPool((2,), padding="SAME"), stax.GlobalAvgPool())
store("mask_resnet", res_mask, x1, x2, mask_constant=-100.0)
cat_mask = head(stax.Dense(16, 1.5, 0.05), stax.FanOut(2), stax.parallel(stax.Relu(), stax.Erf()),
                stax.FanInConcat(), stax.Dense(16, 1.5, 0.05), stax.Relu(), stax.GlobalAvgPool())
store("mask_concat", cat_mask, x1, x2, mask_constant=-100.0)

resize_mask = head(stax.Conv(16, (3,), padding="SAME", W_std=1.5, b_std=0.05), stax.Relu(),
                   stax.ImageResize((-1, 5, -1), "linear"), stax.Conv(16, (2,), W_std=1.5, b_std=0.05), stax.Relu(),
                   stax.GlobalAvgPool())
store("mask_resize", resize_mask, x1, x2, mask_constant=-100.0)
index_mask = head(stax.Dense(16, 1.5, 0.05), stax.Relu(), stax.Index(idx=stax.Slice[:, 1:7]),
                  stax.DotGeneral(rhs=3.0), stax.Dense(16, 1.5, 0.05), stax.Relu(), stax.GlobalAvgPool())
store("mask_index", index_mask, x1, x2, mask_constant=-100.0)
g1 = (rng.random((3, L, L)) < 0.4).astype(np.float64)
g2 = (rng.random((2, L, L)) < 0.4).astype(np.float64)
agg_mask = head(stax.Dense(16, 1.5, 0.05), stax.Aggregate(), stax.Relu(), stax.Dense(16, 1.5, 0.05), stax.Relu(),
                stax.GlobalAvgPool())
store("mask_aggregate", agg_mask, x1, x2, mask_constant=-100.0, pattern=(g1, g2))
out["mask_aggregate_pattern1"], out["mask_aggregate_pattern2"] = g1, g2

ln_mask = head(stax.Dense(16, 1.5, 0.05), stax.LayerNorm(axis=(1, 2)), stax.Relu(),
               stax.Conv(16, (3,), padding="SAME", W_std=1.5, b_std=0.05), stax.LayerNorm(), stax.Erf(),
               stax.GlobalAvgPool())
store("mask_layernorm", ln_mask, x1, x2, mask_constant=-100.0)
init_fn, apply_fn, _ = ln_mask
_, params = init_fn(jax.random.PRNGKey(1), x1.shape)
y = apply_fn(params, x1, mask_constant=-100.0)
out["mask_layernorm_apply_out"] = np.asarray(y.masked_value)
for i, p in enumerate(params):
    if p:
        out[f"mask_layernorm_param_{i}_W"] = np.asarray(p[0])
        out[f"mask_layernorm_param_{i}_b"] = np.asarray(p[1])

# finite width: apply_fn on stored weights with masking
init_fn, apply_fn, _ = conv_mask
_, params = init_fn(jax.random.PRNGKey(0), x1.shape)
y = apply_fn(params, x1, mask_constant=-100.0)
out["mask_conv_apply_out"] = np.asarray(y.masked_value)
out["mask_conv_apply_mask"] = np.asarray(y.mask)
for i, p in enumerate(params):
    if p:
        out[f"mask_conv_param_{i}_W"] = np.asarray(p[0])
        out[f"mask_conv_param_{i}_b"] = np.asarray(p[1])

np.savez_compressed(os.path.join(os.path.dirname(os.path.abspath(__file__)), "spatial_extra_nt.npz"), **out)
print(len(out), "arrays")
