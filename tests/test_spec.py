"""Networks as JSON (`Layer.spec`, `stax.from_spec`) and the named presets (`stax.preset`).

Oracles: neural-tangents' own kernels for the manifest architectures rebuilt by `from_spec`
(float64, rel. err. <= 1e-8, the tolerance of the reference tests), and the round trip
spec -> JSON -> layers -> spec over every test network and reference architecture.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import networks
import networks_spatial
from reference_cases import CASES, load, relative_error
from tangents import stax

#: NT's float64 rounding on these cases (README of the reference data): 1e-8.
TOL = 1e-8

REFERENCE_ARCHS = [cid for cid, case in CASES.items() if case.get("arch")]


def _all_networks() -> list[tuple[str, stax.Layer]]:
    nets = [(cid, stax.from_spec(CASES[cid]["arch"], nt_layout=True)) for cid in REFERENCE_ARCHS]
    for net in networks.NETWORKS + networks_spatial.SPATIAL_NETWORKS:
        if net.id != "act_Elementwise_sin":  # user-defined functions have no JSON form (tested below)
            nets.append((net.id, net.build(16)))
    return nets


def test_round_trip_of_every_network_through_json():
    nets = _all_networks()
    assert len(nets) > 150  # every reference architecture and test network
    for name, net in nets:
        spec = net.spec()
        again = stax.from_spec(json.loads(json.dumps(spec))).spec()
        assert again == spec, name


@pytest.mark.parametrize("case_id", ["fc_relu_std_d2_b005", "fanin_concat_fc", "cnn_same_s2_gap", "myrtle5_8x8"])
def test_manifest_architectures_reproduce_neural_tangents(case_id):
    """``from_spec(arch, nt_layout=True)`` builds NT's network: NT's kernels to 1e-8."""
    data = load(case_id)
    net = stax.from_spec(CASES[case_id]["arch"], nt_layout=True)
    x1, x2 = torch.from_numpy(data["x1"]), torch.from_numpy(data["x2"])
    nngp, ntk = net.kernel_fn(x1, x2, ("nngp", "ntk"))
    assert relative_error(nngp, data["nngp"]) <= TOL
    assert relative_error(ntk, data["ntk"]) <= TOL


def test_spec_of_a_rebuilt_network_gives_the_same_kernel_bit_for_bit():
    net = networks_spatial.SPATIAL_NETWORKS[0].build(16)
    again = stax.from_spec(json.loads(json.dumps(net.spec())))
    x = torch.randn(3, *networks_spatial.SPATIAL_NETWORKS[0].input_shape)
    a, b = net.kernel_fn(x, None, ("nngp", "ntk")), again.kernel_fn(x, None, ("nngp", "ntk"))
    assert torch.equal(a.nngp, b.nngp) and torch.equal(a.ntk, b.ntk)


def test_spec_spells_out_defaults_and_canonical_forms():
    spec = stax.serial(stax.Dense(8), stax.Relu(), stax.Conv(4, (3, 3)), stax.Tanh(deg=30)).spec()
    assert spec["layers"][0] == {"type": "Dense", "out_dim": 8, "W_std": 1.0, "b_std": None, "batch_axis": 0,
                                 "channel_axis": -1, "parameterization": "ntk", "s": [1, 1]}
    assert spec["layers"][1] == {"type": "ABRelu", "a": 0.0, "b": 1.0, "do_stabilize": False}  # Relu builds ABRelu(0, 1)
    assert spec["layers"][2]["dimension_numbers"] == ["NCHW", "OIHW", "NCHW"]  # tangents' default, spelled out
    assert spec["layers"][3] == {"type": "Tanh", "deg": 30}
    assert stax.from_spec({"type": "Relu"}).spec() == stax.Relu().spec()


def test_manifest_function_texts_and_descriptions():
    layer = stax.from_spec({"type": "ElementwiseNumerical", "fn": "tanh", "deg": 25,
                            "df": "None (derivative by jax autodiff)", "fn_definition": "jnp.tanh(x)"})
    assert layer.spec() == {"type": "ElementwiseNumerical", "fn": "tanh", "deg": 25, "df": None}
    assert stax.from_spec({"type": "Sigmoid_like", "equivalent": {"type": "Erf"}}).spec()["type"] == "Erf"


def test_user_functions_have_no_json_form():
    with pytest.raises(TypeError, match=r"Layer.spec: Elementwise.fn is the function .*has no JSON form; use one of tanh"):
        stax.Elementwise(fn=lambda x: x**3, nngp_fn=lambda c, v1, v2: c).spec()


def test_spec_errors_name_the_place_and_the_fix():
    with pytest.raises(ValueError, match=r"from_spec: spec\.layers\[1\] has the unknown layer type 'Rellu'\. Did you mean Relu"):
        stax.from_spec({"type": "serial", "layers": [{"type": "Dense", "out_dim": 2}, {"type": "Rellu"}]})
    with pytest.raises(ValueError, match=r"from_spec: spec \(Dense\) has unknown argument\(s\) 'width'; Dense takes out_dim"):
        stax.from_spec({"type": "Dense", "width": 2})
    with pytest.raises(ValueError, match=r"spec\.fn must name a function \(tanh, .*\) or be null, got 'cube'"):
        stax.from_spec({"type": "ElementwiseNumerical", "fn": "cube", "deg": 5})
    with pytest.raises(ValueError, match=r"from_spec: spec must be an object with a \"type\""):
        stax.from_spec(["Dense"])
    with pytest.raises(ValueError, match=r"spec \(serial\) needs a list \"layers\""):
        stax.from_spec({"type": "serial"})
    with pytest.raises(ValueError, match=r"has the unknown layer type 'Layer'"):
        stax.from_spec({"type": "Layer"})


def test_myrtle5_preset_is_neural_tangents_myrtle_network():
    """The preset on channels-first images equals NT's MyrtleNetwork(5) on the same images
    channels-last (the manifest's myrtle5_8x8: its Dense(1) readout gives the same kernel as
    the preset's Dense(10) in the NTK parameterization)."""
    data = load("myrtle5_8x8")
    x1 = torch.from_numpy(np.ascontiguousarray(data["x1"].transpose(0, 3, 1, 2)))
    x2 = torch.from_numpy(np.ascontiguousarray(data["x2"].transpose(0, 3, 1, 2)))
    net = stax.preset("myrtle5", tuple(x1.shape[1:]))
    nngp, ntk = net.kernel_fn(x1, x2, ("nngp", "ntk"))
    assert relative_error(nngp, data["nngp"]) <= TOL
    assert relative_error(ntk, data["ntk"]) <= TOL


@pytest.mark.parametrize("name", sorted(stax.PRESETS))
def test_presets_build_and_compute(name):
    shape = (5,) if name == "fc" else (2, 8, 8)
    net = stax.preset(name, shape)
    x = torch.randn(2, *shape)
    ntk = net.kernel_fn(x, None, "ntk")
    assert ntk.shape == (2, 2) and bool(torch.isfinite(ntk).all())
    assert stax.from_spec(json.loads(json.dumps(net.spec()))).spec() == net.spec()


def test_preset_errors():
    with pytest.raises(ValueError, match=r"preset: unknown network 'myrtle6' \(did you mean myrtle7 or myrtle5\?\); the presets are fc, cnn"):
        stax.preset("myrtle6")
    with pytest.raises(ValueError, match=r"preset 'fc': takes inputs \(N, features\), got examples of shape \(3, 8, 8\); flatten"):
        stax.preset("fc", (3, 8, 8))
    with pytest.raises(ValueError, match=r"preset 'cnn': takes images \(N, C, H, W\) .* got examples of shape \(20,\)"):
        stax.preset("cnn", (20,))
    with pytest.raises(ValueError, match=r"preset 'myrtle10': needs images of at least 8 x 8 pixels"):
        stax.preset("myrtle10", (3, 4, 4))
