"""Compiled kernels (``kernel_fn(..., compile=True)``): the same numbers as neural-tangents,
tiles padded and cut correctly, the automatic choice, and the eager fallback.

Each compiled network costs a few seconds of ``torch.compile``, so a handful of reference
cases stand for the rest: a residual network (FanOut/parallel/FanInSum), LayerNorm, Dropout
(whose x2=None kernel differs from x2=x1), ABRelu (the exact-diagonal path) and a CNN.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import tangents.stax._compiled as compiled_module
from reference_cases import CASES, assert_final_kernels_match, build, load, relative_error
from tangents import stax

FC_CASES = ["resnet_fc", "layernorm_fc", "dropout_fc", "act_abrelu_m0.3_1.2"]
TOL = 1e-8
# neural-tangents' own rounding noise on coincident points (see test_reference_fc.py)
DIAGONAL_TOL = 5e-8


@pytest.fixture
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> int:
    """FC tiles of 4 rows, so the 6-example reference inputs take padded partial tiles."""
    monkeypatch.setattr(compiled_module, "COMPILED_TILE", 4)
    return 4


@pytest.mark.slow
@pytest.mark.parametrize("case_id", FC_CASES)
def test_compiled_fc_matches_neural_tangents(case_id: str, small_tiles: int) -> None:
    ref = load(case_id)
    net = build(CASES[case_id]["arch"])
    x1, x2 = torch.from_numpy(ref["x1"]), torch.from_numpy(ref["x2"])
    assert len(x1) > small_tiles  # the call is tiled, its last tile padded

    pair = net.kernel_fn(x1, x2, ("nngp", "ntk"), compile=True)
    assert pair.nngp.dtype == torch.float64 and pair.nngp.shape == (len(x1), len(x2))
    assert relative_error(pair.nngp, ref["nngp"]) <= TOL
    assert relative_error(pair.ntk, ref["ntk"]) <= TOL

    k = net.kernel_fn(x1, None, compile=True)
    off_diagonal = ~np.eye(len(x1), dtype=bool)
    for name in ("nngp", "ntk"):
        ours, theirs = getattr(k, name), ref[f"{name}_self"]
        assert torch.isfinite(ours).all()
        assert relative_error(ours[off_diagonal], theirs[off_diagonal]) <= TOL
        assert relative_error(ours.diagonal(), np.diagonal(theirs)) <= DIAGONAL_TOL
        # the upper-triangle tiles were mirrored into the lower triangle
        if case_id != "dropout_fc":
            torch.testing.assert_close(ours, ours.T, rtol=1e-14, atol=0)
    # the exact diagonal: Σ(x, x) stored once, bit-identical on the nngp diagonal and in cov1
    if case_id != "dropout_fc":  # Dropout's x2=None diagonal differs from cov1 by design
        assert torch.equal(k.nngp.diagonal(), k.cov1)
    assert k.cov2 is None and k.shape1 == k.shape2


def _spy_on_maps(monkeypatch: pytest.MonkeyPatch) -> list:
    """Records every compiled nonlinearity map that spatial kernels build."""
    built: list = []
    original = compiled_module._compile_pair_map

    def spy(activation):  # noqa: ANN001, ANN202
        built.append(activation)
        return original(activation)

    monkeypatch.setattr(compiled_module, "_compile_pair_map", spy)
    return built


@pytest.mark.slow
@pytest.mark.parametrize("tiles", [None, 2], ids=["untiled", "tiles_of_2"])
def test_compiled_cnn_matches_neural_tangents(tiles: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spatial kernels: eager layers (tiles replaying self-covariances) and compiled maps."""
    import tangents.stax._layer as layer_module

    monkeypatch.setattr(layer_module, "_auto_tile_size", lambda *args: tiles)
    built = _spy_on_maps(monkeypatch)
    case_id = "cnn_same_s1_gap"
    ref = load(case_id)
    net = build(CASES[case_id]["arch"])
    x1, x2 = torch.from_numpy(ref["x1"]), torch.from_numpy(ref["x2"])
    assert_final_kernels_match(functools.partial(net.kernel_fn, compile=True), x1, x2, ref, TOL)
    assert built  # the ReLU maps were compiled


@pytest.mark.slow
def test_compiled_maps_take_masked_inputs_and_gradients_stay_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    built = _spy_on_maps(monkeypatch)
    padded = torch.randn(4, 3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    padded[0, :, 4:] = -7.0
    conv = stax.serial(stax.Conv(8, (3,), padding="SAME"), stax.Erf(), stax.GlobalAvgPool(), stax.Dense(1))
    ours = conv.kernel_fn(padded, None, ("nngp", "ntk"), compile=True, mask_constant=-7.0)
    eager = conv.kernel_fn(padded, None, ("nngp", "ntk"), compile=False, mask_constant=-7.0)
    assert len(built) == 1
    torch.testing.assert_close(ours, eager, rtol=1e-12, atol=1e-14)
    x = padded.clone().requires_grad_(True)
    conv.kernel_fn(x, None, "nngp", compile=True).sum().backward()  # autograd through eager maps
    assert x.grad is not None and len(built) == 1


@pytest.fixture
def broken_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch.compile`` returns functions that fail as a machine without a C++ compiler does."""

    def broken_compile(fn, **kwargs):  # noqa: ANN001, ANN003
        def run(*args):  # noqa: ANN002
            raise RuntimeError("no C++ compiler found\nlong details")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)


def test_compiled_map_failure_falls_back_to_eager_with_a_warning(broken_compiler: None) -> None:
    conv = stax.serial(stax.Conv(8, (3,), padding="SAME"), stax.Gelu(), stax.GlobalAvgPool(), stax.Dense(1))
    x = torch.randn(3, 2, 5, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match=r"could not compile the kernel map of Gelu .*computing it eagerly"):
        ours = conv.kernel_fn(x, None, "ntk", compile=True)
    torch.testing.assert_close(ours, conv.kernel_fn(x, None, "ntk", compile=False), rtol=0, atol=0)


@pytest.mark.slow
def test_compiled_tiles_of_uneven_sizes_equal_eager(small_tiles: int) -> None:
    """x1 and x2 of different sizes, neither a multiple of the tile: every tile is padded
    differently and cut back; float32 stays float32."""
    net = stax.serial(stax.Dense(64, W_std=1.3, b_std=0.1), stax.Erf(), stax.Dense(1))
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(11, 5, generator=g, dtype=torch.float32)
    x2 = torch.randn(6, 5, generator=g, dtype=torch.float32)
    for a, b in ((x1, x2), (x2, x1), (x1, None)):
        ours = net.kernel_fn(a, b, compile=True)
        eager = net.kernel_fn(a, b, compile=False)
        assert ours.nngp.dtype == torch.float32
        for name in ("nngp", "ntk", "cov1", "cov2"):
            if getattr(eager, name) is None:
                assert getattr(ours, name) is None
            else:
                torch.testing.assert_close(getattr(ours, name), getattr(eager, name), rtol=1e-5, atol=1e-6)
        assert ours.shape1 == eager.shape1 and ours.shape2 == eager.shape2


def _spy_on_programs(monkeypatch: pytest.MonkeyPatch) -> list:
    built: list = []
    original = compiled_module.TileProgram.kernel

    def spy(self, x1, x2, tile):  # noqa: ANN001
        built.append(self)
        return original(self, x1, x2, tile)

    monkeypatch.setattr(compiled_module.TileProgram, "kernel", spy)
    return built


def test_compile_none_compiles_only_large_work(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy_on_programs(monkeypatch)
    monkeypatch.setattr(compiled_module.TileProgram, "__call__", lambda self, a, b, *args, **kw: (self.eager(a, b, b is None, False)))
    net = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
    x = torch.randn(10, 3)
    net.kernel_fn(x, None)
    assert calls == []  # 55 pairs x 3 layers: far below the threshold
    monkeypatch.setattr(compiled_module, "AUTO_COMPILE_WORK", 100)
    k = net.kernel_fn(x, None)
    assert len(calls) == 1
    torch.testing.assert_close(k.nngp, net.kernel_fn(x, None, compile=False).nngp)
    # spatial kernels are compiled only on request, however large
    monkeypatch.setattr(compiled_module, "AUTO_COMPILE_WORK", 0)
    conv = stax.serial(stax.Conv(4, (3,), padding="SAME"), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1))
    conv.kernel_fn(torch.randn(3, 2, 5), None)
    assert len(calls) == 1


def test_calls_that_cannot_be_compiled_run_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy_on_programs(monkeypatch)
    net = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    nngp = net.kernel_fn(x, None, "nngp", compile=True)  # gradients flow through eager code
    nngp.sum().backward()
    assert x.grad is not None and calls == []
    padded = torch.randn(4, 3, 6, dtype=torch.float64)
    padded[0, :, 4:] = -7.0
    conv = stax.serial(stax.Conv(8, (3,), padding="SAME"), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1))
    conv.kernel_fn(padded, None, "nngp", compile=True, mask_constant=-7.0)
    assert calls == []  # (spatial: compiled maps, not whole-tile programs)


def test_compile_failure_falls_back_to_eager_with_a_warning(broken_compiler: None) -> None:
    net = stax.serial(stax.Dense(8, b_std=0.1), stax.Erf(), stax.Dense(1))
    x = torch.randn(7, 3, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match=r"could not compile .*RuntimeError: no C\+\+ compiler found\); computing it eagerly"):
        k = net.kernel_fn(x, None, compile=True)
    torch.testing.assert_close(k.nngp, net.kernel_fn(x, None, compile=False).nngp, rtol=0, atol=0)
    net.kernel_fn(x, None, compile=True)  # warned once: later calls go straight to eager


def test_layer_errors_surface_unchanged_through_compile() -> None:
    net = stax.serial(stax.Relu(), stax.Dense(1))
    with pytest.raises(ValueError, match="affine"):
        net.kernel_fn(torch.randn(3, 2), None, compile=True)


def test_compile_must_be_a_bool_or_none() -> None:
    net = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
    with pytest.raises(TypeError, match="compile must be None, True or False, got 'yes'"):
        net.kernel_fn(torch.randn(3, 2), None, compile="yes")
