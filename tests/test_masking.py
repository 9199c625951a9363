"""Masking of variable-length inputs (``mask_constant``), and the mechanism behind it.

Oracles: neural-tangents 0.6.5 (``reference/spatial_extra_nt.npz``: FC, conv + pooling +
Erf and Flatten networks on padded sequences; NT's ``apply_fn`` on stored weights), and
the kernel of the unpadded inputs themselves (masking a padded tail must give the kernel
of the shorter sequence for location-wise networks with global average pooling).
"""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest
import torch

from reference_cases import relative_error
from tangents import stax
from tangents.stax._masking import MaskedArray, mask_products

TOL = 1e-8
DATA = dict(np.load(pathlib.Path(__file__).parent / "reference" / "spatial_extra_nt.npz"))
NHC = ("NHC", "HIO", "NHC")
PAD = -100.0


def _conv(c, f, **kw):
    return stax.Conv(c, f, W_std=1.5, dimension_numbers=NHC, **kw)


NETS = {
    "mask_fc": stax.serial(
        stax.Dense(16, 1.5, 0.05), stax.Relu(), stax.Dense(16, 1.5, 0.05), stax.Relu(),
        stax.GlobalAvgPool(channel_axis=-1), stax.Dense(1, 1.5, 0.05),
    ),
    "mask_conv": stax.serial(
        _conv(16, (3,), padding="SAME", b_std=0.05), stax.Relu(), stax.AvgPool((2,), strides=(2,), channel_axis=-1),
        _conv(16, (2,), padding="SAME", b_std=0.05), stax.Erf(), stax.GlobalAvgPool(channel_axis=-1),
        stax.Dense(1, 1.5, 0.05),
    ),
    "mask_flatten": stax.serial(
        _conv(16, (3,), padding="VALID", b_std=0.05), stax.Relu(), stax.Flatten(), stax.Dense(1, 1.5, 0.05)
    ),
    # nonzero at zero variance: NT remasks after these activations
    "mask_gauss": stax.serial(
        stax.Dense(16, 1.5, 0.05), stax.Gaussian(), stax.Dense(16, 1.5, 0.05), stax.Exp(),
        stax.GlobalAvgPool(channel_axis=-1), stax.Dense(1, 1.5, 0.05),
    ),
    "mask_resnet": stax.serial(
        _conv(16, (3,), strides=(2,), padding="SAME", b_std=0.05), stax.FanOut(2),
        stax.parallel(stax.serial(stax.Relu(), _conv(16, (3,), padding="SAME")), stax.Identity()),
        stax.FanInSum(), stax.Relu(), stax.SumPool((2,), padding="SAME", channel_axis=-1),
        stax.GlobalAvgPool(channel_axis=-1), stax.Dense(1, 1.5, 0.05),
    ),
    "mask_concat": stax.serial(
        stax.Dense(16, 1.5, 0.05), stax.FanOut(2), stax.parallel(stax.Relu(), stax.Erf()), stax.FanInConcat(),
        stax.Dense(16, 1.5, 0.05), stax.Relu(), stax.GlobalAvgPool(channel_axis=-1), stax.Dense(1, 1.5, 0.05),
    ),
    # masks through ImageResize, Index, DotGeneral and Aggregate (all NT layout, channel_axis=-1)
    "mask_resize": stax.serial(
        _conv(16, (3,), padding="SAME", b_std=0.05), stax.Relu(), stax.ImageResize((-1, 5, -1), "linear", channel_axis=-1),
        _conv(16, (2,), b_std=0.05), stax.Relu(), stax.GlobalAvgPool(channel_axis=-1), stax.Dense(1, 1.5, 0.05),
    ),
    "mask_index": stax.serial(
        stax.Dense(16, 1.5, 0.05), stax.Relu(), stax.Index(stax.Slice[:, 1:7], channel_axis=-1),
        stax.DotGeneral(rhs=3.0, channel_axis=-1), stax.Dense(16, 1.5, 0.05), stax.Relu(),
        stax.GlobalAvgPool(channel_axis=-1), stax.Dense(1, 1.5, 0.05),
    ),
    # LayerNorm averages variances over unmasked locations only (kernel and apply_fn)
    "mask_layernorm": stax.serial(
        stax.Dense(16, 1.5, 0.05), stax.LayerNorm(axis=(1, 2)), stax.Relu(),
        _conv(16, (3,), padding="SAME", b_std=0.05), stax.LayerNorm(), stax.Erf(),
        stax.GlobalAvgPool(channel_axis=-1), stax.Dense(1, 1.5, 0.05),
    ),
    "mask_aggregate": stax.serial(
        stax.Dense(16, 1.5, 0.05), stax.Aggregate(channel_axis=-1), stax.Relu(), stax.Dense(16, 1.5, 0.05),
        stax.Relu(), stax.GlobalAvgPool(channel_axis=-1), stax.Dense(1, 1.5, 0.05),
    ),
}


def _pattern(name, self_kernel=False):
    if f"{name}_pattern1" not in DATA:
        return {}
    p1 = DATA[f"{name}_pattern1"]
    return {"pattern": (p1, p1 if self_kernel else DATA[f"{name}_pattern2"])}


@pytest.mark.parametrize("name", sorted(NETS))
def test_masked_kernels_match_neural_tangents(name):
    net = NETS[name]
    x1, x2 = torch.from_numpy(DATA[f"{name}_x1"]), torch.from_numpy(DATA[f"{name}_x2"])
    nngp, ntk = net.kernel_fn(x1, x2, ("nngp", "ntk"), mask_constant=PAD, **_pattern(name))
    assert relative_error(nngp, DATA[f"{name}_nngp"]) <= TOL
    assert relative_error(ntk, DATA[f"{name}_ntk"]) <= TOL
    nngp, ntk = net.kernel_fn(x1, None, ("nngp", "ntk"), mask_constant=PAD, **_pattern(name, True))
    assert relative_error(nngp, DATA[f"{name}_nngp_self"]) <= TOL
    assert relative_error(ntk, DATA[f"{name}_ntk_self"]) <= TOL
    # without masking the numbers differ (the padding is content)
    assert relative_error(net.kernel_fn(x1, x2, "nngp", **_pattern(name)), DATA[f"{name}_nngp"]) > 1e-3


def test_masked_apply_fn_matches_neural_tangents_on_its_weights():
    params = []
    for i in range(7):
        if f"mask_conv_param_{i}_W" in DATA:
            params.append((torch.from_numpy(DATA[f"mask_conv_param_{i}_W"]), torch.from_numpy(DATA[f"mask_conv_param_{i}_b"])))
        else:
            params.append(())
    x1 = torch.from_numpy(DATA["mask_conv_x1"])
    out = NETS["mask_conv"].apply_fn(tuple(params), x1, mask_constant=PAD)
    assert isinstance(out, MaskedArray)
    assert relative_error(out.masked_value, DATA["mask_conv_apply_out"]) <= 1e-12
    assert torch.equal(out.mask, torch.from_numpy(DATA["mask_conv_apply_mask"]))
    plain = NETS["mask_conv"].apply_fn(tuple(params), x1)
    assert relative_error(plain, DATA["mask_conv_apply_out"]) > 1e-3


def test_masked_layernorm_apply_fn_matches_neural_tangents():
    params = []
    for i in range(8):
        key = f"mask_layernorm_param_{i}_W"
        params.append(
            (torch.from_numpy(DATA[key]), torch.from_numpy(DATA[f"mask_layernorm_param_{i}_b"])) if key in DATA else ()
        )
    out = NETS["mask_layernorm"].apply_fn(tuple(params), torch.from_numpy(DATA["mask_layernorm_x1"]), mask_constant=PAD)
    assert relative_error(out.masked_value, DATA["mask_layernorm_apply_out"]) <= 1e-12


def test_masking_equals_the_kernel_of_the_unpadded_sequences():
    """Location-wise layers + global average pooling: a masked tail is as if absent."""
    g = torch.Generator().manual_seed(3)
    net = NETS["mask_fc"]
    a, b = torch.randn(1, 5, 4, generator=g), torch.randn(1, 5, 4, generator=g)
    pad = torch.full((1, 3, 4), PAD)
    masked = net.kernel_fn(torch.cat([a, pad], 1), torch.cat([b, pad], 1), ("nngp", "ntk"), mask_constant=PAD)
    short = net.kernel_fn(a, b, ("nngp", "ntk"))
    torch.testing.assert_close(masked.nngp, short.nngp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(masked.ntk, short.ntk, rtol=1e-12, atol=1e-14)
    # NaN works as the padding value too
    nan = torch.full((1, 3, 4), math.nan)
    masked = net.kernel_fn(torch.cat([a, nan], 1), torch.cat([b, nan], 1), "ntk", mask_constant=math.nan)
    torch.testing.assert_close(masked, short.ntk, rtol=1e-12, atol=1e-14)
    # channels-first layout (N, C, L) with tangents' defaults gives the same numbers
    cf = stax.serial(
        stax.Dense(16, 1.5, 0.05, channel_axis=1), stax.Relu(), stax.Dense(16, 1.5, 0.05, channel_axis=1),
        stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1, 1.5, 0.05),
    )
    x1 = torch.cat([a, pad], 1).transpose(1, 2)
    x2 = torch.cat([b, pad], 1).transpose(1, 2)
    torch.testing.assert_close(cf.kernel_fn(x1, x2, "ntk", mask_constant=PAD), short.ntk, rtol=1e-12, atol=1e-14)


def test_masks_are_propagated_and_remasked():
    x = torch.randn(2, 6, 3)  # (N, L, C)
    x[0, 4:] = PAD
    x[1, 1, 0] = PAD  # a single channel: the location is not masked after Dense
    dense = stax.Dense(8, 1.5, 0.3)
    k = dense.kernel_fn(x, None, mask_constant=PAD, diagonal_batch=False)
    expected = torch.zeros(2, 6, 1, dtype=torch.bool)
    expected[0, 4:] = True
    assert torch.equal(k.mask1, expected)
    # Dense is remasked (NT's remask_kernel=True): no b_std² on masked locations
    m11, m12, _ = mask_products(k)
    assert float(k.nngp[m12.expand_as(k.nngp)].abs().max()) == 0.0
    assert float(k.cov1[m11.expand_as(k.cov1)].abs().max()) == 0.0
    assert float(k.nngp[~m12.expand_as(k.nngp)].abs().min()) > 0.0
    # Relu keeps the mask (identity), pooling strides it, global pooling drops the spatial axes
    net = stax.serial(dense, stax.Relu(), stax.AvgPool((2,), strides=(2,), channel_axis=-1))
    k = net.kernel_fn(x, None, mask_constant=PAD)
    assert torch.equal(k.mask1[:, :, 0], torch.tensor([[False, False, True], [False, False, False]]))
    k = stax.serial(dense, stax.GlobalAvgPool(channel_axis=-1)).kernel_fn(x, None, mask_constant=PAD)
    assert k.mask1.shape == (2, 1)
    k = stax.serial(dense, stax.Flatten()).kernel_fn(x, None, mask_constant=PAD)
    assert k.mask1.shape == (2, 48)  # broadcast over channels, then flattened (NT)
    # fan-ins: a sum is masked where every branch is; a concatenation concatenates
    fan = stax.serial(dense, stax.FanOut(2), stax.parallel(stax.Dense(4), stax.Dense(4)), stax.FanInSum())
    assert torch.equal(fan.kernel_fn(x, None, mask_constant=PAD).mask1, expected)
    fan = stax.serial(dense, stax.FanOut(2), stax.parallel(stax.Dense(4), stax.Identity()), stax.FanInConcat())
    assert fan.kernel_fn(x, None, mask_constant=PAD).mask1.shape == (2, 6, 12)  # each branch mask spread over its 4 or 8 channels
    # no mask_constant: no masks anywhere
    assert net.kernel_fn(x).mask1 is None


def test_masking_errors():
    x = torch.randn(2, 6, 3)
    x[0, 4:, 0] = PAD  # only some channels of a location
    with pytest.raises(ValueError, match="masks that differ across channels"):
        stax.AvgPool((2,), channel_axis=-1).kernel_fn(x, None, mask_constant=PAD)
    with pytest.raises(TypeError, match="mask_constant must be None or a number"):
        stax.Dense(3).kernel_fn(x, None, mask_constant="pad")


def _padded_sequences(length):
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, length, 3)))
    return x


def test_transposed_conv_and_resize_masks_match_neural_tangents():
    """Output masks of NT's apply_fn(..., mask_constant=-100.) (values printed from NT 0.6.5)."""
    x = _padded_sequences(7)
    x[0, 4:], x[1, 1] = PAD, PAD
    expected = {
        "SAME": [[0] * 8 + [1] * 6, [0, 0, 1, 1, 1] + [0] * 9],
        "VALID": [[0] * 8 + [1] * 7, [0, 0, 1, 1, 1] + [0] * 10],
        "CIRCULAR": [[0] * 8 + [1] * 6, [0, 0, 1, 1, 1] + [0] * 9],
    }
    for padding, mask in expected.items():  # masked if any masked input reaches the output
        net = stax.ConvTranspose(4, (3,), strides=(2,), padding=padding, dimension_numbers=NHC)
        _, params = net.init_fn(0, tuple(x.shape))
        assert net.apply_fn(params, x, mask_constant=PAD).mask[..., 0].int().tolist() == mask
    x = _padded_sequences(9)
    x[0, 5:], x[1, 4], x[1, 0:2] = PAD, PAD, PAD
    expected = [
        ((-1, 4, -1), "linear", [[0, 0, 0, 1], [0, 0, 0, 0]]),
        ((-1, 13, -1), "linear", [[0] * 8 + [1] * 5, [1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]]),
        ((-1, 5, -1), "nearest", [[0, 0, 0, 1, 1], [1, 0, 1, 0, 0]]),
        ((-1, 4, -1), "cubic", [[0, 0, 0, 0], [0, 0, 0, 0]]),
    ]
    for shape, method, mask in expected:  # masked only if every contribution is masked
        out = stax.ImageResize(shape, method, channel_axis=-1).apply_fn((), x, mask_constant=PAD)
        assert out.mask[..., 0].int().tolist() == mask
