"""Generates ``attention_mask_nt.npz``: ``GlobalSelfAttention`` on masked (padded) inputs, by neural-tangents.

Variable-length sequences (and images with padded rows/columns) are padded with
``mask_constant=PAD`` and passed to NT's ``kernel_fn(..., mask_constant=PAD)`` and
``apply_fn(..., mask_constant=PAD)``. The cases cover the SOFTMAX, IDENTITY (linear and
square-root scaling), RELU and ABS mechanisms; no, SUM and CONCAT positional embeddings
(with and without a decay function and ``val_pos_emb``); attention on the raw inputs with
masks that differ across channels; an image after a convolution (NT's reversed storage
order); two stacked attention layers; and Flatten after attention. Run with
neural-tangents 0.6.5 / JAX 0.4.23 (not a tangents dependency):

    TF_CPP_MIN_LOG_LEVEL=3 /work/venv-nt/bin/python tests/reference/attention_mask_nt.py

Inputs are channels-last (NT's layout). Stored per kernel case ``<name>``: ``spec`` (JSON,
NT's arguments; decay functions by name, see ``DECAY_FNS``), ``x1`` (3, ...), ``x2``
(2, ...) with the padding in place, ``nngp``, ``ntk`` (x1 vs x2), ``nngp_self``,
``ntk_self`` (x2=None), and ``prefix_nngp``, ``prefix_ntk``, ``prefix_cov1``,
``prefix_mask1``: the Kernel right after the (last) attention layer on ``x1``, ``x2``.
Per finite-width case ``apply_<name>``: ``spec``, ``x1``, the parameters of NT's
``init_fn(PRNGKey(3))`` as ``param_<i>`` (flattened in order; ``param_<i>_none`` marks an
absent one), and ``out``, ``mask``: ``apply_fn(params, x1, mask_constant=PAD)``.
"""

import json
import os
import pathlib

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PAD = -100.0


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

#: name -> (architecture, example shape without batch, padding style)
SPECS = {
    "softmax": (S(DN, A(attention_mechanism="SOFTMAX", **STDS), R, GAP, D1), (6, 3), "tail"),
    "softmax_sum_decay_val": (S(DN, A(attention_mechanism="SOFTMAX", pos_emb_type="SUM", pos_emb_decay_fn="exp_half",
                                      pos_emb_p_norm=1, val_pos_emb=True, W_pos_emb_std=0.8, n_heads=4, **STDS),
                                R, GAP, D1), (6, 3), "tail"),
    "identity_concat": (S(DN, A(attention_mechanism="IDENTITY", pos_emb_type="CONCAT", n_chan_pos_emb=8,
                                W_pos_emb_std=0.7, **STDS), R, GAP, D1), (6, 3), "tail"),
    "identity_sum": (S(DN, A(attention_mechanism="IDENTITY", pos_emb_type="SUM", **STDS), R, GAP, D1), (5, 3), "tail"),
    "id_sqrt_sum_decay": (S(DN, A(linear_scaling=False, attention_mechanism="IDENTITY", pos_emb_type="SUM",
                                  pos_emb_decay_fn="exp", **STDS), R, GAP, D1), (6, 3), "tail"),
    "id_sqrt_concat_val": (S(DN, A(linear_scaling=False, attention_mechanism="IDENTITY", pos_emb_type="CONCAT",
                                   n_chan_pos_emb=8, W_pos_emb_std=0.7, val_pos_emb=True, **STDS), R, GAP, D1),
                           (5, 3), "tail"),
    "relu_image_concat": (S(CONV, R, A(attention_mechanism="RELU", pos_emb_type="CONCAT", pos_emb_decay_fn="exp",
                                       val_pos_emb=True, **STDS), R, GAP, D1), (4, 3, 2), "image"),
    "abs_first_channels": (S(A(attention_mechanism="ABS", **STDS), R, GAP, D1), (5, 3), "channels"),
    "softmax_first_channels": (S(A(attention_mechanism="SOFTMAX", b_std=None), GAP, D1), (5, 3), "channels"),
    "two_layers": (S(DN, A(attention_mechanism="SOFTMAX", pos_emb_type="SUM", **STDS), R,
                     A(attention_mechanism="ABS", W_key_std=0.7, b_std=None), GAP, D1), (5, 3), "tail"),
    "softmax_flatten": (S(DN, A(attention_mechanism="SOFTMAX", pos_emb_type="CONCAT", **STDS), R, FL, D1),
                        (5, 3), "tail"),
}

#: Finite-width cases: NT's apply_fn(params, x1, mask_constant=PAD) on NT's parameters.
APPLY_SPECS = {
    "apply_softmax_sum_decay": (A(n_chan_out=5, n_chan_key=4, n_chan_val=3, n_heads=2, pos_emb_type="SUM",
                                  pos_emb_decay_fn="exp_half", **STDS), (5, 3), "channels"),
    # after a Dense the mask has one channel, so it can mask embeddings of another width
    "apply_relu_image_concat_val": (S(dict(DN, out_dim=4), A(n_chan_out=5, n_chan_key=4, n_chan_val=3, n_heads=3,
                                                             attention_mechanism="RELU", pos_emb_type="CONCAT",
                                                             n_chan_pos_emb=2, val_pos_emb=True, **STDS)),
                                    (4, 3, 2), "image"),
    "apply_identity_concat": (A(n_chan_out=4, n_chan_key=6, n_chan_val=2, n_heads=2, attention_mechanism="IDENTITY",
                                pos_emb_type="CONCAT", W_pos_emb_std=0.6, **STDS), (5, 3), "tail"),
    "apply_id_sqrt_sum": (A(n_chan_out=4, n_chan_key=6, n_chan_val=2, n_heads=2, linear_scaling=False,
                            attention_mechanism="IDENTITY", pos_emb_type="SUM", **STDS), (5, 3), "tail"),
    "apply_abs_nobias": (A(n_chan_out=3, n_chan_key=4, n_chan_val=2, n_heads=1, attention_mechanism="ABS"),
                         (4, 2), "channels"),
    "apply_serial_softmax": (S(dict(DN, out_dim=6), A(n_chan_out=5, n_chan_key=4, n_chan_val=3, n_heads=2,
                                                      pos_emb_type="SUM", **STDS), R, GAP, D1), (6, 3), "tail"),
}


def pad(x, style):
    """Pads a batch in place: ``tail`` (sequence lengths L, L-2, 2 for three examples, 3, L
    for two), ``image`` (padded rows and columns), ``channels`` (a padded tail plus single
    padded channels of otherwise unpadded locations)."""
    n = x.shape[0]
    if style in ("tail", "channels"):
        length = x.shape[1]
        lengths = [length, length - 2, 2, 3, length][:n] if n == 3 else [3, length][:n]
        for i, li in enumerate(lengths):
            x[i, li:] = PAD
        if style == "channels":
            x[0, 1, 0] = PAD
            x[n - 1, 0, -1] = PAD
    elif style == "image":
        x[0, -1:, :] = PAD  # a padded row
        x[1, :, -1:] = PAD  # a padded column
        if n > 2:
            x[2, -2:, :] = PAD
            x[2, :, -1:] = PAD
    return x


def main() -> None:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    from neural_tangents import stax

    decay_fns = {"exp_half": lambda d: jnp.exp(-d / 2), "exp": lambda d: jnp.exp(-d)}

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
    for i, (name, (spec, shape, style)) in enumerate(SPECS.items()):
        rng = np.random.default_rng(5000 + i)
        x1 = pad(rng.standard_normal((3,) + shape), style)
        x2 = pad(rng.standard_normal((2,) + shape), style)
        kernel_fn = build(spec)[2]
        out[f"{name}/spec"] = np.array(json.dumps(spec))
        out[f"{name}/x1"], out[f"{name}/x2"] = x1, x2
        k = kernel_fn(x1, x2, ("nngp", "ntk"), mask_constant=PAD)
        out[f"{name}/nngp"], out[f"{name}/ntk"] = np.asarray(k.nngp), np.asarray(k.ntk)
        k = kernel_fn(x1, None, ("nngp", "ntk"), mask_constant=PAD)
        out[f"{name}/nngp_self"], out[f"{name}/ntk_self"] = np.asarray(k.nngp), np.asarray(k.ntk)
        last = max(j for j, layer in enumerate(spec["layers"]) if layer["type"] == "GlobalSelfAttention")
        k = build(S(*spec["layers"][: last + 1]))[2](x1, x2, mask_constant=PAD)
        out[f"{name}/prefix_nngp"], out[f"{name}/prefix_ntk"] = np.asarray(k.nngp), np.asarray(k.ntk)
        out[f"{name}/prefix_cov1"], out[f"{name}/prefix_mask1"] = np.asarray(k.cov1), np.asarray(k.mask1)
    for i, (name, (spec, shape, style)) in enumerate(APPLY_SPECS.items()):
        rng = np.random.default_rng(6000 + i)
        x1 = pad(rng.standard_normal((3,) + shape), style)
        init_fn, apply_fn, _ = build(spec)
        _, params = init_fn(jax.random.PRNGKey(3), x1.shape)
        out[f"{name}/spec"] = np.array(json.dumps(spec))
        out[f"{name}/x1"] = x1
        leaves = jax.tree_util.tree_leaves(params, is_leaf=lambda p: p is None)
        for j, p in enumerate(leaves):
            if p is None:
                out[f"{name}/param_{j}_none"] = np.array(True)
            else:
                out[f"{name}/param_{j}"] = np.asarray(p)
        fx = apply_fn(params, x1, mask_constant=PAD)
        out[f"{name}/out"], out[f"{name}/mask"] = np.asarray(fx.masked_value), np.asarray(fx.mask)
    for key, value in out.items():
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise RuntimeError(f"{key}: NT returned non-finite values")
    np.savez_compressed(pathlib.Path(__file__).with_suffix(".npz"), **out)


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    main()
