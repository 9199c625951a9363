"""Convolutions, pooling and Flatten: finite forward passes, kernel identities, Monte Carlo, errors.

Independent oracles: torch's own conv/pool ops (for the cases where lax's and torch's
conventions coincide), neural-tangents' stored finite network (``empirical_cnn_ntk``),
closed forms, and Monte Carlo averages of finite networks.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reference_cases import load, relative_error
from tangents import stax

NHWC = ("NHWC", "HWIO", "NHWC")


# ---------------------------------------------------------------------- finite forward


def _nt_cnn(dimension_numbers, channel_axis):
    return stax.serial(
        stax.Conv(4, (3, 3), (1, 1), "SAME", 1.5, 0.05, dimension_numbers),
        stax.Relu(),
        stax.Conv(5, (3, 3), (2, 2), "VALID", 1.5, 0.05, dimension_numbers),
        stax.Relu(),
        stax.GlobalAvgPool(channel_axis=channel_axis),
        stax.Dense(2, 1.5, 0.05),
    )


def _nt_params(data, layout):
    def conv(i):
        W, b = torch.from_numpy(data[f"param_{i}_W"]), torch.from_numpy(data[f"param_{i}_b"])
        if layout == "NCHW":  # HWIO -> OIHW, (1, 1, 1, O) -> (1, O, 1, 1)
            W, b = W.permute(3, 2, 0, 1), b.permute(0, 3, 1, 2)
        return (W, b)

    dense = (torch.from_numpy(data["param_5_W"]), torch.from_numpy(data["param_5_b"]))
    return (conv(0), (), conv(2), (), (), dense)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_forward_matches_neural_tangents_network(layout):
    """NT's stored weights and outputs (SAME and strided VALID convs, NTK parameterization)."""
    data = load("empirical_cnn_ntk")
    x = torch.from_numpy(data["x1"])
    if layout == "NHWC":
        net = _nt_cnn(NHWC, -1)
    else:
        net, x = _nt_cnn(None, 1), x.permute(0, 3, 1, 2)
    out = net.apply_fn(_nt_params(data, layout), x)
    assert relative_error(out, data["fx1"]) <= 1e-10


def _weights(layer, x_shape, seed=0):
    _, (W, b) = layer.init_fn(seed, x_shape)
    return W, b


def test_conv_same_odd_and_circular_match_torch():
    x = torch.randn(2, 3, 7, 6)
    layer = stax.Conv(4, (3, 3), padding="SAME", W_std=2.0, b_std=0.5)
    W, b = _weights(layer, x.shape)
    scale = 2.0 / math.sqrt(3 * 9)
    expected = scale * F.conv2d(x, W, padding=1) + 0.5 * b
    torch.testing.assert_close(layer.apply_fn((W, b), x), expected)
    assert W.shape == (4, 3, 3, 3) and b.shape == (1, 4, 1, 1)  # torch.nn.Conv2d's layout

    layer = stax.Conv(4, (3, 3), padding="CIRCULAR")
    W, _ = _weights(layer, x.shape)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular", bias=False)
    conv.weight.data = W
    torch.testing.assert_close(layer.apply_fn((W, None), x), conv(x) / math.sqrt(27))


def test_conv_same_even_filter_pads_at_the_end_like_lax():
    """lax SAME with a 2-tap filter pads 0 before and 1 after (torch's 'same' differs)."""
    x = torch.randn(2, 3, 5)
    layer = stax.Conv(2, (2,), padding="SAME")
    W, _ = _weights(layer, x.shape)
    expected = F.conv1d(F.pad(x, (0, 1)), W) / math.sqrt(6)
    torch.testing.assert_close(layer.apply_fn((W, None), x), expected)
    # stride 2 on length 5: out 3, total pad 1 -> (0, 1)
    layer = stax.Conv(2, (3,), strides=(2,), padding="SAME")
    W, _ = _weights(layer, x.shape)
    expected = F.conv1d(F.pad(x, (1, 1)), W, stride=2) / math.sqrt(9)
    torch.testing.assert_close(layer.apply_fn((W, None), x), expected)


def test_conv_transpose_valid_matches_torch_conv_transpose():
    """lax.conv_transpose (unflipped filter) equals torch's with the filter flipped, for k >= s."""
    x = torch.randn(2, 3, 4, 5)
    layer = stax.ConvTranspose(4, (3, 2), strides=(2, 2), padding="VALID")
    W, _ = _weights(layer, x.shape)
    assert layer.output_shape((2, 3, 4, 5)) == (2, 4, 9, 10)
    expected = F.conv_transpose2d(x, W.flip(2, 3).transpose(0, 1), stride=2) / math.sqrt(3 * 6)
    torch.testing.assert_close(layer.apply_fn((W, None), x), expected)


def test_conv_local_with_equal_weights_is_conv():
    """ConvLocal with the same filter at every location equals Conv."""
    x = torch.randn(2, 3, 6, 5)
    conv = stax.Conv(4, (3, 2), strides=(2, 1), padding="SAME", b_std=0.1)
    local = stax.ConvLocal(4, (3, 2), strides=(2, 1), padding="SAME", b_std=0.1)
    W, b = _weights(conv, x.shape)
    Wl, bl = _weights(local, x.shape)
    assert Wl.shape == (4, 3 * 6, 3, 5) and bl.shape == (1, 4, 3, 5)
    Wl = W.reshape(4, 18, 1, 1).expand_as(Wl)
    torch.testing.assert_close(local.apply_fn((Wl, b.expand_as(bl)), x), conv.apply_fn((W, b), x))


def test_pooling_matches_torch():
    x = torch.randn(2, 3, 7, 6)
    torch.testing.assert_close(stax.AvgPool((2, 2), (2, 2)).apply_fn((), x), F.avg_pool2d(x, 2, 2))
    same = F.avg_pool2d(x, 3, 1, padding=1, count_include_pad=True)
    torch.testing.assert_close(stax.AvgPool((3, 3), padding="SAME").apply_fn((), x), same)
    edges = F.avg_pool2d(x, 3, 1, padding=1, count_include_pad=False)
    torch.testing.assert_close(stax.AvgPool((3, 3), padding="SAME", normalize_edges=True).apply_fn((), x), edges)
    torch.testing.assert_close(stax.SumPool((2, 3), (1, 2)).apply_fn((), x), 6 * F.avg_pool2d(x, (2, 3), (1, 2)))
    circular = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="circular"), 3, 1)
    torch.testing.assert_close(stax.AvgPool((3, 3), padding="CIRCULAR").apply_fn((), x), circular)
    torch.testing.assert_close(stax.GlobalAvgPool().apply_fn((), x), x.mean((2, 3)))
    torch.testing.assert_close(stax.GlobalSumPool().apply_fn((), x), x.sum((2, 3)))
    torch.testing.assert_close(stax.Flatten().apply_fn((), x), x.reshape(2, -1))
    torch.testing.assert_close(stax.Flatten(batch_axis_out=1).apply_fn((), x), x.reshape(2, -1).T)
    assert stax.Flatten().output_shape((-1, 3, 7, 6)) == (-1, 126)
    assert stax.GlobalAvgPool().output_shape((-1, 3, 7, 6)) == (-1, 3)


def test_to_module_trains_conv_weights():
    net = stax.serial(stax.Conv(8, (3, 3), padding="SAME", b_std=0.1), stax.Relu(), stax.AvgPool((2, 2), (2, 2)),
                      stax.Flatten(), stax.Dense(1, b_std=0.1))
    model = net.to_module((-1, 3, 8, 8), seed=0)
    x = torch.randn(4, 3, 8, 8)
    loss = model(x).pow(2).sum()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert len(grads) == 4 and all(g is not None and g.abs().sum() > 0 for g in grads)


# ---------------------------------------------------------------------- layouts


@pytest.mark.parametrize(
    "n, filt, nt_dn",
    [(1, (3,), ("NHC", "HIO", "NHC")), (2, (3, 2), NHWC), (3, (2, 1, 2), ("NHWDC", "HWDIO", "NHWDC"))],
)
def test_channels_first_equals_nt_channels_last(n, filt, nt_dn):
    """The same network, tangents' default layout vs NT's channels-last, on transposed inputs."""

    def net(dn, channel_axis):
        return stax.serial(
            stax.Conv(8, filt, strides=(2,) + (1,) * (n - 1), padding="SAME", W_std=1.3, b_std=0.1, dimension_numbers=dn),
            stax.Relu(),
            stax.ConvTranspose(8, filt, padding="CIRCULAR", dimension_numbers=dn),
            stax.Relu(),
            stax.AvgPool((2,) * n, padding="SAME", channel_axis=channel_axis),
            stax.GlobalAvgPool(channel_axis=channel_axis),
            stax.Dense(1),
        )

    spatial = (5, 4, 3)[:n]
    x1, x2 = torch.randn(3, 2, *spatial), torch.randn(2, 2, *spatial)
    last = lambda x: torch.movedim(x, 1, -1)  # noqa: E731
    ours = net(None, 1).kernel_fn(x1, x2)
    theirs = net(nt_dn, -1).kernel_fn(last(x1), last(x2))
    torch.testing.assert_close(ours.nngp, theirs.nngp, rtol=1e-12, atol=0)
    torch.testing.assert_close(ours.ntk, theirs.ntk, rtol=1e-12, atol=0)


def test_output_layout_follows_out_spec():
    """An out spec that swaps H and W swaps them in the kernel too."""
    x = torch.randn(2, 3, 5, 4)
    plain = stax.Conv(8, (3, 2), padding="SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
    swapped = stax.Conv(8, (3, 2), padding="SAME", dimension_numbers=("NCHW", "OIHW", "NCWH"))
    a = plain.kernel_fn(x, None, diagonal_spatial=True)
    b = swapped.kernel_fn(x, None, diagonal_spatial=True)
    torch.testing.assert_close(b.nngp, a.nngp.transpose(2, 3))
    assert b.shape1 == (2, 8, 4, 5)
    W, bias = _weights(swapped, x.shape)
    torch.testing.assert_close(swapped.apply_fn((W, bias), x), plain.apply_fn((W, bias), x).transpose(2, 3))


# ---------------------------------------------------------------------- kernel identities


def test_conv_kernel_closed_form_one_dimensional():
    """Σ' = W²/k Σ_t Σ[i+t-1, j+t-1] + b² for a 1-D SAME conv, by hand."""
    x = torch.randn(2, 1, 5)
    k = stax.Conv(1, (3,), padding="SAME", W_std=1.7, b_std=0.3).kernel_fn(x, None)
    cov = torch.einsum("ah,bk->abhk", x[:, 0], x[:, 0])  # (N1, N2, H, H')
    padded = F.pad(cov, (1, 1, 1, 1))
    expected = sum(padded[..., t : t + 5, t : t + 5] for t in range(3)) / 3 * 1.7**2 + 0.3**2
    torch.testing.assert_close(k.nngp, expected)
    torch.testing.assert_close(k.ntk, expected)  # the input NTK is 0


def test_conv_of_a_single_location_is_dense():
    x = torch.randn(4, 6)
    dense = stax.serial(stax.Dense(8, 1.4, 0.2), stax.Relu(), stax.Dense(1, 1.1, 0.3)).kernel_fn(x, None)
    conv = stax.serial(
        stax.Conv(8, (1, 1), W_std=1.4, b_std=0.2), stax.Relu(), stax.Conv(1, (1, 1), W_std=1.1, b_std=0.3), stax.Flatten()
    ).kernel_fn(x[:, :, None, None], None)
    torch.testing.assert_close(conv.nngp, dense.nngp)
    torch.testing.assert_close(conv.ntk, dense.ntk)


def test_conv_local_kernel_is_zero_off_the_location_diagonal():
    x = torch.randn(3, 2, 5, 4)
    k = stax.ConvLocal(8, (3, 3), padding="SAME", b_std=0.2).kernel_fn(x, None, diagonal_spatial=False)
    shared = stax.Conv(8, (3, 3), padding="SAME", b_std=0.2).kernel_fn(x, None, diagonal_spatial=True)
    diag = torch.diagonal(torch.diagonal(k.nngp, 0, 2, 3), 0, 2, 3)  # (N, N, H, W)
    torch.testing.assert_close(diag, shared.nngp)
    eye = torch.eye(5)[:, :, None, None] * torch.eye(4)[None, None]
    assert torch.all(k.nngp[..., eye == 0] == 0)


def test_sum_and_average_pooling_differ_by_the_window_size():
    x = torch.randn(3, 2, 6, 6)
    conv = stax.Conv(8, (3, 3), padding="SAME", b_std=0.1)
    avg = stax.serial(conv, stax.AvgPool((2, 3), (2, 1), padding="CIRCULAR")).kernel_fn(x, None)
    total = stax.serial(conv, stax.SumPool((2, 3), (2, 1), padding="CIRCULAR")).kernel_fn(x, None)
    torch.testing.assert_close(total.nngp, 36 * avg.nngp)
    gap = stax.serial(conv, stax.GlobalAvgPool()).kernel_fn(x, None)
    gsp = stax.serial(conv, stax.GlobalSumPool()).kernel_fn(x, None)
    torch.testing.assert_close(gsp.ntk, 36**2 * gap.ntk)


def test_self_kernel_and_batch_diagonal_agree():
    x = torch.randn(3, 2, 6, 5)
    net = stax.serial(stax.ConvTranspose(8, (2, 3), (2, 1), "SAME", b_std=0.1), stax.Relu(),
                      stax.Conv(8, (3, 3), padding="CIRCULAR"), stax.Relu(), stax.AvgPool((2, 2)))
    k_self = net.kernel_fn(x, None)
    k_pair = net.kernel_fn(x, x.clone())
    torch.testing.assert_close(k_self.nngp, k_pair.nngp)
    torch.testing.assert_close(k_self.ntk, k_pair.ntk)
    diag = torch.diagonal(k_self.nngp, 0, 0, 1).movedim(-1, 0)
    torch.testing.assert_close(diag, k_self.cov1)
    # two full-covariance convolutions each reverse the storage order: back to (H, H', W, W')
    assert not k_self.is_reversed and k_self.nngp.shape == (3, 3, 11, 11, 4, 4)
    full = torch.stack([k_self.nngp[i, i] for i in range(3)])
    torch.testing.assert_close(full, k_self.cov1)


def test_flatten_readout_diagonal_and_full_agree():
    x = torch.randn(3, 2, 6, 5)
    net = stax.serial(stax.Conv(8, (3, 3), padding="SAME"), stax.Relu(), stax.Conv(8, (2, 2)), stax.Relu(),
                      stax.Flatten(), stax.Dense(1))
    full = net.kernel_fn(x, None, diagonal_spatial=False)
    diag = net.kernel_fn(x, None, diagonal_spatial=True)
    torch.testing.assert_close(full.nngp, diag.nngp)
    torch.testing.assert_close(full.ntk, diag.ntk)


def test_float32_inputs_give_float32_kernels():
    x = torch.randn(2, 3, 5, 5, dtype=torch.float32)
    net = stax.serial(stax.Conv(8, (3, 3), padding="SAME"), stax.Relu(), stax.GlobalAvgPool())
    k32 = net.kernel_fn(x, None, "nngp")
    assert k32.dtype == torch.float32
    torch.testing.assert_close(k32.double(), net.kernel_fn(x.double(), None, "nngp"), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- Monte Carlo


def _monte_carlo(net, x1, x2, seeds):
    """Per-seed estimates f(x1) f(x2)ᵀ / width of the finite network's output covariance."""
    estimates = []
    for seed in range(seeds):
        model = net.to_module(tuple(x1.shape), seed=seed)
        with torch.no_grad():
            f1, f2 = model(x1), model(x2)
        estimates.append(f1 @ f2.T / f1.shape[1])
    return torch.stack(estimates)


@pytest.mark.parametrize(
    "net",
    [
        stax.serial(stax.Conv(256, (3, 3), padding="SAME", W_std=1.5, b_std=0.1), stax.Relu(), stax.GlobalAvgPool()),
        stax.serial(
            stax.ConvTranspose(32, (3, 2), strides=(2, 1), padding="CIRCULAR", W_std=1.5, b_std=0.1),
            stax.Relu(),
            stax.ConvLocal(32, (2, 3), padding="SAME", W_std=1.2, b_std=0.2, parameterization="standard"),
            stax.AvgPool((2, 2), padding="SAME", normalize_edges=True),
            stax.Flatten(),
        ),
    ],
    ids=["conv_relu_gap", "transpose_local_pool_flatten"],
)
def test_monte_carlo_nngp_converges(net):
    """With a single nonlinearity the finite-width output covariance is unbiased for the
    analytic NNGP at any width, so the average over 100 seeds must be within 5 standard
    errors (estimated from the seeds' spread) of it; the standard error is itself < 3%."""
    x1, x2 = torch.randn(2, 3, 6, 5), torch.randn(2, 3, 6, 5)
    estimates = _monte_carlo(net, x1, x2, seeds=100)
    mean = estimates.mean(0)
    stderr = estimates.std(0) / math.sqrt(estimates.shape[0])
    analytic = net.kernel_fn(x1, x2, "nngp")
    assert torch.all(stderr < 0.03 * analytic.abs())
    assert torch.all((mean - analytic).abs() <= 5 * stderr), ((mean - analytic) / stderr)


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: stax.Conv(8, (3, 3), padding="FULL"), "padding must be one of"),
        (lambda: stax.Conv(8, 3), "filter_shape must be a non-empty tuple"),
        (lambda: stax.Conv(8, (3, 0)), "filter_shape must be a tuple of positive integers"),
        (lambda: stax.Conv(8, (3, 3), strides=(1,)), "strides must have 2 entries"),
        (lambda: stax.Conv(0, (3, 3)), "out_chan must be a positive integer"),
        (lambda: stax.ConvLocal(8, (3, 3), dimension_numbers=("NCHW", "OIHW")), "dimension_numbers must be None or three"),
        (lambda: stax.ConvTranspose(8, (3, 3), dimension_numbers=("NCH", "OIH", "NCH")), "do not describe a 2-D"),
        (lambda: stax.Conv(8, (3, 3), parameterization="mup"), "parameterization must be 'ntk' or 'standard'"),
        (lambda: stax.Conv(8, (3, 3), s=(1,)), "s must be a pair"),
        (lambda: stax.AvgPool((2, 2), normalize_edges=1), "normalize_edges must be True or False"),
        (lambda: stax.SumPool((2, -2)), "window_shape must be a tuple of positive integers"),
        (lambda: stax.Flatten(batch_axis_out=2), "batch_axis_out must be 0 or 1"),
        (lambda: stax.GlobalAvgPool(channel_axis=1.5), "channel_axis must be an integer"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs():
    x = torch.randn(2, 3, 5, 5)
    conv = stax.Conv(4, (3, 3))
    with pytest.raises(ValueError, match="expects 4-D inputs laid out as 'NCHW'"):
        conv.init_fn(0, (2, 3, 5))
    with pytest.raises(ValueError, match="larger than the input's spatial size 2"):
        conv.init_fn(0, (2, 3, 2, 5))
    W, b = _weights(conv, (2, 3, 5, 5))
    with pytest.raises(ValueError, match="the input has 5 channels on axis 1"):
        conv.apply_fn((W, b), torch.randn(2, 5, 5, 5))
    with pytest.raises(ValueError, match="3-D convolution needs inputs with 3 spatial axes"):
        stax.Conv(4, (3, 3, 3), padding="SAME").kernel_fn(x)
    with pytest.raises(ValueError, match="window_shape \\(2,\\) has 1 entries but the kernel has 2 spatial"):
        stax.AvgPool((2,)).kernel_fn(x)
    with pytest.raises(ValueError, match="window_shape \\(2,\\) has 1 entries but the 4-D inputs have 2"):
        stax.AvgPool((2,)).init_fn(0, x.shape)
    with pytest.raises(ValueError, match="are the same axis"):
        stax.GlobalAvgPool(batch_axis=0, channel_axis=-4).init_fn(0, x.shape)
    with pytest.raises(ValueError, match="are the same axis"):
        stax.SumPool((2, 2), batch_axis=1, channel_axis=1)
    with pytest.raises(ValueError, match="diagonal_spatial=True was requested"):
        stax.serial(conv, stax.Relu(), stax.GlobalAvgPool()).kernel_fn(x, None, diagonal_spatial=True)
    with pytest.raises(ValueError, match="GlobalAvgPool: channel_axis=-1 \\(axis 3 .* on axis 1"):
        stax.serial(conv, stax.Relu(), stax.GlobalAvgPool(channel_axis=-1)).kernel_fn(x)
    with pytest.raises(ValueError, match="Conv: channel_axis=3 .* on axis 1"):
        stax.serial(conv, stax.Conv(4, (1, 1), dimension_numbers=NHWC)).kernel_fn(x)


@pytest.mark.parametrize("diagonal_spatial", [False, True])
def test_full_batch_covariances_agree_with_diagonal_batch(diagonal_spatial):
    """cov1 stored as (N, N, ...) gives the same kernels, and its diagonal is the (N, ...) cov1."""
    x = torch.randn(3, 2, 6, 5)
    net = stax.serial(stax.ConvLocal(8, (2, 3), (1, 2), "SAME", b_std=0.2), stax.Relu(),
                      stax.ConvTranspose(8, (3, 2), (2, 1), "CIRCULAR", b_std=0.1), stax.Relu(), stax.Flatten())
    a = net.kernel_fn(x, None, diagonal_batch=True, diagonal_spatial=diagonal_spatial)
    b = net.kernel_fn(x, None, diagonal_batch=False, diagonal_spatial=diagonal_spatial)
    torch.testing.assert_close(a.nngp, b.nngp)
    torch.testing.assert_close(a.ntk, b.ntk)
    torch.testing.assert_close(torch.diagonal(b.cov1), a.cov1)
