"""Tiles of spatial kernels record each block's self-covariances once and replay them.

The references are neural-tangents' own kernels (``tests/reference``): every convolutional,
attention and graph case is recomputed in tiles of 2 examples (so that almost every tile
replays), for ``x2=None`` and for ``x2`` given (the latter with the recording pre-pass
forced on, which the cost model would skip at these sizes).
"""

from __future__ import annotations

import pytest
import torch

import tangents.blocks._tiles as batching
import tangents.stax._layer as layer_module
from reference_cases import CASES, assert_final_kernels_match, build, case_ids, load, relative_error
from tangents import stax
from tangents.stax import _elementwise
from tangents.stax._tape import CovarianceTape, replaying

TOL = 1e-8
SPATIAL_CASES = case_ids(
    ("cnn_", "conv1d_same_gap", "convtranspose_", "myrtle5_8x8", "extra_convlocal_", "extra_conv3d_gap",
     "resnet_conv", "layernorm_conv", "attention_", "extra_attention_")
)


@pytest.fixture
def tiles_of_two(monkeypatch):
    monkeypatch.setattr(layer_module, "_auto_tile_size", lambda *args: 2)
    monkeypatch.setattr(batching, "_tape_pays", lambda *args: True)


def test_cases_are_found():
    assert len(SPATIAL_CASES) >= 26, SPATIAL_CASES


@pytest.mark.parametrize("case_id", SPATIAL_CASES)
def test_replayed_tiles_match_neural_tangents(case_id, tiles_of_two):
    data = load(case_id)
    net = build(CASES[case_id]["arch"])
    x1, x2 = torch.from_numpy(data["x1"]), torch.from_numpy(data["x2"])
    assert x1.shape[0] > 2  # several blocks, so that some tiles replay
    assert_final_kernels_match(net.kernel_fn, x1, x2, data, TOL)


def test_graph_case_with_per_example_patterns(tiles_of_two):
    """Per-example keyword arguments (adjacency patterns) follow each block into its tape."""
    data = load("aggregate_gnn")
    net = build(CASES["aggregate_gnn"]["arch"])
    x1, x2 = torch.from_numpy(data["x1"]), torch.from_numpy(data["x2"])
    p1, p2 = torch.from_numpy(data["pattern1"]), torch.from_numpy(data["pattern2"])
    nngp, ntk = net.kernel_fn(x1, x2, ("nngp", "ntk"), pattern=(p1, p2))
    assert relative_error(nngp, data["nngp"]) <= TOL
    assert relative_error(ntk, data["ntk"]) <= TOL
    nngp, ntk = net.kernel_fn(x1, None, ("nngp", "ntk"), pattern=(p1, p1))
    assert relative_error(nngp, data["nngp_self"]) <= TOL
    assert relative_error(ntk, data["ntk_self"]) <= TOL


def _cnn() -> stax.Layer:
    return stax.serial(
        stax.Conv(4, (3, 3), padding="SAME", W_std=1.5, b_std=0.05), stax.Relu(),
        stax.Conv(4, (3, 3), padding="SAME", W_std=1.5, b_std=0.05), stax.Relu(),
        stax.GlobalAvgPool(), stax.Dense(1),
    )


def test_self_covariances_are_computed_once_per_block(tiles_of_two, monkeypatch):
    """6 examples in blocks of 2: 3 diagonal tiles map their cov1 through each of the 2
    activations, the 3 off-diagonal tiles replay (without the tape: 3 + 2 * 3 maps each)."""
    calls = []
    within = _elementwise.Activation._within
    monkeypatch.setattr(_elementwise.Activation, "_within", lambda self, *a: calls.append(1) or within(self, *a))
    x = torch.randn(6, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    net = _cnn()
    tiled = net.kernel_fn(x, None, ("nngp", "ntk", "cov1"))
    assert len(calls) == 3 * 2
    monkeypatch.setattr(layer_module, "_auto_tile_size", lambda *args: None)
    whole = net.kernel_fn(x, None, ("nngp", "ntk", "cov1"))
    for ours, ref in zip(tiled, whole):  # the untiled call is checked against NT elsewhere
        torch.testing.assert_close(ours, ref, rtol=1e-13, atol=0)


def test_tapes_that_do_not_fit_in_memory_are_not_kept(tiles_of_two, monkeypatch):
    calls = []
    within = _elementwise.Activation._within
    monkeypatch.setattr(_elementwise.Activation, "_within", lambda self, *a: calls.append(1) or within(self, *a))
    monkeypatch.setattr(batching, "available_memory", lambda device: 1000)
    x = torch.randn(6, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    nngp = _cnn().kernel_fn(x, None, "nngp")
    assert len(calls) == (3 + 2 * 3) * 2  # every tile computes its own
    assert nngp.shape == (6, 6)


def test_cost_model_skips_the_pre_pass_for_few_column_blocks():
    assert batching._tape_pays(True, 20, 20, 2)
    assert not batching._tape_pays(True, 2, 2, 2)
    assert batching._tape_pays(False, 20, 20, 2)
    assert not batching._tape_pays(False, 40, 2, 2)  # one column block: recording costs more


def test_a_tape_out_of_step_is_an_error_not_a_wrong_number():
    tape = CovarianceTape()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="covariance tape"):
        with replaying(tape, tape):
            _cnn().kernel_fn(x, x)
