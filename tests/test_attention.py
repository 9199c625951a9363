"""`GlobalSelfAttention`: argument and layout errors, the kernel contract on spatial
networks, and Monte Carlo convergence of finite networks to the analytic NNGP.

`tests/networks.py` holds only (N, D) fully-connected networks, so the contract properties
(symmetry, PSD, ``x2=None``, ``cov1``, batch splits, dtypes, the finite module) are checked
here on a few channels-first attention networks. The numbers themselves are checked
against neural-tangents in `test_reference_attention.py`.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from tangents import stax

N1, N2 = 4, 3


def _seq(n: int, seed: int, c: int = 3, length: int = 5) -> torch.Tensor:
    return torch.randn(n, c, length, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _img(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 2, 3, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


STDS = dict(W_key_std=1.2, W_query_std=0.9, W_value_std=1.3, W_out_std=0.8, b_std=0.1)


def _softmax_seq() -> stax.Layer:
    return stax.serial(
        stax.Dense(16, W_std=1.4, b_std=0.1, channel_axis=1),
        stax.GlobalSelfAttention(16, 16, 16, 2, **STDS),
        stax.Relu(),
        stax.GlobalAvgPool(),
        stax.Dense(4, b_std=0.1),
    )


def _identity_sqrt_image() -> stax.Layer:
    return stax.serial(
        stax.Conv(8, (2, 2), padding="SAME", W_std=1.3, b_std=0.1),
        stax.Relu(),
        stax.GlobalSelfAttention(
            8, 8, 8, 3, linear_scaling=False, attention_mechanism="IDENTITY", pos_emb_type="CONCAT",
            pos_emb_decay_fn=lambda d: torch.exp(-d), n_chan_pos_emb=4, **STDS,
        ),
        stax.Erf(),
        stax.GlobalAvgPool(),
        stax.Dense(4),
    )


def _relu_sum_first() -> stax.Layer:
    return stax.serial(
        stax.GlobalSelfAttention(16, 16, 16, 1, attention_mechanism="RELU", pos_emb_type="SUM", val_pos_emb=True,
                                 pos_emb_decay_fn=lambda d: 1 / (1 + d), **STDS),
        stax.Relu(),
        stax.GlobalSelfAttention(16, 16, 16, 2, attention_mechanism="ABS", b_std=None),
        stax.Flatten(),
        stax.Dense(4),
    )


NETS = {
    "softmax_seq": (_softmax_seq, _seq),
    "identity_sqrt_image": (_identity_sqrt_image, _img),
    "relu_sum_first": (_relu_sum_first, _seq),
}
parametrize = pytest.mark.parametrize("name", sorted(NETS))


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-12) -> bool:
    scale = max(float(b.abs().max()), 1e-300)
    return bool(((a - b).abs() <= rtol * scale).all())


# ---------------------------------------------------------------------- contract


@parametrize
def test_symmetric_and_psd(name):
    build, data = NETS[name]
    for m in build().kernel_fn(data(5, 1), None, ("nngp", "ntk")):
        assert m.shape == (5, 5)
        assert _close(m, m.T)
        eig = torch.linalg.eigvalsh((m + m.T) / 2)
        assert eig.min() >= -1e-10 * eig.abs().max()


@parametrize
def test_x2_none_equals_x2_is_x1_and_cov1_is_the_diagonal(name):
    build, data = NETS[name]
    net, x = build(), data(N1, 1)
    k_none, k_same = net.kernel_fn(x, None), net.kernel_fn(x, x.clone())
    for field in ("nngp", "ntk", "cov1"):
        assert _close(getattr(k_same, field), getattr(k_none, field)), field
    assert _close(k_none.cov1, torch.diagonal(k_none.nngp))
    full = net.kernel_fn(x, None, diagonal_batch=False)
    assert _close(full.cov1, full.nngp) and _close(full.nngp, k_none.nngp)


@parametrize
def test_batch_split_gives_blocks(name):
    build, data = NETS[name]
    net, x1, x2 = build(), data(N1, 1), data(N2, 2)
    nngp, ntk = net.kernel_fn(x1, x2, ("nngp", "ntk"))
    top = net.kernel_fn(x1[:2], x2, ("nngp", "ntk"))
    bottom = net.kernel_fn(x1[2:], x2[1:], ("nngp", "ntk"))
    assert _close(top.nngp, nngp[:2]) and _close(top.ntk, ntk[:2])
    assert _close(bottom.nngp, nngp[2:, 1:]) and _close(bottom.ntk, ntk[2:, 1:])


@parametrize
def test_float32_keeps_dtype(name):
    build, data = NETS[name]
    net, x = build(), data(N1, 1)
    ref = net.kernel_fn(x, None, "ntk")
    out = net.kernel_fn(x.float(), None, "ntk")
    assert out.dtype == torch.float32
    assert _close(out.double(), ref, rtol=1e-4)


@parametrize
def test_finite_module_runs_and_trains(name):
    build, data = NETS[name]
    net, x = build(), data(N1, 1)
    shape = (-1,) + tuple(x.shape[1:])
    out_shape, _ = net.init_fn(0, shape)
    module = net.to_module(shape, seed=0)
    out = module(x)
    assert out.shape == (N1, out_shape[1])
    out.square().sum().backward()
    assert all(p.grad is not None for p in module.parameters())


def test_channels_first_and_last_agree():
    """channel_axis=-1 on (N, L, C) inputs gives the numbers of the default on (N, C, L)."""
    first = stax.GlobalSelfAttention(8, 8, 8, 2, pos_emb_type="CONCAT", pos_emb_decay_fn=lambda d: torch.exp(-d), **STDS)
    last = stax.GlobalSelfAttention(8, 8, 8, 2, pos_emb_type="CONCAT", pos_emb_decay_fn=lambda d: torch.exp(-d),
                                    channel_axis=-1, **STDS)
    x1, x2 = _seq(N1, 1), _seq(N2, 2)
    a = first.kernel_fn(x1, x2)
    b = last.kernel_fn(x1.transpose(1, 2), x2.transpose(1, 2))
    assert _close(a.nngp, b.nngp) and _close(a.ntk, b.ntk)
    _, params = first.init_fn(0, x1.shape)
    params_last = params[:4] + (params[4].transpose(1, 2), params[5].transpose(1, 2))
    assert _close(first.apply_fn(params, x1).transpose(1, 2), last.apply_fn(params_last, x1.transpose(1, 2)))


def test_softmax_rows_of_attention_sum_to_one():
    """With constant inputs every softmax row is uniform: the layer then averages values,
    so its NNGP is σ_OV² Σ̄ + σ_b² with Σ̄ the mean input covariance (a closed form)."""
    x = torch.ones(2, 3, 4, dtype=torch.float64) * torch.tensor([1.0, 2.0])[:, None, None]
    layer = stax.GlobalSelfAttention(8, 8, 8, 1, W_value_std=1.5, W_out_std=0.7, b_std=0.2)
    nngp = layer.kernel_fn(x, None, "nngp")  # (2, 2, L, L)
    expected = (1.5 * 0.7) ** 2 * torch.tensor([[1.0, 2.0], [2.0, 4.0]]) + 0.2**2
    assert _close(nngp, expected[:, :, None, None].expand(2, 2, 4, 4))


# ---------------------------------------------------------------------- signature and errors

#: neural-tangents 0.6.5's signature (``linear.py``), copied by hand.
NT_SIGNATURE = [
    ("n_chan_out", inspect.Parameter.empty), ("n_chan_key", inspect.Parameter.empty),
    ("n_chan_val", inspect.Parameter.empty), ("n_heads", inspect.Parameter.empty), ("linear_scaling", True),
    ("W_key_std", 1.0), ("W_value_std", 1.0), ("W_query_std", 1.0), ("W_out_std", 1.0), ("b_std", None),
    ("attention_mechanism", "SOFTMAX"), ("pos_emb_type", "NONE"), ("pos_emb_p_norm", 2), ("pos_emb_decay_fn", None),
    ("n_chan_pos_emb", None), ("W_pos_emb_std", 1.0), ("val_pos_emb", False), ("batch_axis", 0), ("channel_axis", -1),
]


def test_signature_mirrors_neural_tangents_except_the_channels_first_default():
    ours = [(p.name, p.default) for p in inspect.signature(stax.GlobalSelfAttention).parameters.values()]
    assert ours[:-1] == NT_SIGNATURE[:-1]
    assert ours[-1] == ("channel_axis", 1)


def test_diagonal_spatial_kernel_is_refused():
    k = stax.Dense(4, channel_axis=1).kernel_fn(_seq(2, 0), diagonal_spatial=True)
    with pytest.raises(ValueError, match="needs the full location-location covariances"):
        stax.GlobalSelfAttention(4, 4, 4, 1).kernel_fn(k)



@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_heads=0), "n_heads must be a positive integer"),
        (dict(n_chan_key=2.5), "n_chan_key must be a positive integer"),
        (dict(attention_mechanism="TANH"), "attention_mechanism must be one of 'SOFTMAX', 'IDENTITY'"),
        (dict(pos_emb_type="ADD"), "pos_emb_type must be one of 'NONE', 'SUM', 'CONCAT'"),
        (dict(linear_scaling=1), "linear_scaling must be True or False"),
        (dict(val_pos_emb="yes"), "val_pos_emb must be True or False"),
        (dict(pos_emb_decay_fn=3.0), "pos_emb_decay_fn must be None or a function"),
        (dict(n_chan_pos_emb=0), "n_chan_pos_emb must be a positive integer or None"),
        (dict(W_key_std=None), "W_key_std must be a finite number"),
        (dict(b_std=float("nan")), "b_std must be a finite number"),
        (dict(channel_axis=1.0), "channel_axis must be an integer axis"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = dict(n_chan_out=4, n_chan_key=4, n_chan_val=4, n_heads=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        stax.GlobalSelfAttention(**args)


@pytest.mark.parametrize("mechanism", ["SOFTMAX", "ABS", "RELU"])
def test_sqrt_scaling_kernel_exists_only_for_identity(mechanism):
    layer = stax.GlobalSelfAttention(4, 4, 4, 1, linear_scaling=False, attention_mechanism=mechanism)
    with pytest.raises(ValueError, match=f"linear_scaling=False has no known closed form for attention_mechanism='{mechanism}'"):
        layer.kernel_fn(_seq(2, 0))
    assert layer.apply_fn(layer.init_fn(0, (2, 3, 5))[1], _seq(2, 0)).shape == (2, 4, 5)  # finite width works


def test_sum_embeddings_need_matching_channels():
    layer = stax.GlobalSelfAttention(4, 4, 4, 1, pos_emb_type="SUM", n_chan_pos_emb=7)
    with pytest.raises(ValueError, match="n_chan_pos_emb=7 must equal the input channels 3"):
        layer.init_fn(0, (2, 3, 5))


def test_wrong_channel_count_at_apply():
    layer = stax.GlobalSelfAttention(4, 4, 4, 1)
    _, params = layer.init_fn(0, (2, 3, 5))
    with pytest.raises(ValueError, match="initialised for 3; tangents defaults to channels-first"):
        layer.apply_fn(params, _seq(2, 0).transpose(1, 2))


def test_same_batch_and_channel_axis():
    layer = stax.GlobalSelfAttention(4, 4, 4, 1, batch_axis=0, channel_axis=-3)
    with pytest.raises(ValueError, match="are the same axis of 3-D inputs"):
        layer.init_fn(0, (2, 3, 5))


def test_layout_mismatch_with_previous_layer():
    net = stax.serial(stax.Dense(8, channel_axis=-1), stax.GlobalSelfAttention(8, 8, 8, 1))
    with pytest.raises(ValueError, match="channel_axis=1 .* but the previous layer puts it on axis 2"):
        net.kernel_fn(_seq(2, 0))


def test_diagonal_spatial_refused():
    with pytest.raises(ValueError, match="diagonal_spatial=True was requested"):
        stax.GlobalSelfAttention(4, 4, 4, 1).kernel_fn(_seq(2, 0), diagonal_spatial=True)


def test_decay_fn_must_return_a_tensor_of_the_same_shape():
    layer = stax.GlobalSelfAttention(4, 4, 4, 1, pos_emb_type="SUM", pos_emb_decay_fn=lambda d: 1.0)
    with pytest.raises(ValueError, match="pos_emb_decay_fn must map a torch tensor of distances"):
        layer.kernel_fn(_seq(2, 0))


def test_non_positive_definite_decay_is_refused_at_finite_width():
    layer = stax.GlobalSelfAttention(4, 4, 4, 1, pos_emb_type="SUM", pos_emb_decay_fn=lambda d: torch.ones_like(d))
    _, params = layer.init_fn(0, (2, 3, 5))
    with pytest.raises(ValueError, match="covariance given by pos_emb_decay_fn is not positive definite"):
        layer.apply_fn(params, _seq(2, 0))


# ---------------------------------------------------------------------- Monte Carlo


def _empirical_nngps(layer: stax.Layer, x: torch.Tensor, n_samples: int) -> torch.Tensor:
    """``(S, N, N, L, L')`` empirical NNGPs f(x)f(x)ᵀ / n_out of independently sampled layers."""
    out = []
    for seed in range(n_samples):
        _, params = layer.init_fn(seed, x.shape)
        f = layer.apply_fn(params, x)  # (N, C_out, L)
        out.append(torch.einsum("acl,bcm->ablm", f, f) / f.shape[1])
    return torch.stack(out)


def _check(samples: torch.Tensor, expected: torch.Tensor, allowance: float = 0.0, z: float = 5.0) -> None:
    """|mean − expected| <= z SE + allowance · scale entrywise, SE estimated from the samples."""
    n = samples.shape[0]
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(n)
    scale = float(expected.abs().max())
    excess = (mean - expected).abs() - z * se - allowance * scale
    assert float(excess.max()) <= 0, f"max excess {float(excess.max()):.3g} (scale {scale:.3g})"


def test_monte_carlo_identity_matches_the_exact_finite_width_mean():
    r"""IDENTITY with linear scaling on the raw inputs: G = σ_QK A Aᵀ / n_key with A = X W_K / √C
    Gaussian, so by Isserlis the finite-width mean NNGP is exactly the analytic one plus

        σ_QK² σ_OV² / n_key · Σ_{l', m'} [K(xl, ym) K(xl', ym') + K(xl, ym') K(xl', ym)] K(xl', ym'),

    K the input covariance (values and outputs are averaged exactly given G). A small
    n_key = 4 makes this correction ~20% of the kernel, so both terms are tested."""
    n_key, qk, ov, b = 4, 1.1, 1.2, 0.2
    layer = stax.GlobalSelfAttention(64, n_key, 16, 4, attention_mechanism="IDENTITY", W_key_std=qk, W_query_std=1.0,
                                     W_value_std=ov, W_out_std=1.0, b_std=b)
    x = _seq(3, 5, c=4, length=3)
    analytic = layer.kernel_fn(x, None, "nngp")
    K = torch.einsum("acl,bcm->ablm", x, x) / x.shape[1]  # (N, N, L, L')
    correction = torch.einsum("ablm,abpq,abpq->ablm", K, K, K) + torch.einsum("abmp,ablq,abpq->ablm", K, K, K)
    expected = analytic + qk**2 * ov**2 / n_key * correction
    assert float((correction.abs().max())) * qk**2 * ov**2 / n_key > 0.1 * float(analytic.abs().max())
    _check(_empirical_nngps(layer, x, 400), expected)


@pytest.mark.slow
def test_monte_carlo_softmax_with_positional_embeddings():
    r"""SOFTMAX with CONCAT embeddings (also in the values) on the raw inputs. Given the keys and
    the embeddings, the mean over values, outputs and bias is exact. The logits σ_QK A Aᵀ / n_key
    fluctuate by O(n_key^-1/2) about their mean, which itself contains the embeddings' empirical
    covariance R̂ = E Eᵀ / n_pe, off R by O(n_pe^-1/2); the softmax's curvature (derivatives
    bounded by 1) turns both into a bias of at most ~σ_QK² κ² (1/n_key + 1/n_pe) of the scale
    by a second-order expansion (κ the largest interpolated covariance). Allowed: twice that.
    With n_pe = 4 the bias is 10% and measurably beyond the noise, so the inputs are wide.
    Teeth (measured): the kernels of SUM instead of CONCAT, of val_pos_emb=False, of one-hot
    embeddings (no decay_fn) or of RELU attention are all rejected by this check."""
    n_key, n_pe, qk = 512, 128, 1.0
    layer = stax.GlobalSelfAttention(128, n_key, 32, 4, pos_emb_type="CONCAT", pos_emb_decay_fn=lambda d: torch.exp(-d),
                                     val_pos_emb=True, W_value_std=1.3, W_out_std=1.0, b_std=0.1)
    x = _seq(3, 6, c=n_pe, length=4)
    nngp = layer.kernel_fn(x, None, "nngp")
    kappa = max(float(x.square().mean(1).max()), 1.0)  # Σ̃ averages Σ (diagonal ~1) and R (diagonal 1)
    _check(_empirical_nngps(layer, x, 200), nngp, allowance=2 * qk**2 * kappa**2 * (1 / n_key + 1 / n_pe))
