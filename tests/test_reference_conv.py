"""Convolutional and pooling networks against neural-tangents 0.6.5 (float64, rel. err. <= 1e-8).

The manifest spells NT's arguments; `reference_cases.build` turns NT's
``dimension_numbers=None`` (channels-last) into the explicit ``('NHWC', 'HWIO', 'NHWC')``,
so the stored channels-last inputs are used unchanged. The large ``prefix_*`` arrays
(the kernel after the first ``prefix`` layers, in NT's storage order, which is reversed
after an odd number of full-covariance convolutions) were trimmed to the first two
``x1`` and first ``x2`` examples when copied (and, where ``prefix_step`` is stored, to every
``prefix_step``-th location), so they are compared with the matching sub-blocks; the manifest
records each trimmed array's shipped shape. ``prefix_*_self`` (``x2=None`` on those first
``x1`` examples) were computed with NT by ``tests/reference/prefix_self_nt.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reference_cases import (CASES, REFERENCE_DIR, assert_final_kernels_match, assert_kernels_match, build, case_ids,
                             load, relative_error)
from tangents import stax

CONV_CASES = case_ids(
    (
        "cnn_",
        "conv1d_same_gap",
        "convtranspose_",
        "myrtle5_8x8",
        "extra_convlocal_",
        "extra_conv3d_gap",
        "resnet_conv",
        "layernorm_conv",
    )
)
TOL = 1e-8


def test_every_conv_case_is_shipped():
    assert len(CONV_CASES) == 22, CONV_CASES


@pytest.mark.parametrize("case_id", CONV_CASES)
def test_final_kernels(case_id):
    data = load(case_id)
    net = build(CASES[case_id]["arch"])
    x1, x2 = torch.from_numpy(data["x1"]), torch.from_numpy(data["x2"])
    assert_final_kernels_match(net.kernel_fn, x1, x2, data, TOL)
    if "nngp_diagspatial" in data:
        assert_kernels_match(
            net.kernel_fn, x1, x2, data["nngp_diagspatial"], data["ntk_diagspatial"], TOL, diagonal_spatial=True
        )


@pytest.mark.parametrize("case_id", [c for c in CONV_CASES if "prefix" in CASES[c]])
def test_prefix_kernels(case_id):
    """The spatial kernel before the readout, in NT's layout and storage order."""
    data = load(case_id)
    spec = CASES[case_id]
    prefix = stax.serial(*(build(layer) for layer in spec["arch"]["layers"][: spec["prefix"]]))
    ref_nngp = data["prefix_nngp"]
    n1, n2 = ref_nngp.shape[:2]
    x1, x2 = torch.from_numpy(data["x1"][:n1]), torch.from_numpy(data["x2"][:n2])
    step = int(data.get("prefix_step", 1))

    def sub(t):
        return t[(slice(None), slice(None)) + (slice(None, None, step),) * (t.ndim - 2)]

    k = prefix.kernel_fn(x1, x2)
    assert relative_error(sub(k.nngp), ref_nngp) <= TOL
    assert relative_error(sub(k.ntk), data["prefix_ntk"]) <= TOL
    if "prefix_nngp_diagspatial" in data:
        nngp, ntk = prefix.kernel_fn(x1, x2, ("nngp", "ntk"), diagonal_spatial=True)
        assert relative_error(sub(nngp), data["prefix_nngp_diagspatial"]) <= TOL
        assert relative_error(sub(ntk), data["prefix_ntk_diagspatial"]) <= TOL
    # x2=None: the first examples of x1 with themselves (NT's own, `prefix_self_nt.py`)
    k = prefix.kernel_fn(x1, None)
    assert relative_error(sub(k.nngp), data["prefix_nngp_self"]) <= TOL
    assert relative_error(sub(k.ntk), data["prefix_ntk_self"]) <= TOL
    if "prefix_nngp_diagspatial_self" in data:
        nngp, ntk = prefix.kernel_fn(x1, None, ("nngp", "ntk"), diagonal_spatial=True)
        assert relative_error(sub(nngp), data["prefix_nngp_diagspatial_self"]) <= TOL
        assert relative_error(sub(ntk), data["prefix_ntk_diagspatial_self"]) <= TOL


@pytest.mark.parametrize("case_id", [c for c in CONV_CASES if "nngp_diagspatial" not in load(c)])
def test_diagonal_spatial_refused_where_nt_refuses(case_id):
    """NT raises for diagonal_spatial=True when pooling needs full covariances; so do we."""
    spec = CASES[case_id]
    assert spec["diagonal_spatial_final"].startswith("error")
    data = load(case_id)
    net = build(spec["arch"])
    with pytest.raises(ValueError, match="diagonal_spatial=True was requested"):
        net.kernel_fn(torch.from_numpy(data["x1"][:1]), None, "nngp", diagonal_spatial=True)


def test_channels_first_translation_gives_the_same_numbers():
    """The reference network in tangents' default channels-first layout, on transposed inputs."""
    data = load("cnn_same_s1_gap")
    layers = []
    for spec in CASES["cnn_same_s1_gap"]["arch"]["layers"]:
        spec = dict(spec)
        if spec["type"] == "Conv":
            spec["dimension_numbers"] = ("NCHW", "OIHW", "NCHW")
        if spec["type"] == "GlobalAvgPool":
            spec["channel_axis"] = 1
        layers.append(build(spec))
    net = stax.serial(*layers)
    x1 = torch.from_numpy(np.ascontiguousarray(data["x1"].transpose(0, 3, 1, 2)))
    x2 = torch.from_numpy(np.ascontiguousarray(data["x2"].transpose(0, 3, 1, 2)))
    nngp, ntk = net.kernel_fn(x1, x2, ("nngp", "ntk"))
    assert relative_error(nngp, data["nngp"]) <= TOL
    assert relative_error(ntk, data["ntk"]) <= TOL


# ---------------------------------------------------------------------- extra NT cases

EXTRA_FILE = REFERENCE_DIR / "conv_extra_nt.npz"


def _extra():
    with np.load(EXTRA_FILE) as data:
        arrays = {k: data[k] for k in data.files}
    cases: dict[str, dict] = {}
    for key, value in arrays.items():
        name, field = key.split("/")
        cases.setdefault(name, {})[field] = value
    return cases


EXTRA = _extra()


def test_extra_cases_are_shipped():
    assert len(EXTRA) == 17


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_extra_cases(name):
    """Non-square images, asymmetric/even filters, CIRCULAR transposes, ConvLocal standard,
    pooling on diagonal covariances, odd dimension_numbers (``tests/reference/conv_extra_nt.py``)."""
    case = EXTRA[name]
    spec = json.loads(str(case["spec"]))
    net = build(spec)
    x1, x2 = torch.from_numpy(case["x1"]), torch.from_numpy(case["x2"])
    nngp, ntk = net.kernel_fn(x1, x2, ("nngp", "ntk"))
    assert relative_error(nngp, case["nngp"]) <= TOL
    assert relative_error(ntk, case["ntk"]) <= TOL
    if "nngp_diag" in case:
        nngp, ntk = net.kernel_fn(x1, x2, ("nngp", "ntk"), diagonal_spatial=True)
        assert relative_error(nngp, case["nngp_diag"]) <= TOL
        assert relative_error(ntk, case["ntk_diag"]) <= TOL
    else:
        with pytest.raises(ValueError, match="diagonal_spatial=True was requested"):
            net.kernel_fn(x1, x2, "nngp", diagonal_spatial=True)
    if "prefix_nngp" in case:
        prefix = stax.serial(*(build(layer) for layer in spec["layers"][:-2]))
        nngp, ntk = prefix.kernel_fn(x1[:1], x2[:1], ("nngp", "ntk"))
        assert relative_error(nngp, case["prefix_nngp"]) <= TOL
        if np.any(case["prefix_ntk"]):
            assert relative_error(ntk, case["prefix_ntk"]) <= TOL
        else:  # pooling of raw inputs: no trainable layer yet
            assert ntk.shape == case["prefix_ntk"].shape and not torch.any(ntk)


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_extra_cases_finite_forward(name):
    """NT's own weights through our finite network give NT's outputs (weights in the layout
    of ``dimension_numbers``; ConvLocal's patches channel-major, as NT's)."""
    case = EXTRA[name]
    net = build(json.loads(str(case["spec"])))
    x1 = torch.from_numpy(case["x1"])
    _, params = net.init_fn(0, tuple(x1.shape))
    leaves = iter(torch.from_numpy(case[f"param_{j}"]) for j in range(sum(k.startswith("param_") for k in case)))

    def fill(p):
        if isinstance(p, tuple):
            return tuple(fill(q) for q in p)
        if p is None:
            return None
        leaf = next(leaves)
        assert leaf.shape == p.shape
        return leaf

    params = fill(params)
    assert next(leaves, None) is None
    assert relative_error(net.apply_fn(params, x1), case["fx1"]) <= 1e-10
