"""`GlobalSelfAttention` against neural-tangents 0.6.5 (float64, rel. err. <= 1e-8).

Two sources: the shared reference cases (``attention_*``, ``extra_attention_*``; the
manifest spells NT's arguments with ``channel_axis=-1`` explicitly, so `reference_cases.build`
needs no translation and the stored channels-last inputs are used unchanged), and
``tests/reference/attention_extra_nt.npz`` from ``attention_extra_nt.py`` (linear_scaling=False,
CONCAT/SUM embeddings with decay functions, ``val_pos_emb``, images, stacked layers, and
NT's finite-width ``apply_fn`` on NT's own parameters).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reference_cases import (CASES, REFERENCE_DIR, assert_final_kernels_match, assert_kernels_match, build, case_ids,
                             load, relative_error)
from tangents import stax

TOL = 1e-8
SHARED = case_ids(("attention_", "extra_attention_"))

#: The torch twins of the decay functions named in ``attention_extra_nt.py``.
DECAY_FNS = {
    "exp_half": lambda d: torch.exp(-d / 2),
    "inverse": lambda d: 1 / (1 + d),
    "exp": lambda d: torch.exp(-d),
}


def test_every_shared_case_is_shipped():
    assert sorted(SHARED) == sorted(
        [
            "attention_softmax",
            "attention_identity",
            "extra_attention_abs",
            "extra_attention_relu",
            "extra_attention_softmax_posemb_sum",
        ]
    )


@pytest.mark.parametrize("case_id", SHARED)
def test_shared_final_kernels(case_id):
    data = load(case_id)
    net = build(CASES[case_id]["arch"])
    x1, x2 = torch.from_numpy(data["x1"]), torch.from_numpy(data["x2"])
    assert_final_kernels_match(net.kernel_fn, x1, x2, data, TOL)
    # the same numbers with full batch covariances (NT's result does not depend on it)
    assert_kernels_match(net.kernel_fn, x1, x2, data["nngp"], data["ntk"], TOL, diagonal_batch=False)


@pytest.mark.parametrize("case_id", [c for c in SHARED if "prefix" in CASES[c]])
def test_shared_prefix_kernels(case_id):
    """The (N1, N2, L, L') kernel before the readout (first ``prefix`` layers)."""
    data = load(case_id)
    spec = CASES[case_id]
    prefix = stax.serial(*(build(layer) for layer in spec["arch"]["layers"][: spec["prefix"]]))
    n1, n2 = data["prefix_nngp"].shape[:2]
    k = prefix.kernel_fn(torch.from_numpy(data["x1"][:n1]), torch.from_numpy(data["x2"][:n2]))
    assert relative_error(k.nngp, data["prefix_nngp"]) <= TOL
    assert relative_error(k.ntk, data["prefix_ntk"]) <= TOL
    k = prefix.kernel_fn(torch.from_numpy(data["x1"][:n1]), None)  # NT's own: prefix_self_nt.py
    assert relative_error(k.nngp, data["prefix_nngp_self"]) <= TOL
    assert relative_error(k.ntk, data["prefix_ntk_self"]) <= TOL


@pytest.mark.parametrize("case_id", SHARED)
def test_diagonal_spatial_refused_like_nt(case_id):
    spec = CASES[case_id]
    assert spec["diagonal_spatial_final"].startswith("error")
    net = build(spec["arch"])
    with pytest.raises(ValueError, match="diagonal_spatial=True was requested"):
        net.kernel_fn(torch.from_numpy(load(case_id)["x1"][:1]), None, "nngp", diagonal_spatial=True)


def _channels_first(spec: dict) -> dict:
    spec = dict(spec)
    if spec["type"] in ("serial", "parallel"):
        spec["layers"] = [_channels_first(s) for s in spec["layers"]]
    elif spec["type"] in ("GlobalSelfAttention", "GlobalAvgPool", "Dense"):
        spec["channel_axis"] = 1
    elif spec["type"] in ("Conv",):
        spec["dimension_numbers"] = ("NCHW", "OIHW", "NCHW")
    return spec


def test_channels_first_default_gives_the_same_numbers():
    """tangents' default channel_axis=1 on transposed (N, C, L) inputs matches NT's channels-last."""
    data = load("extra_attention_softmax_posemb_sum")
    spec = _channels_first(CASES["extra_attention_softmax_posemb_sum"]["arch"])
    attention = next(s for s in spec["layers"] if s["type"] == "GlobalSelfAttention")
    del attention["channel_axis"]  # the default
    net = build(spec)
    x1 = torch.from_numpy(np.ascontiguousarray(data["x1"].transpose(0, 2, 1)))
    x2 = torch.from_numpy(np.ascontiguousarray(data["x2"].transpose(0, 2, 1)))
    nngp, ntk = net.kernel_fn(x1, x2, ("nngp", "ntk"))
    assert relative_error(nngp, data["nngp"]) <= TOL
    assert relative_error(ntk, data["ntk"]) <= TOL


# ---------------------------------------------------------------------- extra NT cases

EXTRA_FILE = REFERENCE_DIR / "attention_extra_nt.npz"


def _extra() -> dict[str, dict[str, np.ndarray]]:
    with np.load(EXTRA_FILE) as data:
        arrays = {k: data[k] for k in data.files}
    cases: dict[str, dict] = {}
    for key, value in arrays.items():
        name, field = key.split("/")
        cases.setdefault(name, {})[field] = value
    return cases


EXTRA = _extra()
KERNEL_CASES = sorted(n for n in EXTRA if not n.startswith("apply_"))
APPLY_CASES = sorted(n for n in EXTRA if n.startswith("apply_"))


def _build_extra(spec: dict) -> stax.Layer:
    spec = dict(spec)
    if spec["type"] in ("serial", "parallel"):
        return getattr(stax, spec["type"])(*(_build_extra(s) for s in spec["layers"]))
    if isinstance(spec.get("pos_emb_decay_fn"), str):
        spec["pos_emb_decay_fn"] = DECAY_FNS[spec["pos_emb_decay_fn"]]
    return build(spec)


def test_extra_cases_are_shipped():
    assert len(KERNEL_CASES) == 15 and len(APPLY_CASES) == 4


@pytest.mark.parametrize("name", KERNEL_CASES)
def test_extra_kernels(name):
    case = EXTRA[name]
    spec = json.loads(str(case["spec"]))
    net = _build_extra(spec)
    x1, x2 = torch.from_numpy(case["x1"]), torch.from_numpy(case["x2"])
    assert_final_kernels_match(net.kernel_fn, x1, x2, case, TOL)
    assert_kernels_match(net.kernel_fn, x1, x2, case["nngp"], case["ntk"], TOL, diagonal_batch=False)
    last = max(j for j, layer in enumerate(spec["layers"]) if layer["type"] == "GlobalSelfAttention")
    prefix = _build_extra(dict(type="serial", layers=spec["layers"][: last + 1]))
    k = prefix.kernel_fn(x1[:2], x2[:1])
    assert relative_error(k.nngp, case["prefix_nngp"]) <= TOL
    assert relative_error(k.ntk, case["prefix_ntk"]) <= TOL


@pytest.mark.parametrize("name", APPLY_CASES)
def test_extra_apply_fn_on_nt_parameters(name):
    """The finite-width forward pass on NT's own parameters gives NT's outputs."""
    case = EXTRA[name]
    layer = _build_extra(json.loads(str(case["spec"])))
    params = tuple(
        torch.from_numpy(case[f"param_{f}"]) if f"param_{f}" in case else None for f in ("q", "k", "v", "o", "b", "pe")
    )
    fx = layer.apply_fn(params, torch.from_numpy(case["x1"]))
    assert relative_error(fx, case["fx1"]) <= 1e-12
    _, ours = layer.init_fn(0, case["x1"].shape)
    assert [None if p is None else tuple(p.shape) for p in ours] == [
        None if p is None else tuple(p.shape) for p in params
    ]
