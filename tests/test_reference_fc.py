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
    assert len(FC_CASES) == 44, FC_CASES


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
    off_diagonal = ~np.eye(len(x1), dtype=bool)
    for name in ("nngp", "ntk"):
        ours, theirs = getattr(self_out, name), ref[f"{name}_self"]
        if "ElementwiseNumerical" in str(case["arch"]):
            # NT's quadrature (a Cholesky factor) treats x1 and x2 differently, so its kernel
            # of x1 with itself is asymmetric by its quadrature error (1.2e-3 of the scale for
            # the nngp of act_numerical_tanh_deg25, 1.9e-3 for the ntk); ours is the same rule,
            # made exactly symmetric by (K + Kᵀ)/2, so it is compared with NT's symmetrised.
            theirs = (theirs + theirs.T) / 2
        # neural-tangents returns NaN on some diagonals (RectifiedMonomial); ours must be finite.
        assert torch.isfinite(ours).all(), f"{name}_self has non-finite entries"
        assert relative_error(ours[off_diagonal], theirs[off_diagonal]) <= tol
        # On coincident points neural-tangents' arc-cosine sees √(v² − c²) of rounding noise
        # (its c comes from a matrix product, its v from a sum of squares), which puts up to
        # ~1e-8 of error on its diagonal (1.03e-8 on act_abrelu_m0.3_1.2, against the closed
        # form in test_self_diagonal_is_exact). Ours is exact there, so allow NT's noise.
        if not case.get("nonfinite_arrays"):
            # Where NT has NaN on the diagonal (RectifiedMonomial), its finite diagonal entries
            # are rounding noise too (off by 4e-5 .. 4x); test_activations checks ours there.
            assert relative_error(ours, theirs, finite_only=True) <= max(tol, 5e-8)

    if "nngp_diagspatial" in ref:
        diag = kernel_fn(x1, x2, ("nngp", "ntk"), diagonal_spatial=True)
        assert relative_error(diag.nngp, ref["nngp_diagspatial"]) <= tol
        assert relative_error(diag.ntk, ref["ntk_diagspatial"]) <= tol


RELU_FAMILY = [cid for cid in FC_CASES if cid.startswith(("fc_relu", "act_abrelu", "act_abs", "act_leaky"))]


@pytest.mark.parametrize("case_id", RELU_FAMILY)
def test_self_diagonal_is_exact(case_id):
    """On the diagonal, (a, b)-ReLU networks follow a closed-form scalar recursion:
    v' = (a² + b²)/2 · v after the activation, Θ' likewise; Dense: v' = σ_W² v + σ_b²,
    Θ' = v' + σ_W² Θ (NTK), or n_in v + σ_W² Θ (+1) (standard)."""
    case = CASES[case_id]
    x = load(case_id)["x1"]
    v = (x * x).sum(1) / x.shape[1]
    t = np.zeros_like(v)
    width = x.shape[1]
    for layer in case["arch"]["layers"]:
        if layer["type"] == "Dense":
            b2 = 0.0 if layer["b_std"] is None else layer["b_std"] ** 2
            if layer["parameterization"] == "ntk":
                v = layer["W_std"] ** 2 * v + b2
                t = v + layer["W_std"] ** 2 * t
            else:
                t = width * v + layer["W_std"] ** 2 * t + (0.0 if layer["b_std"] is None else 1.0)
                v = layer["W_std"] ** 2 * v + b2
            width = layer["out_dim"]
        else:
            a, b = {"Relu": (0.0, 1.0), "Abs": (-1.0, 1.0)}.get(layer["type"], (layer.get("a", layer.get("alpha")), layer.get("b", 1.0)))
            v, t = (a * a + b * b) / 2 * v, (a * a + b * b) / 2 * t
    out = build(case["arch"]).kernel_fn(x, None, ("nngp", "ntk"))
    np.testing.assert_allclose(np.diag(out.nngp.numpy()), v, rtol=1e-13)
    np.testing.assert_allclose(np.diag(out.ntk.numpy()), t, rtol=1e-13)
