"""`GlobalSelfAttention` on masked (padded) inputs, and masked kernels computed in tiles.

Oracle: neural-tangents 0.6.5 (``reference/attention_mask_nt.npz`` from
``attention_mask_nt.py``: kernels of padded sequences and images with
``mask_constant``, the full kernel right after attention with its output mask, and NT's
``apply_fn(..., mask_constant=...)`` on NT's own parameters), float64, relative error
<= 1e-8 for kernels and <= 1e-12 for forward passes. Tiled kernels are compared with the
same call computed at once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

import tangents
from reference_cases import REFERENCE_DIR, build, relative_error
from tangents import stax
from tangents.stax._masking import MaskedArray

TOL = 1e-8
PAD = -100.0

#: The torch twins of the decay functions named in ``attention_mask_nt.py``.
DECAY_FNS = {"exp_half": lambda d: torch.exp(-d / 2), "exp": lambda d: torch.exp(-d)}


def _load() -> dict[str, dict[str, np.ndarray]]:
    with np.load(REFERENCE_DIR / "attention_mask_nt.npz") as data:
        arrays = {k: data[k] for k in data.files}
    cases: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        name, field = key.split("/")
        cases.setdefault(name, {})[field] = value
    return cases


CASES = _load()
KERNEL_CASES = sorted(n for n in CASES if not n.startswith("apply_"))
APPLY_CASES = sorted(n for n in CASES if n.startswith("apply_"))


def _build(spec: dict) -> stax.Layer:
    spec = dict(spec)
    if spec["type"] in ("serial", "parallel"):
        return getattr(stax, spec["type"])(*(_build(s) for s in spec["layers"]))
    if isinstance(spec.get("pos_emb_decay_fn"), str):
        spec["pos_emb_decay_fn"] = DECAY_FNS[spec["pos_emb_decay_fn"]]
    return build(spec)


def _inputs(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(CASES[name]["x1"]), torch.from_numpy(CASES[name]["x2"])


def test_cases_are_shipped_and_padded():
    assert len(KERNEL_CASES) == 11 and len(APPLY_CASES) == 6
    mechanisms = {
        (layer["attention_mechanism"] if "attention_mechanism" in layer else "SOFTMAX", layer.get("pos_emb_type", "NONE"))
        for name in KERNEL_CASES
        for layer in json.loads(str(CASES[name]["spec"]))["layers"]
        if layer["type"] == "GlobalSelfAttention"
    }
    assert {m for m, _ in mechanisms} == {"SOFTMAX", "IDENTITY", "RELU", "ABS"}
    assert {p for _, p in mechanisms} == {"NONE", "SUM", "CONCAT"}
    for name in KERNEL_CASES:  # every case has padding in x1 and x2
        assert (CASES[name]["x1"] == PAD).any() and (CASES[name]["x2"] == PAD).any()


# ---------------------------------------------------------------------- infinite width


@pytest.mark.parametrize("name", KERNEL_CASES)
def test_masked_kernels_match_neural_tangents(name):
    case = CASES[name]
    spec = json.loads(str(case["spec"]))
    net = _build(spec)
    x1, x2 = _inputs(name)
    nngp, ntk = net.kernel_fn(x1, x2, ("nngp", "ntk"), mask_constant=PAD)
    assert relative_error(nngp, case["nngp"]) <= TOL
    assert relative_error(ntk, case["ntk"]) <= TOL
    nngp, ntk = net.kernel_fn(x1, None, ("nngp", "ntk"), mask_constant=PAD)
    assert relative_error(nngp, case["nngp_self"]) <= TOL
    assert relative_error(ntk, case["ntk_self"]) <= TOL
    # full batch covariances give the same numbers
    nngp, ntk = net.kernel_fn(x1, x2, ("nngp", "ntk"), mask_constant=PAD, diagonal_batch=False)
    assert relative_error(nngp, case["nngp"]) <= TOL
    assert relative_error(ntk, case["ntk"]) <= TOL
    # without masking the padding is content, and the numbers differ
    assert relative_error(net.kernel_fn(x1, x2, "nngp"), case["nngp"]) > 1e-3


@pytest.mark.parametrize("name", KERNEL_CASES)
def test_kernel_right_after_attention_and_its_mask(name):
    """The full (N1, N2, L, L') kernel after the (last) attention layer, remasked, and its mask."""
    case = CASES[name]
    spec = json.loads(str(case["spec"]))
    last = max(j for j, layer in enumerate(spec["layers"]) if layer["type"] == "GlobalSelfAttention")
    prefix = _build(dict(type="serial", layers=spec["layers"][: last + 1]))
    k = prefix.kernel_fn(*_inputs(name), mask_constant=PAD)
    assert relative_error(k.nngp, case["prefix_nngp"]) <= TOL
    assert relative_error(k.ntk, case["prefix_ntk"]) <= TOL
    assert relative_error(k.cov1, case["prefix_cov1"]) <= TOL
    assert torch.equal(k.mask1, torch.from_numpy(case["prefix_mask1"]))
    assert k.mask1.shape[-1] == 1  # a location is masked iff all its channels are


def test_nan_padding_gives_the_same_kernel():
    name = "softmax_sum_decay_val"
    net = _build(json.loads(str(CASES[name]["spec"])))
    x1, x2 = (torch.where(x == PAD, math.nan, x) for x in _inputs(name))
    nngp, ntk = net.kernel_fn(x1, x2, ("nngp", "ntk"), mask_constant=math.nan)
    assert relative_error(nngp, CASES[name]["nngp"]) <= TOL
    assert relative_error(ntk, CASES[name]["ntk"]) <= TOL


def _channels_first(spec: dict) -> dict:
    """The same network with tangents' channels-first defaults (channel_axis=1, NCHW convs)."""
    spec = dict(spec)
    if spec["type"] in ("serial", "parallel"):
        spec["layers"] = [_channels_first(s) for s in spec["layers"]]
    elif spec["type"] == "GlobalSelfAttention":
        del spec["channel_axis"]  # tangents' default, 1
    elif spec["type"] in ("GlobalAvgPool", "Dense"):
        spec["channel_axis"] = 1
    elif spec["type"] == "Conv":
        spec["dimension_numbers"] = ("NCHW", "OIHW", "NCHW")
    return spec


@pytest.mark.parametrize("name", ["identity_concat", "relu_image_concat", "abs_first_channels"])
def test_channels_first_default_gives_the_same_numbers(name):
    net = _build(_channels_first(json.loads(str(CASES[name]["spec"]))))
    x1, x2 = (torch.movedim(x, -1, 1) for x in _inputs(name))
    nngp, ntk = net.kernel_fn(x1, x2, ("nngp", "ntk"), mask_constant=PAD)
    assert relative_error(nngp, CASES[name]["nngp"]) <= TOL
    assert relative_error(ntk, CASES[name]["ntk"]) <= TOL


# ---------------------------------------------------------------------- finite width


def _nt_params(case: dict[str, np.ndarray], ours: Any) -> Any:
    """NT's flattened parameters (``param_<i>``) in the nested layout of ``ours``."""
    leaves: Iterator[int] = iter(range(1000))

    def fill(structure: Any) -> Any:
        if isinstance(structure, (tuple, list)):
            return tuple(fill(s) for s in structure)
        i = next(leaves)
        if f"param_{i}_none" in case:
            assert structure is None
            return None
        param = torch.from_numpy(case[f"param_{i}"])
        assert param.shape == structure.shape
        return param

    params = fill(ours)
    assert f"param_{next(leaves)}" not in case  # every NT parameter used
    return params


@pytest.mark.parametrize("name", APPLY_CASES)
def test_masked_apply_fn_matches_neural_tangents_on_its_weights(name):
    case = CASES[name]
    net = _build(json.loads(str(case["spec"])))
    x1 = torch.from_numpy(case["x1"])
    _, ours = net.init_fn(0, tuple(x1.shape))
    params = _nt_params(case, ours)
    out = net.apply_fn(params, x1, mask_constant=PAD)
    assert isinstance(out, MaskedArray)
    assert relative_error(out.masked_value, case["out"]) <= 1e-12
    assert torch.equal(out.mask, torch.from_numpy(case["mask"]))
    assert relative_error(net.apply_fn(params, x1), case["out"]) > 1e-3  # the padding matters


def test_masked_keys_get_no_weight_at_finite_width():
    """Softmax over unmasked keys only: outputs at unmasked locations ignore the padded tail."""
    layer = stax.GlobalSelfAttention(5, 4, 3, 2, pos_emb_type="SUM", channel_axis=-1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 6, 3, generator=g)
    _, params = layer.init_fn(0, (1, 6, 3))
    padded = x.clone()
    padded[0, 4:] = PAD
    out = layer.apply_fn(params, padded, mask_constant=PAD)
    other = x.clone()
    other[0, 4:] = PAD
    other[0, 4:, 1] = 7.0  # other content in a padded location: not masked
    # the short sequence alone (its first 4 embeddings) gives the same outputs on its locations
    short_params = params[:5] + (params[5][:, :4],)
    short = layer.apply_fn(short_params, x[:, :4])
    torch.testing.assert_close(out.masked_value[:, :4], short, rtol=1e-12, atol=1e-12)
    assert out.mask[0, :, 0].tolist() == [False] * 4 + [True] * 2
    assert not torch.allclose(layer.apply_fn(params, other, mask_constant=PAD).masked_value[:, :4], short)


def test_embeddings_of_another_width_need_whole_location_masks():
    layer = stax.GlobalSelfAttention(5, 4, 3, 2, pos_emb_type="CONCAT", n_chan_pos_emb=2, channel_axis=-1)
    x = torch.randn(2, 5, 3)
    x[0, 3:] = PAD  # whole locations: fine (NT raises here, tangents reduces the mask)
    _, params = layer.init_fn(0, tuple(x.shape))
    out = layer.apply_fn(params, x, mask_constant=PAD)
    assert out.mask[0, :, 0].tolist() == [False] * 3 + [True] * 2
    x[1, 0, 0] = PAD  # one channel of a location
    with pytest.raises(ValueError, match="masks some but not all channels of a location"):
        layer.apply_fn(params, x, mask_constant=PAD)
    with pytest.raises(ValueError, match="have no infinite-width kernel"):
        layer.kernel_fn(x, None, mask_constant=PAD)
    # without embeddings such masks are fine: a key is masked iff all its channels are
    plain = stax.GlobalSelfAttention(5, 4, 3, 2, channel_axis=-1)
    assert not plain.kernel_fn(x, None, mask_constant=PAD).mask1[1, 0, 0]


def test_kernel_with_mask_constant_is_refused():
    net = stax.serial(stax.Dense(8, channel_axis=-1), stax.GlobalSelfAttention(8, 8, 8, 1, channel_axis=-1))
    x = torch.randn(2, 4, 3)
    k = stax.Identity().kernel_fn(x, None, diagonal_spatial=False)
    with pytest.raises(ValueError, match="mask_constant=-100.0 was given with a Kernel, but masks come from inputs"):
        net.kernel_fn(k, mask_constant=PAD)


# ---------------------------------------------------------------------- tiling


def _long_batch(n: int, seed: int) -> torch.Tensor:
    """``n`` padded sequences ``(n, 5, 3)`` of lengths 1..5."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, 3, generator=g)
    for i in range(n):
        x[i, 1 + i % 5 :] = PAD
    return x


def _assert_same_kernel(a, b):
    for field in ("nngp", "ntk", "cov1", "cov2"):
        ta, tb = getattr(a, field), getattr(b, field)
        assert (ta is None) == (tb is None), field
        if ta is not None:
            torch.testing.assert_close(ta, tb, rtol=1e-12, atol=1e-13 * tb.abs().max().item())
    for field in ("mask1", "mask2"):
        ma, mb = getattr(a, field), getattr(b, field)
        assert (ma is None) == (mb is None), field
        if ma is not None:
            assert torch.equal(ma, mb), field
    assert a.shape1 == b.shape1 and a.shape2 == b.shape2


def test_large_masked_calls_are_tiled_and_equal_untiled(monkeypatch):
    import tangents.stax._layer as layer_module

    name = "softmax_sum_decay_val"
    net = _build(json.loads(str(CASES[name]["spec"])))
    x1, x2 = _long_batch(11, 0), _long_batch(7, 1)
    direct_pair = net.kernel_fn(x1, x2, mask_constant=PAD)
    direct_self = net.kernel_fn(x1, None, mask_constant=PAD)
    assert direct_pair.mask1.shape == (11, 1) and bool(direct_pair.mask1.any()) is False

    calls = []
    real_tiled = layer_module.tiled

    def counting_tiled(*args, **kwargs):
        calls.append(args[4])  # the tile size
        return real_tiled(*args, **kwargs)

    monkeypatch.setattr(layer_module, "tiled", counting_tiled)
    monkeypatch.setattr(layer_module, "_auto_tile_size", lambda *args: 3)
    _assert_same_kernel(net.kernel_fn(x1, x2, mask_constant=PAD), direct_pair)
    _assert_same_kernel(net.kernel_fn(x1, None, mask_constant=PAD), direct_self)
    nngp = net.kernel_fn(x1, x2, "nngp", mask_constant=PAD)
    torch.testing.assert_close(nngp, direct_pair.nngp, rtol=1e-12, atol=1e-14)
    assert calls == [3, 3, 3]
    # the padding matters, so tiles that took the whole inputs' masks would differ
    assert relative_error(net.kernel_fn(x1, x2, "nngp"), direct_pair.nngp.numpy()) > 1e-3
    # the full spatial kernel after attention, with its per-location masks, tiles too
    prefix = _build(dict(type="serial", layers=json.loads(str(CASES[name]["spec"]))["layers"][:2]))
    tiled_prefix = prefix.kernel_fn(x1, x2, mask_constant=PAD)
    monkeypatch.setattr(layer_module, "_auto_tile_size", lambda *args: None)
    direct_prefix = prefix.kernel_fn(x1, x2, mask_constant=PAD)
    assert direct_prefix.mask1.shape == (11, 5, 1) and bool(direct_prefix.mask1.any())
    _assert_same_kernel(tiled_prefix, direct_prefix)


def test_batch_passes_mask_constant_to_every_tile():
    name = "identity_concat"
    layers = json.loads(str(CASES[name]["spec"]))["layers"]
    net = _build(dict(type="serial", layers=layers[:2]))
    x1, x2 = _long_batch(7, 2), _long_batch(5, 3)
    batched = tangents.batch(net.kernel_fn, batch_size=3)
    _assert_same_kernel(batched(x1, x2, mask_constant=PAD), net.kernel_fn(x1, x2, mask_constant=PAD))
    _assert_same_kernel(batched(x1, None, mask_constant=PAD), net.kernel_fn(x1, None, mask_constant=PAD))
    ntk = batched(x1, x2, "ntk", mask_constant=PAD)
    torch.testing.assert_close(ntk, net.kernel_fn(x1, x2, "ntk", mask_constant=PAD), rtol=1e-12, atol=1e-14)
