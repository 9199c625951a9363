"""Graph and resizing networks of the shared reference set against neural-tangents 0.6.5.

``aggregate_gnn`` stores the adjacency patterns; the kernel is called with
``pattern=(pattern1, pattern2)`` (``(pattern1, pattern1)`` for ``x2=None``). The
manifest's ``to_dense`` is a description (the patterns are dense), dropped by `build`.
Inputs are NT's channels-last; the manifest's explicit ``channel_axis=-1`` keeps them so.
Relative error <= 1e-8 in float64.
"""

from __future__ import annotations

import pytest
import torch

from reference_cases import CASES, build, load, relative_error

TOL = 1e-8
GRAPH_RESIZE_CASES = ["aggregate_gnn", "extra_imageresize_linear", "extra_imageresize_nearest"]


@pytest.mark.parametrize("case_id", GRAPH_RESIZE_CASES)
def test_final_kernels(case_id):
    data = load(case_id)
    net = build(CASES[case_id]["arch"])
    x1, x2 = torch.from_numpy(data["x1"]), torch.from_numpy(data["x2"])
    kwargs, kwargs_self = {}, {}
    if "pattern1" in data:
        kwargs = {"pattern": (data["pattern1"], data["pattern2"])}
        kwargs_self = {"pattern": (data["pattern1"], data["pattern1"])}
    nngp, ntk = net.kernel_fn(x1, x2, ("nngp", "ntk"), **kwargs)
    assert relative_error(nngp, data["nngp"]) <= TOL
    assert relative_error(ntk, data["ntk"]) <= TOL
    nngp, ntk = net.kernel_fn(x1, None, ("nngp", "ntk"), **kwargs_self)
    assert relative_error(nngp, data["nngp_self"]) <= TOL
    assert relative_error(ntk, data["ntk_self"]) <= TOL


@pytest.mark.parametrize("case_id", GRAPH_RESIZE_CASES)
def test_diagonal_spatial_is_refused_as_in_nt(case_id):
    # NT: "requires diagonal_spatial == Diagonal(input=NO, ...)" for these networks
    data = load(case_id)
    net = build(CASES[case_id]["arch"])
    kwargs = {"pattern": (data["pattern1"], data["pattern2"])} if "pattern1" in data else {}
    with pytest.raises(ValueError, match="diagonal_spatial=True was requested"):
        net.kernel_fn(torch.from_numpy(data["x1"]), torch.from_numpy(data["x2"]), "nngp", diagonal_spatial=True, **kwargs)


def test_aggregate_gnn_channels_first_gives_the_same_numbers():
    """tangents' default layout (N, C, V) with channel_axis=1 throughout."""
    from tangents import stax

    data = load("aggregate_gnn")
    net = stax.serial(
        stax.Dense(64, 1.5, 0.05, channel_axis=1),
        stax.Relu(),
        stax.Aggregate(),
        stax.Dense(64, 1.5, 0.05, channel_axis=1),
        stax.Relu(),
        stax.GlobalAvgPool(),
        stax.Dense(1, 1.5, 0.05),
    )
    x1 = torch.from_numpy(data["x1"]).transpose(1, 2)
    x2 = torch.from_numpy(data["x2"]).transpose(1, 2)
    nngp, ntk = net.kernel_fn(x1, x2, ("nngp", "ntk"), pattern=(data["pattern1"], data["pattern2"]))
    assert relative_error(nngp, data["nngp"]) <= TOL
    assert relative_error(ntk, data["ntk"]) <= TOL
