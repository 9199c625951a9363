"""`tangents.from_torch`: lifted kernels, the finite network, printing, and every error.

The kernel tests compare the lift of plain torch models (`lift_models.py`) with stax
networks written by hand for them, in float64, to 1e-12 (measured: ≤ 1.3e-14 on NTKs of
order 10). The finite-width tests copy the torch weights into the lifted network and
reproduce the model's outputs (measured: ≤ 2.2e-16), which checks layouts, paddings,
strides, dilations and transposed convolutions against torch itself.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lift_models import CASES, FEATURE_CASES, Case, EncoderBlock

import tangents
from tangents import stax
from tangents.lift import LiftError, LiftedNetwork, from_torch

WIDTH = 8
ALL = CASES + FEATURE_CASES
#: torch's own note on the dilated model's even filter with padding='same' (asymmetric padding)
EVEN_SAME = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")


def _model(case: Case, width: int = WIDTH) -> nn.Module:
    torch.manual_seed(0)
    model = case.model(width)
    return model.eval() if case.eval else model


def _inputs(case: Case, n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, *case.input_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------------- kernels


@EVEN_SAME
@pytest.mark.parametrize(
    "case, parameterization", [(c, p) for c in ALL for p in c.params], ids=lambda v: getattr(v, "id", v)
)
def test_lifted_kernel_equals_hand_written_stax(case, parameterization):
    model = _model(case)
    x1, x2 = _inputs(case, 3, 1), _inputs(case, 2, 2)
    lifted = from_torch(model, x1[:2], parameterization)
    twin = case.twin(WIDTH, parameterization)
    for a, b in ((x1, None), (x1, x2)):
        got = lifted.kernel_fn(a, b, ("nngp", "ntk"))
        want = twin.kernel_fn(a, b, ("nngp", "ntk"))
        # measured ≤ 1.3e-14 (float64 rounding of the same operations in another order)
        torch.testing.assert_close(got.nngp, want.nngp, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got.ntk, want.ntk, rtol=1e-12, atol=1e-12)


def test_nngp_is_the_same_in_both_parameterizations_and_the_ntk_is_not():
    case = CASES[1]  # cnn_gap
    model, x = _model(case), _inputs(case, 3, 3)
    standard = from_torch(model, x, "standard").kernel_fn(x, None, ("nngp", "ntk"))
    ntk = from_torch(model, x, "ntk").kernel_fn(x, None, ("nngp", "ntk"))
    torch.testing.assert_close(standard.nngp, ntk.nngp, rtol=1e-13, atol=0)  # measured: identical
    # standard NTK grows with the widths (n Σ terms); NTK parameterization keeps it O(1)
    assert standard.ntk.abs().max() > 10 * ntk.ntk.abs().max()


def _copy_weights(lifted: LiftedNetwork, model: nn.Module, input_shape: tuple[int, ...]) -> tuple:
    """The lifted network's parameters with the torch model's weights (standard parameterization)."""
    _, params = lifted.init_fn(0, input_shape)
    out = []
    for node, p in zip(lifted.nodes, params):
        leaf = node.layer.children[-1] if node.layer.children else node.layer
        if not isinstance(leaf, (stax.Dense, stax.Conv, stax.ConvTranspose)):
            out.append(p)
            continue
        module = model.get_submodule(node.path)
        w, b = module.weight.detach(), module.bias
        if isinstance(leaf, stax.Dense):
            w = w.T
        elif isinstance(leaf, stax.ConvTranspose):  # lax's conv_transpose correlates with the unflipped filter
            w = w.transpose(0, 1).flip(list(range(2, w.ndim)))
        own = p if leaf is node.layer else p[-1]
        new = (w, None if b is None else b.detach().reshape(own[1].shape))
        out.append(new if leaf is node.layer else tuple(p[:-1]) + (new,))
    return tuple(out)


@EVEN_SAME
@pytest.mark.parametrize("case", [c for c in ALL if c.id not in ("functional", "grouped")], ids=lambda c: c.id)
def test_lifted_network_with_the_models_weights_computes_the_model(case):
    # (functional: weights are bare parameters; grouped: the lifted finite network is a full convolution)
    model = _model(case).eval()
    x = _inputs(case, 3, 4)
    lifted = from_torch(model, x[:2])
    params = _copy_weights(lifted, model, tuple(x.shape))
    with torch.no_grad():
        expected = model(x)
    # measured ≤ 2.2e-16
    torch.testing.assert_close(lifted.apply_fn(params, x, mode="test"), expected, rtol=1e-12, atol=1e-12)


def test_to_module_is_a_trainable_finite_network_of_the_models_shape():
    case = [c for c in ALL if c.id == "resnet"][0]
    model, x = _model(case), _inputs(case, 3, 5)
    module = from_torch(model, x).to_module(tuple(x.shape), seed=0)
    out = module(x)
    assert out.shape == model(x).shape
    out.square().sum().backward()
    assert all(p.grad is not None for p in module.parameters())


def test_float32_model_lifts_and_kernels_follow_the_inputs_dtype():
    case = CASES[0]
    torch.manual_seed(0)
    model = case.model(WIDTH).float()
    x = _inputs(case, 3, 6)
    lifted = from_torch(model, x.float())
    k32 = lifted.kernel_fn(x.float(), None, "ntk")
    k64 = lifted.kernel_fn(x, None, "ntk")
    assert k32.dtype == torch.float32 and k64.dtype == torch.float64
    torch.testing.assert_close(k32.double(), k64, rtol=1e-5, atol=1e-5)  # float32 rounding, measured 4e-7


def test_transformer_block_with_trainable_layernorms_adds_their_ntk_terms():
    # γ (= 1) and β (= 0) of each LayerNorm add Σ and 1 to the NTK of its output; the NNGP is unchanged.
    torch.manual_seed(0)
    affine, plain = EncoderBlock(WIDTH), EncoderBlock(WIDTH)
    plain.load_state_dict(affine.state_dict(), strict=False)
    plain.norm1 = nn.LayerNorm(WIDTH, elementwise_affine=False)
    plain.norm2 = nn.LayerNorm(WIDTH, elementwise_affine=False)
    x = torch.randn(3, 4, 3, dtype=torch.float64)
    a = from_torch(affine, x, "ntk").kernel_fn(x, None, ("nngp", "ntk"))
    b = from_torch(plain, x, "ntk").kernel_fn(x, None, ("nngp", "ntk"))
    torch.testing.assert_close(a.nngp, b.nngp, rtol=1e-13, atol=1e-13)
    assert bool((a.ntk > b.ntk).all())


# ---------------------------------------------------------------------- what print shows


def test_print_shows_parameterization_paths_and_how_stds_were_read():
    case = [c for c in ALL if c.id == "resnet"][0]
    model, x = _model(case), _inputs(case, 2, 7)
    text = repr(from_torch(model, x, "ntk"))
    assert text.startswith("from_torch(ResNet), parameterization='ntk': 20 layers")
    assert "at `layer2.0.shortcut`" in text and "FanInSum" in text
    assert "W_std=0.57735 [torch default init" in text
    assert f"b_std={1 / math.sqrt(3 * 27):.6g} [torch default init" in text


def test_reinitialised_weights_are_recognised_or_estimated():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 64))
    nn.init.kaiming_normal_(model[0].weight, nonlinearity="relu")
    nn.init.zeros_(model[0].bias)
    nn.init.xavier_uniform_(model[2].weight)
    nn.init.normal_(model[4].weight, std=0.02)
    lifted = from_torch(model, torch.randn(2, 64))
    first, second, third = (node.layer for node in lifted.nodes if isinstance(node.layer, stax.Dense))
    assert first.W_std == pytest.approx(math.sqrt(2), rel=1e-12) and first.b_std == 0.0
    assert second.W_std == pytest.approx(math.sqrt(2 * 256 / 512), rel=1e-12)
    # estimated: 0.02 √256 = 0.32, 16384 entries: relative standard error 0.55 % (x 4 allowed)
    assert third.W_std == pytest.approx(0.32, rel=0.022)
    text = repr(lifted)
    assert "kaiming (He) init" in text and "xavier (Glorot) init" in text and "estimated from 16384 entries" in text


def test_stds_gives_exact_values_and_checks_its_keys():
    case = [c for c in ALL if c.id == "functional"][0]
    model, x = _model(case), _inputs(case, 2, 8)
    lifted = from_torch(model, x, stds={"w3": {"W_std": 1.0}})
    assert "W_std=1 [given]" in repr(lifted)
    with pytest.raises(LiftError, match=r"stds names \['nope'\], which are not affine layers.*'w1'"):
        from_torch(model, x, stds={"nope": {"W_std": 1.0}})
    with pytest.raises(LiftError, match=r"stds\['w3'\] has unknown keys \['w_std'\]"):
        from_torch(model, x, stds={"w3": {"w_std": 1.0}})
    with pytest.raises(LiftError, match=r"stds\['w3'\]\['W_std'\] must be a finite non-negative number"):
        from_torch(model, x, stds={"w3": {"W_std": -1.0}})
    with pytest.raises(LiftError, match=r"gives b_std=0.5, but `w3` has no bias"):
        from_torch(model, x, stds={"w3": {"b_std": 0.5}})


# ---------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "args, error, match",
    [
        (("not a model", torch.randn(2, 3)), TypeError, "model must be a torch.nn.Module, got str"),
        ((nn.Linear(3, 2), [[1.0, 2.0, 3.0]]), TypeError, "example_input must be a torch.Tensor batch"),
        ((nn.Linear(3, 2), torch.randn(3)), ValueError, r"non-empty batch \(N, \.\.\.\).*got shape \(3,\).*unsqueeze"),
        ((nn.Linear(3, 2), torch.ones(2, 3, dtype=torch.int64)), TypeError, "must be floating point"),
        ((nn.Linear(3, 2), torch.tensor([[1.0, float("nan"), 0.0]])), ValueError, "NaN or infinite"),
        ((nn.Linear(3, 2), torch.randn(2, 3), "mean-field"), ValueError, "parameterization must be 'standard'.*'ntk'"),
        ((nn.Linear(3, 2), torch.randn(2, 4)), LiftError, "failed on example_input.*shapes \\[\\(2, 4\\)\\]"),
    ],
)
def test_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        from_torch(*args)


def test_stds_must_be_a_mapping_of_mappings():
    with pytest.raises(TypeError, match="stds must be a mapping"):
        from_torch(nn.Linear(3, 2), torch.randn(2, 3), stds=[1.0])
    with pytest.raises(TypeError, match=r"stds\['0'\] must be a mapping"):
        from_torch(nn.Linear(3, 2), torch.randn(2, 3), stds={"0": 1.0})
