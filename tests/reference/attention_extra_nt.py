"""Generates ``attention_extra_nt.npz``: extra ``GlobalSelfAttention`` cases computed by neural-tangents.

They complement the shared reference cases (linear scaling, one positional-embedding
setting, sequences only) with: ``linear_scaling=False`` with IDENTITY, CONCAT and SUM
embeddings with ``n_chan_pos_emb``, ``W_pos_emb_std``, ``pos_emb_p_norm`` and
``pos_emb_decay_fn``, ``val_pos_emb=True``, several heads and unequal weight stds, 2-D
images after a convolution (NT's reversed storage order), inputs without spatial axes
(a single location), attention on the raw inputs
(where the incoming NTK is 0) and two stacked attention layers. Run with neural-tangents
0.6.5 / JAX 0.4.23 (not a tangents dependency):

    TF_CPP_MIN_LOG_LEVEL=3 /work/venv-nt/bin/python tests/reference/attention_extra_nt.py

Inputs are channels-last (NT's layout). Decay functions are named in the spec
(``DECAY_FNS`` below; the test maps the names to the same torch functions). Stored per
case ``<name>``: ``spec`` (JSON, NT's arguments), ``x1`` (3, ...), ``x2`` (2, ...),
``nngp``, ``ntk`` (x1 vs x2), ``nngp_self``, ``ntk_self`` (x2=None), and ``prefix_nngp``,
``prefix_ntk``: the full spatial kernel right after the (last) attention layer on
``x1[:2]``, ``x2[:1]``. Per finite-width case ``apply_<name>``: ``spec`` (one attention
layer), ``x1``, the parameters ``param_<field>`` of NT's ``init_fn(PRNGKey(3))`` (fields
q, k, v, o, b, pe; absent ones are None in NT) and ``fx1 = apply_fn(params, x1)``.
"""

import json
import os
import pathlib

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DECAY_NAMES = ("exp_half", "inverse", "exp")


def A(**kw):
    base = dict(type="GlobalSelfAttention", n_chan_out=16, n_chan_key=16, n_chan_val=16, n_heads=2, channel_axis=-1)
    base.update(kw)
    return base


def S(*layers):
    return dict(type="serial", layers=list(layers))


R = dict(type="Relu")
GAP = dict(type="GlobalAvgPool", channel_axis=-1)
FL = dict(type="Flatten")
DN = dict(type="Dense", out_dim=16, W_std=1.4, b_std=0.1)
D1 = dict(type="Dense", out_dim=1, W_std=1.3, b_std=0.05)
CONV = dict(type="Conv", out_chan=8, filter_shape=[2, 2], padding="SAME", W_std=1.3, b_std=0.1)

STDS = dict(W_key_std=1.3, W_query_std=0.8, W_value_std=1.2, W_out_std=0.9, b_std=0.1)

SPECS = {
    "id_sqrt": (S(DN, A(linear_scaling=False, attention_mechanism="IDENTITY", n_heads=3, **STDS), R, GAP, D1),
                (5, 3)),
    "id_sqrt_concat_val": (S(DN, A(linear_scaling=False, attention_mechanism="IDENTITY", pos_emb_type="CONCAT",
                                   n_chan_pos_emb=8, W_pos_emb_std=0.7, val_pos_emb=True, **STDS), R, GAP, D1),
                           (5, 3)),
    "id_sqrt_sum_decay": (S(DN, A(linear_scaling=False, attention_mechanism="IDENTITY", pos_emb_type="SUM",
                                  pos_emb_decay_fn="exp_half", pos_emb_p_norm=1, W_pos_emb_std=1.3, **STDS),
                            R, GAP, D1), (6, 3)),
    "softmax_concat_decay": (S(DN, A(attention_mechanism="SOFTMAX", pos_emb_type="CONCAT", pos_emb_decay_fn="exp_half",
                                     pos_emb_p_norm=1, n_chan_pos_emb=24, **STDS), R, GAP, D1), (5, 3)),
    "softmax_sum_val_decay": (S(DN, A(attention_mechanism="SOFTMAX", pos_emb_type="SUM", val_pos_emb=True,
                                      pos_emb_decay_fn="inverse", W_pos_emb_std=0.8, n_heads=4, **STDS),
                                R, GAP, D1), (5, 3)),
    "identity_linear_concat_val": (S(DN, A(attention_mechanism="IDENTITY", pos_emb_type="CONCAT", val_pos_emb=True,
                                           **STDS), R, GAP, D1), (4, 3)),
    "relu_image_concat": (S(CONV, R, A(attention_mechanism="RELU", pos_emb_type="CONCAT", pos_emb_decay_fn="exp",
                                       val_pos_emb=True, **STDS), R, FL, D1), (4, 3, 2)),
    "softmax_image_sum": (S(CONV, R, A(attention_mechanism="SOFTMAX", pos_emb_type="SUM", pos_emb_decay_fn="exp",
                                       pos_emb_p_norm=1.5, b_std=None), R, GAP, D1), (3, 4, 2)),
    "id_sqrt_image_sum": (S(CONV, A(linear_scaling=False, attention_mechanism="IDENTITY", pos_emb_type="SUM",
                                    pos_emb_decay_fn="exp", **STDS), R, GAP, D1), (4, 3, 2)),
    "first_softmax_concat_val": (S(A(attention_mechanism="SOFTMAX", pos_emb_type="CONCAT", val_pos_emb=True,
                                     **STDS), R, GAP, D1), (5, 3)),
    "first_id_sqrt_sum": (S(A(linear_scaling=False, attention_mechanism="IDENTITY", pos_emb_type="SUM", **STDS),
                            GAP, D1), (5, 3)),
    "first_id_sqrt_sum_val": (S(A(linear_scaling=False, attention_mechanism="IDENTITY", pos_emb_type="SUM",
                                  val_pos_emb=True, **STDS), GAP, D1), (5, 3)),
    "fc_softmax_sum": (S(DN, A(attention_mechanism="SOFTMAX", pos_emb_type="SUM", **STDS), R, D1), (4,)),
    "fc_id_sqrt_concat": (S(DN, A(linear_scaling=False, attention_mechanism="IDENTITY", pos_emb_type="CONCAT",
                                  val_pos_emb=True, **STDS), R, D1), (4,)),
    "two_layers": (S(DN, A(attention_mechanism="SOFTMAX", **STDS), R,
                     A(attention_mechanism="ABS", W_key_std=0.7, b_std=None), GAP, D1), (5, 3)),
}

#: Single attention layers whose finite-width ``apply_fn`` is compared with NT's on NT's parameters.
APPLY_SPECS = {
    "apply_softmax_sum_decay": (A(n_chan_out=5, n_chan_key=4, n_chan_val=3, n_heads=2, pos_emb_type="SUM",
                                  pos_emb_decay_fn="exp_half", **STDS), (5, 3)),
    "apply_relu_concat_val": (A(n_chan_out=5, n_chan_key=4, n_chan_val=3, n_heads=3, attention_mechanism="RELU",
                                pos_emb_type="CONCAT", n_chan_pos_emb=2, val_pos_emb=True, **STDS), (3, 2, 4)),
    "apply_id_sqrt_concat": (A(n_chan_out=4, n_chan_key=6, n_chan_val=2, n_heads=2, linear_scaling=False,
                               attention_mechanism="IDENTITY", pos_emb_type="CONCAT", W_pos_emb_std=0.6, **STDS),
                             (4, 3)),
    "apply_abs_nobias": (A(n_chan_out=3, n_chan_key=4, n_chan_val=2, n_heads=1, attention_mechanism="ABS"), (4, 2)),
}


def main() -> None:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    from neural_tangents import stax

    decay_fns = {"exp_half": lambda d: jnp.exp(-d / 2), "inverse": lambda d: 1 / (1 + d), "exp": lambda d: jnp.exp(-d)}

    def build(spec):
        spec = dict(spec)
        kind = spec.pop("type")
        if kind in ("serial", "parallel"):
            return getattr(stax, kind)(*[build(s) for s in spec["layers"]])
        if isinstance(spec.get("pos_emb_decay_fn"), str):
            spec["pos_emb_decay_fn"] = decay_fns[spec["pos_emb_decay_fn"]]
        for key in ("filter_shape", "strides"):
            if key in spec:
                spec[key] = tuple(spec[key])
        return getattr(stax, kind)(**spec)

    out = {}
    for i, (name, (spec, shape)) in enumerate(SPECS.items()):
        rng = np.random.default_rng(3000 + i)
        x1, x2 = rng.standard_normal((3,) + shape), rng.standard_normal((2,) + shape)
        kernel_fn = build(spec)[2]
        out[f"{name}/spec"] = np.array(json.dumps(spec))
        out[f"{name}/x1"], out[f"{name}/x2"] = x1, x2
        k = kernel_fn(x1, x2, ("nngp", "ntk"))
        out[f"{name}/nngp"], out[f"{name}/ntk"] = np.asarray(k.nngp), np.asarray(k.ntk)
        k = kernel_fn(x1, None, ("nngp", "ntk"))
        out[f"{name}/nngp_self"], out[f"{name}/ntk_self"] = np.asarray(k.nngp), np.asarray(k.ntk)
        last = max(j for j, layer in enumerate(spec["layers"]) if layer["type"] == "GlobalSelfAttention")
        k = build(S(*spec["layers"][: last + 1]))[2](x1[:2], x2[:1], ("nngp", "ntk"))
        out[f"{name}/prefix_nngp"], out[f"{name}/prefix_ntk"] = np.asarray(k.nngp), np.asarray(k.ntk)
    for i, (name, (spec, shape)) in enumerate(APPLY_SPECS.items()):
        rng = np.random.default_rng(4000 + i)
        x1 = rng.standard_normal((3,) + shape)
        init_fn, apply_fn, _ = build(spec)
        _, params = init_fn(jax.random.PRNGKey(3), x1.shape)
        out[f"{name}/spec"] = np.array(json.dumps(spec))
        out[f"{name}/x1"] = x1
        for field, p in zip(("q", "k", "v", "o", "b", "pe"), params):
            if p is not None:
                out[f"{name}/param_{field}"] = np.asarray(p)
        out[f"{name}/fx1"] = np.asarray(apply_fn(params, x1))
    np.savez_compressed(pathlib.Path(__file__).with_suffix(".npz"), **out)


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    main()
