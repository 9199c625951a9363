"""Fully-connected networks against neural-tangents 0.6.5 (float64), relative error <= 1e-8."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference_cases import CASES, build, case_ids, load, relative_error

FC_CASES = case_ids(
    (
        "fc_",
        "act_",
        "resnet_fc",
        "fanin_",
        "layernorm_fc",
        "dropout_fc",
        "extra_exp_normalized",
        "extra_gabor",
        "extra_sign",
        "extra_hermite3",
        "extra_repeat",
    )
)


def _tolerance(case: dict) -> float:
    return 1e-4 if "ElementwiseNumerical" in str(case["arch"]) else 1e-8


def test_all_fully_connected_cases_are_shipped():
    assert len(FC_CASES) >= 40


@pytest.mark.parametrize("case_id", FC_CASES)
def test_matches_neural_tangents(case_id):
    case = CASES[case_id]
    ref = load(case_id)
    kernel_fn = build(case["arch"]).kernel_fn
    kwargs = dict(case["kernel_fn_kwargs"])
    tol = _tolerance(case)
    x1, x2 = ref["x1"], ref["x2"]

    out = kernel_fn(x1, x2, ("nngp", "ntk"), **kwargs)
    assert out.nngp.dtype == torch.float64
    assert relative_error(out.nngp, ref["nngp"]) <= tol
    assert relative_error(out.ntk, ref["ntk"]) <= tol

    self_out = kernel_fn(x1, None, ("nngp", "ntk"), **kwargs)
    for name in ("nngp", "ntk"):
        ours, theirs = getattr(self_out, name), ref[f"{name}_self"]
        # neural-tangents returns NaN on some diagonals (RectifiedMonomial); ours must be finite.
        assert torch.isfinite(ours).all(), f"{name}_self has non-finite entries"
        assert relative_error(ours, theirs, finite_only=True) <= tol

    if "nngp_diagspatial" in ref:
        diag = kernel_fn(x1, x2, ("nngp", "ntk"), diagonal_spatial=True)
        assert relative_error(diag.nngp, ref["nngp_diagspatial"]) <= tol
        assert relative_error(diag.ntk, ref["ntk_diagspatial"]) <= tol
